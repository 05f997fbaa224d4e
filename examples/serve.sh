#!/usr/bin/env bash
# A registry in one command, without nginx, on a fresh Debian machine (offline apart from
# package mirrors): fetch the bundled image (examples/hello) into a store through a
# throwaway docker-registry, serve the store with `static-registry serve` over HTTPS
# (a self-signed certificate) to the users of an htpasswd file, pull with skopeo, fetch
# a new tag while it runs and pull that too, then stop it with SIGTERM.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl openssl=openssl htpasswd=apache2-utils
start_registry upstream
src=127.0.0.1:$port
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$src/demo/hello:1.0"
"$bin" fetch --root "$work/images" --tls-verify=false "$src/demo/hello:1.0"

echo "== a certificate for localhost, and a user who may pull"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
mkdir "$work/certs.d" && cp "$work/cert.pem" "$work/certs.d/ca.crt"
# bcrypt (-B) at cost 5: a few ms per check (see "Pull auth" in the README).
htpasswd -B -C 5 -b -c "$work/htpasswd" puller 'pull-only secret' 2>/dev/null

serve_port=$(free_port)
reg=localhost:$serve_port
echo "== static-registry serve on https://$reg"
"$bin" serve --root "$work/images" --listen "127.0.0.1:$serve_port" \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" --htpasswd "$work/htpasswd" \
    2>"$work/serve.log" &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 50); do
    curl -s -o /dev/null --cacert "$work/cert.pem" "https://$reg/v2/" && break
    sleep 0.1
done

anonymous=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$work/cert.pem" "https://$reg/v2/")
echo "anonymous: $anonymous"
[ "$anonymous" = 401 ]
pull() {
    skopeo inspect --raw --cert-dir "$work/certs.d" --creds 'puller:pull-only secret' \
        "docker://$reg/demo/hello:$1" | sha256sum
}
[ "$(pull 1.0)" = "$(skopeo inspect --raw --tls-verify=false "docker://$src/demo/hello:1.0" | sha256sum)" ]
echo "pulled demo/hello:1.0 over HTTP/$(curl -s -o /dev/null -w '%{http_version}' \
    --cacert "$work/cert.pem" -u 'puller:pull-only secret' "https://$reg/v2/")"

echo "== a new tag, fetched while serve runs, is served at once"
skopeo copy --all --src-tls-verify=false --dest-tls-verify=false \
    "docker://$src/demo/hello:1.0" "docker://$src/demo/hello:1.1"
"$bin" fetch --root "$work/images" --tls-verify=false "$src/demo/hello:1.1"
pull 1.1 >/dev/null
curl -fsS --cacert "$work/cert.pem" -u 'puller:pull-only secret' "https://$reg/v2/demo/hello/tags/list"; echo

echo "== SIGTERM: requests in flight finish, then it exits"
kill -TERM "$serve_pid"
wait "$serve_pid"
grep -m2 'static_registry::access\|path=/v2/demo/hello/manifests/1.1' "$work/serve.log" || true
echo "ok: serve answered only its user, over HTTPS, and the new tag without a restart"
