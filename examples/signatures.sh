#!/usr/bin/env bash
# Mirror only what a trusted key signed, on a fresh Debian machine (offline apart from
# package mirrors). Upstream holds two images; one is signed the way `cosign sign --key`
# signs (done here with openssl and curl, since cosign is not packaged and by default
# uploads to a public transparency log). fetch --verify-key stores the signed one with its
# signature and refuses the other; verify re-checks the store offline; and a fetch through
# `serve` verifies against the mirror.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl openssl=openssl jq=jq
start_registry upstream
src=127.0.0.1:$port
for name in signed unsigned; do
    skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$src/demo/$name:1.0"
done

echo "== a key pair (cosign generate-key-pair writes the same kind: ECDSA P-256)"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/cosign.key"
openssl pkey -in "$work/cosign.key" -pubout -out "$work/cosign.pub"

# push_blob REPO FILE: upload FILE, print its digest.
push_blob() {
    local digest location
    digest="sha256:$(sha256sum "$2" | cut -d' ' -f1)"
    location=$(curl -fsS -o /dev/null -D - -X POST "http://$src/v2/$1/blobs/uploads/" |
        tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
    case $location in http*) ;; *) location="http://$src$location" ;; esac
    curl -fsS -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$2" \
        "$location&digest=$digest"
    echo "$digest"
}

echo "== sign demo/signed:1.0 as cosign does: a payload naming the digest, signed, under sha256-<hex>.sig"
accept=application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json
digest=$(curl -fsS -o /dev/null -D - -H "Accept: $accept" "http://$src/v2/demo/signed/manifests/1.0" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
printf '{"critical":{"identity":{"docker-reference":"%s/demo/signed"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
    "$src" "$digest" >"$work/payload.json"
signature=$(openssl dgst -sha256 -sign "$work/cosign.key" "$work/payload.json" | base64 -w0)
payload=$(push_blob demo/signed "$work/payload.json")
printf '{}' >"$work/config.json"
config=$(push_blob demo/signed "$work/config.json")
jq -cn --arg config "$config" --arg payload "$payload" --arg signature "$signature" \
    --argjson size "$(stat -c %s "$work/payload.json")" '{
        schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: 2},
        layers: [{mediaType: "application/vnd.dev.cosign.simplesigning.v1+json", digest: $payload,
                  size: $size, annotations: {"dev.cosignproject.cosign/signature": $signature}}]
    }' >"$work/signature.json"
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$work/signature.json" "http://$src/v2/demo/signed/manifests/${digest/:/-}.sig"

echo "== fetch with the policy: the signed image is stored with its signature, the other refused"
if "$bin" fetch --quiet --root "$work/mirror" --tls-verify=false --verify-key "$work/cosign.pub" \
    "$src/demo/signed:1.0" "$src/demo/unsigned:1.0" 2>"$work/fetch.err"; then
    echo "the unsigned image was not refused" >&2
    exit 1
fi
cat "$work/fetch.err"
grep -q 'demo/unsigned:1.0: .*refused by the signature policy' "$work/fetch.err"
"$bin" ls --root "$work/mirror"

echo "== verify re-checks the store's signatures, offline"
"$bin" verify --root "$work/mirror" --verify-key "$work/cosign.pub"

echo "== clients verify against the mirror: a fetch through serve, with the same key"
serve_port=$(free_port)
"$bin" serve --root "$work/mirror" --listen "127.0.0.1:$serve_port" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$serve_port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
"$bin" fetch --quiet --root "$work/again" --tls-verify=false --verify-key "$work/cosign.pub" \
    "127.0.0.1:$serve_port/demo/signed:1.0"
echo "ok: only the signed image was mirrored, and its signature came with it"
