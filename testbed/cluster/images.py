"""Container images for the kubelet bed, built on this machine: there is no registry to pull from.

Each image is one layer put together from files on the host (Debian's static busybox, curl and dig
with the shared libraries ldd names for them, the Consul binary the bed builds) and written as a
docker-archive tar (the ``docker save`` format: manifest.json with RepoTags, a config JSON, one
layer tar), which ``ctr images import`` loads into containerd's k8s.io namespace, where the CRI
plugin and so the kubelet see it.

- pause: a static binary compiled here from a few lines of C; containerd's sandbox_image.
- consul (two names, one image): what the program relies on in the official Alpine image: /bin/sh
  and the usual applets, curl, jq, /bin/consul, the consul user (100, group consul 1000) and
  /consul/data and /consul/config owned by it.
- toolbox: the consul image plus dig and nslookup, for test pods.
- coredns and kube-router (the NetworkPolicy agent), when their binaries are given.

build() names every tar after a digest of its inputs (this file, the image's names and config, and
each host file's path, size and mtime), so a tar whose inputs did not change is not written again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
TOOLBOX_IMAGE = "testbed.local/toolbox:1"
COREDNS_IMAGE = "testbed.local/coredns:v1.15.0"
NETPOL_IMAGE = "testbed.local/kube-router:v2.1.0"
CONSUL_IMAGES = ("docker.io/hashicorp/consul:1.16.1", "testbed.local/hashicorp/consul:1.16.1")

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = Path("/bin/busybox")
CURL = Path("/usr/bin/curl")
JQ = Path("/usr/bin/jq")
DIG = Path("/usr/bin/dig")
XTABLES = Path("/usr/sbin/xtables-nft-multi")
XTABLES_EXTENSIONS = Path("/usr/lib/x86_64-linux-gnu/xtables")
IPSET = Path("/usr/sbin/ipset")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

CONSUL_UID = 100
CONSUL_GID = 1000
NONROOT_UID = 65532
PAUSE_UID = 65535

# security.capability, revision 2, effective bit set, permitted CAP_NET_BIND_SERVICE (10): what
# `setcap cap_net_bind_service=+ep` writes, as CoreDNS's own image does so that it binds :53 as nonroot.
NET_BIND_SERVICE_CAP = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)

PAUSE_C = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
    (void)signo;
    _exit(0);
}

static void on_child(int signo) {
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop, child;
    memset(&stop, 0, sizeof(stop));
    memset(&child, 0, sizeof(child));
    stop.sa_handler = on_stop;
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 || sigaction(SIGCHLD, &child, NULL) < 0) {
        perror("sigaction");
        return 1;
    }
    if (getpid() != 1) {
        fputs("pause: not running as pid 1\n", stderr);
    }
    for (;;) {
        pause();
    }
}
"""
PAUSE_CFLAGS = ("-static", "-O2", "-s")


@dataclass(frozen=True)
class Binaries:
    consul: Path
    coredns: Path | None = None
    netpol: Path | None = None


class ImageBuildError(RuntimeError):
    """A tool that an image needs is missing or failed."""


@dataclass(frozen=True)
class _Entry:
    kind: str  # "dir", "file" or "symlink"
    mode: int
    uid: int = 0
    gid: int = 0
    source: Path | None = None
    data: bytes | None = None
    target: str = ""
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _rel(path: str) -> str:
    rel = path.strip("/")
    if not rel or ".." in rel.split("/"):
        raise ValueError(f"bad path in image: {path!r}")
    return rel


def shared_libraries(binary: Path) -> list[str]:
    """The absolute paths of the shared libraries and the loader that ldd lists; [] for a static binary."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    if "not a dynamic executable" in output or "statically linked" in output:
        return []
    if proc.returncode != 0:
        raise ImageBuildError(f"ldd {binary} failed: {output.strip()}")
    libraries: list[str] = []
    for line in proc.stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if "=>" in words:
            found = words[words.index("=>") + 1]
            if found == "not":
                raise ImageBuildError(f"{binary} needs {words[0]}, which ldd does not find")
            if found.startswith("/"):
                libraries.append(found)
        elif words[0].startswith("/"):
            libraries.append(words[0])
    return libraries


class _Tree:
    """A file system to become one layer: paths without the leading slash, parents made as needed."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}

    def copy(self) -> _Tree:
        tree = _Tree()
        tree.entries = dict(self.entries)
        return tree

    def _parents(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            existing = self.entries.get(parent)
            if existing is None:
                self.entries[parent] = _Entry("dir", 0o755)
            elif existing.kind != "dir":
                raise ValueError(f"{parent} is a {existing.kind}, not a directory")

    def _put(self, path: str, entry: _Entry) -> None:
        rel = _rel(path)
        self._parents(rel)
        existing = self.entries.get(rel)
        if existing is not None and (existing.kind == "dir") != (entry.kind == "dir"):
            raise ValueError(f"{rel} is already a {existing.kind}")
        self.entries[rel] = entry

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._put(path, _Entry("dir", mode, uid, gid))

    def data(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        raw = content.encode() if isinstance(content, str) else content
        self._put(path, _Entry("file", mode, data=raw))

    def copy_file(self, path: str, source: Path, mode: int | None = None, xattrs: tuple[tuple[str, bytes], ...] = ()) -> None:
        """The file source resolves to (never a symlink), at path in the image."""
        real = source.resolve(strict=True)
        if not real.is_file():
            raise ImageBuildError(f"{source} is not a regular file")
        chosen = mode if mode is not None else real.stat().st_mode & 0o777
        self._put(path, _Entry("file", chosen, source=real, xattrs=xattrs))

    def symlink(self, path: str, target: str) -> None:
        self._put(path, _Entry("symlink", 0o777, target=target))

    def program(self, path: str, source: Path, xattrs: tuple[tuple[str, bytes], ...] = ()) -> None:
        """An executable at path, with every shared library it loads at the path ldd names."""
        self.copy_file(path, source, 0o755, xattrs)
        for library in shared_libraries(source):
            rel = _rel(library)
            if rel not in self.entries:
                self.copy_file(library, Path(library))

    def fingerprint(self) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for rel in sorted(self.entries):
            entry = self.entries[rel]
            row: list[Any] = [rel, entry.kind, entry.mode, entry.uid, entry.gid, entry.target, [[k, v.hex()] for k, v in entry.xattrs]]
            if entry.source is not None:
                stat = entry.source.stat()
                row += [str(entry.source), stat.st_size, stat.st_mtime_ns]
            if entry.data is not None:
                row.append(hashlib.sha256(entry.data).hexdigest())
            rows.append(row)
        return rows

    def write(self, out: IO[bytes]) -> None:
        """A tar of the tree: sorted entries, mtime 0, numeric owners only."""
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel in sorted(self.entries):
                entry = self.entries[rel]
                info = tarfile.TarInfo(rel)
                info.mtime = 0
                info.mode = entry.mode
                info.uid, info.gid = entry.uid, entry.gid
                info.uname = info.gname = ""
                if entry.xattrs:
                    info.pax_headers = {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape") for key, value in entry.xattrs}
                if entry.kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif entry.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.linkname = entry.target
                    tar.addfile(info)
                elif entry.data is not None:
                    info.size = len(entry.data)
                    tar.addfile(info, io.BytesIO(entry.data))
                else:
                    assert entry.source is not None
                    with entry.source.open("rb") as source:
                        info.size = os.fstat(source.fileno()).st_size
                        tar.addfile(info, source)


class _HashingWriter(io.RawIOBase):
    """Writes through to a file and keeps the sha256 of what went by."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.sha256.update(chunk)
        self.raw.write(chunk)
        return len(chunk)


@dataclass(frozen=True)
class _Image:
    slug: str
    tags: tuple[str, ...]
    tree: _Tree
    config: dict[str, Any]


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _module_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _image_key(image: _Image) -> str:
    inputs = [_module_digest(), list(image.tags), image.config, image.tree.fingerprint()]
    return hashlib.sha256(_json(inputs)).hexdigest()[:16]


def _tar_member(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.size = 0 if directory else size
    return info


def _write_archive(dest: Path, image: _Image) -> None:
    """dest: a docker-archive tar of the image, written beside it first and renamed into place."""
    layer_tmp = dest.with_name(f".{dest.name}.{os.getpid()}.layer")
    archive_tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with layer_tmp.open("wb") as raw:
            writer = _HashingWriter(raw)
            image.tree.write(cast(IO[bytes], writer))
        diff_id = writer.sha256.hexdigest()
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "testbed/cluster/images.py"}],
        }
        config_bytes = _json(config)
        config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
        layer_name = f"{diff_id}/layer.tar"
        manifest = _json([{"Config": config_name, "RepoTags": list(image.tags), "Layers": [layer_name]}])
        with tarfile.open(archive_tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tar_member(diff_id, 0, directory=True))
            with layer_tmp.open("rb") as layer:
                tar.addfile(_tar_member(layer_name, os.fstat(layer.fileno()).st_size), layer)
            tar.addfile(_tar_member(config_name, len(config_bytes)), io.BytesIO(config_bytes))
            tar.addfile(_tar_member("manifest.json", len(manifest)), io.BytesIO(manifest))
        os.replace(archive_tmp, dest)
    finally:
        layer_tmp.unlink(missing_ok=True)
        archive_tmp.unlink(missing_ok=True)


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise ImageBuildError(f"{path} is missing: apt-get install -y {package}")
    return path


def pause_binary(out_dir: Path) -> Path:
    """The static pause binary in out_dir, compiled once per version of its source."""
    digest = hashlib.sha256(_json([PAUSE_C, PAUSE_CFLAGS])).hexdigest()[:16]
    binary = out_dir / f"pause-bin-{digest}"
    if binary.is_file():
        return binary
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageBuildError("gcc is missing: apt-get install -y gcc libc6-dev")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".pause-") as tmp:
        source = Path(tmp) / "pause.c"
        source.write_text(PAUSE_C)
        built = Path(tmp) / "pause"
        proc = subprocess.run([gcc, *PAUSE_CFLAGS, "-o", str(built), str(source)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ImageBuildError(f"gcc could not build pause: {proc.stderr.strip()}")
        os.replace(built, binary)
    return binary


def _busybox(tree: _Tree) -> None:
    """/bin/busybox, a symlink in /bin for each of its applets, and /usr/bin/env for shebangs."""
    busybox = _require(BUSYBOX, "busybox-static")
    tree.program("/bin/busybox", busybox)
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ImageBuildError(f"busybox --list failed: {proc.stderr.strip()}")
    for applet in sorted(set(proc.stdout.split())):
        if applet != "busybox" and "/" not in applet:
            tree.symlink(f"/bin/{applet}", "busybox")
    tree.symlink("/usr/bin/env", "/bin/busybox")
    tree.symlink("/sbin/nologin", "/bin/busybox")


def _ca_bundle(tree: _Tree) -> None:
    if CA_BUNDLE.exists():
        tree.copy_file(str(CA_BUNDLE), CA_BUNDLE, 0o644)


def _pause_image(out_dir: Path) -> _Image:
    tree = _Tree()
    tree.program("/pause", pause_binary(out_dir))
    config = {"Env": [PATH_ENV], "Entrypoint": ["/pause"], "User": f"{PAUSE_UID}:{PAUSE_UID}", "WorkingDir": "/"}
    return _Image("pause", (PAUSE_IMAGE,), tree, config)


def _consul_tree(consul: Path) -> _Tree:
    tree = _Tree()
    for top in ("bin", "etc", "lib", "root", "sbin", "usr/bin", "usr/local/bin", "usr/sbin", "var"):
        tree.dir(top, 0o700 if top == "root" else 0o755)
    tree.dir("/tmp", 0o1777)
    tree.dir("/var/tmp", 0o1777)
    _busybox(tree)
    tree.program("/usr/bin/curl", _require(CURL, "curl"))
    if JQ.is_file():
        tree.program("/usr/bin/jq", JQ)
    _ca_bundle(tree)
    tree.program("/bin/consul", consul)
    tree.data(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n"
        f"consul:x:{CONSUL_UID}:{CONSUL_GID}:Linux User,,,:/home/consul:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/:/sbin/nologin\n",
    )
    tree.data("/etc/group", f"root:x:0:root\nconsul:x:{CONSUL_GID}:consul\nnogroup:x:65534:\n")
    tree.data("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    tree.dir("/home/consul", 0o755, CONSUL_UID, CONSUL_GID)
    tree.dir("/consul", 0o755)
    for sub in ("data", "config"):
        tree.dir(f"/consul/{sub}", 0o775, CONSUL_UID, CONSUL_GID)
    return tree


def _consul_config(cmd: list[str]) -> dict[str, Any]:
    return {"Env": [PATH_ENV], "Entrypoint": None, "Cmd": cmd, "WorkingDir": "/"}


def _coredns_image(coredns: Path) -> _Image:
    tree = _Tree()
    tree.dir("/tmp", 0o1777)
    tree.program("/coredns", coredns, xattrs=(("security.capability", NET_BIND_SERVICE_CAP),))
    tree.data(
        "/etc/passwd", f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT_UID}:{NONROOT_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
    )
    tree.data("/etc/group", f"root:x:0:\nnonroot:x:{NONROOT_UID}:\n")
    tree.dir("/home/nonroot", 0o700, NONROOT_UID, NONROOT_UID)
    _ca_bundle(tree)
    config = {"Env": [PATH_ENV], "Entrypoint": ["/coredns"], "User": f"{NONROOT_UID}:{NONROOT_UID}", "WorkingDir": "/"}
    return _Image("coredns", (COREDNS_IMAGE,), tree, config)


def _netpol_image(netpol: Path) -> _Image:
    """kube-router, run as the NetworkPolicy agent: it drives the node's filter through the iptables
    and ipset programs, which come from the machine (Debian's, the nft backend kube-proxy uses too)."""
    tree = _Tree()
    tree.dir("/tmp", 0o1777)
    tree.dir("/run", 0o755)
    _busybox(tree)
    tree.program("/usr/local/bin/kube-router", netpol)
    tree.program("/usr/sbin/xtables-nft-multi", _require(XTABLES, "iptables"))
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        tree.symlink(f"/usr/sbin/{name}", "xtables-nft-multi")
    # The match and target extensions are loaded at run time, so no ldd of the program names them.
    for extension in sorted(XTABLES_EXTENSIONS.glob("*.so")):
        tree.program(str(XTABLES_EXTENSIONS / extension.name), extension)
    tree.program("/usr/sbin/ipset", _require(IPSET, "ipset"))
    tree.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    tree.data("/etc/group", "root:x:0:\n")
    config = {"Env": [PATH_ENV], "Entrypoint": ["/usr/local/bin/kube-router"], "WorkingDir": "/"}
    return _Image("netpol", (NETPOL_IMAGE,), tree, config)


def _images(binaries: Binaries, out_dir: Path) -> list[_Image]:
    consul_tree = _consul_tree(binaries.consul)
    toolbox_tree = consul_tree.copy()
    toolbox_tree.program("/usr/bin/dig", _require(DIG, "bind9-dnsutils"))
    result = [
        _pause_image(out_dir),
        _Image("consul", CONSUL_IMAGES, consul_tree, _consul_config(["consul", "agent", "-dev", "-client", "0.0.0.0"])),
        _Image("toolbox", (TOOLBOX_IMAGE,), toolbox_tree, _consul_config(["sleep", "2147483647"])),
    ]
    if binaries.coredns is not None:
        result.append(_coredns_image(binaries.coredns))
    if binaries.netpol is not None:
        result.append(_netpol_image(binaries.netpol))
    return result


def build(binaries: Binaries, out_dir: Path) -> list[Path]:
    """Docker-archive tars for every image, in out_dir: pause, consul, toolbox, then coredns and
    kube-router when their binaries are given. A tar whose inputs did not change is kept;
    older tars of the same image are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tars: list[Path] = []
    for image in _images(binaries, out_dir):
        dest = out_dir / f"{image.slug}-{_image_key(image)}.tar"
        if not dest.is_file():
            _write_archive(dest, image)
        for stale in out_dir.glob(f"{image.slug}-*.tar"):
            if stale != dest:
                stale.unlink(missing_ok=True)
        tars.append(dest)
    return tars


def import_all(tars: list[Path], containerd_address: str) -> None:
    """`ctr images import` each tar into the k8s.io namespace of the containerd at containerd_address."""
    ctr = shutil.which("ctr")
    if ctr is None:
        raise ImageBuildError("ctr is missing: apt-get install -y containerd")
    for tar in tars:
        proc = subprocess.run(
            [ctr, "--address", containerd_address, "-n", "k8s.io", "images", "import", str(tar)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ImageBuildError(f"ctr images import {tar} failed (exit {proc.returncode}): {proc.stderr.strip()}")
