//! Hostile clients: silent or byte-by-byte connections, and many huge length claims. Each affects only its own
//! connection; the node's memory stays bounded and other clients carry on. (Malformed packets, one per rule, are
//! in protocol.rs; every decode rule is in the codec's tests and fuzz corpus.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use skein_codec::*;

use crate::support::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A subscriber and a publisher on the same broker exchange one QoS 1 message.
fn round_trip(broker: &Skein, tag: &str) {
    let (mut sub, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, &format!("s-{tag}"), true));
    assert_eq!(subscribe(&mut sub, "calm"), ReasonCode::GrantedQoS1);
    let (mut publ, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, &format!("p-{tag}"), true));
    publ.send(&publish("calm", QoS::AtLeastOnce, 1, b"still here"));
    assert_eq!(publ.recv(), Some(Packet::PubAck(Ack::new(1))));
    assert!(matches!(sub.recv(), Some(Packet::Publish(p)) if &p.payload[..] == b"still here"));
}

#[test]
fn silent_and_byte_by_byte_clients_are_dropped_at_the_connect_timeout() {
    let broker = Skein::start(&["--connect-timeout", "1"]);
    // Half-open: connected, never a byte.
    let mut silent = TcpStream::connect(broker.mqtt).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    // Slow loris: a CONNECT one byte every 150 ms takes longer than the timeout to arrive.
    let mut connect = BytesMut::new();
    Packet::Connect(Box::new(connect_packet(ProtocolVersion::V311, "slow-loris", true)))
        .encode(ProtocolVersion::V311, &mut connect)
        .unwrap();
    let addr = broker.mqtt;
    let slow = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        for (i, b) in connect.iter().enumerate() {
            // Once the broker has closed, a write fails (the first one after the close draws a reset).
            if s.write_all(&[*b]).is_err() {
                return (i, connect.len());
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        (connect.len(), connect.len())
    });
    let mut buf = [0u8; 16];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)), "the silent connection was closed");
    let (sent, total) = slow.join().unwrap();
    assert!(sent < total, "closed before its CONNECT was complete ({sent} of {total} bytes)");
    round_trip(&broker, "after-loris");
}

#[test]
fn many_huge_length_claims_keep_memory_bounded() {
    let broker = Skein::start(&[]);
    round_trip(&broker, "before");
    let before = rss_kib(broker.pid());
    // 200 clients each claim a 256 MiB PUBLISH (allowed: no max_packet_size) and send 4 KiB of it.
    let mut held = Vec::new();
    for i in 0..200 {
        let (mut raw, _) = Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V311, &format!("huge-{i}"), true));
        let mut bytes = vec![0x30, 0xff, 0xff, 0xff, 0x7f, 0, 1, b't'];
        bytes.resize(4096, b'x');
        raw.send_bytes(&bytes);
        held.push(raw);
    }
    round_trip(&broker, "during");
    let grown = rss_kib(broker.pid()).saturating_sub(before);
    // What was sent is 800 KiB; the broker buffers what arrives, never what is claimed.
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB for 200 claims of 256 MiB");
    drop(held);
}

fn v5(broker: &Skein, id: &str) -> Raw {
    Raw::connect(broker.mqtt, connect_packet(ProtocolVersion::V5, id, true)).0
}

fn subscribe(raw: &mut Raw, filter: &str) -> ReasonCode {
    raw.send(&sub_packet(1, &[(filter, QoS::AtLeastOnce)]));
    match raw.recv() {
        Some(Packet::SubAck(a)) => a.reason_codes[0],
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[test]
fn topic_length_levels_and_subscriptions_per_client_are_bounded() {
    let broker = Skein::start(&["--max-topic-levels", "3", "--max-topic-length", "12", "--max-subscriptions", "2"]);
    let mut c = v5(&broker, "bounded");
    c.send(&publish("a/b/c/d", QoS::AtLeastOnce, 1, b"m"));
    assert_eq!(c.recv(), Some(Packet::PubAck(Ack { reason_code: ReasonCode::TopicNameInvalid, ..Ack::new(1) })));
    c.send(&publish("thirteen/byte", QoS::AtLeastOnce, 2, b"m"));
    assert_eq!(c.recv(), Some(Packet::PubAck(Ack { reason_code: ReasonCode::TopicNameInvalid, ..Ack::new(2) })));
    assert_eq!(subscribe(&mut c, "a/b/c/#"), ReasonCode::TopicFilterInvalid);
    assert_eq!(subscribe(&mut c, "a-long/filter"), ReasonCode::TopicFilterInvalid, "13 bytes");
    assert_eq!(subscribe(&mut c, "a/b/#"), ReasonCode::GrantedQoS1);
    assert_eq!(subscribe(&mut c, "x/+"), ReasonCode::GrantedQoS1);
    assert_eq!(subscribe(&mut c, "y"), ReasonCode::QuotaExceeded, "a third subscription");
    assert_eq!(subscribe(&mut c, "x/+"), ReasonCode::GrantedQoS1, "renewing one is not a new one");
}

#[test]
fn a_client_over_its_publish_rate_is_read_later_and_loses_nothing() {
    let broker = Skein::start(&["--max-publish-rate", "20"]);
    let mut sub = v5(&broker, "counter");
    assert_eq!(subscribe(&mut sub, "flood"), ReasonCode::GrantedQoS1);
    let mut flood = v5(&broker, "flood");
    let started = std::time::Instant::now();
    for i in 1..=60 {
        flood.send(&publish("flood", QoS::AtLeastOnce, i, b"m"));
    }
    for _ in 0..60 {
        match flood.recv() {
            Some(Packet::PubAck(_)) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // 20 a second, one second's worth at once: the last 40 take about two seconds.
    assert!(started.elapsed() >= Duration::from_secs(1), "held back: {:?}", started.elapsed());
    for _ in 0..60 {
        match sub.recv() {
            Some(Packet::Publish(p)) => sub.send(&Packet::PubAck(Ack::new(p.packet_id))),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

#[test]
fn new_connections_over_the_rate_wait_their_turn() {
    let broker = Skein::start(&["--max-connection-rate", "5"]);
    let started = std::time::Instant::now();
    let clients: Vec<Raw> = (0..15).map(|i| v5(&broker, &format!("c{i}"))).collect();
    // Five at once, then five a second: all fifteen are served, the last after about two seconds.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(clients.len(), 15);
}

#[test]
fn a_full_listener_closes_the_next_connection_and_the_others_still_take_clients() {
    let (small, other) = (free_port(), free_port());
    let small_listener = format!("127.0.0.1:{small}");
    let limit = format!("{small_listener}=2");
    let broker = Skein::start(&[
        "--mqtt",
        &small_listener,
        "--mqtt",
        &format!("127.0.0.1:{other}"),
        "--listener-max-connections",
        &limit,
    ]);
    let small_addr: std::net::SocketAddr = small_listener.parse().unwrap();
    let v311 = |id: &str| connect_packet(ProtocolVersion::V311, id, true);
    let (first, _) = Raw::connect(small_addr, v311("l1"));
    let (_second, _) = Raw::connect(small_addr, v311("l2"));
    // The third is closed before any CONNACK, as Mosquitto closes a connection past a listener's max_connections.
    let mut third = Raw::connect_tcp(small_addr);
    third.send(&Packet::Connect(Box::new(v311("l3"))));
    assert_eq!(third.recv(), None, "closed without a CONNACK");
    // Other listeners are not affected.
    let (_elsewhere, ack) = Raw::connect(format!("127.0.0.1:{other}").parse().unwrap(), v311("l4"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    round_trip(&broker, "listener");
    // A slot frees when a connection ends: the broker notices the close, then takes the next one.
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut again = Raw::connect_tcp(small_addr);
        again.send(&Packet::Connect(Box::new(v311("l5"))));
        if let Some(Packet::ConnAck(a)) = again.recv() {
            assert_eq!(a.reason_code, ReasonCode::Success);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the freed slot was never given out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_shared_groups_prefix_does_not_count_as_topic_levels() {
    let broker = Skein::start(&["--max-topic-levels", "3"]);
    let mut c = v5(&broker, "shared-levels");
    assert_eq!(subscribe(&mut c, "$share/g/a/b/c"), ReasonCode::GrantedQoS1, "three levels of topic filter");
    assert_eq!(subscribe(&mut c, "$share/g/a/b/c/d"), ReasonCode::TopicFilterInvalid);
}

/// Out of file descriptors, the MQTT listeners, the HTTP endpoint and the cluster port wait and try again, rather than
/// retrying at once (which spun a core for as long as it lasted), and all serve again once descriptors are free.
#[test]
fn out_of_file_descriptors_the_node_waits_without_spinning_and_recovers() {
    let peers = format!("127.0.0.1:{}", free_port());
    let args = ["--http", "127.0.0.1:0", "--node-id", "1", "--cluster", &peers, "--join", &peers];
    let broker = Skein::start_with_file_limit(128, &args);
    let http = broker.http.expect("http address");
    wait_ready(http);
    // Connections that never send CONNECT: each takes a descriptor until the CONNECT timeout.
    let mut held: Vec<TcpStream> = (0..160).map(|_| TcpStream::connect(broker.mqtt).unwrap()).collect();
    broker.wait_log("accept failed error=Too many open files");
    let mut probe = TcpStream::connect(http).unwrap();
    probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    broker.wait_log("HTTP accept failed error=Too many open files");
    let peer = TcpStream::connect(&peers).unwrap();
    broker.wait_log("cluster accept failed error=Too many open files");
    // While it lasts, the node's CPU time stays far below the second that a retry loop would take.
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", broker.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        // utime and stime, in clock ticks: fields 14 and 15 of the line, 11 and 12 after the command's name.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu() - before;
    assert!(used < 30, "{used} ticks of CPU in one second while out of descriptors");
    // Descriptors freed: the waiting probe is answered, and clients connect again.
    held.clear();
    probe.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    let _ = probe.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    round_trip(&broker, "recovered");
    drop((held, peer));
}
