//! State in sled survives restarts, and a `kill -9` loses nothing the broker had acknowledged.

use skein_codec::*;

use crate::support::*;

fn publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8], retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

fn subscribe(raw: &mut Raw, filter: &str, qos: QoS) {
    raw.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), SubscriptionOptions { qos, ..Default::default() })],
    }));
    assert!(matches!(raw.recv(), Some(Packet::SubAck(_))));
}

pub(crate) fn recv_publish(raw: &mut Raw) -> Publish {
    match raw.recv() {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn retained_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    mosquitto_pub(&broker, &["-t", "keep/a", "-r", "-q", "1", "-m", "retained across restart"]);
    assert_eq!(broker.stop(), Some(0), "clean exit on SIGTERM");
    let broker = Skein::start_in(dir.path(), &[]);
    let (sub, out) = mosquitto_sub(&broker, &["-t", "keep/#", "-C", "1", "-v"]);
    out.wait_for(|l| l == "keep/a retained across restart");
    sub.wait_output(WAIT);
}

#[test]
fn kill_9_loses_no_acknowledged_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    // A persistent subscriber that leaves; then acknowledged QoS 1 and QoS 2 publishes and a retained one.
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "keeper", false));
    subscribe(&mut sub, "k/#", QoS::ExactlyOnce);
    sub.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(sub.recv(), None);
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "kp", true));
    for i in 1..=20u16 {
        publ.send(&publish("k/1", QoS::AtLeastOnce, i, b"one", false));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))));
    }
    publ.send(&publish("k/2", QoS::ExactlyOnce, 100, b"two", false));
    assert_eq!(publ.recv(), Some(Packet::PubRec(Ack::new(100))));
    publ.send(&publish("k/r", QoS::AtLeastOnce, 101, b"kept", true));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(101))));
    broker.kill9();

    let broker = Skein::start_in(dir.path(), &[]);
    let (mut sub, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "keeper", false));
    assert!(ack.session_present, "the session came back from disk");
    let mut got = Vec::new();
    let mut released = 0;
    while got.len() < 22 || released < 1 {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtLeastOnce => sub.send(&Packet::PubAck(Ack::new(p.packet_id))),
                    QoS::ExactlyOnce => sub.send(&Packet::PubRec(Ack::new(p.packet_id))),
                    QoS::AtMostOnce => panic!("QoS 0 was not published"),
                }
                got.push((p.topic.to_string(), p.payload.clone()));
            }
            Some(Packet::PubRel(a)) => {
                sub.send(&Packet::PubComp(Ack::new(a.packet_id)));
                released += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.iter().filter(|(t, _)| t == "k/1").count(), 20, "all twenty QoS 1 messages, once each");
    assert!(got.iter().any(|(t, p)| t == "k/2" && &p[..] == b"two"));
    assert!(got.iter().any(|(t, p)| t == "k/r" && &p[..] == b"kept"));
    // And the retained message is retained.
    let (mut late, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "late", true));
    subscribe(&mut late, "k/r", QoS::AtMostOnce);
    let p = recv_publish(&mut late);
    assert!(p.retain && &p.payload[..] == b"kept");
}

/// A connected persistent subscriber: what it has not acknowledged when the broker is killed comes back with its
/// packet identifiers, although its copies were kept in memory until the publisher's acknowledgement needed them.
#[test]
fn kill_9_loses_no_acknowledged_message_in_flight_to_a_connected_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "reader", false));
    subscribe(&mut sub, "f/#", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "writer", true));
    let mut sent = std::collections::BTreeMap::new();
    for i in 1..=10u16 {
        publ.send(&publish_owned("f/x", QoS::AtLeastOnce, i, format!("m{i}")));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))));
        let p = recv_publish(&mut sub);
        // The first five are acknowledged, the rest stay in flight.
        if i <= 5 {
            sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
        }
        sent.insert(String::from_utf8(p.payload.to_vec()).unwrap(), p.packet_id);
    }
    // The sent state of a message the subscriber has (its packet identifier) is written by the next flush, not
    // waited for: one more durable publish makes that flush happen before the kill. Whether m11 itself was sent is
    // not known here.
    publ.send(&publish_owned("f/x", QoS::AtLeastOnce, 11, "m11"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(11))));
    broker.kill9();

    let broker = Skein::start_in(dir.path(), &[]);
    let (mut sub, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "reader", false));
    assert!(ack.session_present);
    let mut again = std::collections::BTreeMap::new();
    while !(6..=11).all(|i| again.contains_key(&format!("m{i}"))) {
        let p = recv_publish(&mut sub);
        sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
        again.insert(String::from_utf8(p.payload.to_vec()).unwrap(), p);
    }
    for (payload, p) in &again {
        // One the subscriber had acknowledged may come again (QoS 1 allows it, if its removal had not reached the
        // disk); every one it had is resent as a resend, under the identifier it first had [MQTT-4.4.0-1].
        if let Some(id) = sent.get(payload) {
            assert!(p.dup && p.packet_id == *id, "{payload} was sent as {id} first; now {p:?}");
        }
    }
}

#[test]
fn persistent_session_and_its_queue_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    let (sub, _) = mosquitto_sub(&broker, &["-i", "traveller", "-c", "-q", "1", "-t", "trip/#", "-E"]);
    sub.wait_output(WAIT);
    for i in 0..3 {
        mosquitto_pub(&broker, &["-t", "trip/x", "-q", "1", "-m", &format!("waiting {i}")]);
    }
    assert_eq!(broker.stop(), Some(0));
    let broker = Skein::start_in(dir.path(), &[]);
    let (sub, out) = mosquitto_sub(&broker, &["-i", "traveller", "-c", "-q", "1", "-t", "trip/#", "-C", "4"]);
    out.wait_for(|l| l == "waiting 2");
    // The subscription itself came back too: a new message reaches the resumed session.
    mosquitto_pub(&broker, &["-t", "trip/y", "-q", "1", "-m", "after restart"]);
    out.wait_for(|l| l == "after restart");
    sub.wait_output(WAIT);
    assert_eq!(out.final_messages(), vec!["waiting 0", "waiting 1", "waiting 2", "after restart"]);
}

#[test]
fn persistence_off_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &["--persistence", "false"]);
    mosquitto_pub(&broker, &["-t", "gone/a", "-r", "-m", "x"]);
    broker.stop();
    assert!(!dir.path().join("sled").exists(), "nothing written with persistence off");
}

/// MQTT 5.0 sessions keep their expiry across a restart, and the time the node was down counts.
#[test]
fn session_expiry_counts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    let left_at = std::time::Instant::now();
    for (id, expiry) in [("lasting", 300), ("brief", 2)] {
        let mut c = connect_packet(ProtocolVersion::V5, id, true);
        c.properties.session_expiry_interval = Some(expiry);
        let (mut raw, _) = Raw::connect(broker.mqtt, c);
        subscribe(&mut raw, "x", QoS::AtLeastOnce);
        raw.send(&Packet::Disconnect(Disconnect::default()));
        assert_eq!(raw.recv(), None);
    }
    assert_eq!(broker.stop(), Some(0));
    let broker = Skein::start_in(dir.path(), &[]);
    let resume = |id: &str| {
        let mut c = connect_packet(ProtocolVersion::V5, id, false);
        c.properties.session_expiry_interval = Some(300);
        Raw::connect(broker.mqtt, c).1.session_present
    };
    // Past "brief"'s two seconds, counted from its disconnect before the restart: the interval is what is tested.
    std::thread::sleep(std::time::Duration::from_millis(2600).saturating_sub(left_at.elapsed()));
    assert!(resume("lasting"), "a 300 s session is still there after the restart");
    assert!(!resume("brief"), "a 2 s session expired, the restart notwithstanding");
}

/// A message's expiry interval counts across a restart as a session's does: a retained message or one queued for
/// a session that expired while the node was down is gone after it, and one that has not kept only what is left
/// of its interval. They used to start their intervals again when read back.
#[test]
fn message_expiry_counts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    let published_at = std::time::Instant::now();
    let mut c = connect_packet(ProtocolVersion::V5, "away", true);
    c.properties.session_expiry_interval = Some(300);
    let (mut away, _) = Raw::connect(broker.mqtt, c);
    subscribe(&mut away, "q/#", QoS::AtLeastOnce);
    away.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(away.recv(), None);
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "pub", true));
    let mut id = 0;
    for (topic, retain) in [("exp", true), ("q", false)] {
        for (name, expiry) in [("brief", 2), ("lasting", 300)] {
            id += 1;
            let Packet::Publish(mut p) = publish("", QoS::AtLeastOnce, id, b"m", retain) else { unreachable!() };
            p.topic = format!("{topic}/{name}").into();
            p.properties.message_expiry_interval = Some(expiry);
            publ.send(&Packet::Publish(p));
            assert!(matches!(publ.recv(), Some(Packet::PubAck(a)) if a.packet_id == id));
        }
    }
    drop(publ);
    assert_eq!(broker.stop(), Some(0));
    // Past "brief"'s two seconds, counted from its publish before the restart: the interval is what is tested.
    std::thread::sleep(std::time::Duration::from_millis(2600).saturating_sub(published_at.elapsed()));
    let broker = Skein::start_in(dir.path(), &[]);
    // Everything the broker sends before a marker published after it: the retained set, or the session's queue;
    // each with what is left of its 300 s.
    let until_marker = |raw: &mut Raw, marker: &str| -> Vec<String> {
        let got = until_marker(raw, marker);
        for p in &got {
            let left = p.properties.message_expiry_interval.expect("the expiry interval is sent on");
            assert!((290..=298).contains(&left), "{} has {left} s left, not what is left of 300", p.topic);
        }
        got.into_iter().map(|p| p.topic.to_string()).collect()
    };
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "later", true));
    subscribe(&mut sub, "exp/#", QoS::AtLeastOnce);
    assert_eq!(until_marker(&mut sub, "exp/zz"), ["exp/lasting"], "the expired retained message is gone");
    let mut c = connect_packet(ProtocolVersion::V5, "away", false);
    c.properties.session_expiry_interval = Some(300);
    let (mut away, ack) = Raw::connect(broker.mqtt, c);
    assert!(ack.session_present);
    assert_eq!(until_marker(&mut away, "q/zz"), ["q/lasting"], "the expired queued message is gone");
}

/// Many publishers at once into a persistent session, persistence on: every acknowledgement waits for a flush, and
/// the flushes of all connections overlap. With sled's own flush_async this hung within a second (nothing was
/// acknowledged again); every PUBACK must come, and the subscriber gets every message.
#[test]
fn concurrent_durable_publishes_are_all_acknowledged() {
    const PUBLISHERS: u16 = 100;
    const EACH: u16 = 100;
    let dir = tempfile::tempdir().unwrap();
    // Room for every message in the subscriber's queue: this is about acknowledgements, not the drop policy.
    let broker = Skein::start_in(dir.path(), &["--max-queued-messages", "20000"]);
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "durable-sub", false));
    subscribe(&mut sub, "load/#", QoS::AtLeastOnce);
    let total = usize::from(PUBLISHERS) * usize::from(EACH);
    let receiver = std::thread::spawn(move || {
        let mut got = 0;
        while got < total {
            match sub.recv() {
                Some(Packet::Publish(p)) => {
                    sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
                    got += 1;
                }
                Some(_) => {}
                None => panic!("the subscriber was closed after {got} messages"),
            }
        }
        got
    });
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|n| {
            let addr = broker.mqtt;
            std::thread::spawn(move || {
                let (mut c, _) = Raw::connect(addr, connect_packet(ProtocolVersion::V311, &format!("load-{n}"), true));
                // Ten in flight at a time, so the connections' flushes overlap.
                for i in 1..=EACH {
                    c.send(&publish(&format!("load/{n}"), QoS::AtLeastOnce, i, b"durable", false));
                    if i > 10 {
                        assert_eq!(c.recv(), Some(Packet::PubAck(Ack::new(i - 10))), "publisher {n}");
                    }
                }
                for i in EACH - 9..=EACH {
                    assert_eq!(c.recv(), Some(Packet::PubAck(Ack::new(i))), "publisher {n}");
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().expect("every publish acknowledged");
    }
    assert_eq!(receiver.join().expect("every message delivered"), total);
}

/// A client that does not wait for its acknowledgements: reads whose PUBACKs wait for the store (a persistent
/// subscriber is away, so each message is stored) overlap with later reads, whose answers (a PUBACK for a topic
/// nobody stores, a SUBACK, a PINGRESP, a PUBREC) must still come after them, in the order of the packets
/// [MQTT-4.6.0-2]; a DISCONNECT right after is answered only once everything before it is acknowledged.
#[test]
fn acknowledgements_keep_their_order_while_stores_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Skein::start_in(dir.path(), &["--max-queued-messages", "5000"]);
    let (mut away, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "away", false));
    subscribe(&mut away, "stored/#", QoS::AtLeastOnce);
    away.send(&Packet::Disconnect(Disconnect::default()));
    assert_eq!(away.recv(), None);

    let (mut c, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "hasty", true));
    let mut expected = Vec::new();
    for i in 1..=600u16 {
        let packet = match i % 6 {
            0 => Packet::PingReq,
            1 => publish("unstored/x", QoS::AtLeastOnce, i, b"nobody keeps this", false),
            // Ten QoS 2 exchanges: the client releases none here, and the broker allows 20 at a time.
            2 if i <= 60 => publish("stored/y", QoS::ExactlyOnce, i, b"kept for away", false),
            3 => Packet::Subscribe(Subscribe {
                packet_id: i,
                properties: Properties::default(),
                filters: vec![("unstored/#".into(), SubscriptionOptions::default())],
            }),
            _ => publish("stored/x", QoS::AtLeastOnce, i, b"kept for away", false),
        };
        expected.push(match &packet {
            Packet::PingReq => "PINGRESP".to_string(),
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => format!("PUBREC {i}"),
            Packet::Subscribe(_) => format!("SUBACK {i}"),
            _ => format!("PUBACK {i}"),
        });
        c.send(&packet);
    }
    c.send(&Packet::Disconnect(Disconnect::default()));
    let mut got = Vec::new();
    while let Some(p) = c.recv() {
        match p {
            Packet::PingResp => got.push("PINGRESP".to_string()),
            Packet::PubRec(a) => got.push(format!("PUBREC {}", a.packet_id)),
            Packet::SubAck(a) => got.push(format!("SUBACK {}", a.packet_id)),
            Packet::PubAck(a) => got.push(format!("PUBACK {}", a.packet_id)),
            // The client's own subscription to unstored/# gets its later publishes: not acknowledgements.
            Packet::Publish(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, expected, "every packet answered, in the order sent");

    // And what was acknowledged for the away session is there.
    let (mut back, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "away", false));
    assert!(ack.session_present);
    let mut stored = 0;
    while stored < 300 {
        let p = recv_publish(&mut back);
        match p.qos {
            QoS::AtLeastOnce => back.send(&Packet::PubAck(Ack::new(p.packet_id))),
            QoS::ExactlyOnce => back.send(&Packet::PubRec(Ack::new(p.packet_id))),
            QoS::AtMostOnce => panic!("published at QoS 1 and 2 only"),
        }
        stored += 1;
    }
}

/// [MQTT-4.3.3-10] over a clean restart: a QoS 2 PUBLISH of a persistent session's client whose PUBREL had not
/// come is, repeated after the restart, acknowledged and not delivered again; its identifier, once released, is
/// free for a new message.
#[test]
fn an_unreleased_qos_2_publish_repeated_after_a_restart_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Skein::start_in(dir.path(), &[]);
    let mut sub = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "q2r-sub", false)).0;
    subscribe(&mut sub, "q2r/#", QoS::AtMostOnce);
    let (mut p, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "q2r-pub", false));
    p.send(&publish("q2r/x", QoS::ExactlyOnce, 9, b"once", false));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
    assert_eq!(&recv_publish(&mut sub).payload[..], b"once");
    drop((p, sub));
    assert_eq!(broker.stop(), Some(0), "clean exit on SIGTERM");

    let broker = Skein::start_in(dir.path(), &[]);
    let (mut sub, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "q2r-sub", false));
    assert!(ack.session_present);
    let (mut p, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "q2r-pub", false));
    assert!(ack.session_present);
    let Packet::Publish(mut again) = publish("q2r/x", QoS::ExactlyOnce, 9, b"once", false) else { unreachable!() };
    again.dup = true;
    p.send(&Packet::Publish(again));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
    p.send(&Packet::PubRel(Ack::new(9)));
    assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == 9));
    p.send(&publish("q2r/end", QoS::ExactlyOnce, 9, b"end", false));
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
    let next = recv_publish(&mut sub);
    assert_eq!((&*next.topic, &next.payload[..]), ("q2r/end", &b"end"[..]), "the repeat was not delivered again");
}
