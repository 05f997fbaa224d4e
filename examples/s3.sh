#!/usr/bin/env bash
# Publish a store to S3-compatible object storage and serve it with a stateless nginx
# front, on a fresh Debian machine (offline apart from package mirrors). The bucket is a
# single-node Ceph RGW on loopback (one mon, one in-memory OSD, radosgw; booted by
# examples/lib-ceph.sh); it gets the anonymous-read policy the front relies on. publish
# uploads the store (a second run uploads nothing), gen-conf --s3-origin writes a front
# that has no store, only a cache, and skopeo pulls the image back through it.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl jq=jq nginx=nginx \
    ceph-mon=ceph-mon ceph-osd=ceph-osd radosgw=radosgw   # these bring ceph and radosgw-admin

# shellcheck source=examples/lib-ceph.sh
. examples/lib-ceph.sh
trap 'stop_ceph; cleanup' EXIT

start_registry upstream
up=127.0.0.1:$port
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$up/demo/hello:1.0"
"$bin" fetch --quiet --root "$work/images" --tls-verify=false "$up/demo/hello:1.0"

echo "== a single-node Ceph RGW on loopback"
start_ceph "$work/ceph"

echo "== bucket mirror, readable by anyone (objects only: listing and writes stay denied)"
s3_public_bucket mirror
s3_signed "$s3/mirror?policy=" | jq .

echo "== publish the store to s3://mirror/eu, then again: nothing left to upload"
"$bin" publish --root "$work/images" s3://mirror/eu --endpoint-url "$s3" --json | jq .
again=$("$bin" publish --root "$work/images" s3://mirror/eu --endpoint-url "$s3" --json)
jq -e '.uploaded == 0' <<<"$again" >/dev/null || { echo "error: uploaded again: $again" >&2; exit 1; }

echo "== a front with no store: nginx reads the bucket anonymously, through its cache"
frontport=$(free_port)
"$bin" gen-conf --s3-origin "$s3/mirror/eu" --listen "127.0.0.1:$frontport" \
    --proxy-cache "$work/cache" >"$work/front.conf"
start_nginx "$work/front.conf"   # nginx creates the cache dir, owned by its workers' user
front=127.0.0.1:$frontport

# --all: 1.0 is an index (two platforms); without it skopeo keeps only this machine's image.
skopeo copy --all --src-tls-verify=false "docker://$front/demo/hello:1.0" "oci:$work/pulled:1.0"
want=$("$bin" ls --root "$work/images" --json |
    jq -r '.[] | select(.name == "demo/hello") | .tags[] | select(.tag == "1.0") | .digest')
got=$(jq -r '.manifests[0].digest' "$work/pulled/index.json")
echo "stored $want, pulled $got"
[ "$got" = "$want" ] || { echo "error: the front served another manifest" >&2; exit 1; }
head=$(curl -fsSI -H 'Accept: application/vnd.oci.image.index.v1+json' \
    "http://$front/v2/demo/hello/manifests/1.0" | tr -d '\r')
echo "$head"
grep -qix "docker-content-digest: $want" <<<"$head" ||
    { echo "error: no Docker-Content-Digest: $want" >&2; exit 1; }
echo "ok: the store was published to the bucket and pulled back through a front with no store"
