"""Starts one container the way a container runtime would, from a JSON spec (see pod.py).

It runs as root inside the pod's network namespace and a private mount namespace of its own
(``ip netns exec NS unshare --mount --propagation private python3 podinit.py SPEC``), then:
  1. builds the container's root filesystem on a tmpfs: the machine's /usr, /etc, /dev, /proc and
     /sys bound read-only, the image's binaries at /opt/image/bin, /etc/hosts and /etc/resolv.conf
     from the bed (cluster DNS), and every volume bound at its mount path;
  2. makes the root read-only when the container asks for readOnlyRootFilesystem;
  3. chroots into it, takes the pod's user, group and supplementary groups, and replaces itself
     with the container's command, so the bed's pid is the container's pid.
The mounts live in the private namespace and vanish with the container's last process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def bind(source: str, target: str, *, read_only: bool, recursive: bool = False) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    mount("--rbind" if recursive else "--bind", source, target)
    if read_only:
        mount("-o", "remount,bind,ro", target)


def main(spec_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    root = spec["root"]
    mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", root)
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(target, os.path.join(root, link))
    bind("/usr", f"{root}/usr", read_only=True)
    bind("/etc", f"{root}/etc", read_only=True)
    bind("/dev", f"{root}/dev", read_only=False, recursive=True)
    bind("/proc", f"{root}/proc", read_only=False, recursive=True)
    bind("/sys", f"{root}/sys", read_only=True)
    bind(spec["image_bin"], f"{root}/opt/image/bin", read_only=True)
    for name, source in spec["etc_files"].items():
        bind(source, f"{root}/etc/{name}", read_only=True)
    for volume in spec["mounts"]:
        bind(volume["source"], root + volume["target"], read_only=volume["read_only"])
    if spec["read_only_root"]:
        mount("-o", "remount,ro", root)
    os.chroot(root)
    os.chdir("/")
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as error:  # noqa: BLE001 - a runtime's start error, reported like one
        print(f"podinit: cannot start the container: {error}", file=sys.stderr)
        sys.exit(128)
