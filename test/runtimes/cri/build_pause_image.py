#!/usr/bin/python3
"""Build a minimal "pause" image as an OCI image-layout tarball, offline.

The image holds Debian's static busybox (package busybox-static) as
/bin/busybox and nothing else but empty mount points; its entrypoint sleeps
forever, which is all a pod sandbox ("pause") container has to do. The
result can be imported with

    ctr -a SOCKET -n k8s.io images import --no-unpack=false FILE

and is named by the ``io.containerd.image.name`` annotation of its index.

Standard library only. Everything is deterministic (fixed mtimes, owners),
so the digests only change when busybox does.

Usage: build_pause_image.py OUT.tar [--name localhost/signet-pause:test]
                                     [--busybox /bin/busybox]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile

DEFAULT_NAME = "localhost/signet-pause:test"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MTIME = 946684800  # 2000-01-01, fixed for reproducible digests


def find_busybox() -> str | None:
    for p in ("/bin/busybox", "/usr/bin/busybox"):
        if os.access(p, os.X_OK):
            return p
    return None


def is_static(path: str) -> bool:
    """True when the ELF has no PT_INTERP program header (statically linked)."""
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit only
            return False
        phoff = int.from_bytes(hdr[32:40], "little")
        phentsize = int.from_bytes(hdr[54:56], "little")
        phnum = int.from_bytes(hdr[56:58], "little")
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            if int.from_bytes(f.read(4), "little") == 3:  # PT_INTERP
                return False
    return True


def _tarinfo(name: str, type_, mode: int, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.mode = mode
    ti.size = size
    ti.linkname = linkname
    ti.mtime = MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def layer_tar(busybox: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var"):
            t.addfile(_tarinfo(d + "/", tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        data = open(busybox, "rb").read()
        t.addfile(_tarinfo("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        t.addfile(_tarinfo("bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        t.addfile(_tarinfo("bin/sleep", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):
            b = text.encode()
            t.addfile(_tarinfo(name, tarfile.REGTYPE, 0o644, len(b)), io.BytesIO(b))
    return buf.getvalue()


def _canon(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _desc(media_type: str, blob: bytes, **extra) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
         "size": len(blob)}
    d.update(extra)
    return d


def build(out: str, name: str = DEFAULT_NAME, busybox: str | None = None) -> dict:
    """Write the OCI layout tarball to out; return {"name", "manifest", "config"} digests."""
    busybox = busybox or find_busybox()
    if not busybox:
        raise RuntimeError("no busybox found (apt-get install busybox-static)")
    if not is_static(busybox):
        raise RuntimeError(f"{busybox} is not statically linked (apt-get install busybox-static)")
    layer = layer_tar(busybox)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = _canon({
        "architecture": "amd64",
        "os": "linux",
        "created": "2000-01-01T00:00:00Z",
        "config": {
            "Entrypoint": ["/bin/busybox", "sleep", "2147483647"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "2000-01-01T00:00:00Z",
                     "created_by": "signet build_pause_image.py (busybox-static)"}],
    })
    manifest = _canon({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": _desc(MT_CONFIG, config),
        "layers": [_desc(MT_LAYER, layer)],
    })
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = _canon({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [_desc(MT_MANIFEST, manifest, annotations={
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": tag,
        }, platform={"architecture": "amd64", "os": "linux"})],
    })
    layout = _canon({"imageLayoutVersion": "1.0.0"})

    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        def add(path: str, data: bytes) -> None:
            t.addfile(_tarinfo(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        t.addfile(_tarinfo("blobs/", tarfile.DIRTYPE, 0o755))
        t.addfile(_tarinfo("blobs/sha256/", tarfile.DIRTYPE, 0o755))
        for blob in (layer, config, manifest):
            add("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)
        add("oci-layout", layout)
        add("index.json", index)
    os.replace(tmp, out)
    return {"name": name,
            "manifest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "config": "sha256:" + hashlib.sha256(config).hexdigest()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--name", default=DEFAULT_NAME)
    ap.add_argument("--busybox")
    a = ap.parse_args()
    try:
        info = build(a.out, a.name, a.busybox)
    except (OSError, RuntimeError) as e:
        print(f"build_pause_image: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
