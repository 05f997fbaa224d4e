#!/usr/bin/env bash
# Push and copy on a fresh Debian machine, offline apart from package mirrors: start two
# throwaway docker-registries on loopback (a source and a target), push the bundled image
# (examples/hello, linux/amd64 + linux/arm64) to the source, fetch it into a store, push
# the store to the target under a prefix, copy the image from the source to the target
# under another name and tag, and check that every digest is the source's.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl

start_registry source
source_port=$port
start_registry target
target_port=$port
src=127.0.0.1:$source_port
dst=127.0.0.1:$target_port

echo "== pushing examples/hello to the source registry $src"
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$src/demo/hello:1.0"
"$bin" fetch --root "$work/images" --tls-verify=false "$src/demo/hello:1.0"

echo "== push: the store to $dst/mirror"
"$bin" push --root "$work/images" --to "$dst/mirror" --dest-tls-verify=false

echo "== push again (unchanged: one HEAD per tag, nothing sent)"
seen=$(wc -l <"$work/target.log")
"$bin" push --root "$work/images" --to "$dst/mirror" --dest-tls-verify=false
requests() { tail -n +"$((seen + 1))" "$work/target.log" | grep -Eo '"[A-Z]+ /v2/[^ ]+' || true; }
for _ in $(seq 50); do [ -n "$(requests)" ] && break; sleep 0.1; done
echo "target saw: $(requests | tr '\n' ' ')"
[ "$(requests)" = "\"HEAD /v2/mirror/demo/hello/manifests/1.0" ] || { echo "error: expected exactly one HEAD" >&2; exit 1; }

echo "== copy: $src/demo/hello:1.0 to $dst/copies/hello:stable, no store"
"$bin" copy "$src/demo/hello:1.0" --to "$dst/copies/hello:stable" \
    --tls-verify=false --dest-tls-verify=false

digest() { skopeo inspect --raw --tls-verify=false "docker://$1" | sha256sum | cut -d' ' -f1; }
want=$(digest "$src/demo/hello:1.0")
for ref in "$dst/mirror/demo/hello:1.0" "$dst/copies/hello:stable"; do
    got=$(digest "$ref")
    echo "$ref sha256:$got"
    [ "$got" = "$want" ] || { echo "error: $ref has another digest than the source (sha256:$want)" >&2; exit 1; }
done
echo "ok: pushed and copied byte for byte (sha256:$want)"
