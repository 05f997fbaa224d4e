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

need=()
for bin in docker-registry skopeo nginx curl; do command -v "$bin" >/dev/null || need+=("$bin"); done
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        docker-registry skopeo nginx curl ca-certificates >/dev/null
fi

bin=${SR_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked
    bin=target/release/static-registry
fi

work=$(mktemp -d)
chmod 755 "$work"   # nginx's workers, an unprivileged user, read what is served from here
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
nginx_pid=""
cleanup() {
    kill $registry_pid $nginx_pid 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done

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
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" gen-conf --root "$root" --listen "127.0.0.1:$nginx_port" >"$work/registry.conf"
user=""; [ "$(id -u)" -ne 0 ] || user="user www-data;"   # never root: as users run it
cat >"$work/nginx.conf" <<NGINX
$user
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
    access_log $work/nginx-access.log;
    client_body_temp_path $work/client_body;
    proxy_temp_path $work/proxy;
    fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi;
    scgi_temp_path $work/scgi;
    include $work/registry.conf;
}
NGINX
nginx -t -q -p "$work" -c "$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$nginx_port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "== pulling it back through nginx with skopeo (127.0.0.1:$nginx_port)"
from_registry=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$port/demo/hello:1.0" | sha256sum)
from_nginx=$(skopeo inspect --raw --tls-verify=false "docker://127.0.0.1:$nginx_port/demo/hello:1.0" | sha256sum)
echo "registry: $from_registry"
echo "nginx:    $from_nginx"
[ "$from_registry" = "$from_nginx" ]
skopeo copy --all --src-tls-verify=false "docker://127.0.0.1:$nginx_port/demo/hello:1.0" "oci:$work/copy:1.0"
curl -fsS "http://127.0.0.1:$nginx_port/v2/demo/hello/tags/list"; echo
echo "ok: nginx serves $root as a registry; the image came back byte for byte"
