#!/usr/bin/env python3
"""Push the serving benchmark's corpus into a registry over the distribution HTTP API.

Three repositories, all OCI image manifests:

  bench/blob   tag "1": one image whose only layer is 1 MiB of seeded pseudo-random bytes
  bench/small  --small-tags tags (default 10), each on its own manifest
  bench/big    --big-tags tags (default 10000), each on its own manifest

The manifests of bench/small and bench/big share one tiny config and one tiny layer and
differ only by an annotation, so the corpus stays small while every tag has a distinct
manifest digest. Blobs are pushed as monolithic uploads (POST, then PUT <Location> with
?digest=), manifests with PUT and the OCI media type, manifests on a pool of threads.

Outputs:
  --refs FILE   every pushed reference, "host:port/repo:tag" one per line
  --env FILE    shell-sourceable KEY=value lines the benchmark needs (digests, tags)

Only the standard library is used. Progress and errors go to stderr.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
# distribution 2.8 answers 404 for an OCI manifest unless the client accepts OCI types.
ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


def log(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc):
    """Serialise a JSON document deterministically (the digest is over these bytes)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class Registry:
    """A tiny registry client: one keep-alive HTTP connection per thread."""

    def __init__(self, host, timeout):
        self.host = host
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, timeout=self.timeout)
            self.local.conn = conn
        return conn

    def request(self, method, path, body=None, headers=None):
        """Send one request; return (status, headers, body). Reconnects once if the
        kept-alive connection was closed under us."""
        for attempt in (1, 2):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.headers, data
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def push_blob(self, repo, data):
        """Upload a blob unless the repository already has it; return its digest."""
        digest = sha256(data)
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if status == 200:
            return digest
        status, headers, body = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        if status != 202:
            raise RuntimeError(f"POST upload {repo}: HTTP {status}: {body[:200]!r}")
        # Location may be absolute or relative; keep only path and query.
        loc = urllib.parse.urlsplit(headers["Location"])
        sep = "&" if loc.query else "?"
        target = f"{loc.path}?{loc.query}" if loc.query else loc.path
        target += f"{sep}digest={urllib.parse.quote(digest)}"
        status, _, body = self.request("PUT", target, body=data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
        })
        if status != 201:
            raise RuntimeError(f"PUT blob {repo} {digest}: HTTP {status}: {body[:200]!r}")
        return digest

    def push_manifest(self, repo, tag, raw):
        """PUT a manifest under a tag; check the registry's digest matches ours."""
        digest = sha256(raw)
        status, headers, body = self.request(
            "PUT", f"/v2/{repo}/manifests/{tag}", body=raw,
            headers={"Content-Type": OCI_MANIFEST, "Content-Length": str(len(raw))})
        if status != 201:
            raise RuntimeError(f"PUT manifest {repo}:{tag}: HTTP {status}: {body[:200]!r}")
        got = headers.get("Docker-Content-Digest")
        if got != digest:
            raise RuntimeError(f"PUT manifest {repo}:{tag}: digest {got}, expected {digest}")
        return digest

    def check_manifest(self, repo, tag, digest):
        """GET a manifest by tag (with an OCI Accept header) and compare digests."""
        status, headers, body = self.request(
            "GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
        if status != 200 or sha256(body) != digest:
            raise RuntimeError(f"GET manifest {repo}:{tag}: HTTP {status}, "
                               f"body {sha256(body)}, expected {digest}")
        if headers.get("Docker-Content-Digest") != digest:
            raise RuntimeError(f"GET manifest {repo}:{tag}: Docker-Content-Digest "
                               f"{headers.get('Docker-Content-Digest')}, expected {digest}")


def image_config(layer_digest):
    """A minimal OCI image config for a single-layer image (layers are uncompressed
    tar media type, so the diff_id is the layer digest)."""
    return canonical({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })


def manifest(config, config_digest, layer, layer_digest, annotations=None):
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    if annotations:
        doc["annotations"] = annotations
    return canonical(doc)


def tag_name(i, width):
    return f"t{i:0{width}d}"


def push_many(reg, repo, count, config, layer, threads):
    """Push `count` distinct manifests (differing by an annotation) to `repo`, tags
    t000..; return the list of (tag, digest) in tag order."""
    cfg_digest = reg.push_blob(repo, config)
    layer_digest = reg.push_blob(repo, layer)
    width = max(len(str(count - 1)), 1)
    jobs = []
    for i in range(count):
        tag = tag_name(i, width)
        raw = manifest(config, cfg_digest, layer, layer_digest,
                       {"org.example.bench.index": str(i)})
        jobs.append((tag, raw))

    started = time.monotonic()
    done = 0
    results = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(reg.push_manifest, repo, tag, raw): tag for tag, raw in jobs}
        for fut in concurrent.futures.as_completed(futures):
            results[futures[fut]] = fut.result()  # re-raises the first failure
            done += 1
            if done % 2000 == 0 or done == count:
                log(f"{repo}: {done}/{count} manifests "
                    f"({done / max(time.monotonic() - started, 1e-9):.0f}/s)")
    return [(tag, results[tag]) for tag, _ in jobs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", required=True, help="host:port of the registry (plain HTTP)")
    ap.add_argument("--refs", required=True, help="file to write references to")
    ap.add_argument("--env", required=True, help="file to write KEY=value results to")
    ap.add_argument("--small-tags", type=int, default=10)
    ap.add_argument("--big-tags", type=int, default=10000)
    ap.add_argument("--blob-size", type=int, default=1 << 20)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    args = ap.parse_args()
    if args.small_tags < 1 or args.big_tags < 1:
        ap.error("tag counts must be at least 1")

    reg = Registry(args.registry, args.timeout)
    rng = random.Random(args.seed)
    started = time.monotonic()

    # bench/blob:1 — one image with a large pseudo-random layer.
    big_layer = rng.randbytes(args.blob_size)
    big_layer_digest = sha256(big_layer)
    cfg = image_config(big_layer_digest)
    cfg_digest = reg.push_blob("bench/blob", cfg)
    reg.push_blob("bench/blob", big_layer)
    blob_manifest = manifest(cfg, cfg_digest, big_layer, big_layer_digest)
    blob_manifest_digest = reg.push_manifest("bench/blob", "1", blob_manifest)
    log(f"bench/blob:1 pushed, layer {big_layer_digest} ({args.blob_size} bytes)")

    # bench/small and bench/big share one tiny config + layer.
    tiny_layer = rng.randbytes(512)
    tiny_cfg = image_config(sha256(tiny_layer))
    small = push_many(reg, "bench/small", args.small_tags, tiny_cfg, tiny_layer, args.threads)
    big = push_many(reg, "bench/big", args.big_tags, tiny_cfg, tiny_layer, args.threads)

    # The tags the benchmark will request: one in the middle of each repository.
    small_tag, small_digest = small[len(small) // 2]
    big_tag, big_digest = big[len(big) // 2]
    reg.check_manifest("bench/blob", "1", blob_manifest_digest)
    reg.check_manifest("bench/small", small_tag, small_digest)
    reg.check_manifest("bench/big", big_tag, big_digest)

    with open(args.refs, "w") as f:
        f.write(f"{args.registry}/bench/blob:1\n")
        for repo, tags in (("bench/small", small), ("bench/big", big)):
            for tag, _ in tags:
                f.write(f"{args.registry}/{repo}:{tag}\n")
    with open(args.env, "w") as f:
        f.write(f"BLOB_DIGEST={big_layer_digest}\n")
        f.write(f"BLOB_SIZE={args.blob_size}\n")
        f.write(f"SMALL_TAG={small_tag}\nSMALL_DIGEST={small_digest}\n")
        f.write(f"BIG_TAG={big_tag}\nBIG_DIGEST={big_digest}\n")
        f.write(f"REF_COUNT={1 + len(small) + len(big)}\n")
    log(f"pushed {1 + len(small) + len(big)} tags in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # one clear line instead of a thread-pool traceback
        print(f"corpus: error: {exc}", file=sys.stderr)
        sys.exit(1)
