//! The connection-driver fuzz target (`skein_broker::fuzzing::connection`) run bounded on stable Rust: recorded
//! client streams and built ones for every packet type, every prefix of them, one-byte changes at every position,
//! splices, and pseudo-random tails after a valid CONNECT, all on one broker. Each input must end its own
//! connection cleanly with well-formed output, and the broker must still serve a normal client afterwards.
//! `SKEIN_FUZZ_SECONDS=N` adds N seconds of pseudo-random inputs (longer runs by hand);
//! `cargo +nightly fuzz run connection` explores without a bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use skein_broker::{Broker, BrokerConfig, SingleNode, fuzzing};
use skein_codec::fuzzing::Rng;
use skein_codec::*;

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../codec/tests/fixtures");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the codec's recorded fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".c2s.bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "the recorded client streams are missing");
    let mut streams: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("readable")).collect();
    streams.push(built(ProtocolVersion::V5));
    streams.push(built(ProtocolVersion::V311));
    streams
}

/// A client stream with every packet type a client sends, with the options and properties that reach the
/// broker's less travelled paths (will with delay, shared and no-local subscriptions, aliases, QoS 2, AUTH).
fn built(version: ProtocolVersion) -> Vec<u8> {
    let v5 = version.is_v5();
    let props = |f: &dyn Fn(&mut Properties)| {
        let mut p = Properties::default();
        if v5 {
            f(&mut p);
        }
        p
    };
    let options = |qos| SubscriptionOptions { qos, no_local: v5, retain_as_published: v5, ..Default::default() };
    let packets = vec![
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: false,
            keep_alive: 30,
            properties: props(&|p| {
                p.session_expiry_interval = Some(60);
                p.receive_maximum = Some(2);
                p.topic_alias_maximum = Some(4);
                p.maximum_packet_size = Some(512);
                p.request_response_information = Some(1);
            }),
            client_id: format!("fuzz-{}", version as u8).into(),
            will: Some(Will {
                topic: "fuzz/will".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: props(&|p| p.will_delay_interval = Some(1)),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"secret")),
        })),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: props(&|p| p.subscription_identifiers = vec![9]),
            filters: vec![
                ("fuzz/#".into(), options(QoS::ExactlyOnce)),
                ("$share/g/fuzz/+".into(), options(QoS::AtLeastOnce)),
            ],
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "fuzz/a".into(),
            packet_id: 2,
            properties: props(&|p| {
                p.topic_alias = Some(1);
                p.message_expiry_interval = Some(30);
                p.user_properties = vec![("k".into(), "v".into())];
            }),
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::PubRel(Ack::new(2)),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: if v5 { "".into() } else { "fuzz/a".into() },
            packet_id: 3,
            properties: props(&|p| p.topic_alias = Some(1)),
            payload: Bytes::from(vec![b'x'; 600]),
        }),
        Packet::PubAck(Ack::new(1)),
        Packet::PubRec(Ack::new(2)),
        Packet::PubComp(Ack::new(2)),
        Packet::PingReq,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            properties: Properties::default(),
            filters: vec!["fuzz/#".into()],
        }),
    ];
    let mut out = BytesMut::new();
    for p in &packets {
        p.encode(version, &mut out).expect("encodes");
    }
    if v5 {
        Packet::Auth(Auth { reason_code: ReasonCode::ReAuthenticate, properties: Properties::default() })
            .encode(version, &mut out)
            .unwrap();
        let d = Disconnect {
            reason_code: ReasonCode::DisconnectWithWillMessage,
            properties: props(&|p| p.session_expiry_interval = Some(0)),
        };
        Packet::Disconnect(d).encode(version, &mut out).unwrap();
    } else {
        Packet::Disconnect(Disconnect::new(ReasonCode::Success)).encode(version, &mut out).unwrap();
    }
    out.to_vec()
}

/// Inputs longer runs found, kept so they run every time.
const FOUND: &[&[u8]] = &[
    // A second CONNECT with a bad protocol name: the DISCONNECT carried 0x84, which DISCONNECT does not allow.
    b"\x10\x1c\x00\x04\x4d\x51\x54\x54\x05\x02\x00\x3c\x03\x21\x00\x14\x00\x0c\x66\x69\x78\x74\x75\x72\x65\x2d\x70\x75\x62\x35\x10\x20\x00\x04\x74\x65\x73\x74\x00\x01\x00\x4d\x65\x73\x73\x61\x67\x33\x20\x66\x72\x6f\x6d\x20\x63\x6c\x69\x65\x6e\x74\x20\x58\x59\x5a\xeb\x02\x00\x01\xe0\x00",
];

/// The length of the first packet of `stream` (its CONNECT), from the fixed header.
fn first_packet_len(stream: &[u8]) -> usize {
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    while let Some(&b) = stream.get(i) {
        len |= usize::from(b & 0x7f) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    (i + len).min(stream.len())
}

/// One mutated input: a one-byte change, a splice of two streams, or random bytes after a valid CONNECT.
fn random_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.below(corpus.len())];
    match rng.below(3) {
        0 => {
            let mut data = base.clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(data.len());
                data[at] = rng.next() as u8;
            }
            data
        }
        1 => {
            let other = &corpus[rng.below(corpus.len())];
            let mut data = base[..rng.below(base.len() + 1)].to_vec();
            data.extend_from_slice(&other[rng.below(other.len())..]);
            data
        }
        _ => {
            let mut data = base[..first_packet_len(base)].to_vec();
            for _ in 0..rng.below(200) {
                data.push(rng.next() as u8);
            }
            data
        }
    }
}

async fn run(broker: &Arc<Broker>, data: Vec<u8>) {
    let shown = data.clone();
    let broker = broker.clone();
    let outcome = tokio::spawn(async move { fuzzing::connection(broker, &data).await }).await;
    if let Err(e) = outcome {
        panic!("input {shown:02x?} broke the connection driver: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_driver_survives_every_mutated_stream() {
    let config = BrokerConfig { allow_anonymous: true, ..BrokerConfig::default() };
    let broker = Broker::open(config, None, Arc::new(SingleNode)).unwrap();
    let corpus = corpus();
    let mut runs = 0u64;
    let mut answered = 0u64;
    for stream in &corpus {
        // The stream itself must get a CONNACK: otherwise this corpus would only exercise refusals.
        let out = fuzzing::connection(broker.clone(), stream).await;
        assert_eq!(out.first(), Some(&0x20), "a CONNACK for {stream:02x?}");
        answered += 1;
        for len in 0..stream.len() {
            run(&broker, stream[..len].to_vec()).await;
            runs += 1;
        }
        for at in 0..stream.len() {
            for change in [0x01u8, 0x80, 0xff] {
                let mut data = stream.clone();
                data[at] ^= change;
                run(&broker, data).await;
                runs += 1;
            }
        }
    }
    for data in FOUND {
        run(&broker, data.to_vec()).await;
    }
    let mut rng = Rng(0x5eed_1e55_c0ff_ee00);
    for _ in 0..10_000 {
        run(&broker, random_input(&mut rng, &corpus)).await;
        runs += 1;
    }
    let extra: u64 = std::env::var("SKEIN_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(extra);
    while Instant::now() < until {
        run(&broker, random_input(&mut rng, &corpus)).await;
        runs += 1;
    }
    println!("connection driver: {runs} mutated inputs, {answered} corpus streams answered");

    // Every connection is gone, and the broker still serves a normal client.
    assert!(broker.wait_closed(Duration::from_secs(5)).await, "{} connections left open", broker.open_connections());
    let mut hello = BytesMut::new();
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        properties: Properties::default(),
        client_id: "after".into(),
        will: None,
        username: None,
        password: None,
    };
    Packet::Connect(Box::new(connect)).encode(ProtocolVersion::V311, &mut hello).unwrap();
    let sub = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("after/t".into(), SubscriptionOptions::default())],
    };
    Packet::Subscribe(sub).encode(ProtocolVersion::V311, &mut hello).unwrap();
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "after/t".into(),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::from_static(b"still here"),
    };
    Packet::Publish(publish).encode(ProtocolVersion::V311, &mut hello).unwrap();
    Packet::PingReq.encode(ProtocolVersion::V311, &mut hello).unwrap();
    let out = fuzzing::connection(broker.clone(), &hello).await;
    let mut buf = BytesMut::from(&out[..]);
    let mut got = Vec::new();
    while let Ok(Some(p)) = decode(&mut buf, ProtocolVersion::V311, MAX_PACKET_SIZE) {
        got.push(p);
    }
    assert!(matches!(got.first(), Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success), "{got:?}");
    assert!(got.iter().any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"still here")), "{got:?}");
    assert!(got.contains(&Packet::PingResp), "{got:?}");
}
