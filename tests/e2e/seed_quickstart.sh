#!/usr/bin/env bash
# The seed's quick start, word for word, inside a network namespace of its own (run under `unshare --net`), so
# that port 1883 is free as on a user's machine. Usage: seed_quickstart.sh SKEIN_BINARY WORK_DIR
set -euo pipefail
skein=$1
cd "$2"
ip link set lo up

# README's first command: no flags, embedded defaults.
"$skein" serve > skein.log 2>&1 &
skein_pid=$!
sub_pid=
cleanup() {
    [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
    kill -TERM "$skein_pid" 2>/dev/null || true
    wait "$skein_pid" 2>/dev/null || true
}
trap cleanup EXIT

# Wait (bounded) for the broker to answer on 1883.
for _ in $(seq 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then break; fi
    sleep 0.1
done

# "Open terminal and subscribe for topic"
mosquitto_sub -t "test" > sub.out &
sub_pid=$!
# "Open another terminal and publish message on subscribed topic" -- again until the subscriber, which may not
# have subscribed yet, shows it (bounded).
for _ in $(seq 50); do
    mosquitto_pub -m "Message from client XYZ" -t "test"
    if grep -q "Message from client XYZ" sub.out; then break; fi
    sleep 0.2
done
cat sub.out
