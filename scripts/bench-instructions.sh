#!/usr/bin/env bash
# Instructions per proxied request: callgrind on a release binary serving curl
# requests one after another on one keep-alive connection, (run of 12,000 minus
# run of 2,000) / 10,000, so start-up and sign-in cancel out. Noise is about ±1,000
# instructions between runs of one binary: far below the throughput benchmark's.
#
#   scripts/bench-instructions.sh [BINARY]   (default: target/release/portcullis)
#
# Needs valgrind, nginx and curl (installed from Debian if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/portcullis}
if ! command -v valgrind >/dev/null || ! command -v nginx >/dev/null || ! command -v curl >/dev/null; then
    echo "installing valgrind, nginx-light and curl from Debian" >&2
    apt-get install -y -qq valgrind nginx-light curl >/dev/null
fi
[ -x "$BIN" ] || cargo build --release --locked -p portcullis
WORK=$(mktemp -d /tmp/portcullis-instr.XXXXXX)
cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
UP=127.0.0.1:18091; PC=127.0.0.1:18093
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 256; }
http { access_log off; server { listen $UP; location / { return 200 "hello"; } } }
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"
# The sign-in's argon2 verification is the same in both runs and cancels out.
HASH=$(printf 'bench-password\n' | "$BIN" hash-password)

instructions() { # requests
    local n=$1 out=$WORK/callgrind.$1
    rm -rf "$WORK/data"
    AUTH_BASIC_USERS="bench:$HASH" RUST_LOG=error PORTCULLIS_ARGON2_WORKERS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$out" -q \
        "$BIN" serve --listen "$PC" --upstream "http://$UP" --data-dir "$WORK/data" \
        2>"$WORK/valgrind.log" &
    local pid=$!
    for _ in $(seq 1 600); do curl -sf "http://$PC/.auth/healthz" >/dev/null && break; sleep 0.2; done
    local cookie
    cookie=$(curl -s -D - -o /dev/null -H 'Content-Type: application/json' \
        -d '{"username":"bench","password":"bench-password"}' "http://$PC/.auth/login" \
        | sed -n 's/^set-cookie: \(portcullis_session=[^;]*\).*/\1/ip' | tr -d '\r')
    [ -n "$cookie" ] || { echo "sign-in failed" >&2; cat "$WORK/valgrind.log" >&2; exit 1; }
    : > "$WORK/urls"
    for _ in $(seq 1 "$n"); do
        printf 'url = "http://%s/"\noutput = "/dev/null"\n' "$PC" >> "$WORK/urls"
    done
    curl -s -H "Cookie: $cookie" -K "$WORK/urls"
    kill -TERM "$pid"
    wait "$pid" || true
    awk '/^totals:|^summary:/ {print $2; exit}' "$out"
}
small=$(instructions 2000)
large=$(instructions 12000)
echo "instructions per request: $(( (large - small) / 10000 ))   ($BIN; $small for 2,000, $large for 12,000)"
