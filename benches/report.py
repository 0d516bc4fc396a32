"""Turns the JSON reports of benches/compare into BENCHMARKS.md: both brokers side by side and the ratios."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

results, out, duration = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]


def load(name, broker):
    p = results / f"{name}.{broker}.json"
    return json.loads(p.read_text()) if p.exists() else None


def ratio(a, b):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{a / b:.2f}×"


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - a missing version is not worth failing the report
        return "unknown"


cluster_only = (".cluster.json", ".single.json", ".connect.json", ".spread.json")
names = sorted({p.name.split(".")[0] for p in results.glob("*.json") if not p.name.endswith(cluster_only)}, key=lambda n: (n.split("-")[0], n))
order = ["p2p", "fanout", "fanin", "shared", "latency", "conn"]
names.sort(key=lambda n: (order.index(n.split("-")[0]) if n.split("-")[0] in order else 99, n))

lines = [
    "# Benchmarks: Skein and Mosquitto side by side",
    "",
    "Made by `benches/compare` in one run on one machine: each scenario runs against a fresh Skein and then a fresh",
    "Mosquitto, same limits (`max_inflight_messages 20`, `max_queued_messages 1000`), persistence off for both,",
    "TCP_NODELAY on for both, load from `skein-bench` on the same machine. Ratios are Skein/Mosquitto; for latency",
    "and memory lower is better, so the ratio shown there is Skein/Mosquitto too (below 1 means Skein is better).",
    "",
    f"- machine: {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}",
    f"- skein: {version(['target/release/skein', '--version'])}; mosquitto: {version(['mosquitto', '-h'])}",
    f"- load: {duration} s per run after connecting, closed loop (each publisher at most 64 messages ahead of its",
    "  deliveries; QoS 1/2 also at most 20 unacknowledged, the brokers' max_inflight_messages), 64-byte payloads;",
    "  `latency-*` at a fixed 200 msg/s per publisher = 20,000 msg/s in all; `*-64k`: 64 KiB payloads, at most 4",
    "  messages ahead per publisher",
    "- `*-tls`: the same load over TLS (rustls for Skein, OpenSSL for Mosquitto). `*-persist`: persistent sessions and",
    "  persistence on for both; Skein flushes sled to disk before each acknowledgement that depends on a write (a",
    "  message its subscriber acknowledged before that flush is not written at all), Mosquitto (default",
    "  autosave_interval 1800) writes its database every 30 minutes and at exit, so no disk work per message",
    "- `conn-*`: RSS per connection is the broker's RSS growth over the run divided by the connections, measured 3 s",
    "  after the last connected (`conn-15000`) or 20 s after (`conn-15000-idle`: past Skein's `idle_park_after`, 15 s,",
    "  every connection has parked; a connection quiet since it connected parks the first time after 2 s, so in both",
    "  most have)",
    "",
    "| scenario | Skein delivered/s | Mosquitto delivered/s | ratio | Skein msgs/broker-CPU-s | Mosquitto msgs/broker-CPU-s | ratio | Skein p99 µs | Mosquitto p99 µs | p99 ratio | lost (S/M) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
]
conn_rows = []
for n in names:
    s, m = load(n, "skein"), load(n, "mosquitto")
    if s is None or m is None:
        continue
    if s["scenario"] == "conn":
        conn_rows.append((n, s, m))
        continue
    lines.append(
        f"| {n} | {s['delivered_per_s']:,.0f} | {m['delivered_per_s']:,.0f} | {ratio(s['delivered_per_s'], m['delivered_per_s'])} "
        f"| {(s['delivered_per_broker_cpu_s'] or 0):,.0f} | {(m['delivered_per_broker_cpu_s'] or 0):,.0f} "
        f"| {ratio(s['delivered_per_broker_cpu_s'], m['delivered_per_broker_cpu_s'])} "
        f"| {s['latency_us']['p99']:,} | {m['latency_us']['p99']:,} | {ratio(s['latency_us']['p99'], m['latency_us']['p99'])} "
        f"| {s['lost']}/{m['lost']} |"
    )
if conn_rows:
    lines += [
        "",
        "| scenario | Skein connections | Mosquitto connections | Skein connects/s | Mosquitto connects/s | ratio | Skein RSS/conn | Mosquitto RSS/conn | RSS ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, s, m in conn_rows:
        lines.append(
            f"| {n} | {s['connections']:,} | {m['connections']:,} | {s['connects_per_s']:,.0f} | {m['connects_per_s']:,.0f} "
            f"| {ratio(s['connects_per_s'], m['connects_per_s'])} | {s['rss_per_connection_bytes'] or 0:,.0f} B "
            f"| {m['rss_per_connection_bytes'] or 0:,.0f} B | {ratio(s['rss_per_connection_bytes'], m['rss_per_connection_bytes'])} |"
        )
cluster_rows = []
for p in sorted(results.glob("*.cluster.json")):
    n = p.name.split(".")[0]
    c, single = json.loads(p.read_text()), load(n, "skein")
    if single:
        cluster_rows.append(
            f"| {n} | {c['delivered_per_s']:,.0f} | {single['delivered_per_s']:,.0f} "
            f"| {ratio(c['delivered_per_s'], single['delivered_per_s'])} | {(c['delivered_per_broker_cpu_s'] or 0):,.0f} "
            f"| {c['latency_us']['p99']:,} | {c['lost']} |"
        )
if cluster_rows:
    lines += [
        "",
        "Across a 3-node Skein cluster (publishers on node 1, subscribers on node 2: every message is forwarded once",
        "between nodes), against single-node Skein in the same run; CPU is all three nodes together:",
        "",
        "| scenario | cluster delivered/s | single node delivered/s | ratio | cluster msgs/CPU-s (3 nodes) | cluster p99 µs | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *cluster_rows,
    ]
connect_rows = []
for p in sorted(results.glob("*.connect.json")):
    n = p.name.split(".")[0]
    c, single = json.loads(p.read_text()), load(n, "single")
    spread = load(n, "spread") or {}
    if not single:
        continue
    if c.get("subscribes_per_s"):
        after = spread.get("routes_on_node2_after_s")
        routes = spread.get("routes", 0)
        on_node2 = f"{routes:,} after {after:.2f} s ({routes / after:,.0f}/s)" if after else "not all seen"
        connect_rows.append(
            f"| {n} | subscribes/s | {c['subscribes_per_s']:,.0f} | {single['subscribes_per_s']:,.0f} "
            f"| {ratio(c['subscribes_per_s'], single['subscribes_per_s'])} | {on_node2} | {c['errors']} |"
        )
    else:
        connect_rows.append(
            f"| {n} | connects/s | {c['connects_per_s']:,.0f} | {single['connects_per_s']:,.0f} "
            f"| {ratio(c['connects_per_s'], single['connects_per_s'])} | - | {c['errors']} |"
        )
if connect_rows:
    lines += [
        "",
        "Connects and subscribes on node 1 of the 3-node cluster, as fast as they go, against single-node Skein; for",
        "subscribes, when node 2 showed every new route (counted from the start of the run). `*-moving`: the same",
        "persistent sessions made once before on node 1 (single node: on that node), then resumed through node 2, so",
        "each moves between nodes:",
        "",
        "| scenario | rate | cluster | single node | ratio | routes on node 2 | errors |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
        *connect_rows,
    ]
lines += [
    "",
    "Peak broker RSS per run (MiB), Skein / Mosquitto:",
    "",
]
for n in names:
    s, m = load(n, "skein"), load(n, "mosquitto")
    if s and m and s.get("broker_peak_rss_bytes") and m.get("broker_peak_rss_bytes"):
        lines.append(f"- {n}: {s['broker_peak_rss_bytes'] / 1048576:.1f} / {m['broker_peak_rss_bytes'] / 1048576:.1f}")
lines += [
    "",
    "## Reproduce",
    "",
    "```sh",
    "benches/compare          # builds in release mode, installs mosquitto if needed, writes BENCHMARKS.md",
    "```",
    "",
    "Each run is one `skein-bench` command, for example",
    "`target/release/skein-bench --port PORT --broker-pid PID p2p --clients 100 --qos 1 --duration 8`;",
    "`skein-bench --help` lists every option. Raw JSON of every run is printed by the script as it goes.",
]
out.write_text("\n".join(lines) + "\n")
