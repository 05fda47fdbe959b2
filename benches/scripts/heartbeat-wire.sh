#!/usr/bin/env bash
# One steady-state heartbeat round trip, measured on the wire.
#
# Starts a dev daemon on loopback, connects one `presence` CLI device with a short heartbeat
# interval, captures the daemon's UDP port on `lo` with tcpdump while the session sits in
# steady state for a few intervals, and prints, per heartbeat round trip, the packets seen
# in each direction with their UDP payload, IP+UDP size and frame length on lo, then a
# verdict: exactly one datagram and one ACK per heartbeat, and nothing else?
#
#   benches/scripts/heartbeat-wire.sh            # builds release binaries first
#   HEARTBEAT=5 BEATS=6 benches/scripts/heartbeat-wire.sh
#
# Needs root (or CAP_NET_RAW) for tcpdump, python3, and tcpdump (`apt-get install tcpdump`).
# Environment: HEARTBEAT (seconds, >= 5, default 5), BEATS (intervals captured in steady
# state, default 6), QUIC_PORT (default 24433), HTTPS_PORT (default 28443), SKIP_BUILD=1 to
# use binaries already built, CARGO_TARGET_DIR as cargo uses it.
set -euo pipefail

HEARTBEAT=${HEARTBEAT:-5}
BEATS=${BEATS:-6}
QUIC_PORT=${QUIC_PORT:-24433}
HTTPS_PORT=${HTTPS_PORT:-28443}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

command -v tcpdump >/dev/null || { echo "tcpdump not found: apt-get install tcpdump" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found" >&2; exit 2; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p presenced -p presence-client)
fi

WORK=$(mktemp -d /tmp/heartbeat-wire.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

"$BIN/presenced" serve --dev --data-dir "$WORK/data" --quic-listen "127.0.0.1:$QUIC_PORT" \
    --https-listen "127.0.0.1:$HTTPS_PORT" --log warn >"$WORK/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s "$WORK/data/dev.json" ]] && break; sleep 0.1; done
[[ -s "$WORK/data/dev.json" ]] || { echo "daemon did not start:" >&2; cat "$WORK/daemon.log" >&2; exit 1; }
TOKEN=$("$BIN/presenced" token --data-dir "$WORK/data" --user wire-user --device wire-phone)

tcpdump -i lo -U -s 256 -w "$WORK/hb.pcap" "udp port $QUIC_PORT" 2>"$WORK/tcpdump.log" &
TCPDUMP=$!
PIDS+=($TCPDUMP)
for _ in $(seq 50); do grep -q "listening on" "$WORK/tcpdump.log" 2>/dev/null && break; sleep 0.1; done

# stdin stays open (a FIFO held by this shell) until the script says quit.
mkfifo "$WORK/stdin"
"$BIN/presence" connect --server "127.0.0.1:$QUIC_PORT" --ca "$WORK/data/tls/cert.pem" \
    --token "$TOKEN" --heartbeat "$HEARTBEAT" --json <"$WORK/stdin" >"$WORK/client.out" 2>"$WORK/client.log" &
PIDS+=($!)
exec 3>"$WORK/stdin"
for _ in $(seq 100); do grep -q '"event":"up"' "$WORK/client.out" 2>/dev/null && break; sleep 0.1; done
grep -q '"event":"up"' "$WORK/client.out" || { echo "session did not come up:" >&2; cat "$WORK/client.log" >&2; exit 1; }
# Steady state starts once the handshake's tail (tickets, Welcome's ACK) has settled.
sleep 1
STEADY_FROM=$(date +%s.%N)
sleep $((HEARTBEAT * BEATS))
STEADY_TO=$(date +%s.%N)
echo quit >&3
exec 3>&-
sleep 1
kill -INT "$TCPDUMP"
wait "$TCPDUMP" 2>/dev/null || true

python3 - "$WORK/hb.pcap" "$QUIC_PORT" "$STEADY_FROM" "$STEADY_TO" "$HEARTBEAT" <<'PY'
import struct, sys

path, port, t0, t1, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
data = open(path, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian, nano = {0xA1B2C3D4: ("<", False), 0xA1B23C4D: ("<", True)}.get(magic, (">", False))
linktype = struct.unpack(endian + "I", data[20:24])[0]
link = {1: 14, 113: 16, 276: 20}.get(linktype)
if link is None:
    sys.exit(f"unsupported link type {linktype}")
packets, off = [], 24
while off + 16 <= len(data):
    sec, frac, incl, orig = struct.unpack(endian + "IIII", data[off:off + 16])
    frame = data[off + 16:off + 16 + incl]
    off += 16 + incl
    ts = sec + frac / (1e9 if nano else 1e6)
    ip = frame[link:]
    ihl = (ip[0] & 0x0F) * 4
    ip_len = struct.unpack(">H", ip[2:4])[0]
    sport, dport, udp_len = struct.unpack(">HHH", ip[ihl:ihl + 6])
    first = ip[ihl + 8] if len(ip) > ihl + 8 else 0
    kind = "long" if first & 0x80 else "short"
    packets.append((ts, "device->daemon" if dport == port else "daemon->device", udp_len - 8, ip_len, orig, kind))

total = len(packets)
steady = [p for p in packets if t0 <= p[0] <= t1]
# A round trip starts at each device packet; the daemon's packets until the next one belong to it.
trips = []
for p in steady:
    if p[1] == "device->daemon" or not trips:
        trips.append([])
    trips[-1].append(p)
print(f"capture: {total} packets in all (handshake and close included), {len(steady)} in "
      f"{t1 - t0:.1f} s of steady state, heartbeat {interval:g} s")
print(f"{'t (s)':>8}  {'direction':<15} {'header':<6} {'UDP payload':>11} {'IP+UDP':>7} {'frame on lo':>11}")
for p in steady:
    print(f"{p[0] - t0:8.3f}  {p[1]:<15} {p[5]:<6} {p[2]:>11} {p[3]:>7} {p[4]:>11}")
print()
ok = True
for i, trip in enumerate(trips):
    up = [p for p in trip if p[1] == "device->daemon"]
    down = [p for p in trip if p[1] == "daemon->device"]
    ok &= len(up) == 1 and len(down) == 1 and all(p[5] == "short" for p in trip)
    print(f"round trip {i + 1}: {len(up)} up + {len(down)} down packets; UDP payload "
          f"{'+'.join(str(p[2]) for p in trip)} = {sum(p[2] for p in trip)} B; IP+UDP "
          f"{sum(p[3] for p in trip)} B; frames on lo {sum(p[4] for p in trip)} B")
full = [t for t in trips if len(t) == 2]
if full:
    up = full[0][0]; down = full[0][1]
    print()
    print(f"heartbeat datagram: UDP payload {up[2]} B, IP+UDP {up[3]} B, frame on lo {up[4]} B")
    print(f"daemon's ACK:       UDP payload {down[2]} B, IP+UDP {down[3]} B, frame on lo {down[4]} B")
    print(f"round trip:         UDP payload {up[2] + down[2]} B, IP+UDP {up[3] + down[3]} B, "
          f"frames on lo {up[4] + down[4]} B, 2 packets")
verdict = "yes" if ok and len(trips) >= max(1, int((t1 - t0) / interval) - 1) else "NO"
print(f"exactly one datagram plus one ACK per heartbeat, nothing else: {verdict} "
      f"({len(trips)} round trips in {t1 - t0:.1f} s)")
PY
