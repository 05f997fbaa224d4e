#!/usr/bin/env bash
# Publish a store to S3-compatible object storage and serve it with a stateless nginx
# front, on a fresh Debian machine (offline apart from package mirrors). The bucket is a
# single-node Ceph RGW on loopback (one mon, one in-memory OSD, radosgw); it gets the
# anonymous-read policy the front relies on. publish uploads the store (a second run
# uploads nothing), gen-conf --s3-origin writes a front that has no store, only a cache,
# and skopeo pulls the image back through it.
#
# SR_BIN=PATH uses that binary instead of building one (the test suite runs this script
# that way).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=examples/lib.sh
. examples/lib.sh
need docker-registry=docker-registry skopeo=skopeo curl=curl jq=jq nginx=nginx \
    ceph-mon=ceph-mon ceph-osd=ceph-osd radosgw=radosgw   # these bring ceph and radosgw-admin

# The Ceph daemons get SIGKILL: SIGTERM takes each ~5 s, and memstore has nothing to flush.
ceph_pids=()
stop_ceph() { kill -9 "${ceph_pids[@]}" 2>/dev/null || true; wait "${ceph_pids[@]}" 2>/dev/null || true; }
trap 'stop_ceph; cleanup' EXIT

start_registry upstream
up=127.0.0.1:$port
skopeo copy --all --dest-tls-verify=false oci:examples/hello:1.0 "docker://$up/demo/hello:1.0"
"$bin" fetch --quiet --root "$work/images" --tls-verify=false "$up/demo/hello:1.0"

echo "== a single-node Ceph RGW on loopback"
c=$work/ceph
mkdir -p "$c"/{log,run,mon,osd/osd.0,crash,rgw}   # Ceph creates none of them itself
monport=$(free_port)
rgwport=$(free_port)
fsid=$(cat /proc/sys/kernel/random/uuid)
# msgr2 only (v1: EPERM "wrong fsid"); crc modes (else radosgw hangs in auth); `public
# addr` only under [osd] (in [global] the mon never forms a quorum); fast paxos (else
# ~14 s to start); one bind attempt, so a taken port fails at once.
cat >"$c/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$monport
ms bind msgr1 = false
ms bind msgr2 = true
ms bind retry count = 1
ms bind retry delay = 0
ms mon client mode = crc
ms client mode = crc
ms cluster mode = crc
ms service mode = crc
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
run dir = $c/run
admin socket = $c/run/\$name.asok
log file = $c/log/\$name.log
pid file = $c/run/\$name.pid
crash dir = $c/crash
keyring = $c/keyring
mon data = $c/mon/\$name
osd data = $c/osd/\$name
osd objectstore = memstore
memstore device bytes = 1073741824
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail crit = 0
paxos propose interval = 0.01
paxos min wait = 0.001
[osd]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
[client]
admin socket = $c/run/\$name.\$pid.asok
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgwport
rgw data = $c/rgw
CONF
unset CEPH_ARGS CEPH_CONF
cfg=(-c "$c/ceph.conf")
fail() {
    echo "error: $1" >&2
    for f in "$c"/log/*; do echo "--- $f" >&2; tail -n 25 "$f" >&2; done
    exit 1
}
# wait_for WHAT COMMAND...: up to 60 s for COMMAND to succeed, while the daemons live.
wait_for() {
    local what=$1 pid; shift
    for _ in $(seq 600); do
        "$@" >/dev/null 2>&1 && return 0
        for pid in "${ceph_pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "a daemon exited"; done
        sleep 0.1
    done
    fail "no $what within 60 s"
}
daemon() { local name=$1; shift; "$@" "${cfg[@]}" -f >"$c/log/$name.out" 2>&1 & ceph_pids+=($!); }

timeout 60 ceph-mon "${cfg[@]}" -i a --mkfs --fsid "$fsid" >"$c/log/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs"
daemon ceph-mon ceph-mon -i a
wait_for "mon leader" grep -q 'mon.a is new leader' "$c/log/mon.a.log"
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
[ "$(timeout 60 ceph "${cfg[@]}" --connect-timeout 20 osd new "$osd_uuid")" = 0 ] || fail "ceph osd new"
timeout 60 ceph-osd "${cfg[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$c/log/osd-mkfs.out" 2>&1 ||
    fail "ceph-osd --mkfs"
daemon ceph-osd ceph-osd -i 0
wait_for "active OSD" grep -q 'state: booting -> active' "$c/log/osd.0.log"
daemon radosgw radosgw -n client.rgw
s3=http://127.0.0.1:$rgwport
wait_for "radosgw answer" curl -fsS --noproxy '*' "$s3/"

# Fixed demo keys: they exist only in this throwaway cluster.
export AWS_ACCESS_KEY_ID=DEMOACCESSKEY0000000 AWS_SECRET_ACCESS_KEY=demo-secret-key AWS_REGION=us-east-1
timeout 60 radosgw-admin "${cfg[@]}" user create --uid=demo --display-name=demo \
    --access-key="$AWS_ACCESS_KEY_ID" --secret-key="$AWS_SECRET_ACCESS_KEY" >/dev/null ||
    fail "radosgw-admin user create"
# curl's own SigV4; RGW refuses a signature without x-amz-content-sha256.
signed() {
    curl -fsS --noproxy '*' --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}
wait_for "signed request accepted" signed "$s3/"

echo "== bucket mirror, readable by anyone (objects only: listing and writes stay denied)"
signed -X PUT "$s3/mirror"
policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::mirror/*"]}]}'
# `policy=`: curl signs the query as written, RGW canonicalises it with the `=`.
signed -X PUT -H 'Content-Type: application/json' --data-binary "$policy" "$s3/mirror?policy="
signed "$s3/mirror?policy=" | jq .

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
