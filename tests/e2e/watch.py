"""What Consul and the cluster report while an operation runs, sampled from before it until after it.

Each sampler runs in its own thread, so a slow answer never delays another:
  - leader: the client agent a workload uses (the toolbox pod's node, through the node-local
    Service's clusterIP: no cluster DNS in the way), `/v1/status/leader`; a
    leader is HTTP 200 with an ``"ip:8300"`` body (a client without servers answers 500);
  - voters: `/v1/operator/raft/configuration?stale` (any server's own view, so it answers while
    there is no leader), counting the servers with ``Voter: true``;
  - writes: a KV write every interval, each bounded to 1 s, with its HTTP status (000: no answer in
    time), its seconds, how long its connection to the agent took (none: no agent serving behind
    the Service on that node, or the packet path dropped it; made: the agent's kernel accepted it)
    and, failed, the start of its answer; every acknowledged key is read back
    at the end. A failed write counts against the issue's bound unless Consul had no leader for
    it: its answer says so ("No cluster leader", "leadership lost"...) or it got no HTTP answer (000), and
    the leader sampler heard "no leader" (HTTP 200 with an empty body) at some point between the
    write's start and its end, widened to the samples around. A 500 from the client agent (no
    server reachable) or a sampler's own timeout is not "no leader". The writes it counts are
    split by whether some agent pod was down meanwhile (not Ready, gone, or its container
    restarted: from its last sample serving to its first serving again): a Consul client never
    retries a write whose server stops under it, an open defect; a write failed with a leader and
    every agent serving has no excuse;
  - pods: every pod of the namespace from the API: readiness and ``restartCount``. A pod on a
    node the test has cut off from the network (`Watch.node_lost`) is not serving, whatever the
    API still says, until it is Ready again after the node is back; its client agent's NotReady
    samples are not counted against the bound (a lost node's agent can't serve), its down
    stretch is;
  - registration: a service the watch registers with that client agent before the action, looked
    up in the catalog (`?stale`, any server's view); a sample counts as missing only when the
    catalog answered without it;
  - DNS: the same service through the `consul-dns` Service (`dig`, 1 s), answered when it gives
    an A record.
The samplers but the pods' run as shell loops in the toolbox pod (`kubectl exec`), with the token
on standard input; the pod sampler reads the API. Each line carries the time the pod took it
(when the answer came): the exec stream may hold lines up on a busy machine, and a line timed on
arrival would bunch its samples there and leave a silence before. Pods and the watch share the
kernel's boot-time clock (a pod reads it in /proc/uptime), which the watch counts from its start;
the wall clock would do until the machine steps it (see `clock`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

LEADER = re.compile(r'^"\d{1,3}(?:\.\d{1,3}){3}:8300"$')
INTERVAL = 0.25


def clock() -> float:
    """Seconds on the kernel's boot-time clock, the one /proc/uptime shows every pod of the
    machine: it never steps. The wall clock does: in one CI run it went about 30 s ahead of the
    monotonic clock while a watch ran, and every sampler read as silent for that long."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


# A sample's stamp: the pod's boot-time clock, to a hundredth of a second (builtins only, no fork).
_STAMP = 'read -r t _ < /proc/uptime; echo "$t'
WRITE_BOUND = 1
# How long the read of the written keys after an action may wait for the cluster to answer it.
KEYS_READ_SECONDS = 60

# Each sampler prints one line per sample; the token is read from standard input into a header file.
_PRELUDE = 'read -r T; h=$(mktemp); printf "X-Consul-Token: %s\\n" "$T" > "$h"; trap \'rm -f "$h"\' EXIT; '
# A sampler ends, with every sample it started, when its standard input does. Killing the
# `kubectl exec` leaves the pod's shell running, its output held open by the container runtime and
# read by nobody: it would go on sending its requests to Consul, each sample blocked on a full
# pipe, until the toolbox pod is deleted.
_STREAM_PRELUDE = _PRELUDE + 'trap "exit 143" TERM; exec 3<&0; { cat <&3 >/dev/null; kill 0; } & exec 3<&-; '

# Each sample starts in the background on its tick, so an answer slow to come (a 1 s timeout, a
# busy machine) never delays the next one; each prints its line with a single write, led by the
# time its answer came (`_STAMP`).
LEADER_LOOP = (
    'while :; do {{ out=$(curl -s -m 1 -w " %{{http_code}}" "{agent}/v1/status/leader") || out="curl exit $? 0"; '
    + _STAMP
    + ' $(printf "%s" "$out" | tr -d "\\r\\n")"; }} & sleep {interval}; done'
)
VOTERS_LOOP = (
    'while :; do {{ out=$(curl -s -m 1 -H @"$h" -w " %{{http_code}}" "{agent}/v1/operator/raft/configuration?stale") || out="- 0"; '
    + _STAMP
    + ' $(printf "%s" "$out" | tr -d "\\r\\n")"; }} & sleep {interval}; done'
)
CATALOG_LOOP = (
    'while :; do {{ out=$(curl -s -m 1 -H @"$h" -w " %{{http_code}}" "{agent}/v1/catalog/service/{service}?stale") || out="- 0"; '
    + _STAMP
    + ' $(printf "%s" "$out" | tr -d "\\r\\n")"; }} & sleep {interval}; done'
)
DNS_LOOP = (
    'while :; do {{ n=$(dig +short +time=1 +tries=1 @{dns} {service}.service.consul A | grep -c "^[0-9]") || n=0; '
    + _STAMP
    + ' $n"; }} & sleep {interval}; done'
)
# Each write: "<time> <index> <status> <seconds> <connect seconds>", and for a failed one the start
# of its answer. The connect time (curl's, 0 with no connection) tells a write the agent never
# accepted from one it accepted and did not answer in time.
WRITES_LOOP = (
    'i=0; while :; do {{ b=$(mktemp); out=$(curl -s -m {bound} -o "$b" -w \'%{{http_code}} %{{time_total}} %{{time_connect}}\' -X PUT -H @"$h" --data "$i" '
    '"{agent}/v1/kv/{prefix}/$i"); [ -n "$out" ] || out="000 {bound} 0"; '
    'case "$out" in 200*) '
    + _STAMP
    + ' $i $out";; *) '
    + _STAMP
    + ' $i $out $(head -c 160 "$b" | tr -d "\\r\\n")";; esac; rm -f "$b"; }} & i=$((i+1)); sleep {interval}; done'
)
# What Consul answers a write it could not commit for want of a leader.
NO_LEADER_ANSWERS = ("No cluster leader", "leadership lost", "leadership transfer in progress", "not leader")


def client_agent_url(api: Any, namespace: str) -> str:
    """The node-local `consul-client` Service by its clusterIP, not its name: the watch measures
    Consul, not the cluster DNS (with a CoreDNS replica on a lost node, lookups sent to it go
    unanswered until Kubernetes marks the node NotReady)."""
    ip: str = api.get(f"/api/v1/namespaces/{namespace}/services/consul-client")["spec"]["clusterIP"]
    return f"http://[{ip}]:8500" if ":" in ip else f"http://{ip}:8500"


def consul_dns_ip(api: Any, namespace: str) -> str | None:
    """The clusterIP of the stack's `consul-dns` Service, or None when the stack declares none."""
    path = f"/api/v1/namespaces/{namespace}/services/consul-dns"
    ip: str | None = api.get(path)["spec"]["clusterIP"] if api.exists(path) else None
    return ip


def leaderless_stretches(leader: list[tuple[float, bool]], *, widened: bool = True) -> list[tuple[float, float]]:
    """The stretches without a leader in a leader sampler's (time, has a leader) samples, as (start,
    end). Unwidened, a stretch runs from its first sample without a leader to the next sample with
    one (or the last sample): what the issue's 2 s bound is measured on. Widened, it starts at the
    last sample with a leader before it, since the leader may have gone any time after that sample:
    what a failed write is attributed by."""
    stretches: list[tuple[float, float]] = []
    since: float | None = None
    last_with = 0.0
    for at, has in leader:
        if not has and since is None:
            since = last_with if widened else at
        elif has and since is not None:
            stretches.append((since, at))
            since = None
        if has:
            last_with = at
    if since is not None and leader:
        stretches.append((since, leader[-1][0]))
    return stretches


def unexplained_stretches(leader: list[tuple[float, bool]], bound: float, causes: list[float], *, lead: float) -> list[tuple[float, float]]:
    """The stretches without a leader (unwidened) longer than `bound` in which no cause happened:
    none of `causes` (times on the samples' clock) falls from `lead` seconds before a stretch's
    start to its end. A sample is stamped once its answer came, up to its curl bound after it was
    asked, so a cause up to that long before the first sample without a leader is in its stretch."""
    return [
        (start, end)
        for start, end in leaderless_stretches(leader, widened=False)
        if end - start > bound and not any(start - lead <= cause <= end for cause in causes)
    ]


@dataclass(frozen=True)
class Write:
    """One bounded KV write: when its answer came (seconds since the watch started), its key
    index, HTTP status ("000": none within the bound), how long it took, how long its connection
    to the agent took (0: none made) and, failed, the start of its answer."""

    at: float
    index: str
    status: str
    seconds: float
    connected: float = 0.0
    answer: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "200"

    @property
    def sent(self) -> float:
        return self.at - self.seconds

    def described(self) -> str:
        """Its status, the connection and its answer, as the watch lists a failed write."""
        connection = f"connected in {self.connected * 1000:.1f} ms" if self.connected > 0 else "no connection"
        return f"{self.status} ({connection}) {self.answer}".rstrip()


def parsed_write(at: float, sample: str) -> Write:
    """A writes sampler's sample, "<index> <status> <seconds> <connect seconds> [answer]", answered at `at`."""
    index, status, seconds, connected, answer = [*sample.split(" ", 4), "", "", "", ""][:5]
    return Write(
        at=at, index=index, status=status, seconds=_seconds(seconds, WRITE_BOUND), connected=_seconds(connected, 0.0), answer=answer
    )


def _seconds(text: str, otherwise: float) -> float:
    try:
        return float(text)
    except ValueError:
        return otherwise


def _has(no_leader: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    """No-leader samples as (time, has a leader) for leaderless_stretches."""
    return [(at, not none) for at, none in no_leader]


def _overlaps(write: Write, stretches: list[tuple[float, float]]) -> bool:
    return any(start <= write.at and write.sent <= end for start, end in stretches)


def failed_with_a_leader(writes: list[Write], no_leader: list[tuple[float, bool]]) -> list[Write]:
    """The failed writes Consul's want of a leader does not explain, which the issue's bound counts.
    Explained: an answer that says there is no leader, or no answer within the bound, while some
    sample of `no_leader` (time, the agent answered "no leader") between the write's start and its
    end, widened to the samples around, said so."""
    stretches = leaderless_stretches(_has(no_leader))
    return [
        write
        for write in writes
        if not write.ok
        and not ((write.status in ("000", "0") or any(text in write.answer for text in NO_LEADER_ANSWERS)) and _overlaps(write, stretches))
    ]


# A pod gone this long while every pod left serves was removed (a scale-down), not replaced.
GONE_SECONDS = 5.0


def _kind(name: str) -> str:
    """consul-server-0 -> consul-server; consul-client-x7k2p -> consul-client."""
    return name.rsplit("-", 1)[0]


def agents_down(pods: list[tuple[float, dict[str, tuple[bool, str, int]]]]) -> list[tuple[float, float]]:
    """The stretches in which some agent pod was not serving, from the pod sampler's (time, {name:
    (Ready, UID, restarts)}): from its last sample Ready to its first Ready again (a replacement
    under the same name counts as it), or, when it was Ready in both, between the two samples
    around a container restart or a new UID. A pod first seen not Ready is down from that sample.
    A pod gone from the samples (a DaemonSet's pods are replaced under new names) is down until
    a pod of its kind first seen after it went is Ready, or, when none comes, until it has been
    gone GONE_SECONDS with every pod left serving. One still down at the end, to the last sample."""
    stretches: list[tuple[float, float]] = []
    serving: dict[str, tuple[float, str, int]] = {}
    down_since: dict[str, float] = {}
    gone_at: dict[str, float] = {}
    first_seen: dict[str, float] = {}
    for at, state in pods:
        for name in state:
            first_seen.setdefault(name, at)
        for name in sorted(set(serving) | set(down_since) | set(state)):
            ready, uid, restarts = state.get(name, (False, "", 0))
            if name in state:
                gone_at.pop(name, None)
            else:
                gone_at.setdefault(name, at)
            if not ready:
                down_since.setdefault(name, serving[name][0] if name in serving else at)
                continue
            if name in down_since:
                stretches.append((down_since.pop(name), at))
            elif name in serving and serving[name][1:] != (uid, restarts):
                stretches.append((serving[name][0], at))
            serving[name] = (at, uid, restarts)
        every_pod_serving = all(ready for ready, _, _ in state.values())
        for name, went in list(gone_at.items()):
            replaced = any(_kind(other) == _kind(name) and first_seen[other] >= went and ready for other, (ready, _, _) in state.items())
            if replaced or (every_pod_serving and at - went >= GONE_SECONDS):
                stretches.append((down_since.pop(name), at))
                serving.pop(name, None)
                del gone_at[name]
    if pods:
        stretches.extend((since, pods[-1][0]) for since in down_since.values())
    return sorted(stretches)


def still_cut_off(cut_off: frozenset[str], pod: str, node: str | None, ready: bool, lost: frozenset[str]) -> frozenset[str]:
    """The pods counted as cut off after one pod's sample: a pod on a node lost now is; one that
    was stays so until the API reports it Ready with its node back."""
    if node in lost:
        return cut_off | {pod}
    if ready:
        return cut_off - {pod}
    return cut_off


def clients_not_ready(pods: list[tuple[float, dict[str, tuple[bool, str, int]]]], cut_off: list[tuple[float, frozenset[str]]]) -> int:
    """The client agent pods not serving, summed over the pod samples, but for those on a node the
    test had cut off (`cut_off`: the pod names, one entry per pod sample)."""
    # cut_off is appended first: a sample the pod sampler is still adding has no pods entry yet.
    return sum(
        1
        for (_, state), (_, lost) in zip(pods, cut_off, strict=False)
        for name, (serving, _, _) in state.items()
        if name.startswith("consul-client") and not serving and name not in lost
    )


# Why curl gave up on a leader sample, by its exit status ("curl exit N" in the sample).
CURL_FAILURES = {28: "no answer within 1 s", 7: "could not connect", 52: "empty reply", 56: "connection reset"}
CURL_EXIT = re.compile(r"^curl exit (\d+)$")


def curl_failure(answer: str) -> str:
    """A failed sample's "curl exit N" said as what happened, the status kept."""
    found = CURL_EXIT.match(answer)
    if found is None:
        return answer
    status = int(found.group(1))
    return f"{CURL_FAILURES[status]} (curl exit {status})" if status in CURL_FAILURES else f"curl exit {status}"


def leaderless_answers(record: Record, after: float) -> list[str]:
    """For each stretch in which the leader sampler named no leader (unwidened), from `after` on:
    what the agent answered in it, counted by answer in the order first given. A Raft election
    reads 200 with an empty body; an agent that can't reach a server, a 500 or no answer."""
    lines = []
    for start, end in leaderless_stretches(record.leader, widened=False):
        if end < after:
            continue
        counted: dict[str, int] = {}
        for at, answer in record.unnamed:
            if start <= at <= end:
                counted[answer] = counted.get(answer, 0) + 1
        answers = ", ".join(f"{n}x {answer}" for answer, n in counted.items())
        lines.append(f"{start - after:.2f}-{end - after:.2f} s: {answers}")
    return lines


def _spans(stretches: list[tuple[float, float]], after: float) -> str:
    """Stretches as "a-b s" in seconds after `after`, or "never"."""
    return ", ".join(f"{a - after:.2f}-{b - after:.2f} s" for a, b in stretches) or "never"


def failed_with_every_agent_up(writes: list[Write], down: list[tuple[float, float]]) -> list[Write]:
    """Of `writes` (failed with a leader), those during which every agent pod was serving."""
    return [write for write in writes if not _overlaps(write, down)]


# The longest a sampler may go without a sample between the action's start and the watch's end.
# Each prints a line per tick (INTERVAL) within its own 1 s bound, and the pod sampler lists the
# pods every tick, so a longer silence is a sampler that died or a stream that stalled: every
# figure taken from it would keep its bound without measuring anything, and the watch fails.
SILENCE_BOUND = 5.0


# How long the watch waits, after the operation, for each stream to deliver the samples taken up to its end.
DELIVERY_SECONDS = 30


def stamped(line: str) -> tuple[float, str]:
    """A sampler's line split into the time the pod took it (see `clock`) and the sample itself."""
    stamp, _, sample = line.partition(" ")
    return float(stamp), sample


def samplers_behind(record: Record, end: float, *, dns: bool) -> list[str]:
    """The samplers with no sample at or after `end` yet: their lines may still be on their way."""
    return sorted(name for name, times in _sample_times(record, dns=dns).items() if not any(t >= end for t in times))


def _unreadable(record: Record) -> str:
    return ", ".join(f"{name} {line!r}" for name, line in sorted(record.unreadable.items()))


def longest_silence(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without a sample (`times`: when each was taken), counted
    from `start` to the first sample in it and from the last one to `end`."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


@dataclass
class Record:
    """Samples as (seconds since the watch started, value)."""

    leader: list[tuple[float, bool]] = field(default_factory=list)
    # (time, the agent answered that there is no leader: HTTP 200 with an empty body)
    no_leader: list[tuple[float, bool]] = field(default_factory=list)
    # (time, leader "ip:8300") at each change of the leader named, in the order the answers came:
    # with `leaders`, what shows a real flip back.
    leader_turns: list[tuple[float, str]] = field(default_factory=list)
    # (time, what the agent answered) for each leader sample that named no leader
    unnamed: list[tuple[float, str]] = field(default_factory=list)
    voters: list[tuple[float, int | None]] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    # (time, {pod name: (Ready and not terminating, its UID, its containers' restarts)})
    pods: list[tuple[float, dict[str, tuple[bool, str, int]]]] = field(default_factory=list)
    # (time, the pods on a node the test cut off, or not Ready since it came back), one per pods sample
    cut_off: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    # (time, the catalog lists the watch's service; None: the catalog did not answer)
    registered: list[tuple[float, bool | None]] = field(default_factory=list)
    # (time, consul-dns gave an A record for it)
    dns: list[tuple[float, bool]] = field(default_factory=list)
    # The longest a sampler's line took from the pod to the watch, by sampler
    held_up: dict[str, float] = field(default_factory=dict)
    # The first line each sampler printed that is not "<stamp> <sample>", by sampler
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def leaders(self) -> list[str]:
        """The leaders named, each once, in the order first named: a late answer (or a server not
        yet reached by the new leader) can name the leader before the one named last, and in a
        roll a leader's address never leads again."""
        return list(dict.fromkeys(leader for _, leader in self.leader_turns))


def up_to(record: Record, end: float) -> Record:
    """The record's samples taken up to `end`, each sampler's in time order: the window the figures
    cover. While the watch waits for a held-up stream the others go on sampling past the window,
    and background samples can reach their stream out of the order they were taken in."""

    def kept(samples: list[Any]) -> list[Any]:
        return sorted((sample for sample in samples if sample[0] <= end), key=lambda sample: sample[0])

    return replace(
        record,
        leader=kept(record.leader),
        unnamed=kept(record.unnamed),
        no_leader=kept(record.no_leader),
        voters=kept(record.voters),
        writes=sorted((write for write in record.writes if write.at <= end), key=lambda write: write.at),
        pods=kept(record.pods),
        cut_off=kept(record.cut_off),
        registered=kept(record.registered),
        dns=kept(record.dns),
    )


def silent_samplers(record: Record, start: float, end: float, *, dns: bool) -> dict[str, float]:
    """The samplers silent longer than SILENCE_BOUND in [start, end], with their longest silence
    (`dns`: the watch has a DNS sampler)."""
    silences = {name: longest_silence(times, start, end) for name, times in _sample_times(record, dns=dns).items()}
    return {name: silence for name, silence in silences.items() if silence > SILENCE_BOUND}


def _sample_times(record: Record, *, dns: bool) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {
        "leader": [at for at, _ in record.leader],
        "voters": [at for at, _ in record.voters],
        "writes": [write.at for write in record.writes],
        "pods": [at for at, _ in record.pods],
        "catalog": [at for at, _ in record.registered],
    }
    if dns:
        samples["dns"] = [at for at, _ in record.dns]
    return samples


@dataclass(frozen=True)
class Summary:
    operation: str
    seconds: float
    polls: int
    fewest_voters: int | None
    longest_leaderless: float
    failed_writes: int
    failed_writes_with_a_leader: int
    failed_writes_with_every_agent_up: int
    lost_writes: int
    clients_not_ready: int
    restarts: dict[str, int]
    registration_missing: int
    dns_unanswered: int

    def row(self) -> str:
        restarted = sum(self.restarts.values())
        return (
            f"| {self.operation} | {self.seconds:.1f} s | {self.polls} | {self.fewest_voters} | {self.longest_leaderless:.1f} s "
            f"| {self.failed_writes} | {self.failed_writes_with_a_leader} | {self.failed_writes_with_every_agent_up} | {self.lost_writes} | {self.clients_not_ready} | {restarted} "
            f"| {self.registration_missing} | {self.dns_unanswered} |"
        )


TABLE_HEADER = (
    "| operation | time | leader polls | fewest voters | longest without a leader | failed writes (1 s bound) "
    "| of them not for want of a leader | of those, with every agent pod serving | lost writes "
    "| client NotReady samples | container restarts | registration missing samples | DNS lookups unanswered |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)
ROWS: list[Summary] = []


class Watch:
    """with Watch(deployment, toolbox, "label") as watch: <operation>; then watch.summary."""

    def __init__(self, deployment: Any, toolbox: Any, label: str, agent: str | None = None) -> None:
        self.deployment = deployment
        self.toolbox = toolbox
        self.label = label
        self.agent = agent or client_agent_url(deployment.api, deployment.namespace)
        self.prefix = f"watch/{label.replace(' ', '-')}"
        self.service = "watch-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:50]
        self.record = Record()
        self._stop = threading.Event()
        self._processes: list[Any] = []
        self._threads: list[threading.Thread] = []
        self.started = 0.0
        # The wall clock's lead on the watch's clock at the start: a change by the end is a step.
        self._wall_offset = 0.0
        # How far the wall clock stepped during the watch (set when it ends).
        self.wall_step = 0.0
        self.summary: Summary | None = None
        # The nodes the test has cut off from the network now (replaced whole, read by the pod sampler).
        self.lost_nodes: frozenset[str] = frozenset()
        # The agents' logs through the operation (a roll replaces the pods, and the kubelet their logs).
        self._agent_logs: Any = None

    @property
    def logs_name(self) -> str:
        """The name the agents' logs through this watch are kept under (Deployment.followed_logs)."""
        return self.prefix.removeprefix("watch/")

    def on_watch_clock(self, wall: float) -> float:
        """A wall-clock instant (a kubelet's stamp on a log line, in seconds since the epoch) in
        seconds since the watch started, by the wall clock's lead on the watch's clock at the start
        (a step of the wall clock during the watch would shift it: then it fails)."""
        assert abs(self.wall_step) <= 1, (
            f"the wall clock stepped {self.wall_step:+.1f} s during the watch: a wall-clock stamp can't be put on the watch's clock"
        )
        return wall - self._wall_offset - self.started

    def _now(self) -> float:
        """Seconds since the watch started, on the clock the toolbox pod stamps its lines with."""
        return clock() - self.started

    def _stream(self, name: str, loop: str, handle: Any) -> None:
        token = self.deployment.management_token()
        process = self.toolbox.stream(_STREAM_PRELUDE + loop, token)
        self._processes.append(process)

        def run() -> None:
            for line in process.stdout:
                if self._stop.is_set():
                    break
                try:
                    taken, sample = stamped(line.rstrip("\n"))
                except ValueError:
                    # Not a sample: the watch fails on it, naming the line, rather than read it as silence.
                    self.record.unreadable.setdefault(name, line.rstrip("\n"))
                    continue
                at = taken - self.started
                self.record.held_up[name] = max(self.record.held_up.get(name, 0.0), self._now() - at)
                handle(at, sample)

        thread = threading.Thread(target=run, daemon=True, name=f"watch-{self.label}")
        thread.start()
        self._threads.append(thread)

    def _on_leader(self, at: float, line: str) -> None:
        answer, _, code = line.rpartition(" ")
        body = answer.strip()
        named = code == "200" and bool(LEADER.match(answer))
        self.record.leader.append((at, named))
        if named and (not self.record.leader_turns or self.record.leader_turns[-1][1] != body):
            self.record.leader_turns.append((at, body))
        self.record.no_leader.append((at, code == "200" and body == '""'))
        if not named:
            self.record.unnamed.append((at, f"{code} {body[:100]}" if code not in ("0", "000") else curl_failure(body)))

    def _on_voters(self, at: float, line: str) -> None:
        body, _, code = line.rpartition(" ")
        count: int | None = None
        if code == "200":
            try:
                count = sum(1 for s in json.loads(body)["Servers"] if s.get("Voter"))
            except (ValueError, KeyError, TypeError):
                count = None
        self.record.voters.append((at, count))

    def _on_catalog(self, at: float, line: str) -> None:
        body, _, code = line.rpartition(" ")
        listed: bool | None = None
        if code == "200":
            try:
                listed = any(entry.get("ServiceID") == self.service for entry in json.loads(body))
            except (ValueError, AttributeError, TypeError):
                listed = None
        self.record.registered.append((at, listed))

    def _on_dns(self, at: float, line: str) -> None:
        self.record.dns.append((at, line.strip() not in ("", "0")))

    def _register(self) -> None:
        """The watch's own service, on the client agent a workload uses, as the README registers one."""
        body = json.dumps({"Name": self.service, "ID": self.service, "Port": 1})
        out = self.toolbox.sh(
            _PRELUDE
            + f'curl -sS -m 5 -H @"$h" -o /dev/null -w "%{{http_code}}" -X PUT --data-binary @- "{self.agent}/v1/agent/service/register"',
            input=self.deployment.management_token() + "\n" + body,
        )
        if out.stdout.strip() != "200":
            raise AssertionError(f"{self.label}: registering {self.service} failed: {out.stdout} {out.stderr}")

    def _deregister(self) -> None:
        """Best effort: the agent that holds it may be gone with the operation."""
        self.toolbox.sh(
            _PRELUDE + f'curl -s -m 5 -H @"$h" -o /dev/null -X PUT "{self.agent}/v1/agent/service/deregister/{self.service}" || true',
            input=self.deployment.management_token() + "\n",
        )

    def _on_write(self, at: float, line: str) -> None:
        self.record.writes.append(parsed_write(at, line))

    def _pods(self) -> None:
        path = f"/api/v1/namespaces/{self.deployment.namespace}/pods"
        cut_off: frozenset[str] = frozenset()
        while not self._stop.is_set():
            # Read before the list: a list asked for before the cut is not excused.
            lost = self.lost_nodes
            try:
                items = self.deployment.api.items(path)
            except Exception:  # noqa: BLE001 - an API hiccup is a missing sample, not a verdict
                self._stop.wait(INTERVAL)
                continue
            state = {}
            for pod in items:
                if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") not in ("server", "client"):
                    continue
                name = pod["metadata"]["name"]
                conditions = pod.get("status", {}).get("conditions", [])
                ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                cut_off = still_cut_off(cut_off, name, pod.get("spec", {}).get("nodeName"), ready, lost)
                restarts = sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses", []))
                serving = ready and not pod["metadata"].get("deletionTimestamp") and name not in cut_off
                state[name] = (serving, pod["metadata"]["uid"], restarts)
            now = self._now()
            self.record.cut_off.append((now, cut_off))
            self.record.pods.append((now, state))
            self._stop.wait(INTERVAL)

    def __enter__(self) -> Watch:
        self.started = clock()
        self._wall_offset = time.time() - self.started
        try:
            self._start()
        except BaseException:
            # Else the samplers and the agents' log followers run on until the test session ends.
            self._halt()
            raise
        self.action_started = self._now()
        return self

    def _start(self) -> None:
        """Every sampler started, and reporting from a cluster with a leader."""
        self._agent_logs = self.deployment.followed_logs(self.logs_name)
        self._agent_logs.__enter__()
        self._register()
        dns = consul_dns_ip(self.deployment.api, self.deployment.namespace)
        self.dns = dns
        fmt = {"agent": self.agent, "interval": INTERVAL, "bound": WRITE_BOUND, "prefix": self.prefix, "service": self.service, "dns": dns}
        self._stream("leader", LEADER_LOOP.format(**fmt), self._on_leader)
        self._stream("voters", VOTERS_LOOP.format(**fmt), self._on_voters)
        self._stream("writes", WRITES_LOOP.format(**fmt), self._on_write)
        self._stream("catalog", CATALOG_LOOP.format(**fmt), self._on_catalog)
        if dns is not None:
            self._stream("dns", DNS_LOOP.format(**fmt), self._on_dns)
        pods = threading.Thread(target=self._pods, daemon=True, name=f"watch-pods-{self.label}")
        pods.start()
        self._threads.append(pods)
        # The clock starts before the action: every sampler has reported once, from a cluster with a
        # leader, the registration in the catalog and (Consul's anti-entropy and DNS a moment behind) in DNS.
        deadline = time.monotonic() + 60

        def ready() -> bool:
            sampled = self.record.leader and self.record.voters and self.record.writes and self.record.pods
            registered = self.record.registered and self.record.registered[-1][1]
            answered = dns is None or (self.record.dns and self.record.dns[-1][1])
            return bool(sampled and registered and answered)

        while not ready():
            if time.monotonic() > deadline:
                stray = f"; lines that are not a stamped sample: {_unreadable(self.record)}" if self.record.unreadable else ""
                raise TimeoutError(
                    f"{self.label}: the watch's samplers did not report (with {self.service} registered and in DNS) within 60 s{stray}"
                )
            time.sleep(0.05)
        if not self.record.leader[-1][1]:
            raise AssertionError(f"{self.label}: no leader before the operation started")

    @contextlib.contextmanager
    def node_lost(self, node: str) -> Iterator[None]:
        """Around the block in which the test cuts `node` off from the network: see the pod sampler."""
        self.lost_nodes = self.lost_nodes | {node}
        try:
            yield
        finally:
            self.lost_nodes = self.lost_nodes - {node}

    def _halt(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.kill()
            process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._agent_logs is not None:
            self._agent_logs.__exit__(None, None, None)
            self._agent_logs = None

    def __exit__(self, *exc: object) -> None:
        # A last second of samples after the operation, then stop once every stream has delivered
        # the samples taken up to then (or DELIVERY_SECONDS have passed: those still missing are silence).
        time.sleep(1)
        end = self._now()
        seconds = end - self.action_started
        delivery = time.monotonic() + DELIVERY_SECONDS
        while samplers_behind(self.record, end, dns=self.dns is not None) and time.monotonic() < delivery:
            time.sleep(0.1)
        silent = silent_samplers(self.record, self.action_started, end, dns=self.dns is not None)
        self._halt()
        print(
            f"\nwatch: {self.label}: longest a sample's line took from the toolbox pod: "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in sorted(self.record.held_up.items()))
        )
        stepped = time.time() - clock() - self._wall_offset
        self.wall_step = stepped
        if abs(stepped) > 1:
            print(
                f"watch: {self.label}: the machine's wall clock stepped {stepped:+.1f} s during the watch (not counted: the watch's clock never steps)"
            )
        self.record = up_to(self.record, end)
        down = agents_down(self.record.pods)
        self.summary = self._summarise(seconds, down)
        self._deregister()
        ROWS.append(self.summary)
        print(f"watch: {self.summary.row()}")
        failed = [write for write in self.record.writes if not write.ok]
        if failed:
            after = self.action_started
            counted = failed_with_a_leader(failed, self.record.no_leader)
            unexcused = failed_with_every_agent_up(counted, down)
            print(
                f"watch: {self.label}: failed writes (seconds after the action started: sent-answered, status, connection to the agent, answer; "
                "* counts, ** with every agent pod serving):"
            )
            for write in failed:
                mark = "**" if write in unexcused else "* " if write in counted else "  "
                print(f"watch:  {mark} {write.sent - after:.2f}-{write.at - after:.2f} s {write.described()}")
            print(
                f"watch: {self.label}: no leader, by the agent's answer: "
                + _spans(leaderless_stretches(_has(self.record.no_leader)), after)
                + "; no leader seen (any other answer too): "
                + _spans(leaderless_stretches(self.record.leader), after)
                + "; some agent pod down: "
                + _spans(down, after)
            )
        leaderless = leaderless_answers(self.record, self.action_started)
        if leaderless:
            print(f"watch: {self.label}: what the agent answered while it named no leader: " + "; ".join(leaderless))
        if self.record.unreadable:
            unreadable = f"{self.label}: samplers printed lines that are not a stamped sample: {_unreadable(self.record)}"
            print(f"watch: {unreadable}")
            if exc[0] is None:
                raise AssertionError(unreadable)
        if silent and exc[0] is None:
            raise AssertionError(
                f"{self.label}: samplers silent longer than {SILENCE_BOUND} s, so their figures measured nothing: "
                + ", ".join(f"{name} {silence:.1f} s" for name, silence in silent.items())
            )

    def _restarts(self) -> dict[str, int]:
        """Container restarts per pod during the watch: each pod (by UID, so a replaced pod is a
        new one) from its first sample to its last; pods that did not restart are left out."""
        seen: dict[str, tuple[str, int, int]] = {}
        for _, state in self.record.pods:
            for name, (_, uid, count) in state.items():
                _, first, _ = seen.get(uid, (name, count, count))
                seen[uid] = (name, first, count)
        restarted: dict[str, int] = {}
        for name, first, last in seen.values():
            if last > first:
                restarted[name] = restarted.get(name, 0) + last - first
        return restarted

    def _acknowledged_keys_lost(self) -> int:
        """Acknowledged writes the store no longer holds. The read comes after the action, from a
        cluster that may still be settling (a client just back, a 500 "No cluster leader"): it is
        tried until an answer is a 200 with the key list, for up to KEYS_READ_SECONDS; a store
        that never answers so fails the test, naming its last answer."""
        acknowledged = {write.index for write in self.record.writes if write.ok}
        deadline = time.monotonic() + KEYS_READ_SECONDS
        while True:
            out = self.toolbox.sh(
                _PRELUDE + f'curl -sS -m 10 -H @"$h" -w "\\n%{{http_code}}" "{self.agent}/v1/kv/{self.prefix}/?keys"',
                input=self.deployment.management_token() + "\n",
            )
            body, _, status = out.stdout.rpartition("\n")
            # 404: no key under the prefix at all.
            if out.returncode == 0 and status in ("200", "404"):
                stored = {key.rsplit("/", 1)[-1] for key in json.loads(body)} if status == "200" else set()
                return len(acknowledged - stored)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the written keys could not be read back for {KEYS_READ_SECONDS} s: {out.stdout[-300:]} {out.stderr[-300:]}"
                )
            time.sleep(1)

    def _summarise(self, seconds: float, down: list[tuple[float, float]]) -> Summary:
        """The watch's figures; `down`: agents_down of its pod samples."""
        longest = max((end - start for start, end in leaderless_stretches(self.record.leader, widened=False)), default=0.0)
        known = [v for _, v in self.record.voters if v is not None]
        with_a_leader = failed_with_a_leader(self.record.writes, self.record.no_leader)
        return Summary(
            operation=self.label,
            seconds=seconds,
            polls=len(self.record.leader),
            fewest_voters=min(known) if known else None,
            longest_leaderless=longest,
            failed_writes=sum(1 for write in self.record.writes if not write.ok),
            failed_writes_with_a_leader=len(with_a_leader),
            failed_writes_with_every_agent_up=len(failed_with_every_agent_up(with_a_leader, down)),
            lost_writes=self._acknowledged_keys_lost(),
            clients_not_ready=clients_not_ready(self.record.pods, self.record.cut_off),
            restarts=self._restarts(),
            registration_missing=sum(1 for at, listed in self.record.registered if at >= self.action_started and listed is False),
            dns_unanswered=sum(1 for at, answered in self.record.dns if at >= self.action_started and not answered),
        )
