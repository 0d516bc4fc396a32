"""paho-mqtt against skein: QoS 0/1/2 round trips and a retained message.

Usage: python paho_client.py PORT VERSION [PUB_PORT LATE_PORT]   (VERSION: 31, 311 or 5)
The subscriber connects to PORT, the publisher to PUB_PORT and the late (retained) subscriber to LATE_PORT, all
PORT unless given: other nodes of a cluster. There the publisher first sends probe messages until one arrives,
since a new subscription takes a moment to reach the other nodes.
Prints one JSON line with what was received; exits non-zero on failure or after 15 s.
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
PUB_PORT = int(sys.argv[3]) if len(sys.argv) > 3 else PORT
LATE_PORT = int(sys.argv[4]) if len(sys.argv) > 4 else PORT
VERSION = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[sys.argv[2]]
PREFIX = f"paho{sys.argv[2]}"
TIMEOUT = 15


def client(name, port=PORT):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{sys.argv[2]}", protocol=VERSION)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not connected.wait(TIMEOUT):
        sys.exit("no CONNACK")
    return c


probed = threading.Event()


def collect(c, count):
    got, done = [], threading.Event()

    def on_message(_c, _u, msg):
        if msg.topic.endswith("/probe"):
            probed.set()
            return
        got.append({"topic": msg.topic, "payload": msg.payload.decode(), "qos": msg.qos, "retain": bool(msg.retain)})
        if len(got) == count:
            done.set()

    c.on_message = on_message
    return got, done


def subscribe(c, topic, qos):
    acked = threading.Event()
    granted = []

    def on_subscribe(_c, _u, _mid, reason_codes, _props):
        granted.extend(int(getattr(r, "value", r)) for r in reason_codes)
        acked.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos)
    if not acked.wait(TIMEOUT):
        sys.exit("no SUBACK")
    return granted


sub = client("paho-sub")
live, live_done = collect(sub, 3)
granted = subscribe(sub, f"{PREFIX}/#", 2)
pub = client("paho-pub", PUB_PORT)
if PUB_PORT != PORT:
    deadline = time.monotonic() + TIMEOUT
    while not probed.wait(0.05):
        if time.monotonic() > deadline:
            sys.exit("the subscription never reached the publisher's node")
        pub.publish(f"{PREFIX}/probe", "probe", qos=0)
for qos in (0, 1, 2):
    pub.publish(f"{PREFIX}/q{qos}", f"hello qos {qos}", qos=qos).wait_for_publish(TIMEOUT)
if not live_done.wait(TIMEOUT):
    sys.exit(f"only received {live}")
pub.publish(f"{PREFIX}-retained/r", "kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
late = client("paho-late", LATE_PORT)
retained, retained_done = collect(late, 1)
subscribe(late, f"{PREFIX}-retained/#", 1)
if not retained_done.wait(TIMEOUT):
    sys.exit("no retained message")
print(json.dumps({"granted": granted, "live": sorted(live, key=lambda m: m["topic"]), "retained": retained[0]}))
for c in (sub, pub, late):
    c.disconnect()
    c.loop_stop()
