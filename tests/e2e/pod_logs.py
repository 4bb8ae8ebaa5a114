"""Pods' logs kept whole through an operation that replaces the pods.

A roll deletes the very pods whose logs would explain its failure, and the kubelet deletes their
logs with them. FollowedLogs follows each (pod name, container) with `kubectl logs -f` from before
the operation until after it, and follows it again whenever the stream ends: the same container
from its last line on (a broken stream), or the next one (a restarted container, a replaced pod).
Each goes to one file, `<pod>.<container>.log`, with the kubelet's timestamps. The API takes
`--since-time` to the second, so the kubelet sends again the lines of that second before the last
one kept: lines stamped before it are skipped, and those stamped with it that were kept already. A
line with no timestamp is the kubelet's own notice (a container whose log is gone, which it sends
with no line break): it is kept on a line of its own, and never taken for the point to follow on
from. A stream that brought nothing new (a finished container: an init container, one that
stopped) is asked again after a wait that doubles up to RETRY_SECONDS_MAX, so that following costs
the measured machine little.
"""

from __future__ import annotations

import re
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

# How long a follower waits before it asks again, for a pod or container that is not there yet; up
# to RETRY_SECONDS_MAX while its streams bring nothing new. A replaced pod's first lines are kept
# all the same: the next call asks from the last line kept.
RETRY_SECONDS = 1.0
RETRY_SECONDS_MAX = 8.0

# The RFC 3339 stamp `kubectl logs --timestamps` puts before each line of a container's log.
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def instant(stamp: str) -> tuple[datetime, int] | None:
    """A log line's stamp as (its second in UTC, its nanoseconds), ordered as time is; None for what
    is not a stamp."""
    found = _STAMP.fullmatch(stamp)
    if found is None:
        return None
    second, fraction, zone = found.groups()
    at = datetime.fromisoformat(second + ("+00:00" if zone == "Z" else zone)).astimezone(UTC)
    return at, int((fraction or ".")[1:].ljust(9, "0")[:9])


class FollowedLogs:
    """with FollowedLogs(kubectl, namespace, streams, target): <operation>, each stream a (pod
    name, container): a pod not there yet is followed once it is."""

    def __init__(self, kubectl: list[str], namespace: str, streams: list[tuple[str, str]], target: Path) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.streams = streams
        self.target = target
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._processes: dict[tuple[str, str], subprocess.Popen[str]] = {}
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FollowedLogs:
        self.target.mkdir(parents=True, exist_ok=True)
        for stream in self.streams:
            thread = threading.Thread(target=self._follow, args=stream, daemon=True, name=f"logs-{stream[0]}-{stream[1]}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        # A moment for the last lines (a container that just stopped), then every stream ends.
        self._stop.wait(RETRY_SECONDS)
        self._stop.set()
        with self._lock:
            for process in self._processes.values():
                process.kill()
        for thread in self._threads:
            thread.join(timeout=10)

    def _follow(self, pod: str, container: str) -> None:
        since = ""
        last: tuple[datetime, int] | None = None
        at_since: set[str] = set()
        wait = RETRY_SECONDS
        with (self.target / f"{pod}.{container}.log").open("a", encoding="utf-8") as out:
            while not self._stop.is_set():
                argv = [*self.kubectl, "-n", self.namespace, "logs", "-f", "--timestamps", "-c", container, pod]
                if since:
                    argv.append(f"--since-time={since}")
                with self._lock:
                    if self._stop.is_set():
                        return
                    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, errors="replace")
                    self._processes[(pod, container)] = process
                assert process.stdout is not None
                new = False
                for line in process.stdout:
                    stamp = line.split(" ", 1)[0]
                    at = instant(stamp)
                    if at is None:
                        out.write(line if line.endswith("\n") else line + "\n")
                        out.flush()
                        continue
                    if last is not None and (at < last or (at == last and line in at_since)):
                        continue
                    if at != last:
                        since, last, at_since = stamp, at, set()
                    at_since.add(line)
                    out.write(line)
                    out.flush()
                    new = True
                process.wait()
                wait = RETRY_SECONDS if new else min(wait * 2, RETRY_SECONDS_MAX)
                self._stop.wait(wait)
