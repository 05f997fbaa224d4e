#!/usr/bin/env bash
# The sync service on a fresh Debian machine, offline apart from package mirrors: start two
# throwaway docker-registries on loopback (an upstream and a target), push the bundled
# image (examples/hello) to the upstream, run `static-registry sync` with its control API,
# watch its first round fill the store and the target, submit a copy job in the old
# distribution service's format, read the metrics, and stop it with SIGTERM.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl jq=jq

start_registry upstream
up=127.0.0.1:$port
start_registry target
dst=127.0.0.1:$port

echo "== pushing examples/hello to the upstream $up"
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$up/demo/hello:1.0"

cat >"$work/mirror.yaml" <<YAML
interval: 1h
registries:
  "$up": {tls-verify: false, name: upstream}
images:
  - source: $up/demo/hello
    all-tags: true
to:
  - store
  - registry: $dst/mirror
    tls-verify: false
YAML
openssl rand -hex 32 >"$work/token" 2>/dev/null || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
api=127.0.0.1:$(free_port)
echo "== starting the service, API on $api"
"$bin" sync --config "$work/mirror.yaml" --root "$work/images" --listen "$api" \
    --token-file "$work/token" 2>"$work/sync.log" &
sync_pid=$!
pids+=($sync_pid)
auth=(-H "Authorization: Bearer $(cat "$work/token")")
for _ in $(seq 100); do curl -fsS "http://$api/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

# wait_for PATH JQ-FILTER: poll the API until the filter holds (30 s at most).
wait_for() {
    for _ in $(seq 300); do
        curl -fsS "${auth[@]}" "http://$api$1" | jq -e "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "error: $1 never satisfied $2" >&2; cat "$work/sync.log" >&2; exit 1
}
wait_for /v1/sources/upstream '.totals.rounds >= 1'
curl -fsS "${auth[@]}" "http://$api/v1/sources/upstream" | jq '{name, state, schedule, next_run, last_run}'

echo "== a copy job in the old distribution service's format"
job=$(curl -fsS "${auth[@]}" -H 'Content-Type: application/json' "http://$api/api/distribute/image" -d @- <<JSON | jq -r .id
{"source": {"endpoint": "http://$up", "image": "demo/hello", "ref": "1.0"},
 "targets": [{"endpoint": "http://$dst/jobs", "verify_tls": false, "overwrite": true}]}
JSON
)
wait_for "/api/distribute/image/$job" '.value == "FINISHED"'
curl -fsS "${auth[@]}" "http://$api/api/distribute/image/$job" | jq '{value, finished_endpoints}'

echo "== metrics"
curl -fsS "${auth[@]}" "http://$api/metrics" | grep -E '^static_registry_sync_(rounds_total|images_copied_total)'

echo "== SIGTERM"
kill -TERM "$sync_pid"
rc=0; wait "$sync_pid" || rc=$?
[ "$rc" -eq 0 ] || { echo "error: the service exited $rc" >&2; cat "$work/sync.log" >&2; exit 1; }

digest() { skopeo inspect --raw --tls-verify=false "$1" | sha256sum | cut -d' ' -f1; }
want=$(digest "docker://$up/demo/hello:1.0")
for ref in "docker://$dst/mirror/demo/hello:1.0" "docker://$dst/jobs/demo/hello:1.0"; do
    got=$(digest "$ref")
    echo "$ref sha256:$got"
    [ "$got" = "$want" ] || { echo "error: $ref has another digest than the upstream (sha256:$want)" >&2; exit 1; }
done
"$bin" verify --root "$work/images" >/dev/null
echo "ok: the service mirrored, ran a copy job and stopped cleanly (sha256:$want)"
