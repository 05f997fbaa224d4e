#!/usr/bin/env bash
# Across an air gap, on a fresh Debian machine (offline apart from package mirrors): the
# connected side fetches the bundled image (examples/hello) into a store and exports a
# bundle; the air-gapped side imports it. Then upstream gets a new tag, and the connected
# side exports a delta --since the state file the air-gapped store left (carried back
# across the gap: a small file), which holds only what that store lacks; the air-gapped
# side imports it. A delta without its base is refused.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl
start_registry upstream
src=127.0.0.1:$port
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$src/demo/hello:1.0"

echo "== connected side: fetch, export a full bundle"
"$bin" fetch --quiet --root "$work/connected" --tls-verify=false "$src/demo/hello:1.0"
mkdir "$work/disk"
"$bin" export --quiet --root "$work/connected" -o "$work/disk/mirror-1.tar" 2>&1
ls -l "$work/disk"
# Any OCI tool reads a (plain .tar) bundle: it is an image layout.
skopeo inspect --raw "oci-archive:$work/disk/mirror-1.tar:demo/hello:1.0" | head -c 120; echo

echo "== air-gapped side: import"
"$bin" import --quiet --root "$work/airgap" "$work/disk/mirror-1.tar" 2>&1
"$bin" ls --root "$work/airgap"

echo "== upstream has a new tag (the image as a Docker v2 manifest: a new manifest, no new layer)"
skopeo copy --format v2s2 --src-tls-verify=false --dest-tls-verify=false \
    "docker://$src/demo/hello:1.0" "docker://$src/demo/hello:1.1"
"$bin" fetch --quiet --root "$work/connected" --tls-verify=false "$src/demo/hello:1.1"
# The air-gapped store's state came back across the gap with the last disk.
cp "$work/airgap/.bundle-state.json" "$work/disk/airgap-state.json"
"$bin" export --quiet --root "$work/connected" --since "$work/disk/airgap-state.json" \
    -o "$work/disk/mirror-2.tar.zst" 2>&1
ls -l "$work/disk"

echo "== a delta alone, into an empty store: refused, nothing imported"
if "$bin" import --quiet --root "$work/empty" "$work/disk/mirror-2.tar.zst"; then
    echo "the delta was imported without its base" >&2
    exit 1
fi

echo "== air-gapped side: import the delta"
"$bin" import --quiet --root "$work/airgap" "$work/disk/mirror-2.tar.zst" 2>&1
"$bin" ls --root "$work/airgap"
"$bin" verify --root "$work/airgap"
[ "$("$bin" ls --root "$work/airgap" --json)" = "$("$bin" ls --root "$work/connected" --json)" ]
echo "ok: a full bundle and a delta made the air-gapped store equal to the connected one"
