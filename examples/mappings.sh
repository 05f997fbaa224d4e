#!/usr/bin/env bash
# Mappings on a fresh Debian machine, offline apart from package mirrors: a store holding
# demo/hello, and an upstream docker-registry holding the same image. One nginx serves
#   lab/hello     the stored demo/hello under another name (no copy),
#   live/hello    the upstream's demo/hello by redirect (clients go there themselves),
#   cached/hello  the upstream's demo/hello through nginx's cache (proxy mode),
#   hello         for Host: hello.localhost, a virtual host mapping / onto demo.
# Then the upstream is stopped and cached/hello still pulls. collage's config.json with
# the same mappings is rendered and checked by nginx -t too.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl nginx=nginx

start_registry upstream
up=127.0.0.1:$port
upstream_pid=${pids[-1]}
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$up/demo/hello:1.0"
"$bin" fetch --root "$work/images" --tls-verify=false "$up/demo/hello:1.0"

echo "== collage's config.json, unchanged, renders a config nginx accepts"
cat >"$work/config.json" <<JSON
{
  "mappings": { "lab": "demo", "live": "http://$up/demo" },
  "vhosts": { "hello.localhost": { "mappings": { "/": "demo" } } }
}
JSON
"$bin" gen-conf --root "$work/images" --mappings "$work/config.json" --listen 127.0.0.1:1 \
    >"$work/collage.conf"
printf 'events {}\nhttp { include %s; }\n' "$work/collage.conf" >"$work/check.conf"
nginx -t -q -p "$work" -c "$work/check.conf"

echo "== our YAML: the same, plus a proxied mount"
cat >"$work/mirror.yaml" <<YAML
serve:
  mappings:
    lab: demo                          # a stored namespace: lab/hello is demo/hello
    live: http://$up/demo              # an upstream, answered by redirect (the default)
    cached:                            # the same upstream, fetched and cached by nginx
      target: http://$up/demo
      mode: proxy
  vhosts:
    hello.localhost:
      mappings:
        /: demo                        # every name: hello is demo/hello
YAML
nginx_port=$(free_port)
"$bin" gen-conf --root "$work/images" --mappings "$work/mirror.yaml" \
    --listen "127.0.0.1:$nginx_port" --proxy-cache "$work/cache" >"$work/registry.conf"
start_nginx "$work/registry.conf"
reg=127.0.0.1:$nginx_port

digest() { skopeo inspect --raw --tls-verify=false "docker://$1" | sha256sum | cut -d' ' -f1; }
want=$(digest "$up/demo/hello:1.0")
for name in lab/hello live/hello cached/hello; do
    got=$(digest "$reg/$name:1.0")
    echo "$reg/$name:1.0 sha256:$got"
    [ "$got" = "$want" ] || { echo "error: $name is not the upstream's image" >&2; exit 1; }
done
curl -fsS -o /dev/null -w 'live/hello answers %{http_code} -> %{redirect_url}\n' \
    "http://$reg/v2/live/hello/manifests/1.0"
curl -fsS -H 'Host: hello.localhost' "http://$reg/v2/hello/tags/list"; echo
skopeo copy --all --src-tls-verify=false "docker://$reg/cached/hello:1.0" "oci:$work/first:1.0"

echo "== the upstream stops; what nginx cached is still served"
kill "$upstream_pid"
wait "$upstream_pid" 2>/dev/null || true
skopeo copy --all --src-tls-verify=false "docker://$reg/cached/hello:1.0" "oci:$work/again:1.0"
echo "ok: stored, redirected, proxied and virtual-host names all served sha256:$want"
