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
