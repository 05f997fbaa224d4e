#!/usr/bin/env bash
# End-to-end quick start on a fresh Debian machine, offline apart from package mirrors:
# start a throwaway docker-registry on loopback, push the bundled image (examples/hello,
# an OCI layout with linux/amd64 and linux/arm64), fetch it into ./images, generate the
# nginx configuration, serve ./images with stock nginx, and pull the image back through
# it with skopeo.
#
# ROOT=DIR stores elsewhere than ./images; SR_BIN=PATH uses that binary instead of
# building one (the test suite runs this script that way).
set -euo pipefail
cd "$(dirname "$0")/.."
root=${ROOT:-images}

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo nginx=nginx curl=curl
start_registry registry

echo "== pushing examples/hello to the local registry 127.0.0.1:$port"
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 \
    "docker://127.0.0.1:$port/demo/hello:1.0"

# Run as root, nginx runs its workers as www-data (as Debian's package does), which
# must be able to traverse every directory down to the store; a checkout under /root
# is not (mode 0700): then serve from a directory that is.
if [ "$(id -u)" -eq 0 ]; then
    d=$(realpath -m "$root")
    while [ "$d" != / ]; do
        if [ -e "$d" ] && ! (( 0$(stat -c %a "$d") & 1 )); then
            if [ -n "${ROOT:-}" ]; then
                echo "error: nginx's workers (www-data) cannot traverse $d, above ROOT=$ROOT: chmod o+x $d, or choose another ROOT" >&2
                exit 1
            fi
            echo "note: www-data cannot traverse $d; storing in $work/images instead (ROOT=DIR picks another place)"
            root=$work/images
            break
        fi
        d=$(dirname "$d")
    done
fi

echo "== fetching into $root"
"$bin" fetch --root "$root" --tls-verify=false "127.0.0.1:$port/demo/hello:1.0"
echo "== fetching again (unchanged: one HEAD request, no blob traffic)"
seen=$(wc -l <"$work/registry.log")
"$bin" fetch --root "$root" --tls-verify=false "127.0.0.1:$port/demo/hello:1.0"
# The registry's access log says what the second fetch sent (its line may land just
# after the reply, so wait for it, briefly).
requests() { tail -n +"$((seen + 1))" "$work/registry.log" | grep -Eo '"(GET|HEAD) /v2/[^ ]+' || true; }
for _ in $(seq 50); do [ -n "$(requests)" ] && break; sleep 0.1; done
echo "registry saw: $(requests | tr '\n' ' ')"
[ "$(requests)" = "\"HEAD /v2/demo/hello/manifests/1.0" ] || { echo "error: expected exactly one HEAD" >&2; exit 1; }

echo "== generating the nginx configuration"
nginx_port=$(free_port)
"$bin" gen-conf --root "$root" --listen "127.0.0.1:$nginx_port" >"$work/registry.conf"
start_nginx "$work/registry.conf"

echo "== pulling it back through nginx with skopeo (127.0.0.1:$nginx_port)"
from_registry=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/demo/hello:1.0" | sha256sum)
from_nginx=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$nginx_port/demo/hello:1.0" | sha256sum)
echo "registry: $from_registry"
echo "nginx:    $from_nginx"
[ "$from_registry" = "$from_nginx" ]
skopeo copy --all --src-tls-verify=false "docker://127.0.0.1:$nginx_port/demo/hello:1.0" "oci:$work/copy:1.0"
curl -fsS "http://127.0.0.1:$nginx_port/v2/demo/hello/tags/list"; echo
echo "ok: nginx serves $root as a registry; the image came back byte for byte"
