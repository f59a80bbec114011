#!/usr/bin/env bash
# Load comparison, in one run and on one machine: the upstream directly, a plain
# nginx proxy_pass to it, and Portcullis (release build, valid session cookie) to it.
# Prints requests/s and latency for each and the ratio Portcullis / nginx.
#
# The upstream is nginx itself answering a fixed 1 KiB body from memory, so it is
# never the bottleneck. Both proxies keep upstream connections alive.
# Usage: [ROUNDS=3] [PC_LOG=filter] scripts/bench-proxy.sh [DURATION_SECONDS] [CONNECTIONS]
# PC_LOG is Portcullis's RUST_LOG (default `warn`; `warn,portcullis::access=info`
# measures the access log, written to a file in the work directory). PC_METRICS=1
# serves metrics (--metrics-listen) and scrapes them every second meanwhile.
# PC_BIN=PATH measures that binary (e.g. an earlier commit's) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNECTIONS=${2:-32}
ROUNDS=${ROUNDS:-3}
THREADS=${WRK_THREADS:-1}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
    echo "installing nginx and wrk from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi

# PC_BIN measures another binary (an earlier build) instead of this checkout's.
if [ -z "${PC_BIN:-}" ]; then
    cargo build --release -p portcullis --quiet
fi
BIN=${PC_BIN:-${CARGO_TARGET_DIR:-target}/release/portcullis}

WORK=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pidfile in "$WORK"/up/nginx.pid "$WORK"/proxy/nginx.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=127.0.0.1:18081; NGX=127.0.0.1:18082; PC=127.0.0.1:18083; METRICS=127.0.0.1:18084
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
# The upstream and the nginx proxy are separate nginx instances: in one instance a
# worker could answer its own proxied request in the same event-loop turn, a
# shortcut no real deployment (and no other proxy) gets.
mkdir -p "$WORK/up" "$WORK/proxy"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen $UP; location / { default_type text/plain; return 200 "$BODY"; } }
}
NGINX
cat > "$WORK/proxy/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/proxy/nginx.pid;
error_log $WORK/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server $UP; keepalive 128; }
    server {
        listen $NGX;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
    }
}
NGINX
nginx -c "$WORK/up/nginx.conf" -p "$WORK/up"
nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy"

PASSWORD=bench-password
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)
AUTH_BASIC_USERS="bench:$HASH" PORTCULLIS_LOGIN_RATE_PER_IP=1000 RUST_LOG="${PC_LOG:-warn}" \
    ${PC_WRAPPER:-} "$BIN" serve --listen "$PC" --upstream "http://$UP" --data-dir "$WORK/data" \
    ${PC_METRICS:+--metrics-listen "$METRICS"} 2>"$WORK/portcullis.log" &
PIDS+=($!)
if [ -n "${PC_METRICS:-}" ]; then
    (while sleep 1; do curl -sf "http://$METRICS/metrics" >/dev/null || true; done) &
    PIDS+=($!)
fi
for _ in $(seq 1 100); do curl -sf "http://$PC/.auth/healthz" >/dev/null && break; sleep 0.1; done
COOKIE=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" "http://$PC/.auth/login" \
    | sed -n 's/^set-cookie: \(portcullis_session=[^;]*\).*/\1/ip' | tr -d '\r')
[ -n "$COOKIE" ] || { echo "login failed" >&2; exit 1; }
curl -sf -H "Cookie: $COOKIE" "http://$PC/" | head -c 16 >/dev/null || { echo "proxy check failed" >&2; exit 1; }

run() { # name url [header]
    local out
    if [ -n "${3:-}" ]; then
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "$3" "$2")
    else
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$2")
    fi
    local rps p50 p99
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    if echo "$out" | grep -q "Non-2xx"; then echo "$1: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
    printf '%-12s %12s req/s   p50 %-9s p99 %s\n' "$1" "$rps" "$p50" "$p99" >&2
    echo "$rps"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s x $ROUNDS rounds, 1 KiB responses, keep-alive, $(nproc) cores" >&2
run warmup "http://$PC/" "Cookie: $COOKIE" >/dev/null
DIRECT=$(run direct "http://$UP/")
# nginx and Portcullis alternate, so both see the same background noise; the
# ratio is of their mean throughputs over all rounds.
NGINX_SUM=0; PORTCULLIS_SUM=0
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round" >&2
    NGINX_SUM=$(awk -v a="$NGINX_SUM" -v b="$(run nginx "http://$NGX/")" 'BEGIN {print a + b}')
    PORTCULLIS_SUM=$(awk -v a="$PORTCULLIS_SUM" -v b="$(run portcullis "http://$PC/" "Cookie: $COOKIE")" 'BEGIN {print a + b}')
done
RSS=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[0]}/status")
awk -v p="$PORTCULLIS_SUM" -v n="$NGINX_SUM" -v d="$DIRECT" -v r="$ROUNDS" -v rss="$RSS" 'BEGIN {
    printf "mean nginx %.0f req/s, mean portcullis %.0f req/s\n", n/r, p/r
    printf "ratio portcullis/nginx: %.2f   (nginx/direct %.2f, portcullis/direct %.2f)   portcullis RSS %d MiB\n", p/n, n/r/d, p/r/d, rss/1024
}'
