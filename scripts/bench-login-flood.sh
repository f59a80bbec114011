#!/usr/bin/env bash
# A login flood from one address against proxying, in one run on one machine:
# the p99 latency of authenticated proxied requests at a moderate rate, quiet and
# while 40 connections from one address post wrong passwords as fast as they can.
# Goal: the flood raises the proxied p99 by at most 2x.
#
# The proxied load is 4 connections each sending a request every 4 ms (wrk's
# delay(), so latency is measured below saturation); the upstream is nginx
# answering 1 KiB from memory. Portcullis runs with its defaults (argon2 workers:
# CPUs less one at nice +10; 30 attempts per minute per address, 10 at once).
# Usage: [ROUNDS=3] scripts/bench-login-flood.sh [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${ROUNDS:-3}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
    echo "installing nginx and wrk from Debian" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi

cargo build --release -p portcullis --quiet
BIN=${CARGO_TARGET_DIR:-target}/release/portcullis

WORK=$(mktemp -d /tmp/portcullis-flood.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/up/nginx.pid" ] && kill "$(cat "$WORK/up/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=127.0.0.1:18091; PC=127.0.0.1:18093
BODY=$(head -c 1024 /dev/zero | tr '\0' 'x')
mkdir -p "$WORK/up"
cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen $UP; location / { default_type text/plain; return 200 "$BODY"; } }
}
NGINX
nginx -c "$WORK/up/nginx.conf" -p "$WORK/up"

PASSWORD=bench-password
HASH=$(printf '%s\n' "$PASSWORD" | "$BIN" hash-password)
AUTH_BASIC_USERS="bench:$HASH" RUST_LOG=error \
    "$BIN" serve --listen "$PC" --upstream "http://$UP" --data-dir "$WORK/data" \
    2>"$WORK/portcullis.log" &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://$PC/.auth/healthz" >/dev/null && break; sleep 0.1; done
COOKIE=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" "http://$PC/.auth/login" \
    | sed -n 's/^set-cookie: \(portcullis_session=[^;]*\).*/\1/ip' | tr -d '\r')
[ -n "$COOKIE" ] || { echo "login failed" >&2; exit 1; }

cat > "$WORK/paced.lua" <<'LUA'
function delay() return 4 end
LUA
cat > "$WORK/flood.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"username":"bench","password":"wrong"}'
wrk.headers["Content-Type"] = "application/json"
LUA

proxied() { # prints p99 in ms; fails on any non-2xx
    local out p99
    out=$(wrk -t1 -c4 -d"${DURATION}s" --latency -s "$WORK/paced.lua" -H "Cookie: $COOKIE" "http://$PC/")
    if echo "$out" | grep -q "Non-2xx"; then echo "proxied: non-2xx responses!" >&2; echo "$out" >&2; exit 1; fi
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    awk -v v="$p99" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v/1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v*1000 }
    }'
}

echo "proxied: wrk -t1 -c4 paced 4 ms per connection; flood: wrk -t1 -c40 wrong passwords; ${DURATION}s x $ROUNDS rounds, $(nproc) cores" >&2
proxied >/dev/null # warm-up
QUIET_SUM=0; FLOOD_SUM=0
for round in $(seq 1 "$ROUNDS"); do
    quiet=$(proxied)
    wrk -t1 -c40 -d"$((DURATION + 2))s" -s "$WORK/flood.lua" "http://$PC/.auth/login" >"$WORK/flood.out" 2>&1 &
    FLOOD=$!
    sleep 1
    flood=$(proxied)
    wait "$FLOOD" || true
    attempts=$(awk '/Requests\/sec/ {print $2}' "$WORK/flood.out")
    printf 'round %d: quiet p99 %.2f ms, under flood p99 %.2f ms (flood %s attempts/s, nearly all 429)\n' \
        "$round" "$quiet" "$flood" "$attempts" >&2
    QUIET_SUM=$(awk -v a="$QUIET_SUM" -v b="$quiet" 'BEGIN {print a + b}')
    FLOOD_SUM=$(awk -v a="$FLOOD_SUM" -v b="$flood" 'BEGIN {print a + b}')
done
RSS=$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[0]}/status")
awk -v q="$QUIET_SUM" -v f="$FLOOD_SUM" -v r="$ROUNDS" -v rss="$RSS" 'BEGIN {
    printf "mean p99 quiet %.2f ms, under flood %.2f ms: ratio %.2f (goal <= 2)   portcullis peak RSS %d MiB\n", q/r, f/r, f/q, rss/1024
}'
