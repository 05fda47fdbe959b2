#!/usr/bin/env python3
"""Where a daemon's heap goes per session, from a heaptrack recording.

Usage: heap-breakdown.py STACKS N
  STACKS  heaptrack_print -f REC.zst --flamegraph-cost-type peak -F STACKS
  N       sessions held at the peak

Each stack (root;...;leaf cost) is put in the first category whose frames it contains; the
frames are heaptrack's function names with their file names (release builds with
line-tables-only debug info, so crate paths are gone and files are the evidence).
"""
import collections
import sys

# (category, frames that must all appear in the stack), first match wins.
RULES = [
    ("quinn: endpoint-to-connection event channel", ["unbounded_channel<> (unbounded.rs)", "insert (endpoint.rs)"]),
    ("quinn: connection state (quinn-proto Connection in an Arc)", ["insert (endpoint.rs)", "new<> (sync.rs)"]),
    ("rustls: TLS session and QUIC packet keys", ["(rustls.rs)"]),
    ("rustls: TLS session and QUIC packet keys", ["(tls13.rs)"]),
    ("rustls: TLS session and QUIC packet keys", ["(key_schedule.rs)"]),
    ("TLS session store (0-RTT tickets)", ["(limited_cache.rs)"]),
    ("TLS session store (0-RTT tickets)", ["(sessions.rs)"]),
    ("quinn: sent-packet tracking", ["(spaces.rs)"]),
    ("quinn: transmit buffer", ["drive_transmit (connection.rs)"]),
    ("quinn: stream and crypto reassembly", ["(assembler.rs)"]),
    ("daemon: session task (tokio task + future)", ["bind_new_task<> (handle.rs)", "start (connection.rs)"]),
    ("daemon: session task (tokio task + future)", ["bind_new_task<> (handle.rs)", "serve (mod.rs)"]),
    ("quinn: connection driver task", ["bind_new_task<> (handle.rs)"]),
    ("daemon: presence table", ["(table.rs)"]),
    ("daemon: protocol session (frames, queues)", ["(server.rs)"]),
    ("daemon: protocol session (frames, queues)", ["(session.rs)"]),
    ("daemon: session mailbox", ["new (handle.rs)"]),
    ("quinn: connection ids, endpoint maps, crypto buffers", ["(endpoint.rs)"]),
]


def main() -> None:
    stacks, sessions = sys.argv[1], int(sys.argv[2])
    cost = collections.Counter()
    total = 0
    for line in open(stacks, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, bytes_ = line.rsplit(" ", 1)
        bytes_ = int(bytes_)
        total += bytes_
        for name, frames in RULES:
            if all(frame in stack for frame in frames):
                cost[name] += bytes_
                break
        else:
            cost["other (fixed costs spread over the sessions, runtime, API, metrics)"] += bytes_
    print(f"peak heap {total / 1e6:.1f} MB = {total / sessions:,.0f} B per session over {sessions:,} sessions")
    print("| where | bytes per session | share |")
    print("|---|---:|---:|")
    for name, value in cost.most_common():
        print(f"| {name} | {value / sessions:,.0f} | {100 * value / total:.1f} % |")


if __name__ == "__main__":
    main()
