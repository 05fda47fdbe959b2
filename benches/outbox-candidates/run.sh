#!/usr/bin/env bash
# Three alternating rounds (log, fjall, redb-batched, log, ...) in one sitting, one fresh
# process and directory per run; one JSON line per run into $OUT, then the medians.
#   CARGO_TARGET_DIR=/work/cand-target cargo build --release
#   benches/outbox-candidates/run.sh [extra flags for every run, e.g. --cursor]
set -euo pipefail
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/outbox-candidates}
DATA=${DATA:-/tmp/outbox-candidates}
OUT=${OUT:-outbox-candidates.jsonl}
ROUNDS=${ROUNDS:-3}
: > "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for store in log fjall redb-batched; do
    echo "round $round: $store (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    timeout 900 "$BIN" --store "$store" --dir "$DATA/$store" "$@" | jq -c --argjson round "$round" '. + {round: $round}' >> "$OUT"
    rm -rf "${DATA:?}/$store"
  done
done
# Per store: the median of each figure over the rounds.
jq -s -r '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  group_by(.store)[] | {
    store: .[0].store,
    events_per_second: (map(.events_per_second) | median),
    publish_events_per_second: (map(.publish_events_per_second) | median),
    delivered: (map(.delivered) | median),
    cpu_percent: (map(.cpu_percent) | median),
    bytes_end: (map(.bytes_end) | median),
    bytes_peak: (map(.bytes_peak) | median)
  } | [.store, .events_per_second, .publish_events_per_second, .delivered, .cpu_percent, .bytes_end, .bytes_peak] | @tsv
' "$OUT"
