#!/usr/bin/env bash
# End-to-end quick start on a fresh Debian machine, offline apart from package mirrors:
# start a throwaway docker-registry on loopback, push the bundled image (examples/hello,
# an OCI layout with linux/amd64 and linux/arm64), fetch it into ./images, and read it back.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${ROOT:-images}

need=()
for bin in docker-registry skopeo nginx; do command -v "$bin" >/dev/null || need+=("$bin"); done
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        docker-registry skopeo nginx >/dev/null
fi

cargo build --release --locked
bin=target/release/static-registry

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $work/storage
http:
  addr: 127.0.0.1:$port
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== pushing examples/hello to the local registry 127.0.0.1:$port"
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 \
    "docker://127.0.0.1:$port/demo/hello:1.0"

echo "== fetching into ./$root"
"$bin" fetch --root "$root" --tls-verify=false "127.0.0.1:$port/demo/hello:1.0"
echo "== fetching again (unchanged: one HEAD request, no blob traffic)"
"$bin" fetch --root "$root" --tls-verify=false "127.0.0.1:$port/demo/hello:1.0"

echo "== reading it back with skopeo"
skopeo inspect --raw "oci:$root/demo/hello:1.0" | sha256sum
skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/demo/hello:1.0" | sha256sum
skopeo copy --all "oci:$root/demo/hello:1.0" "oci:$work/copy:1.0" >/dev/null
echo "ok: ./$root/demo/hello holds the image byte for byte"
