"""paho-mqtt (MQTT 5.0) against skein, one scenario per run.

Usage: python paho_v5.py PORT SCENARIO
Prints one JSON line with what the scenario observed; the Rust test asserts on it. Exits non-zero when a step the
scenario waits for does not happen within 15 s.
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]
TIMEOUT = 15


class Client:
    """A paho client with its CONNACK, messages and DISCONNECT recorded."""

    def __init__(self, client_id, clean_start=True, expiry=None, will=None, connect_props=None, manual_ack=False,
                 protocol=mqtt.MQTTv5):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                             manual_ack=manual_ack)
        self.v5 = protocol == mqtt.MQTTv5
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.messages = []
        self.arrived = threading.Condition()
        self.connack = {}
        self.disconnect_reason = None
        self.acks = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish
        self.granted = None
        self.unsubscribed = None
        if will:
            topic, payload, delay = will
            props = Properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = delay
            self.c.will_set(topic, payload, qos=1, properties=props)
        if self.v5:
            props = connect_props or Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean_start, properties=props)
        else:
            self.c.connect("127.0.0.1", PORT, keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(TIMEOUT):
            sys.exit(f"{client_id}: no CONNACK")

    def _on_connect(self, _c, _u, flags, reason, props):
        self.connack = {"session_present": bool(flags.session_present), "reason": reason.value,
                        "props": props.json() if props else {}}
        self.connected.set()

    def _on_disconnect(self, _c, _u, _flags, reason, _props):
        if self.disconnect_reason is None:
            self.disconnect_reason = reason.value
        self.disconnected.set()

    def _on_message(self, _c, _u, msg):
        props = msg.properties.json() if msg.properties else {}
        with self.arrived:
            self.messages.append({"topic": msg.topic, "payload": msg.payload.decode("utf-8", "replace"),
                                  "qos": msg.qos, "retain": bool(msg.retain), "props": props, "mid": msg.mid})
            self.arrived.notify_all()

    def _on_publish(self, _c, _u, mid, reason, _props):
        self.acks[mid] = reason.value

    def subscribe(self, topic, qos=1, **options):
        """Subscribes and waits for the SUBACK; returns its reason codes (granted QoS or failure)."""
        done = threading.Event()

        def on_subscribe(_c, _u, _mid, codes, _props):
            self.granted = [c.value for c in codes]
            done.set()

        self.c.on_subscribe = on_subscribe
        if self.v5:
            self.c.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos, **options))
        else:
            self.c.subscribe(topic, qos=qos)
        if not done.wait(TIMEOUT):
            sys.exit("no SUBACK")
        return self.granted

    def unsubscribe(self, topic):
        done = threading.Event()

        def on_unsubscribe(_c, _u, _mid, codes, _props):
            self.unsubscribed = [c.value for c in codes]
            done.set()

        self.c.on_unsubscribe = on_unsubscribe
        self.c.unsubscribe(topic)
        if not done.wait(TIMEOUT):
            sys.exit("no UNSUBACK")
        return self.unsubscribed

    def publish(self, topic, payload, qos=1, retain=False, **props):
        p = Properties(PacketTypes.PUBLISH)
        for k, v in props.items():
            setattr(p, k, v)
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=p if props else None)
        if qos > 0:
            info.wait_for_publish(TIMEOUT)
        return self.acks.get(info.mid)

    def wait_messages(self, n, limit=TIMEOUT):
        deadline = time.monotonic() + limit
        with self.arrived:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    sys.exit(f"expected {n} messages, got {self.messages}")
                self.arrived.wait(left)
        return self.messages

    def close(self, reason=None, **props):
        p = None
        if props:
            p = Properties(PacketTypes.DISCONNECT)
            for k, v in props.items():
                setattr(p, k, v)
        rc = ReasonCode(PacketTypes.DISCONNECT, reason) if reason else None
        self.c.disconnect(reasoncode=rc, properties=p)
        self.disconnected.wait(TIMEOUT)
        self.c.loop_stop()


def topic_alias():
    sub = Client("alias-sub")
    sub.subscribe("alias/#")
    pub = Client("alias-pub")
    maximum = pub.connack["props"].get("TopicAliasMaximum")
    pub.publish("alias/long/topic/name", "set", TopicAlias=1)
    pub.publish("", "by alias", TopicAlias=1)
    pub.publish("alias/other", "re-set", TopicAlias=1)
    pub.publish("", "by new alias", TopicAlias=1)
    got = [(m["topic"], m["payload"]) for m in sub.wait_messages(4)]
    # An alias above the maximum is a protocol error: DISCONNECT 0x94.
    pub.c.publish("alias/x", "too far", qos=0, properties=props_of(TopicAlias=maximum + 1))
    pub.disconnected.wait(TIMEOUT)
    return {"maximum": maximum, "got": got, "disconnect": pub.disconnect_reason,
            "alias_props_forwarded": any("TopicAlias" in m["props"] for m in sub.messages)}


def props_of(**props):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in props.items():
        setattr(p, k, v)
    return p


def message_expiry():
    # A persistent subscriber away while three messages arrive: one expires before it returns.
    sub = Client("expiry-sub", clean_start=True, expiry=300)
    sub.subscribe("exp/#")
    sub.close()
    pub = Client("expiry-pub")
    pub.publish("exp/short", "gone", MessageExpiryInterval=1)
    pub.publish("exp/long", "kept", MessageExpiryInterval=300)
    pub.publish("exp/none", "forever")
    pub.publish("rexp/short", "gone too", retain=True, MessageExpiryInterval=1)
    pub.publish("rexp/fresh", "still here", retain=True)
    time.sleep(2.2)  # the expiry interval itself is what is under test
    back = Client("expiry-sub", clean_start=False, expiry=300)
    back.wait_messages(2)
    late = Client("expiry-late")
    late.subscribe("rexp/#")
    # Retained copies are queued before the SUBACK leaves: a live marker published now comes after all of them.
    pub.publish("rexp/marker", "after")
    late.wait_messages(2)
    late.messages[:] = [m for m in late.messages if m["topic"] != "rexp/marker"]
    return {"session_present": back.connack["session_present"],
            "got": [(m["topic"], m["payload"], m["props"].get("MessageExpiryInterval")) for m in back.messages],
            "retained": [m["topic"] for m in late.messages]}


def session_expiry():
    a = Client("sx-short", expiry=1)
    a.subscribe("sx/a")
    a.close()
    b = Client("sx-long", expiry=300)
    b.subscribe("sx/b")
    b.close()
    c = Client("sx-changed", expiry=300)
    c.subscribe("sx/c")
    c.close(SessionExpiryInterval=0)  # DISCONNECT may shorten it [MQTT-3.14.2-2 allows any change from > 0]
    time.sleep(2.2)  # the expiry interval itself is what is under test
    present = {}
    for cid in ("sx-short", "sx-long", "sx-changed"):
        again = Client(cid, clean_start=False, expiry=300)
        present[cid] = again.connack["session_present"]
        again.close()
    return {"present": present}


def will_delay():
    watcher = Client("will-watch")
    watcher.subscribe("will/#")
    # Comes back within its delay: no will.
    back = Client("will-back", expiry=300, will=("will/back", "should not be sent", 3))
    back.close(reason="Disconnect with will message")
    back = Client("will-back", clean_start=False, expiry=300)
    # Does not come back: the will is sent once the delay has passed.
    gone = Client("will-gone", expiry=300, will=("will/gone", "sent after delay", 1))
    started = time.monotonic()
    gone.close(reason="Disconnect with will message")
    got = watcher.wait_messages(1)
    waited = time.monotonic() - started
    # The session ending first sends the will at once, whatever its delay.
    short = Client("will-short", expiry=0, will=("will/short", "session ended", 60))
    short.close(reason="Disconnect with will message")
    watcher.wait_messages(2)
    time.sleep(3.2)  # past will-back's delay, had it not been cancelled
    return {"got": [m["topic"] for m in watcher.messages], "waited": waited}


def request_response():
    props = Properties(PacketTypes.CONNECT)
    props.RequestResponseInformation = 1
    responder = Client("responder", connect_props=props)
    info = responder.connack["props"].get("ResponseInformation")
    responder.subscribe("req/#")
    requester = Client("requester")
    requester.subscribe(f"{info}/answers")

    def answer(_c, _u, msg):
        p = props_of(CorrelationData=msg.properties.CorrelationData)
        responder.c.publish(msg.properties.ResponseTopic, b"answer to " + msg.payload, qos=1, properties=p)

    responder.c.on_message = answer
    requester.publish("req/time", "what time", ResponseTopic=f"{info}/answers", CorrelationData=b"\x00\x01corr",
                      UserProperty=[("k", "v"), ("k", "v2")], ContentType="text/plain", PayloadFormatIndicator=1)
    m = requester.wait_messages(1)[0]
    return {"info": info, "payload": m["payload"], "correlation": m["props"].get("CorrelationData")}


def properties_pass_through():
    sub = Client("props-sub")
    sub.subscribe("props/#")
    pub = Client("props-pub")
    ok = pub.publish("props/a", "text", UserProperty=[("a", "1"), ("a", "2"), ("b", "x")], ContentType="text/plain",
                     PayloadFormatIndicator=1, ResponseTopic="props/reply", CorrelationData=b"id-7")
    bad = pub.publish("props/b", b"\xff\xfe not utf-8", PayloadFormatIndicator=1)
    m = sub.wait_messages(1)[0]
    return {"puback_ok": ok, "puback_bad": bad, "props": m["props"], "count": len(sub.messages)}


def subscription_options():
    c = Client("opts")
    c.publish("opts/retained", "old", retain=True)
    c.subscribe("opts/#", noLocal=True, retainAsPublished=True, retainHandling=0)
    c.subscribe("optsmark")  # without No Local: c hears its own marker
    other = Client("opts-other")
    other.publish("opts/live", "from other", retain=True)
    c.wait_messages(2)
    c.publish("opts/own", "mine")
    c.publish("optsmark", "after")  # same publisher, same session: an own message would arrive before this
    c.wait_messages(3)
    return {"got": [(m["topic"], m["retain"]) for m in c.messages if m["topic"] != "optsmark"]}


def retain_handling():
    pub = Client("rh-pub")
    pub.publish("rh/t", "kept", retain=True)
    c = Client("rh-sub")
    got = {}
    for label, filt, rh in [("0 new", "rh/#", 0), ("0 again", "rh/#", 0), ("1 again", "rh/#", 1), ("1 new", "rh/+", 1),
                            ("2 new", "rh/t", 2)]:
        before = len(c.messages)
        c.subscribe(filt, retainHandling=rh)
        # A marker after the SUBACK (rh/# has been subscribed since the first step): any retained copy the
        # subscription brings is queued before its SUBACK leaves, so it arrives before the marker.
        pub.publish("rh/marker", label)
        deadline = time.monotonic() + TIMEOUT
        while not any(m["payload"] == label for m in c.messages[before:]):
            if time.monotonic() > deadline:
                sys.exit(f"marker {label} never came: {c.messages}")
            time.sleep(0.01)
        got[label] = [m["topic"] for m in c.messages[before:] if m["retain"]]
    return got


def subscription_identifiers():
    c = Client("ids")
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 1
    c.c.subscribe("ids/#", options=mqtt.SubscribeOptions(qos=1), properties=props)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 2
    c.c.subscribe("ids/+/x", options=mqtt.SubscribeOptions(qos=1), properties=props)
    c.subscribe("ids/marker")  # waits for its SUBACK, so the two above are in place
    pub = Client("ids-pub")
    pub.publish("ids/a/x", "both")
    pub.publish("ids/marker", "after")  # same publisher: a second copy of "both" would come before this
    c.wait_messages(2)
    m = c.messages[0]
    return {"count": len([x for x in c.messages if x["payload"] == "both"]),
            "ids": sorted(m["props"].get("SubscriptionIdentifier", []))}


def unknown_auth_method():
    props = Properties(PacketTypes.CONNECT)
    props.AuthenticationMethod = "SCRAM-SHA-1"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="auth", protocol=mqtt.MQTTv5)
    result = {}
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, props):
        result["reason"] = reason.value
        result["reason_string"] = getattr(props, "ReasonString", None) if props else None
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", PORT, properties=props)
    c.loop_start()
    if not done.wait(TIMEOUT):
        sys.exit("no CONNACK")
    c.loop_stop()
    return result


def flow_control():
    # The subscriber allows two unacknowledged messages and packets of 200 bytes at most.
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 2
    props.MaximumPacketSize = 200
    sub = Client("fc-sub", connect_props=props, manual_ack=True)
    sub.subscribe("fc/#")
    pub = Client("fc-pub")
    big = pub.publish("fc/big", "x" * 500)  # too large for the subscriber: dropped for it [MQTT-3.1.2-24]
    for i in range(1, 6):
        pub.publish("fc/m", f"m{i}")
    sub.wait_messages(2)
    # Every message was accepted before this SUBSCRIBE; its SUBACK comes back while the window stays full.
    sub.subscribe("fc-marker")
    at_suback = len(sub.messages)
    after_acks = []
    for i in range(5):
        sub.c.ack(sub.messages[i]["mid"], 1)
        sub.wait_messages(min(i + 3, 5))
        after_acks.append(len(sub.messages))
    return {"big_puback": big, "at_suback": at_suback, "after_acks": after_acks,
            "got": [m["payload"] for m in sub.messages],
            "server_receive_maximum": pub.connack["props"].get("ReceiveMaximum")}


def server_limits():
    # The broker runs with --max-packet-size 1024 --max-keepalive 10 --max-qos 1.
    c = Client("")
    props = c.connack["props"]
    granted = c.subscribe("lim/#", qos=2)
    too_big = Client("lim-big")
    too_big.c.publish("lim/x", "y" * 2000, qos=0)
    too_big.disconnected.wait(TIMEOUT)
    qos2 = Client("lim-qos2")
    qos2.c.publish("lim/q", "at qos 2", qos=2)
    qos2.disconnected.wait(TIMEOUT)
    return {"assigned": props.get("AssignedClientIdentifier", ""), "keep_alive": props.get("ServerKeepAlive"),
            "maximum_packet_size": props.get("MaximumPacketSize"), "maximum_qos": props.get("MaximumQoS"),
            "granted": granted, "too_big": too_big.disconnect_reason, "qos2": qos2.disconnect_reason,
            "available": {k: props.get(k) for k in ("RetainAvailable", "WildcardSubscriptionAvailable",
                                                    "SubscriptionIdentifierAvailable",
                                                    "SharedSubscriptionAvailable")}}


def reason_codes():
    # The broker runs with --max-subscriptions 2.
    c = Client("rc")
    nobody = c.publish("rc/nobody", "no one listens")
    codes = {"puback_no_subscribers": nobody}
    codes["suback_ok"] = c.subscribe("rc/a", qos=1)
    # paho itself refuses misplaced wildcards; these two it sends.
    codes["suback_shared_empty_group"] = c.subscribe("$share//rc/x")
    codes["suback_shared_no_filter"] = c.subscribe("$share/g")
    codes["suback_second"] = c.subscribe("rc/b", qos=2)
    codes["suback_quota"] = c.subscribe("rc/c")
    codes["unsuback_ok"] = c.unsubscribe("rc/a")
    codes["unsuback_none"] = c.unsubscribe("rc/never")
    # The same client id again: the older connection is told 0x8E.
    again = Client("rc")
    c.disconnected.wait(TIMEOUT)
    codes["taken_over"] = c.disconnect_reason
    codes["new_one"] = again.connack["reason"]
    return codes


def shutdown():
    c = Client("bye")
    print("connected", flush=True)  # the test stops the broker with SIGTERM now
    if not c.disconnected.wait(TIMEOUT):
        sys.exit("no DISCONNECT")
    return {"reason": c.disconnect_reason}


def clean_start():
    a = Client("cs", expiry=300)
    a.subscribe("cs/t")
    a.close()
    Client("cs-pub").publish("cs/t", "queued")
    fresh = Client("cs", clean_start=True, expiry=300)
    fresh.subscribe("csmark")
    Client("cs-pub2").publish("csmark", "after")
    fresh.wait_messages(1)
    return {"session_present": fresh.connack["session_present"], "got": [m["topic"] for m in fresh.messages]}


def shared_subscriptions():
    # A 5.0 and a 3.1.1 member of one group, and a plain subscriber beside them.
    a = Client("sh-a", manual_ack=True)
    a.subscribe("$share/g/sh/#")
    b = Client("sh-b", protocol=mqtt.MQTTv311)
    b.subscribe("$share/g/sh/#")
    plain = Client("sh-plain")
    plain.subscribe("sh/#")
    pub = Client("sh-pub")
    for i in range(10):
        pub.publish("sh/t", f"s{i}")
    plain.wait_messages(10)
    deadline = time.monotonic() + TIMEOUT
    while len(a.messages) + len(b.messages) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    spread = {"a": len(a.messages), "b": len(b.messages)}
    # a holds its messages unacknowledged and leaves: the group gives them to b [redelivery on member loss].
    held = [m["payload"] for m in a.messages]
    a.c.disconnect()
    a.c.loop_stop()
    b.wait_messages(10)
    payloads = sorted(m["payload"] for m in a.messages[:len(held)] + b.messages)
    return {"spread": spread, "plain": len(plain.messages), "b_total": len(b.messages),
            "held": held, "b_got_held": all(h in [m["payload"] for m in b.messages] for h in held),
            "distinct": sorted(set(payloads)) == sorted(f"s{i}" for i in range(10))}


def mixed_versions():
    old = Client("mx-old", protocol=mqtt.MQTTv311)
    old.subscribe("mx/#", qos=2)
    new = Client("mx-new")
    new.subscribe("mx/#", qos=1)
    new.publish("mx/from5", "five", qos=1, UserProperty=[("k", "v")], ContentType="text/plain")
    old.wait_messages(1)
    new.wait_messages(1)
    Client("mx-old-pub", protocol=mqtt.MQTTv311).c.publish("mx/from3", "three", qos=2).wait_for_publish(TIMEOUT)
    new.wait_messages(2)
    old.wait_messages(2)
    to_old = old.messages[0]
    to_new = [m for m in new.messages if m["topic"] == "mx/from3"][0]
    return {"to_old": [to_old["topic"], to_old["payload"], to_old["qos"]],
            "to_new": [to_new["topic"], to_new["payload"], to_new["qos"], to_new["props"]]}


print(json.dumps(globals()[SCENARIO]()))
