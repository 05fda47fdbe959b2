#!/usr/bin/env bash
# Heap profile of a dev daemon holding N idle sessions from presence-load, and where the
# bytes go per session (heap-breakdown.py). Needs heaptrack (apt-get install heaptrack) and
# release builds: cargo build --release -p presenced -p presence-bench
#
#   benches/scripts/heap-profile.sh [SESSIONS] [RAMP]     (default 20000 sessions, 500/s)
set -euo pipefail
cd "$(dirname "$0")/../.."
sessions="${1:-20000}"
ramp="${2:-500}"
work=$(mktemp -d /tmp/presence-heap.XXXXXX)
data="$work/data"
heaptrack -o "$work/daemon" target/release/presenced serve --dev --data-dir "$data" \
  --quic-listen 127.0.0.1:24433 --https-listen 127.0.0.1:28443 --log warn \
  --handshake-rate 100000 --handshake-burst 100000 >"$work/daemon.log" 2>&1 &
for _ in $(seq 50); do [ -s "$data/dev.json" ] && break; sleep 0.2; done
sleep 1
target/release/presence-load --server 127.0.0.1:24433 --data-dir "$data" \
  --sessions "$sessions" --ramp "$ramp" --heartbeat 30 --changes 0 --reconnects 0 \
  --notify-every 0 --duration 10 --json | tail -1 >"$work/load.json"
pkill -TERM -f "presenced serve --dev --data-dir $data" || true
wait
heaptrack_print -f "$work/daemon.zst" --flamegraph-cost-type peak -F "$work/stacks.txt" >/dev/null
python3 benches/scripts/heap-breakdown.py "$work/stacks.txt" "$sessions"
echo "recording and stacks in $work"
