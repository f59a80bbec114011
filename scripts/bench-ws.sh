#!/usr/bin/env bash
# WebSocket comparison, in one run: 1 KiB echo round trips over many connections,
# against the same echo upstream directly, through a plain nginx WebSocket proxy,
# and through Portcullis (session cookie + Origin); then ticket-authenticated
# upgrades per second through Portcullis. nginx and Portcullis alternate rounds.
# Usage: [ROUNDS=3] scripts/bench-ws.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-5}
CONNECTIONS=${2:-64}
ROUNDS=${ROUNDS:-3}

if ! command -v nginx >/dev/null 2>&1; then
    echo "installing nginx from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
cargo build --release -p portcullis --example ws_bench --quiet
cargo build --release -p portcullis --quiet
TARGET=${CARGO_TARGET_DIR:-target}/release
BIN=$TARGET/portcullis
TOOL=$TARGET/examples/ws_bench

WORK=$(mktemp -d /tmp/portcullis-wsbench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=127.0.0.1:18181; NGX=127.0.0.1:18182; PC=127.0.0.1:18183
"$TOOL" echo "$UP" & PIDS+=($!)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen $NGX;
        location / {
            proxy_pass http://$UP;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 300s;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

PASSWORD=bench-password
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)
AUTH_BASIC_USERS="bench:$HASH" PORTCULLIS_LOGIN_RATE_PER_IP=1000 RUST_LOG=warn \
    "$BIN" serve --listen "$PC" --upstream "http://$UP" --data-dir "$WORK/data" &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://$PC/.auth/healthz" >/dev/null && break; sleep 0.1; done
HEADERS=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" "http://$PC/.auth/login")
COOKIE=$(echo "$HEADERS" | sed -n 's/^set-cookie: \(portcullis_session=[^;]*\).*/\1/ip' | tr -d '\r')
CSRF=$(echo "$HEADERS" | sed -n 's/^set-cookie: portcullis_csrf=\([^;]*\).*/\1/ip' | tr -d '\r')
[ -n "$COOKIE" ] || { echo "login failed" >&2; exit 1; }

echo "1 KiB echo round trips, $CONNECTIONS connections, ${SECONDS_EACH}s x $ROUNDS rounds, $(nproc) cores" >&2
DIRECT=$("$TOOL" load "ws://$UP/" "$CONNECTIONS" "$SECONDS_EACH")
echo "direct       $DIRECT msg/s" >&2
NGINX_SUM=0; PC_SUM=0
for round in $(seq 1 "$ROUNDS"); do
    N=$("$TOOL" load "ws://$NGX/" "$CONNECTIONS" "$SECONDS_EACH")
    P=$("$TOOL" load "ws://$PC/" "$CONNECTIONS" "$SECONDS_EACH" "Cookie: $COOKIE" "Origin: http://$PC")
    echo "round $round: nginx $N msg/s, portcullis $P msg/s" >&2
    NGINX_SUM=$((NGINX_SUM + N)); PC_SUM=$((PC_SUM + P))
done
UPGRADES=$("$TOOL" upgrades "$PC" "$SECONDS_EACH" "$COOKIE" "$CSRF")
# Memory of quiet connections: Portcullis' resident size before and while IDLE
# WebSockets (each used once) stay open.
IDLE=${IDLE:-1000}
rss() { awk '/VmRSS/ {print $2}' "/proc/${PIDS[-1]}/status"; }
RSS_BEFORE=$(rss)
exec 3< <("$TOOL" idle "ws://$PC/" "$IDLE" 10 "Cookie: $COOKIE" "Origin: http://$PC")
read -r _ <&3
sleep 1
RSS_IDLE=$(rss)
exec 3<&-
awk -v p="$PC_SUM" -v n="$NGINX_SUM" -v r="$ROUNDS" -v d="$DIRECT" -v u="$UPGRADES" 'BEGIN {
    printf "mean nginx %.0f msg/s, mean portcullis %.0f msg/s, direct %.0f msg/s\n", n/r, p/r, d
    printf "ratio portcullis/nginx: %.2f\n", p/n
    printf "ticket-authenticated upgrades through portcullis: %.0f /s (mint + upgrade + close, one client)\n", u
}'
awk -v b="$RSS_BEFORE" -v i="$RSS_IDLE" -v n="$IDLE" 'BEGIN {
    printf "%d idle WebSockets: portcullis RSS %.1f -> %.1f MiB, %.1f KiB per connection\n", n, b/1024, i/1024, (i-b)/n
}'
