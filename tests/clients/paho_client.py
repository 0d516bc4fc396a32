"""paho-mqtt against skein: QoS 0/1/2 round trips and a retained message.

Usage: python paho_client.py PORT VERSION   (VERSION: 31, 311 or 5)
Prints one JSON line with what was received; exits non-zero on failure or after 15 s.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

PORT = int(sys.argv[1])
VERSION = {"31": mqtt.MQTTv31, "311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[sys.argv[2]]
PREFIX = f"paho{sys.argv[2]}"
TIMEOUT = 15


def client(name):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{sys.argv[2]}", protocol=VERSION)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect("127.0.0.1", PORT, keepalive=30)
    c.loop_start()
    if not connected.wait(TIMEOUT):
        sys.exit("no CONNACK")
    return c


def collect(c, count):
    got, done = [], threading.Event()

    def on_message(_c, _u, msg):
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
pub = client("paho-pub")
for qos in (0, 1, 2):
    pub.publish(f"{PREFIX}/q{qos}", f"hello qos {qos}", qos=qos).wait_for_publish(TIMEOUT)
if not live_done.wait(TIMEOUT):
    sys.exit(f"only received {live}")
pub.publish(f"{PREFIX}-retained/r", "kept", qos=1, retain=True).wait_for_publish(TIMEOUT)
late = client("paho-late")
retained, retained_done = collect(late, 1)
subscribe(late, f"{PREFIX}-retained/#", 1)
if not retained_done.wait(TIMEOUT):
    sys.exit("no retained message")
print(json.dumps({"granted": granted, "live": sorted(live, key=lambda m: m["topic"]), "retained": retained[0]}))
for c in (sub, pub, late):
    c.disconnect()
    c.loop_stop()
