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
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from registry_push import (  # noqa: E402
    Registry, RegistryError, canonical_json, digest_of, log)

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


def check_manifest(reg, repo, tag, digest):
    """GET a manifest by tag (with an OCI Accept header) and compare digests."""
    status, headers, body = reg.request(
        "GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT})
    if status != 200 or digest_of(body) != digest:
        raise RegistryError(f"GET manifest {repo}:{tag}: HTTP {status}, "
                            f"body {digest_of(body)}, expected {digest}")
    if headers.get("Docker-Content-Digest") != digest:
        raise RegistryError(f"GET manifest {repo}:{tag}: Docker-Content-Digest "
                            f"{headers.get('Docker-Content-Digest')}, expected {digest}")


def upload_blob(reg, repo, data):
    """Upload a blob unless the repository already has it; return its digest."""
    digest = digest_of(data)
    reg.push_blob(repo, digest, data)
    return digest


def image_config(layer_digest):
    """A minimal OCI image config for a single-layer image (layers are uncompressed
    tar media type, so the diff_id is the layer digest)."""
    return canonical_json({
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
    return canonical_json(doc)


def tag_name(i, width):
    return f"t{i:0{width}d}"


def push_many(reg, repo, count, config, layer, threads):
    """Push `count` distinct manifests (differing by an annotation) to `repo`, tags
    t000..; return the list of (tag, digest) in tag order."""
    cfg_digest = upload_blob(reg, repo, config)
    layer_digest = upload_blob(reg, repo, layer)
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
        futures = {pool.submit(reg.put_manifest, repo, tag, OCI_MANIFEST, raw): tag
                   for tag, raw in jobs}
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
    big_layer_digest = digest_of(big_layer)
    cfg = image_config(big_layer_digest)
    cfg_digest = upload_blob(reg, "bench/blob", cfg)
    upload_blob(reg, "bench/blob", big_layer)
    blob_manifest = manifest(cfg, cfg_digest, big_layer, big_layer_digest)
    blob_manifest_digest = reg.put_manifest("bench/blob", "1", OCI_MANIFEST, blob_manifest)
    log(f"bench/blob:1 pushed, layer {big_layer_digest} ({args.blob_size} bytes)")

    # bench/small and bench/big share one tiny config + layer.
    tiny_layer = rng.randbytes(512)
    tiny_cfg = image_config(digest_of(tiny_layer))
    small = push_many(reg, "bench/small", args.small_tags, tiny_cfg, tiny_layer, args.threads)
    big = push_many(reg, "bench/big", args.big_tags, tiny_cfg, tiny_layer, args.threads)

    # The tags the benchmark will request: one in the middle of each repository.
    small_tag, small_digest = small[len(small) // 2]
    big_tag, big_digest = big[len(big) // 2]
    check_manifest(reg, "bench/blob", "1", blob_manifest_digest)
    check_manifest(reg, "bench/small", small_tag, small_digest)
    check_manifest(reg, "bench/big", big_tag, big_digest)

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
