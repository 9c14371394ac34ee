#!/bin/sh
# Instructions per 64 B call, client and server, counted by callgrind (issue 21): deterministic,
# so they compare across commits even on a busy machine, unlike the harness's timings.
#
#   cargo xtask bench --quick --no-peers      # or: (cd bench && cargo build --release --no-default-features --target-dir ../target)
#   bench/callgrind.sh [SYSTEM...]            # default: raw tokio peerwire peerwire-tls openssl-echo
#   bench/callgrind.sh peerwire-blocking      # the blocking client (peerwire-bench client peerwire-blocking)
#   PEERWIRE_BENCH_CALL_BYTES=1048576 N1=10 N2=30 bench/callgrind.sh peerwire-tls peerwire-ws
#                                             # another message size, other call counts
#
# For each system, two runs under valgrind --tool=callgrind, each a server (`peerwire-bench
# serve`) and a client (`peerwire-bench client`, one connection, N round trips of 64 B), with
# N = 1,000 and 3,000; the figure is the difference of the totals divided by 2,000, so the
# start-up, the connection set-up and the handshake cancel out. Prints one line per system.
set -eu
BIN=${BIN:-target/release/peerwire-bench}
[ -x "$BIN" ] || { echo "no $BIN: build the harness first" >&2; exit 1; }
SYSTEMS=${*:-raw tokio peerwire peerwire-tls openssl-echo}
N1=${N1:-1000} N2=${N2:-3000}
BYTES=${PEERWIRE_BENCH_CALL_BYTES:-64}
dir=$(mktemp -d)
chmod 700 "$dir"
trap 'rm -rf "$dir"' EXIT
"$BIN" init "$dir/id"
total() { sed -n 's/^summary: *//p; s/^totals: *//p' "$1" | head -1; }
for sys in $SYSTEMS; do
    for n in $N1 $N2; do
        sock="$dir/$sys-$n.sock"
        : >"$dir/ready"
        valgrind --tool=callgrind --callgrind-out-file="$dir/srv-$sys-$n" \
            "$BIN" serve "$sys" "$sock" "$dir/id" 0 >"$dir/ready" 2>"$dir/srv.log" &
        srv=$!
        i=0
        until grep -q ready "$dir/ready"; do
            i=$((i + 1)); [ $i -lt 600 ] || { cat "$dir/srv.log" >&2; exit 1; }
            sleep 0.1
        done
        valgrind --tool=callgrind --callgrind-out-file="$dir/cli-$sys-$n" \
            "$BIN" client "$sys" "$sock" "$dir/id" 0 "$n" >/dev/null 2>"$dir/cli.log" \
            || { cat "$dir/cli.log" >&2; exit 1; }
        kill -TERM $srv
        wait $srv 2>/dev/null || true
    done
    cli=$(( ($(total "$dir/cli-$sys-$N2") - $(total "$dir/cli-$sys-$N1")) / (N2 - N1) ))
    srv=$(( ($(total "$dir/srv-$sys-$N2") - $(total "$dir/srv-$sys-$N1")) / (N2 - N1) ))
    echo "$sys: client $cli, server $srv instructions per $BYTES B call"
done
