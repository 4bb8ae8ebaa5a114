"""The kubelet bed's images: docker-archive layout, layer contents, configs and the build cache (no root, no containerd)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import images


def read_archive(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any], bytes]:
    with tarfile.open(path) as archive:

        def member(name: str) -> bytes:
            extracted = archive.extractfile(name)
            assert extracted is not None
            return extracted.read()

        manifest = json.loads(member("manifest.json"))
        (entry,) = manifest
        config = json.loads(member(entry["Config"]))
        (layer_name,) = entry["Layers"]
        return manifest, config, member(layer_name)


def layer_members(layer: bytes, tmp_path: Path) -> dict[str, tarfile.TarInfo]:
    layer_file = tmp_path / "layer.tar"
    layer_file.write_bytes(layer)
    with tarfile.open(layer_file) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 for m in members)
    return {m.name: m for m in members}


def test_archive_layout_and_layer(tmp_path: Path) -> None:
    tree = images._Tree()
    tree.dir("/tmp", 0o1777)
    tree.data("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    tree.dir("/data", 0o775, 100, 1000)
    tree.symlink("/bin/sh", "busybox")
    tree.data("/bin/busybox", b"\x7fELF", 0o755)
    cap = images.NET_BIND_SERVICE_CAP
    tree.copy_file("/app", tree_source(tmp_path), 0o755, (("security.capability", cap),))
    image = images._Image("demo", ("testbed.local/demo:1", "docker.io/library/demo:1"), tree, {"Cmd": ["sh"], "Entrypoint": None})
    dest = tmp_path / "demo.tar"
    images._write_archive(dest, image)

    manifest, config, layer = read_archive(dest)
    assert manifest[0]["RepoTags"] == ["testbed.local/demo:1", "docker.io/library/demo:1"]
    assert config["architecture"] == "amd64"
    assert config["os"] == "linux"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}
    assert config["config"] == {"Cmd": ["sh"], "Entrypoint": None}

    members = layer_members(layer, tmp_path)
    assert set(members) == {"app", "bin", "bin/busybox", "bin/sh", "data", "etc", "etc/passwd", "tmp"}
    assert members["tmp"].isdir()
    assert members["tmp"].mode == 0o1777
    assert (members["data"].uid, members["data"].gid, members["data"].mode) == (100, 1000, 0o775)
    assert members["bin/sh"].issym()
    assert members["bin/sh"].linkname == "busybox"
    assert members["etc"].mode == 0o755
    assert members["app"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == cap


def tree_source(tmp_path: Path) -> Path:
    source = tmp_path / "app-source"
    source.write_bytes(b"#!/bin/sh\nexit 0\n")
    return source


def test_tree_refuses_a_file_where_a_directory_is_needed() -> None:
    tree = images._Tree()
    tree.data("/etc", "x")
    with pytest.raises(ValueError, match="not a directory"):
        tree.data("/etc/passwd", "root")
    with pytest.raises(ValueError, match="bad path"):
        tree.data("/../x", "y")


HOST_TOOLS = ["gcc", "ldd", str(images.BUSYBOX), str(images.CURL), str(images.DIG)]


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in HOST_TOOLS), reason="needs gcc, busybox-static, curl and dig on the host")
def test_build_images_and_cache(tmp_path: Path) -> None:
    consul = tmp_path / "consul"
    consul.write_text('#!/bin/sh\necho "Consul v1.16.1"\n')
    out = tmp_path / "out"
    binaries = images.Binaries(consul=consul)

    pause_tar, consul_tar, toolbox_tar = images.build(binaries, out)
    stamps = {tar: tar.stat().st_mtime_ns for tar in (pause_tar, consul_tar, toolbox_tar)}

    manifest, config, layer = read_archive(pause_tar)
    assert manifest[0]["RepoTags"] == [images.PAUSE_IMAGE]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"].split(":")[0] == "65535"
    assert set(layer_members(layer, tmp_path)) == {"pause"}

    manifest, config, layer = read_archive(consul_tar)
    assert manifest[0]["RepoTags"] == list(images.CONSUL_IMAGES)
    assert config["config"]["Cmd"] == ["consul", "agent", "-dev", "-client", "0.0.0.0"]
    assert config["config"]["Entrypoint"] is None
    assert "User" not in config["config"]
    assert config["config"]["Env"] == [images.PATH_ENV]
    members = layer_members(layer, tmp_path)
    assert members["bin/sh"].linkname == "busybox"
    for applet in ("grep", "sed", "awk", "sleep", "date", "id", "ps", "timeout", "base64"):
        assert members[f"bin/{applet}"].issym(), applet
    assert members["bin/consul"].mode == 0o755
    assert members["usr/bin/curl"].isfile()
    assert members["lib64/ld-linux-x86-64.so.2"].isfile()
    assert members["lib/x86_64-linux-gnu/libc.so.6"].isfile()
    for sub in ("data", "config"):
        data = members[f"consul/{sub}"]
        assert (data.uid, data.gid, data.mode) == (100, 1000, 0o775)
    assert members["tmp"].mode == 0o1777

    manifest, config, layer = read_archive(toolbox_tar)
    assert manifest[0]["RepoTags"] == [images.TOOLBOX_IMAGE]
    assert config["config"]["Cmd"] == ["sleep", "2147483647"]
    members = layer_members(layer, tmp_path)
    assert members["usr/bin/dig"].isfile()
    assert members["bin/nslookup"].issym()
    assert members["bin/consul"].isfile()

    # Unchanged inputs: the same tars, not written again.
    assert images.build(binaries, out) == [pause_tar, consul_tar, toolbox_tar]
    assert {tar: tar.stat().st_mtime_ns for tar in stamps} == stamps

    # A new Consul binary: new consul and toolbox tars, the old ones gone, pause kept.
    consul.write_text('#!/bin/sh\necho "Consul v1.16.2"\n')
    rebuilt = images.build(binaries, out)
    assert rebuilt[0] == pause_tar
    assert rebuilt[0].stat().st_mtime_ns == stamps[pause_tar]
    assert rebuilt[1] != consul_tar
    assert rebuilt[2] != toolbox_tar
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(p.name for p in rebuilt)
