"""paho-mqtt through a load balancer while the cluster behind it is restarted node by node (a rolling update).

Usage: python paho_rolling.py PORT
A persistent QoS 1 subscriber and a publisher connect to PORT and reconnect by themselves (paho's own loop) when
their node stops. The publisher sends numbered QoS 1 messages, one every 20 ms, until a line "stop" arrives on
stdin; then it waits for every PUBACK, and the subscriber for every message acknowledged.
Prints, one per line: "subscribed" once the subscription holds (and has reached the publisher's node), "acked N" each time 25 more messages have been
acknowledged, and at the end one JSON line: the numbers acknowledged, the numbers received (with any repeats), and
for each connection of the subscriber whether the broker had its session.
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
TOPIC = "rolling/t"
# Published until one arrives: a new subscription takes a moment to reach the other nodes.
PROBE = "rolling/probe"
LIMIT = 30


def say(line):
    print(line, flush=True)


def make(client_id, clean):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                    protocol=mqtt.MQTTv311)
    c.reconnect_delay_set(min_delay=1, max_delay=2)
    return c


lock = threading.Lock()
received = []
sessions = []
subscribed = threading.Event()
sub = make("rolling-sub", clean=False)


def on_sub_connect(c, _u, flags, reason, _p):
    if reason.is_failure:
        return
    with lock:
        sessions.append(bool(flags.session_present))
    if not subscribed.is_set():
        c.subscribe("rolling/#", 1)


sub.on_connect = on_sub_connect
sub.on_subscribe = lambda *_: subscribed.set()


probed = threading.Event()


def on_message(_c, _u, msg):
    if msg.topic == PROBE:
        probed.set()
        return
    with lock:
        received.append(int(msg.payload))


sub.on_message = on_message
sub.connect("127.0.0.1", PORT, keepalive=10)
sub.loop_start()
if not subscribed.wait(LIMIT):
    sys.exit("no SUBACK")

# By message id: paho may report a PUBACK before publish() has returned the id (it holds its own lock meanwhile, so
# this one is never held around publish()).
acked_mids = set()
mids = {}
pub = make("rolling-pub", clean=True)


def on_publish(_c, _u, mid, _reason, _p):
    with lock:
        if mid not in acked_mids:
            acked_mids.add(mid)
            if len(acked_mids) % 25 == 0:
                say(f"acked {len(acked_mids)}")


pub.on_publish = on_publish
pub.connect("127.0.0.1", PORT, keepalive=10)
pub.loop_start()
deadline = time.monotonic() + LIMIT
while not probed.wait(0.05):
    if time.monotonic() > deadline:
        sys.exit("the subscription never reached the publisher's node")
    pub.publish(PROBE, "probe", qos=0)
say("subscribed")

stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
published = 0
while not stop.is_set():
    published += 1
    info = pub.publish(TOPIC, str(published), qos=1)
    with lock:
        mids[info.mid] = published
    time.sleep(0.02)


def acked():
    return {mids[m] for m in acked_mids if m in mids}


deadline = time.monotonic() + LIMIT
while time.monotonic() < deadline:
    with lock:
        if len(acked()) == published:
            break
    time.sleep(0.05)
while time.monotonic() < deadline:
    with lock:
        if acked() <= set(received):
            break
    time.sleep(0.05)
with lock:
    say(json.dumps({"published": published, "acked": sorted(acked()), "received": received, "sessions": sessions}))
for c in (sub, pub):
    c.disconnect()
    c.loop_stop()
