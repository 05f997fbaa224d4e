# Shared by the examples (sourced, from the repository's root): installing what they need,
# the binary, a work directory cleaned up on exit with every process started, and
# throwaway docker-registries on loopback.

# need BIN=PACKAGE...: install the packages of the binaries not on PATH (Debian).
need() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" ca-certificates >/dev/null
}

# $bin: SR_BIN, or a release build.
bin=${SR_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked
    bin=target/release/static-registry
fi

# $work, removed on exit after the processes in `pids` are killed.
work=$(mktemp -d)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_registry NAME: a docker-registry on a free loopback port, in $port. (Not to be run
# in a $(...) subshell: its pid must reach `pids`, or cleanup leaves the registry running.)
start_registry() {
    port=$(free_port)
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$work/$1" "$port" >"$work/$1.yml"
    docker-registry serve "$work/$1.yml" >"$work/$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
        sleep 0.1
    done
}

# start_nginx CONF: nginx serving CONF (gen-conf's output, included at http level) with its
# pid, logs and temp files in $work; workers as www-data when run as root, as users run it.
start_nginx() {
    local user=""; [ "$(id -u)" -ne 0 ] || user="user www-data;"
    chmod 755 "$work"   # the workers traverse it to what is served and cached from here
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
    include $1;
}
NGINX
    nginx -t -q -p "$work" -c "$work/nginx.conf"
    nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
    pids+=($!)
    local port
    port=$(sed -n 's/^ *listen 127.0.0.1:\([0-9]*\);/\1/p' "$1" | head -1)
    for _ in $(seq 50); do
        curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
        sleep 0.1
    done
}
