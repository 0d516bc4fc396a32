//! Byte-level checks of the protocol rules with a raw client on our codec: what exactly the server sends.

use std::time::{Duration, Instant};

use skein_codec::*;

use crate::support::*;

#[test]
fn client_id_rules() {
    let broker = Skein::start(&[]);
    // [MQTT-3.1.3-8]: empty id with Clean Session 0 is refused with return code 2.
    let (mut raw, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "", false));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert_eq!(raw.recv(), None, "closed after the refusal");
    // MQTT 3.1 requires an id.
    let (_, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V31, "", true));
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    // [MQTT-3.1.3-6]: empty id with a clean session gets one assigned.
    let (_, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // MQTT 5.0 tells the client the id it got [MQTT-3.2.2-16].
    let (_, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let assigned = ack.properties.assigned_client_identifier.clone().expect("Assigned Client Identifier");
    assert!(!assigned.is_empty());
}

/// Mosquitto's `allow_zero_length_clientid false` and `auto_id_prefix`.
#[test]
fn empty_client_ids_can_be_refused_and_given_ids_carry_the_prefix() {
    let broker = Skein::start(&["--auto-id-prefix", "dev-"]);
    let (_given, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "", true));
    let assigned = ack.properties.assigned_client_identifier.clone().expect("Assigned Client Identifier");
    assert!(assigned.starts_with("dev-") && assigned.len() > 4, "{assigned}");
    let strict = Skein::start(&["--allow-zero-length-clientid", "false"]);
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let (mut raw, ack) = Raw::connect(strict.mqtt, connect_packet(version, "", true));
        assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid, "{version:?}");
        assert_eq!(raw.recv(), None, "closed after the refusal");
    }
    let (_named, ack) = Raw::connect(strict.mqtt, connect_packet(ProtocolVersion::V311, "named", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
}

#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let broker = Skein::start(&[]);
    let mut raw = Raw::connect_tcp(broker.mqtt);
    // CONNECT "MQTT" level 6.
    raw.send_bytes(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0]);
    let got = raw.recv_until_closed();
    assert_eq!(
        got,
        vec![Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::UnsupportedProtocolVersion,
            properties: Properties::default()
        })],
        "[MQTT-3.1.2-2]"
    );
}

#[test]
fn first_packet_must_be_connect() {
    let broker = Skein::start(&[]);
    let mut raw = Raw::connect_tcp(broker.mqtt);
    raw.send(&Packet::PingReq);
    assert_eq!(raw.recv_until_closed(), vec![], "[MQTT-3.1.0-1] closed without an answer");
}

#[test]
fn second_connect_is_a_protocol_violation() {
    let broker = Skein::start(&[]);
    let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "twice", true));
    raw.send(&Packet::Connect(Box::new(connect_packet(ProtocolVersion::V5, "twice", true))));
    assert_eq!(
        raw.recv_until_closed(),
        vec![Packet::Disconnect(Disconnect::new(ReasonCode::ProtocolError))],
        "[MQTT-3.1.0-2]"
    );
}

#[test]
fn malformed_bytes_close_only_that_connection() {
    let broker = Skein::start(&[]);
    let (mut bystander, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "bystander", true));
    bystander.send(&sub_packet(1, &[("calm", QoS::AtLeastOnce)]));
    assert!(matches!(bystander.recv(), Some(Packet::SubAck(_))));

    let cases: Vec<(ProtocolVersion, Vec<u8>, Option<ReasonCode>)> = vec![
        // Reserved flags on PINGREQ.
        (ProtocolVersion::V311, vec![0xc1, 0], None),
        (ProtocolVersion::V5, vec![0xc1, 0], Some(ReasonCode::MalformedPacket)),
        // Remaining length of five bytes.
        (ProtocolVersion::V5, vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01], Some(ReasonCode::MalformedPacket)),
        // Wildcard in a topic name.
        (ProtocolVersion::V5, vec![0x30, 4, 0, 1, b'#', 0], Some(ReasonCode::TopicNameInvalid)),
        // Invalid UTF-8 in a topic name.
        (ProtocolVersion::V311, vec![0x30, 4, 0, 2, 0xc3, 0x28], None),
        // QoS 3.
        (ProtocolVersion::V5, vec![0x36, 6, 0, 1, b't', 0, 1, 0], Some(ReasonCode::MalformedPacket)),
        // SUBSCRIBE without filters.
        (ProtocolVersion::V5, vec![0x82, 3, 0, 1, 0], Some(ReasonCode::ProtocolError)),
    ];
    for (i, (version, bytes, reason)) in cases.into_iter().enumerate() {
        let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(version, &format!("bad-{i}"), true));
        raw.send_bytes(&bytes);
        let got = raw.recv_until_closed();
        let want: Vec<Packet> = reason.map(|r| Packet::Disconnect(Disconnect::new(r))).into_iter().collect();
        assert_eq!(got, want, "case {i}: {bytes:02x?}");
    }
    // The bystander's connection carried on.
    let (mut publisher, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "pub", true));
    publisher.send(&publish("calm", QoS::AtLeastOnce, 1, b"still here"));
    assert_eq!(publisher.recv(), Some(Packet::PubAck(Ack::new(1))));
    assert_eq!(&expect_publish(&mut bystander).payload[..], b"still here");
}

#[test]
fn a_huge_length_claim_is_refused_from_the_header() {
    let broker = Skein::start(&["--max-packet-size", "65536"]);
    let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "huge", true));
    // Claims 256 MiB and sends none of it: the header alone is enough to refuse.
    raw.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
    assert_eq!(raw.recv_until_closed(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::PacketTooLarge))]);
}

#[test]
fn qos1_and_qos2_flows_from_the_server_side() {
    let broker = Skein::start(&[]);
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "s", true));
    sub.send(&sub_packet(1, &[("f/#", QoS::ExactlyOnce)]));
    assert_eq!(
        sub.recv(),
        Some(Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reason_codes: vec![ReasonCode::GrantedQoS2]
        }))
    );
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "p", true));
    // QoS 2 in: PUBREC, then PUBREL/PUBCOMP; the message is delivered once even if the PUBLISH repeats.
    publ.send(&publish("f/2", QoS::ExactlyOnce, 7, b"two"));
    assert_eq!(publ.recv(), Some(Packet::PubRec(Ack::new(7))));
    let mut again = publish("f/2", QoS::ExactlyOnce, 7, b"two");
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publ.send(&again);
    assert_eq!(publ.recv(), Some(Packet::PubRec(Ack::new(7))));
    publ.send(&Packet::PubRel(Ack::new(7)));
    assert_eq!(publ.recv(), Some(Packet::PubComp(Ack::new(7))));
    // QoS 2 out.
    let p = expect_publish(&mut sub);
    assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
    sub.send(&Packet::PubRec(Ack::new(p.packet_id)));
    assert_eq!(sub.recv(), Some(Packet::PubRel(Ack::new(p.packet_id))));
    sub.send(&Packet::PubComp(Ack::new(p.packet_id)));
    // A marker proves the repeated PUBLISH was not delivered a second time.
    publ.send(&publish("f/marker", QoS::AtMostOnce, 0, b"m"));
    assert_eq!(&expect_publish(&mut sub).topic[..], "f/marker");
    // QoS 1 in and out.
    publ.send(&publish("f/1", QoS::AtLeastOnce, 8, b"one"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(8))));
    let p = expect_publish(&mut sub);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let broker = Skein::start(&[]);
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "o", true));
    sub.send(&sub_packet(1, &[("o/#", QoS::AtMostOnce), ("o/+", QoS::AtLeastOnce), ("o/x", QoS::AtMostOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "op", true));
    publ.send(&publish("o/x", QoS::ExactlyOnce, 1, b"once"));
    let p = expect_publish(&mut sub);
    assert_eq!(p.qos, QoS::AtLeastOnce, "[MQTT-3.3.5-1] the highest granted QoS");
    sub.send(&Packet::PubAck(Ack::new(p.packet_id)));
    publ.send(&publish("o/marker", QoS::AtMostOnce, 0, b"m"));
    assert_eq!(&expect_publish(&mut sub).topic[..], "o/marker", "delivered once, not three times");
}

#[test]
fn suback_failure_code_for_a_rejected_filter() {
    let broker = Skein::start(&[]);
    let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "f", true));
    raw.send(&sub_packet(3, &[("ok/+", QoS::AtLeastOnce), ("bad/#/x", QoS::AtMostOnce), ("a+", QoS::AtMostOnce)]));
    let Some(Packet::SubAck(ack)) = raw.recv() else { panic!("SUBACK") };
    assert_eq!(ack.reason_codes[0], ReasonCode::GrantedQoS1);
    // 3.1.1 has one failure code, 0x80, which reads back as UnspecifiedError.
    assert_eq!(ack.reason_codes[1..], [ReasonCode::UnspecifiedError, ReasonCode::UnspecifiedError]);
    // MQTT 5.0 says why.
    let (mut v5, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "f5", true));
    v5.send(&sub_packet(3, &[("bad/#/x", QoS::AtMostOnce)]));
    let Some(Packet::SubAck(ack)) = v5.recv() else { panic!("SUBACK") };
    assert_eq!(ack.reason_codes, vec![ReasonCode::TopicFilterInvalid]);
    // UNSUBSCRIBE of what was and was not subscribed.
    raw.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 4,
        properties: Properties::default(),
        filters: vec!["ok/+".into()],
    }));
    assert!(matches!(raw.recv(), Some(Packet::UnsubAck(a)) if a.packet_id == 4));
    v5.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 5,
        properties: Properties::default(),
        filters: vec!["never".into(), "bad/#/x".into()],
    }));
    let Some(Packet::UnsubAck(a)) = v5.recv() else { panic!("UNSUBACK") };
    assert_eq!(a.reason_codes, vec![ReasonCode::NoSubscriptionExisted, ReasonCode::TopicFilterInvalid]);
}

#[test]
fn duplicate_client_id_closes_the_older_connection() {
    let broker = Skein::start(&[]);
    let (mut first, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "same", true));
    let (mut second, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "same", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        first.recv_until_closed(),
        vec![Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))],
        "[MQTT-3.1.4-2] with 5.0's reason 0x8E"
    );
    second.send(&Packet::PingReq);
    assert_eq!(second.recv(), Some(Packet::PingResp), "the new connection lives on");
    // 3.1.1: the old connection is just closed.
    let (mut old, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "same3", true));
    let _new = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "same3", true));
    assert_eq!(old.recv_until_closed(), vec![]);
}

#[test]
fn session_present_and_resend_with_dup_on_reconnect() {
    let broker = Skein::start(&[]);
    let (mut sub, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "resend", false));
    assert!(!ack.session_present);
    sub.send(&sub_packet(1, &[("r/t", QoS::AtLeastOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "rp", true));
    publ.send(&publish("r/t", QoS::AtLeastOnce, 1, b"unacked"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1))));
    let first = expect_publish(&mut sub);
    assert!(!first.dup);
    drop(sub); // no PUBACK, no DISCONNECT
    let (mut sub, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "resend", false));
    assert!(ack.session_present, "[MQTT-3.2.2-2]");
    let again = expect_publish(&mut sub);
    assert!(again.dup, "[MQTT-4.4.0-1] resent with DUP");
    assert_eq!((again.packet_id, &again.payload[..]), (first.packet_id, &b"unacked"[..]));
    sub.send(&Packet::PubAck(Ack::new(again.packet_id)));
    // A clean session discards it all [MQTT-3.1.2-6].
    drop(sub);
    let (_, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "resend", true));
    assert!(!ack.session_present);
}

#[test]
fn keep_alive_timeout_closes_and_fires_the_will() {
    let broker = Skein::start(&[]);
    let (mut watcher, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "watcher", true));
    watcher.send(&sub_packet(1, &[("lost/#", QoS::AtMostOnce)]));
    assert!(matches!(watcher.recv(), Some(Packet::SubAck(_))));
    let mut c = connect_packet(ProtocolVersion::V5, "silent", true);
    c.keep_alive = 1;
    c.will = Some(Will {
        topic: "lost/silent".into(),
        payload: Bytes::from_static(b"timed out"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (mut silent, _) = Raw::connect(broker.mqtt, c);
    // Say nothing: after 1.5 s the server closes with 0x8D [MQTT-3.1.2-24] and publishes the will.
    assert_eq!(silent.recv_until_closed(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::KeepAliveTimeout))]);
    let will = expect_publish(&mut watcher);
    assert_eq!((&will.topic[..], &will.payload[..]), ("lost/silent", &b"timed out"[..]));
}

#[test]
fn a_client_that_keeps_talking_stays_past_its_keep_alive_then_times_out_from_its_last_packet() {
    let broker = Skein::start(&[]);
    let mut c = connect_packet(ProtocolVersion::V5, "chatty", true);
    c.keep_alive = 1;
    let (mut client, _) = Raw::connect(broker.mqtt, c);
    // A PINGREQ every 0.4 s for 4 s: well past 1.5 s, and past the first two times the server looks.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        client.send(&Packet::PingReq);
        assert_eq!(client.recv(), Some(Packet::PingResp), "still connected after {:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then silence: closed with 0x8D [MQTT-3.1.2-24], counted from the last packet, not from the connect.
    let quiet = Instant::now();
    assert_eq!(client.recv_until_closed(), vec![Packet::Disconnect(Disconnect::new(ReasonCode::KeepAliveTimeout))]);
    assert!(quiet.elapsed() >= Duration::from_millis(1000), "closed {:?} after the last packet", quiet.elapsed());
}

#[test]
fn max_keepalive_refuses_3x_and_tells_5() {
    let broker = Skein::start(&["--max-keepalive", "30"]);
    let mut c = connect_packet(ProtocolVersion::V311, "ka", true);
    c.keep_alive = 60;
    let (_, ack) = Raw::connect(broker.mqtt, c);
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid, "Mosquitto's answer: return code 2");
    let mut c = connect_packet(ProtocolVersion::V5, "ka5", true);
    c.keep_alive = 60;
    let (_, ack) = Raw::connect(broker.mqtt, c);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
}

#[test]
fn message_size_limit_drops_but_completes_the_flow() {
    let broker = Skein::start(&["--message-size-limit", "4"]);
    let mut sub = raw_subscriber(broker.mqtt, ProtocolVersion::V5, "ms", &[("m/#", QoS::AtLeastOnce)]);
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "mp", true));
    publ.send(&publish("m/big", QoS::AtLeastOnce, 1, b"too long"));
    let Some(Packet::PubAck(ack)) = publ.recv() else { panic!("PUBACK") };
    assert_eq!(ack.reason_code, ReasonCode::ImplementationSpecificError);
    publ.send(&publish("m/ok", QoS::AtMostOnce, 0, b"fit"));
    assert_eq!(&expect_publish(&mut sub).topic[..], "m/ok", "the large one was not delivered");
}

#[test]
fn max_connections_refuses_the_next_client() {
    let broker = Skein::start(&["--max-connections", "1"]);
    let (_one, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "one", true));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (_, ack) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "two", true));
    assert_eq!(ack.reason_code, ReasonCode::ServerBusy);
}

#[test]
fn max_queued_messages_bounds_a_stuck_subscriber() {
    let broker = Skein::start(&["--max-queued-messages", "5", "--max-inflight-messages", "2"]);
    let (mut stuck, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "stuck", false));
    stuck.send(&sub_packet(1, &[("s/t", QoS::AtLeastOnce)]));
    assert!(matches!(stuck.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "sp", true));
    for i in 1..=50u16 {
        publ.send(&publish("s/t", QoS::AtLeastOnce, i, b"m"));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))), "the publisher is never held up");
    }
    // Two in flight (never acknowledged) plus five queued; the other 43 were dropped and counted.
    let a = expect_publish(&mut stuck);
    let b = expect_publish(&mut stuck);
    assert_eq!((a.packet_id, b.packet_id), (1, 2));
    stuck.send(&Packet::PubAck(Ack::new(1)));
    stuck.send(&Packet::PubAck(Ack::new(2)));
    let mut rest = 0;
    while rest < 5 {
        let p = expect_publish(&mut stuck);
        stuck.send(&Packet::PubAck(Ack::new(p.packet_id)));
        rest += 1;
    }
    publ.send(&publish("s/t", QoS::AtMostOnce, 0, b"marker"));
    assert_eq!(&expect_publish(&mut stuck).payload[..], b"marker", "exactly 2 + 5 were kept");
}

#[test]
fn max_queued_bytes_from_a_mosquitto_conf_bounds_an_offline_session() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, "allow_anonymous true\nmax_queued_bytes 100\n").unwrap();
    let broker = Skein::start(&["--config", conf.to_str().unwrap()]);
    let (sub, _) = mosquitto_sub(&broker, &["-i", "away", "-c", "-q", "1", "-t", "qb/#", "-E"]);
    sub.wait_output(WAIT);
    // 40 bytes each while the session is offline: queued while under 100 bytes, so three (120 bytes); the other
    // two are dropped and counted.
    for i in 1..=5 {
        mosquitto_pub(&broker, &["-t", "qb/t", "-q", "1", "-m", &format!("{i:0>40}")]);
    }
    let (sub, out) = mosquitto_sub_started(&broker, &["-i", "away", "-c", "-q", "1", "-t", "qb/#", "-C", "4"]);
    out.wait_messages(3);
    mosquitto_pub(&broker, &["-t", "qb/t", "-q", "1", "-m", "marker"]);
    sub.wait_output(WAIT);
    let expected: Vec<String> = (1..=3).map(|i| format!("{i:0>40}")).chain(["marker".to_string()]).collect();
    assert_eq!(out.final_messages(), expected);
}

#[test]
fn shared_subscription_spreads_messages_over_its_members() {
    let broker = Skein::start(&[]);
    let mut members = Vec::new();
    for name in ["m1", "m2"] {
        let (mut m, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, name, true));
        m.send(&sub_packet(1, &[("$share/g/sh/#", QoS::AtMostOnce)]));
        assert!(matches!(m.recv(), Some(Packet::SubAck(a)) if a.reason_codes == [ReasonCode::Success]));
        members.push(m);
    }
    let (mut plain, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "plain", true));
    plain.send(&sub_packet(1, &[("sh/#", QoS::AtMostOnce)]));
    assert!(matches!(plain.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "shp", true));
    for i in 0..10u8 {
        let payload: &'static [u8] = [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"][i as usize];
        publ.send(&publish("sh/t", QoS::AtMostOnce, 0, payload));
    }
    // The ordinary subscriber gets all ten; the group gets each once, round-robin: five each.
    for i in 0..10u8 {
        assert_eq!(expect_publish(&mut plain).payload[..], [b'0' + i]);
    }
    let mut seen = Vec::new();
    for m in &mut members {
        for _ in 0..5 {
            seen.push(expect_publish(m).payload[0]);
        }
    }
    seen.sort();
    assert_eq!(seen, (b'0'..=b'9').collect::<Vec<_>>());
    // Nothing more for either member: a marker sent to each proves it.
    for m in &mut members {
        m.send(&Packet::PingReq);
        assert_eq!(m.recv(), Some(Packet::PingResp));
    }
}

#[test]
fn a_shared_member_that_leaves_hands_its_unacknowledged_messages_to_another() {
    let broker = Skein::start(&[]);
    let mut members = Vec::new();
    for name in ["keeps", "leaves"] {
        let (mut m, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, name, true));
        m.send(&sub_packet(1, &[("$share/g/job/#", QoS::AtLeastOnce)]));
        assert!(matches!(m.recv(), Some(Packet::SubAck(_))));
        members.push(m);
    }
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "jobs", true));
    let payloads: [&'static [u8]; 4] = [b"a", b"b", b"c", b"d"];
    for (i, p) in payloads.iter().enumerate() {
        publ.send(&publish("job/x", QoS::AtLeastOnce, i as u16 + 1, p));
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i as u16 + 1))));
    }
    // Two each, in turn. "leaves" reads its two, acknowledges neither, and goes away.
    let mut leaves = members.pop().unwrap();
    let mut keeps = members.pop().unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = expect_publish(&mut keeps);
        keeps.send(&Packet::PubAck(Ack::new(p.packet_id)));
        got.push(p.payload[0]);
    }
    let left: Vec<u8> = (0..2).map(|_| expect_publish(&mut leaves).payload[0]).collect();
    drop(leaves);
    // Its two come to the member that stays; the group got every message.
    for _ in 0..2 {
        let p = expect_publish(&mut keeps);
        assert!(left.contains(&p.payload[0]), "{:?} was not one of those left: {left:?}", p.payload);
        keeps.send(&Packet::PubAck(Ack::new(p.packet_id)));
        got.push(p.payload[0]);
    }
    got.sort();
    assert_eq!(got, b"abcd");
}

#[test]
fn topic_aliases_towards_a_client_that_allows_them() {
    let broker = Skein::start(&[]);
    let mut c = connect_packet(ProtocolVersion::V5, "aliased", true);
    c.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = Raw::connect(broker.mqtt, c);
    sub.send(&sub_packet(1, &[("al/#", QoS::AtMostOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "al-pub", true));
    for topic in ["al/a", "al/a", "al/b", "al/c", "al/a"] {
        publ.send(&publish(topic, QoS::AtMostOnce, 0, b"x"));
    }
    let got: Vec<(String, Option<u16>)> = (0..5)
        .map(|_| {
            let p = expect_publish(&mut sub);
            (p.topic.to_string(), p.properties.topic_alias)
        })
        .collect();
    let want = [("al/a", Some(1)), ("", Some(1)), ("al/b", Some(2)), ("al/c", None), ("", Some(1))];
    let want: Vec<(String, Option<u16>)> = want.iter().map(|(t, a)| (t.to_string(), *a)).collect();
    assert_eq!(got, want, "two aliases, then full topics; a known topic goes by its alias alone");
}

#[test]
fn a_clients_receive_maximum_and_maximum_packet_size_bound_what_it_is_sent() {
    let broker = Skein::start(&[]);
    let mut c = connect_packet(ProtocolVersion::V5, "small", true);
    c.properties.receive_maximum = Some(2);
    c.properties.maximum_packet_size = Some(64);
    let (mut sub, _) = Raw::connect(broker.mqtt, c);
    sub.send(&sub_packet(1, &[("flow/#", QoS::AtLeastOnce)]));
    assert!(matches!(sub.recv(), Some(Packet::SubAck(_))));
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "flow-pub", true));
    // One too large for the client (dropped for it [MQTT-3.1.2-25]), then four that fit.
    publ.send(&publish("flow/big", QoS::AtLeastOnce, 1, &[b'x'; 100]));
    for (i, p) in [b"1", b"2", b"3", b"4"].iter().enumerate() {
        publ.send(&publish("flow/t", QoS::AtLeastOnce, i as u16 + 2, *p));
    }
    for i in 1..=5 {
        assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(i))));
    }
    // Two in flight at most [MQTT-3.3.4-9]: the third comes only after an acknowledgement.
    let first = expect_publish(&mut sub);
    let second = expect_publish(&mut sub);
    assert_eq!((&first.payload[..], &second.payload[..]), (&b"1"[..], &b"2"[..]), "the big one never came");
    sub.send(&Packet::PingReq);
    assert_eq!(sub.recv(), Some(Packet::PingResp), "nothing beyond the window before an acknowledgement");
    sub.send(&Packet::PubAck(Ack::new(first.packet_id)));
    assert_eq!(&expect_publish(&mut sub).payload[..], b"3");
}

#[test]
fn a_5_0_message_reaches_a_3_1_1_subscriber_and_back() {
    let broker = Skein::start(&[]);
    let (mut v3, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, "old", true));
    v3.send(&sub_packet(1, &[("mix/#", QoS::ExactlyOnce)]));
    assert!(matches!(v3.recv(), Some(Packet::SubAck(_))));
    let (mut v5, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, "new", true));
    v5.send(&sub_packet(1, &[("mix/#", QoS::AtLeastOnce)]));
    assert!(matches!(v5.recv(), Some(Packet::SubAck(_))));
    // From 5.0, with properties: the 3.1.1 subscriber gets topic and payload (3.1.1 has no properties).
    let mut p = match publish("mix/from5", QoS::AtLeastOnce, 1, b"five") {
        Packet::Publish(p) => p,
        _ => unreachable!(),
    };
    p.properties.user_properties = vec![("k".into(), "v".into())];
    p.properties.content_type = Some("text/plain".into());
    v5.send(&Packet::Publish(p));
    assert!(matches!(v5.recv(), Some(Packet::PubAck(_)) | Some(Packet::Publish(_))));
    let got = expect_publish(&mut v3);
    assert_eq!((&*got.topic, &got.payload[..], got.qos), ("mix/from5", &b"five"[..], QoS::AtLeastOnce));
    v3.send(&Packet::PubAck(Ack::new(got.packet_id)));
    // From 3.1.1 at QoS 2: the 5.0 subscriber gets it at its granted QoS 1, with no properties.
    v3.send(&publish("mix/from3", QoS::ExactlyOnce, 7, b"three"));
    // v3 is subscribed to mix/# itself, so its own message may reach it before or after its PUBREC.
    loop {
        match v3.recv() {
            Some(Packet::PubRec(ack)) => {
                assert_eq!(ack, Ack::new(7));
                break;
            }
            Some(Packet::Publish(own)) if &*own.topic == "mix/from3" => {}
            other => panic!("expected PUBREC 7, got {other:?}"),
        }
    }
    v3.send(&Packet::PubRel(Ack::new(7)));
    let mut seen = None;
    while seen.is_none() {
        match v5.recv() {
            Some(Packet::Publish(p)) if &*p.topic == "mix/from3" => seen = Some(p),
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    let p = seen.unwrap();
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"three"[..]));
    assert!(p.properties.user_properties.is_empty() && p.properties.content_type.is_none());
}

#[test]
fn unreleased_qos2_messages_beyond_our_receive_maximum_close_the_connection() {
    let broker = Skein::start(&["--max-inflight-messages", "5"]);
    // Someone listens, so every PUBREC is a plain success.
    let _sub = raw_subscriber(broker.mqtt, ProtocolVersion::V311, "rm-sub", &[("rm/#", QoS::AtMostOnce)]);
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let (mut c, connack) = Raw::connect(broker.mqtt, connect_packet(version, "rm", true));
        if version.is_v5() {
            assert_eq!(connack.properties.receive_maximum, Some(5), "Receive Maximum is max_inflight_messages");
        }
        for id in 1..=5 {
            c.send(&publish("rm/t", QoS::ExactlyOnce, id, b"x"));
            assert_eq!(c.recv(), Some(Packet::PubRec(Ack::new(id))));
        }
        // A repeat of an unreleased one is not a new one [MQTT-4.3.3-10].
        c.send(&publish("rm/t", QoS::ExactlyOnce, 3, b"x"));
        assert_eq!(c.recv(), Some(Packet::PubRec(Ack::new(3))));
        // Once released, the identifier and the slot are free again.
        c.send(&Packet::PubRel(Ack::new(1)));
        assert_eq!(c.recv(), Some(Packet::PubComp(Ack::new(1))));
        c.send(&publish("rm/t", QoS::ExactlyOnce, 6, b"x"));
        assert_eq!(c.recv(), Some(Packet::PubRec(Ack::new(6))));
        // The sixth unreleased one: MQTT 5.0 section 3.3.4, DISCONNECT 0x93; a 3.1.1 client is closed.
        c.send(&publish("rm/t", QoS::ExactlyOnce, 7, b"x"));
        let rest = c.recv_until_closed();
        if version.is_v5() {
            assert!(
                matches!(rest.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::ReceiveMaximumExceeded),
                "{rest:?}"
            );
        } else {
            assert!(rest.is_empty(), "{rest:?}");
        }
    }
}

/// [MQTT-3.2.2-13]: with retained messages off (Retain Available 0), a 5.0 CONNECT whose will asks to be retained is
/// refused with 0x9A; one without Will Retain is let in and told Retain Available 0.
#[test]
fn a_retained_will_is_refused_where_retain_is_not_available() {
    let broker = Skein::start(&["--allow-anonymous", "true", "--retain-available", "false"]);
    let with_will = |retain: bool| {
        let mut c = connect_packet(ProtocolVersion::V5, "will-retain", true);
        c.will = Some(Will {
            topic: "w".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtMostOnce,
            retain,
            properties: Properties::default(),
        });
        c
    };
    let (mut raw, ack) = Raw::connect(broker.mqtt, with_will(true));
    assert_eq!(ack.reason_code, ReasonCode::RetainNotSupported);
    assert_eq!(raw.recv(), None, "and closed");
    let (_, ack) = Raw::connect(broker.mqtt, with_will(false));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(ack.properties.retain_available, Some(0));
}
