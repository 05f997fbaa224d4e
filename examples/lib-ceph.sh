# shellcheck shell=bash
# A throwaway single-node Ceph RGW on loopback (one mon, one in-memory OSD, radosgw), for
# examples/s3.sh and bench/s3/run (sourced; needs bash, curl, python3 and Debian's
# ceph-mon, ceph-osd and radosgw, which bring ceph and radosgw-admin):
#
#   start_ceph DIR [BYTES]   boot it in DIR (BYTES: the OSD's memory, 1 GiB by default);
#                            sets s3=http://127.0.0.1:PORT, exports AWS_ACCESS_KEY_ID,
#                            AWS_SECRET_ACCESS_KEY and AWS_REGION (a demo user's), and
#                            records the daemons in ceph_pids. Not in a $(...) subshell:
#                            the pids must reach the caller.
#   stop_ceph                kill them (for the caller's EXIT trap)
#   s3_signed CURL-ARGS...   curl with SigV4 as that user
#   s3_public_bucket NAME    create bucket NAME, objects readable by anyone

ceph_pids=()
ceph_cfg=()
ceph_dir=""

# The Ceph daemons get SIGKILL: SIGTERM takes each ~5 s, and memstore has nothing to flush.
stop_ceph() {
    [ ${#ceph_pids[@]} -gt 0 ] || return 0
    kill -9 "${ceph_pids[@]}" 2>/dev/null || true
    wait "${ceph_pids[@]}" 2>/dev/null || true
    ceph_pids=()
}

# ceph_fail MESSAGE: the message and the tail of every daemon's log, then exit 1.
ceph_fail() {
    local f
    echo "error: $1" >&2
    for f in "$ceph_dir"/log/*; do echo "--- $f" >&2; tail -n 25 "$f" >&2; done
    exit 1
}

# ceph_wait_for WHAT COMMAND...: up to 60 s for COMMAND to succeed, while the daemons live.
ceph_wait_for() {
    local what=$1 pid; shift
    for _ in $(seq 600); do
        "$@" >/dev/null 2>&1 && return 0
        for pid in "${ceph_pids[@]}"; do kill -0 "$pid" 2>/dev/null || ceph_fail "a daemon exited"; done
        sleep 0.1
    done
    ceph_fail "no $what within 60 s"
}

ceph_daemon() { local name=$1; shift; "$@" "${ceph_cfg[@]}" -f >"$ceph_dir/log/$name.out" 2>&1 & ceph_pids+=($!); }

ceph_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_ceph() {
    local c=$1 bytes=${2:-1073741824} monport rgwport fsid osd_uuid
    ceph_dir=$c
    mkdir -p "$c"/{log,run,mon,osd/osd.0,crash,rgw}   # Ceph creates none of them itself
    monport=$(ceph_free_port)
    rgwport=$(ceph_free_port)
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
memstore device bytes = $bytes
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
    ceph_cfg=(-c "$c/ceph.conf")

    timeout 60 ceph-mon "${ceph_cfg[@]}" -i a --mkfs --fsid "$fsid" >"$c/log/mon-mkfs.out" 2>&1 ||
        ceph_fail "ceph-mon --mkfs"
    ceph_daemon ceph-mon ceph-mon -i a
    ceph_wait_for "mon leader" grep -q 'mon.a is new leader' "$c/log/mon.a.log"
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    [ "$(timeout 60 ceph "${ceph_cfg[@]}" --connect-timeout 20 osd new "$osd_uuid")" = 0 ] ||
        ceph_fail "ceph osd new"
    timeout 60 ceph-osd "${ceph_cfg[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$c/log/osd-mkfs.out" 2>&1 ||
        ceph_fail "ceph-osd --mkfs"
    ceph_daemon ceph-osd ceph-osd -i 0
    ceph_wait_for "active OSD" grep -q 'state: booting -> active' "$c/log/osd.0.log"
    ceph_daemon radosgw radosgw -n client.rgw
    s3=http://127.0.0.1:$rgwport
    ceph_wait_for "radosgw answer" curl -fsS --noproxy '*' "$s3/"

    # Fixed demo keys: they exist only in this throwaway cluster.
    export AWS_ACCESS_KEY_ID=DEMOACCESSKEY0000000 AWS_SECRET_ACCESS_KEY=demo-secret-key AWS_REGION=us-east-1
    timeout 60 radosgw-admin "${ceph_cfg[@]}" user create --uid=demo --display-name=demo \
        --access-key="$AWS_ACCESS_KEY_ID" --secret-key="$AWS_SECRET_ACCESS_KEY" >/dev/null ||
        ceph_fail "radosgw-admin user create"
    ceph_wait_for "signed request accepted" s3_signed "$s3/"
}

# curl's own SigV4; RGW refuses a signature without x-amz-content-sha256.
s3_signed() {
    curl -fsS --noproxy '*' --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"
}

# s3_public_bucket NAME: the bucket, with a policy letting anyone get its objects (only:
# listing and writes stay denied), as a front reading it anonymously needs.
s3_public_bucket() {
    local policy
    s3_signed -X PUT "$s3/$1"
    policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::'"$1"'/*"]}]}'
    # `policy=`: curl signs the query as written, RGW canonicalises it with the `=`.
    s3_signed -X PUT -H 'Content-Type: application/json' --data-binary "$policy" "$s3/$1?policy="
}
