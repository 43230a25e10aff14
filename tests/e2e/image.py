#!/usr/bin/env python3
"""Write a one-layer container image from a directory, as a docker-archive for `ctr import`.

The offline equivalent of `FROM scratch` + `COPY rootfs/ /`: no registry, no builder daemon.
Usage: image.py NAME:TAG ROOTFS OUT.tar [--entrypoint PATH] [--env K=V]...
"""

import argparse
import hashlib
import io
import json
import os
import tarfile


def layer_tar(rootfs: str) -> bytes:
    """The directory as an uncompressed tar with fixed owners and times (reproducible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("rootfs")
    p.add_argument("out")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--env", action="append", default=[])
    a = p.parse_args()
    if ":" not in a.name:
        p.error(f"image name {a.name!r} needs a tag (NAME:TAG)")
    if not os.path.isdir(a.rootfs):
        p.error(f"rootfs {a.rootfs!r} is not a directory")

    layer = layer_tar(a.rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": a.env or ["PATH=/bin:/usr/bin"], "Entrypoint": a.entrypoint or None},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/e2e/image.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.name], "Layers": [layer_name]}]

    with tarfile.open(a.out, "w") as out:
        for name, data in [
            (config_name, config_bytes),
            (layer_name, layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
