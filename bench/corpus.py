#!/usr/bin/env python3
"""Build a deterministic image corpus in memory and push it to a registry.

Used by bench/run (static-registry fetch vs skopeo sync). Standard library only.

    corpus.py push --registry 127.0.0.1:5000 --preset fixtures --out refs.txt
    corpus.py sync-yaml --refs refs.txt --out sync.yml

`push` writes every pushed reference ("host:port/repo:tag", one per line) to --out,
prints one parseable totals line on stdout

    repos=9 tags=69 manifests=17 blob_bytes=1234567

and logs progress to stderr. `sync-yaml` turns such a refs file into a skopeo sync
YAML source listing exactly the same repositories and tags.

Presets (sizes are approximate; every byte comes from seeded PRNGs, so a preset always
produces the same digests):

  fixtures  the shapes of the integration-test fixtures (tests/it/harness/fixtures.rs):
            Docker v2s2 and OCI manifests sharing a ~100 KiB base layer, a Docker
            manifest list, an OCI index with 3 platforms, a nested name, a zstd layer
            and a repository with 56 tags on 4 manifests.
  default   ~365 MB: a 12 MiB base layer shared by 5 repositories (one of them has
            300 tags on 40 manifests), a 240 MiB layer in its own repository and 3
            repositories with amd64+arm64 OCI indexes of ~10 MiB per platform.
  large     ~1 GB: the default shape with 3x the repositories, a 700 MiB big layer
            and a 24 MiB base (see SCALED).
  tags3000  ~4 MB: one repository, many/tags3000, with 3000 tags on 40 manifests (the
            warm re-fetch of issue #7; bench/run adds it as an extra row).
  tags10000 ~0.6 MB: one repository, many/tags10000, with 10000 tags on 40 manifests
            (a 256 KiB base plus an 8 KiB layer each; bench/sync's idle service with
            10k tags configured).

Layers are real tar archives (gzip, compresslevel=1, of mostly random bytes so that
compression is quick and the sizes are predictable). The `tar+zstd` layer is a valid
zstd frame made of raw (stored) blocks, written by hand since Python has no zstd.
"""

import argparse
import concurrent.futures
import gzip
import io
import json
import os
import random
import struct
import sys
import tarfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from registry_push import Registry, RegistryError, canonical_json, digest_of, log  # noqa: E402

KiB = 1024
MiB = 1024 * KiB

# Media types.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

# Parallel HTTP requests while pushing (and parallel layer builds: zlib releases the GIL).
THREADS = 4


def human(n):
    """Bytes as a short binary-unit string."""
    if n < KiB:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


# --- layer content ----------------------------------------------------------------------

def make_tar(seed, size, name):
    """A tar archive holding ~`size` bytes of seeded random data plus a small text file.

    The data is split into files of at most 16 MiB; headers carry fixed metadata
    (mtime 0, root-owned) so the archive is byte-for-byte reproducible.
    """
    rng = random.Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))

        add(f"{name}/README", f"bench layer {name} (seed {seed})\n".encode())
        remaining, part = size, 0
        while remaining > 0:
            n = min(remaining, 16 * MiB)
            add(f"{name}/data.{part:03d}", rng.randbytes(n))
            remaining -= n
            part += 1
    return buf.getvalue()


def zstd_raw_frame(data):
    """Wrap `data` in a valid zstd frame of raw (uncompressed) blocks.

    Frame: magic, frame header descriptor 0x00 (no checksum, no content size, not single
    segment), window descriptor 0x38 (window 2^17 = 128 KiB), then blocks of at most
    128 KiB, each with a 3-byte little-endian header: last-block bit, type 0 (raw), size.
    """
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    out += bytes([0x00, 0x38])
    block = 128 * KiB
    chunks = [data[i:i + block] for i in range(0, len(data), block)] or [b""]
    for i, chunk in enumerate(chunks):
        last = 1 if i == len(chunks) - 1 else 0
        out += (last | (0 << 1) | (len(chunk) << 3)).to_bytes(3, "little")
        out += chunk
    return bytes(out)


class Layer:
    """A layer blob: compressed bytes plus the diff_id of its uncompressed tar."""

    def __init__(self, name, size, seed, compression="gzip"):
        self.name, self.size, self.seed, self.compression = name, size, seed, compression
        self.blob = self.digest = self.diff_id = None

    def build(self):
        tar = make_tar(self.seed, self.size, self.name)
        self.diff_id = digest_of(tar)
        if self.compression == "zstd":
            self.blob = zstd_raw_frame(tar)
        else:
            self.blob = gzip.compress(tar, compresslevel=1, mtime=0)
        self.digest = digest_of(self.blob)
        return self


# --- corpus model ---------------------------------------------------------------------

class Corpus:
    """Images, indexes and tags, plus the blobs and manifests each repository needs."""

    def __init__(self):
        self.layers = []         # every Layer, built together by build_layers()
        self.blobs = {}          # digest -> bytes (configs and layers)
        self.manifests = {}      # digest -> (media type, bytes)
        self.repo_blobs = {}     # repo -> [digest] in first-use order
        self.repo_children = {}  # repo -> [manifest digest] pushed by digest (index children)
        self.repo_tags = {}      # repo -> [(tag, manifest digest)]

    def layer(self, name, size, seed, compression="gzip"):
        layer = Layer(name, size, seed, compression)
        self.layers.append(layer)
        return layer

    def build_layers(self):
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(Layer.build, self.layers))

    def _need_blob(self, repo, digest, data):
        self.blobs[digest] = data
        wanted = self.repo_blobs.setdefault(repo, [])
        if digest not in wanted:
            wanted.append(digest)

    def _add_manifest(self, media_type, doc):
        data = canonical_json(doc)
        digest = digest_of(data)
        self.manifests[digest] = (media_type, data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def image(self, repo, layers, label, fmt="oci", platform=("linux", "amd64", None)):
        """Add one image manifest (config + layers) to `repo`; return its descriptor."""
        os_, arch, variant = platform
        config = {
            "architecture": arch,
            "os": os_,
            "created": "1970-01-01T00:00:00Z",
            "config": {"Labels": {"bench.image": label}},
            "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in layers]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"bench {l.name}"}
                        for l in layers],
        }
        if variant:
            config["variant"] = variant
        config_bytes = canonical_json(config)
        config_digest = digest_of(config_bytes)
        self._need_blob(repo, config_digest, config_bytes)
        for l in layers:
            self._need_blob(repo, l.digest, l.blob)

        if fmt == "docker":
            media, config_media = DOCKER_MANIFEST, DOCKER_CONFIG
        else:
            media, config_media = OCI_MANIFEST, OCI_CONFIG
        doc = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": config_media, "digest": config_digest,
                       "size": len(config_bytes)},
            "layers": [{"mediaType": self._layer_media(l, fmt), "digest": l.digest,
                        "size": len(l.blob)} for l in layers],
        }
        desc = self._add_manifest(media, doc)
        desc["platform"] = {"architecture": arch, "os": os_}
        if variant:
            desc["platform"]["variant"] = variant
        return desc

    @staticmethod
    def _layer_media(layer, fmt):
        if fmt == "docker":
            return DOCKER_LAYER
        return OCI_LAYER_ZSTD if layer.compression == "zstd" else OCI_LAYER_GZIP

    def tag_image(self, repo, tags, layers, label, fmt="oci", platform=("linux", "amd64", None)):
        desc = self.image(repo, layers, label, fmt, platform)
        for tag in tags:
            self.repo_tags.setdefault(repo, []).append((tag, desc["digest"]))

    def tag_index(self, repo, tags, platforms, label, fmt="oci"):
        """An index (OCI) or manifest list (Docker) over one image per platform.

        `platforms` is a list of ((os, arch, variant), [layers]).
        """
        children = [self.image(repo, layers, f"{label} {p[1]}", fmt, p) for p, layers in platforms]
        pushed = self.repo_children.setdefault(repo, [])
        pushed.extend(c["digest"] for c in children if c["digest"] not in pushed)
        media = DOCKER_LIST if fmt == "docker" else OCI_INDEX
        desc = self._add_manifest(media, {"schemaVersion": 2, "mediaType": media,
                                          "manifests": children})
        for tag in tags:
            self.repo_tags.setdefault(repo, []).append((tag, desc["digest"]))

    def totals(self):
        return {
            "repos": len(self.repo_tags),
            "tags": sum(len(t) for t in self.repo_tags.values()),
            "manifests": len(self.manifests),
            "blob_bytes": sum(len(b) for b in self.blobs.values()),
        }


AMD64 = ("linux", "amd64", None)
ARM64 = ("linux", "arm64", None)
ARM64_V8 = ("linux", "arm64", "v8")
PPC64LE = ("linux", "ppc64le", None)


def build_fixtures():
    """The integration-test fixture shapes (minus the referrers and foreign-layer cases)."""
    c = Corpus()
    base = c.layer("base", 100 * KiB, 1)
    web = c.layer("web", 20 * KiB, 2)
    api = c.layer("api", 300 * KiB, 3)
    amd = c.layer("multi-amd64", 24 * KiB, 4)
    arm = c.layer("multi-arm64", 24 * KiB, 5)
    ppc = c.layer("multi-ppc64le", 24 * KiB, 6)
    nested = c.layer("nested", 4 * KiB, 7)
    zst = c.layer("zstd", 8 * KiB, 8, compression="zstd")
    many = c.layer("many", 4 * KiB, 9)
    c.build_layers()

    c.tag_image("base/alpine", ["3.19", "latest"], [base], "base/alpine", fmt="docker")
    c.tag_image("apps/web", ["v1"], [base, web], "apps/web")
    c.tag_image("apps/api", ["v1"], [base, api], "apps/api")
    c.tag_index("docker/multi", ["v1"], [(AMD64, [amd]), (ARM64, [arm])], "multi", fmt="docker")
    c.tag_index("oci/multi", ["1.0", "latest"],
                [(AMD64, [amd]), (ARM64_V8, [arm]), (PPC64LE, [ppc])], "multi")
    c.tag_image("a/b/c", ["1"], [nested], "a/b/c")
    c.tag_image("oci/zstd", ["1"], [zst], "oci/zstd")
    # 55 numbered tags plus "latest", round-robin over 4 manifests (as in the fixtures).
    names = [f"t{i:03d}" for i in range(55)]
    for k in range(4):
        tags = [t for i, t in enumerate(names) if i % 4 == k] + (["latest"] if k == 0 else [])
        c.tag_image("many/tags", tags, [many], f"many/tags #{k}")
    return c


# Shape parameters of the default and large presets. Sizes in bytes.
#
# The base layer is shared by the `svc` repositories and by many/tags, and a skopeo dir
# destination stores every tag with a full copy of its layers, so base x many_tags is
# what dominates skopeo's time and disk. The plan had a 30 MiB base; it is 12 MiB so
# that `bench/run --preset default --reps 2` stays near 5 minutes on 2 shared cores
# (skopeo writes ~4 GB per sync), and the big layer grew from 200 to 240 MiB to keep
# the corpus at ~350 MB. `large` scales repository counts and the big layer more than
# that product, so each of its skopeo runs stays well inside bench/run's timeout.
SCALED = {
    "default": dict(base=12 * MiB, svc_repos=4, svc_layer=4 * MiB,
                    many_tags=300, many_manifests=40, many_layer=512 * KiB,
                    big_layer=240 * MiB, multi_repos=3, multi_layer=10 * MiB),
    "large": dict(base=24 * MiB, svc_repos=12, svc_layer=4 * MiB,
                  many_tags=300, many_manifests=40, many_layer=512 * KiB,
                  big_layer=700 * MiB, multi_repos=9, multi_layer=10 * MiB),
}


def build_scaled(base, svc_repos, svc_layer, many_tags, many_manifests, many_layer,
                 big_layer, multi_repos, multi_layer):
    """The default/large shape: a base layer shared by svc/app-* and many/tags, one big
    layer in its own repository, and amd64+arm64 OCI indexes in multi/app-*."""
    c = Corpus()
    base_l = c.layer("base", base, 100)
    svc = [c.layer(f"svc-{i}", svc_layer, 1000 + i) for i in range(svc_repos)]
    many = [c.layer(f"many-{i}", many_layer, 2000 + i) for i in range(many_manifests)]
    big = c.layer("big", big_layer, 3000)
    multi = [(c.layer(f"multi-{i}-amd64", multi_layer, 4000 + 2 * i),
              c.layer(f"multi-{i}-arm64", multi_layer, 4001 + 2 * i))
             for i in range(multi_repos)]
    c.build_layers()

    for i, layer in enumerate(svc):
        c.tag_image(f"svc/app-{i}", ["v1", "latest"], [base_l, layer], f"svc/app-{i}")
    # Tags t0000.. spread round-robin over the many/tags manifests.
    for k, layer in enumerate(many):
        tags = [f"t{i:04d}" for i in range(many_tags) if i % many_manifests == k]
        c.tag_image("many/tags", tags, [base_l, layer], f"many/tags #{k}")
    c.tag_image("big/blob", ["1"], [big], "big/blob")
    for i, (amd, arm) in enumerate(multi):
        c.tag_index(f"multi/app-{i}", ["1.0", "latest"], [(AMD64, [amd]), (ARM64, [arm])],
                    f"multi/app-{i}")
    return c


def build_tags3000():
    """One repository with 3000 tags on 40 manifests (a 1 MiB base plus a 64 KiB layer
    each): the shape of issue #7, where a warm re-fetch is one HEAD per tag."""
    c = Corpus()
    base_l = c.layer("base", 1 * MiB, 100)
    layers = [c.layer(f"tags-{i}", 64 * KiB, 5000 + i) for i in range(40)]
    c.build_layers()
    for k, layer in enumerate(layers):
        tags = [f"t{i:04d}" for i in range(3000) if i % len(layers) == k]
        c.tag_image("many/tags3000", tags, [base_l, layer], f"many/tags3000 #{k}")
    return c


def build_tags10000():
    """One repository with 10000 tags on 40 manifests, kept small in bytes (a 256 KiB base
    plus an 8 KiB layer each): what matters is the tag count, as in bench/sync's service
    with 10k tags configured."""
    c = Corpus()
    base_l = c.layer("base", 256 * KiB, 110)
    layers = [c.layer(f"tags10000-{i}", 8 * KiB, 6000 + i) for i in range(40)]
    c.build_layers()
    for k, layer in enumerate(layers):
        tags = [f"t{i:04d}" for i in range(10000) if i % len(layers) == k]
        c.tag_image("many/tags10000", tags, [base_l, layer], f"many/tags10000 #{k}")
    return c


PRESETS = {
    "fixtures": build_fixtures,
    "default": lambda: build_scaled(**SCALED["default"]),
    "large": lambda: build_scaled(**SCALED["large"]),
    "tags3000": build_tags3000,
    "tags10000": build_tags10000,
}


# --- push ---------------------------------------------------------------------------

def push(corpus, registry):
    """Push blobs, then index children by digest, then tags. Each phase runs on a pool."""
    stats = {"uploaded": 0, "mounted": 0, "present": 0}
    lock = threading.Lock()

    def run(fn, items):
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            for f in [pool.submit(fn, *item) for item in items]:
                f.result()  # re-raise the first failure

    # Every distinct blob goes to the first repository that needs it; later repositories
    # mount it from there (distribution stores content once either way).
    first_repo = {}
    for repo, digests in corpus.repo_blobs.items():
        for d in digests:
            first_repo.setdefault(d, repo)

    def ensure_blob(repo, digest):
        source = first_repo[digest] if first_repo[digest] != repo else None
        outcome = registry.push_blob(repo, digest, corpus.blobs[digest], source)
        with lock:
            stats[outcome] += 1

    run(ensure_blob, [(first_repo[d], d) for d in first_repo])
    run(ensure_blob, [(r, d) for r, ds in corpus.repo_blobs.items() for d in ds
                      if first_repo[d] != r])
    log(f"blobs: {stats['uploaded']} uploaded, {stats['mounted']} mounted, "
        f"{stats['present']} already present")

    def put(repo, ref, digest):
        media, data = corpus.manifests[digest]
        registry.put_manifest(repo, ref, media, data)

    run(put, [(r, d, d) for r, ds in corpus.repo_children.items() for d in ds])
    run(put, [(r, t, d) for r, tags in corpus.repo_tags.items() for t, d in tags])


# --- commands -------------------------------------------------------------------------

def cmd_push(args):
    started = time.monotonic()
    log(f"building preset {args.preset}")
    corpus = PRESETS[args.preset]()
    totals = corpus.totals()
    log(f"built in {time.monotonic() - started:.1f}s: {totals['repos']} repos, "
        f"{totals['tags']} tags, {totals['manifests']} distinct manifests, "
        f"{human(totals['blob_bytes'])} distinct blobs")

    pushed = time.monotonic()
    push(corpus, Registry(args.registry))
    log(f"pushed to {args.registry} in {time.monotonic() - pushed:.1f}s")

    with open(args.out, "w") as out:
        for repo, tags in corpus.repo_tags.items():
            for tag, _ in tags:
                out.write(f"{args.registry}/{repo}:{tag}\n")
    print(" ".join(f"{k}={v}" for k, v in totals.items()))


def cmd_sync_yaml(args):
    """refs file -> skopeo sync YAML (`host: {tls-verify: false, images: {repo: [tags]}}`)."""
    registry, images = None, {}
    with open(args.refs) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            host, _, rest = line.partition("/")
            repo, _, tag = rest.rpartition(":")
            if registry not in (None, host):
                sys.exit(f"corpus: refs span several registries ({registry}, {host})")
            registry = host
            images.setdefault(repo, []).append(tag)
    if registry is None:
        sys.exit("corpus: no references in " + args.refs)
    # JSON strings are valid YAML scalars, so quoting with json.dumps keeps tags like
    # "1.0" or "3.19" strings instead of letting YAML read them as numbers.
    lines = [f"{json.dumps(registry)}:", "  tls-verify: false", "  images:"]
    for repo, tags in images.items():
        lines.append(f"    {json.dumps(repo)}:")
        lines.extend(f"      - {json.dumps(t)}" for t in tags)
    with open(args.out, "w") as out:
        out.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("push", help="build the corpus and push it to a registry")
    p.add_argument("--registry", required=True, help="host:port of a plain-HTTP registry")
    p.add_argument("--preset", choices=sorted(PRESETS), default="fixtures")
    p.add_argument("--out", required=True, help="file to write the pushed references to")
    p.set_defaults(func=cmd_push)

    s = sub.add_parser("sync-yaml", help="write a skopeo sync YAML source for a refs file")
    s.add_argument("--refs", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_sync_yaml)

    args = parser.parse_args()
    try:
        args.func(args)
    except (RegistryError, OSError) as e:
        sys.exit(f"corpus: error: {e}")


if __name__ == "__main__":
    main()
