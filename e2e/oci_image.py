#!/usr/bin/env python3
"""Writes a single-layer OCI image archive from files on this host, without Docker
or a registry. Used by e2e/image.sh; `ctr images import` reads the result.

    oci_image.py --name docker.io/library/fanout:e2e --out fanout.tar \
        --entrypoint /usr/local/bin/fanout --user 65532:65532 \
        --file /usr/local/bin/fanout=target/release/fanout --dir /tmp ...

The archive is an OCI image layout (oci-layout, index.json, blobs/sha256/...). The
index names the image with the `io.containerd.image.name` annotation, which is what
containerd's importer uses as the image name. Everything is written with fixed
timestamps and owners, so the same inputs give the same digests.
"""

import argparse
import hashlib
import io
import json
import os
import tarfile


def tar_info(name, mode, kind=tarfile.REGTYPE, size=0):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def layer_tar(files, dirs, texts):
    """An uncompressed layer tar: parent directories first, then the entries."""
    buf = io.BytesIO()
    entries = {}
    for path in dirs:
        entries[path] = ("dir", None)
    for path, src in files:
        entries[path] = ("file", src)
    for path, text in texts:
        entries[path] = ("text", text)
    parents = set()
    for path in entries:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parents.add("/" + "/".join(parts[:i]))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(parents | {p for p, (k, _) in entries.items() if k == "dir"}):
            # /tmp is world-writable with the sticky bit, like on any system.
            mode = 0o1777 if d == "/tmp" else 0o755
            tar.addfile(tar_info(d + "/", mode, tarfile.DIRTYPE))
        for path in sorted(entries):
            kind, value = entries[path]
            if kind == "file":
                with open(value, "rb") as f:
                    data = f.read()
                mode = os.stat(value).st_mode & 0o777
                tar.addfile(tar_info(path, mode, size=len(data)), io.BytesIO(data))
            elif kind == "text":
                data = value.encode()
                tar.addfile(tar_info(path, 0o644, size=len(data)), io.BytesIO(data))
    return buf.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tar_info(f"blobs/sha256/{digest}", 0o644, size=len(data))
    out.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}", len(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="full image name, e.g. docker.io/library/fanout:dev")
    ap.add_argument("--out", required=True)
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--file", action="append", default=[], help="IMAGE_PATH=HOST_PATH")
    ap.add_argument("--dir", action="append", default=[], help="an empty directory in the image")
    ap.add_argument("--text", action="append", default=[], help="IMAGE_PATH=CONTENT")
    args = ap.parse_args()

    files = [tuple(f.split("=", 1)) for f in args.file]
    texts = [tuple(t.split("=", 1)) for t in args.text]
    layer = layer_tar(files, args.dir, texts)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [args.entrypoint],
            "Cmd": args.cmd or None,
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "e2e/oci_image.py"}],
    }
    if config["config"]["Cmd"] is None:
        del config["config"]["Cmd"]
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        out.addfile(tar_info("blobs/", 0o755, tarfile.DIRTYPE))
        out.addfile(tar_info("blobs/sha256/", 0o755, tarfile.DIRTYPE))
        layer_digest, layer_size = blob(out, layer)
        config_digest, config_size = blob(out, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
        manifest_digest, manifest_size = blob(out, json.dumps(manifest, sort_keys=True).encode())
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": manifest_digest,
                    "size": manifest_size,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": args.name,
                        "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
                    },
                }
            ],
        }
        for name, data in (
            ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
            ("index.json", json.dumps(index, sort_keys=True).encode()),
        ):
            out.addfile(tar_info(name, 0o644, size=len(data)), io.BytesIO(data))
    os.replace(tmp, args.out)
    print(manifest_digest)


if __name__ == "__main__":
    main()
