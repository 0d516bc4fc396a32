//! Codec micro-benchmarks: decode and encode of PUBLISH and CONNECT, and matching one topic against 10k filters.
//! `cargo bench --bench codec`; figures go in the issue notes, never into tests.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use skein_codec::topic::{self, FilterTrie};
use skein_codec::{Connect, MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, Publish, QoS, Will, decode};

fn publish(payload: usize, v5: bool) -> Packet {
    let properties = if v5 {
        Properties::from(skein_codec::PropertyValues {
            message_expiry_interval: Some(60),
            content_type: Some("application/json".into()),
            user_properties: vec![("trace".into(), "0af7651916cd43dd".into())],
            ..Default::default()
        })
    } else {
        Properties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "fleet/device-0042/telemetry".into(),
        packet_id: 42,
        properties,
        payload: Bytes::from(vec![0x5a; payload]),
    })
}

fn connect_v5() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::from(skein_codec::PropertyValues {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(16),
            ..Default::default()
        }),
        client_id: "device-0042".into(),
        will: Some(Will {
            topic: "fleet/device-0042/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::from(skein_codec::PropertyValues {
                will_delay_interval: Some(5),
                ..Default::default()
            }),
        }),
        username: Some("device".into()),
        password: Some(Bytes::from_static(b"secret")),
    }))
}

fn encoded(p: &Packet, v: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    p.encode(v, &mut buf).expect("encodes");
    buf.freeze()
}

fn codec(c: &mut Criterion) {
    let cases = [
        ("publish_16B_v311", publish(16, false), ProtocolVersion::V311),
        ("publish_1KiB_v311", publish(1024, false), ProtocolVersion::V311),
        ("publish_16B_v5_props", publish(16, true), ProtocolVersion::V5),
        ("publish_1KiB_v5_props", publish(1024, true), ProtocolVersion::V5),
        ("connect_v5", connect_v5(), ProtocolVersion::V5),
    ];
    let mut group = c.benchmark_group("decode");
    for (name, packet, v) in &cases {
        let wire = encoded(packet, *v);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(*name, |b| {
            // The buffer is filled outside the timed part, as a socket read fills the connection's buffer.
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| black_box(decode(buf, *v, MAX_PACKET_SIZE).expect("valid").expect("whole")),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    let mut group = c.benchmark_group("encode");
    for (name, packet, v) in &cases {
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(*name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(packet.encode(*v, &mut buf).expect("encodes"))
            })
        });
    }
    group.finish();
}

/// 10,000 filters shaped like a fleet's: per-device exact filters, per-device wildcards, a few broad ones.
fn filters() -> Vec<String> {
    let mut out = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        out.push(match i % 4 {
            0 => format!("fleet/device-{i:05}/telemetry"),
            1 => format!("fleet/device-{i:05}/#"),
            2 => format!("fleet/+/cmd/{i:05}"),
            _ => format!("site/{}/device-{i:05}/+", i % 50),
        });
    }
    out.push("fleet/#".into());
    out
}

fn matching(c: &mut Criterion) {
    let filters = filters();
    let mut trie = FilterTrie::new();
    for (i, f) in filters.iter().enumerate() {
        trie.insert(f, i);
    }
    let topic_name = "fleet/device-04000/telemetry";
    let mut group = c.benchmark_group("match_10k_filters");
    group.bench_with_input(BenchmarkId::new("trie", topic_name), topic_name, |b, t| {
        b.iter(|| {
            let mut n = 0;
            trie.for_each_match(black_box(t), |_| n += 1);
            black_box(n)
        })
    });
    group.bench_with_input(BenchmarkId::new("linear_scan", topic_name), topic_name, |b, t| {
        b.iter(|| filters.iter().filter(|f| topic::matches(f, black_box(t))).count())
    });
    group.finish();
}

/// A message on its way out to a subscriber: built into a `Publish` and encoded, or written bare from its parts.
fn delivering(c: &mut Criterion) {
    use skein_broker::message::Message;
    let message = Message::system("fleet/device-0042/telemetry", vec![0x5au8; 64], false);
    let mut group = c.benchmark_group("deliver_64B_qos1");
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(format!("to_publish_{v}"), |b| {
            b.iter(|| {
                buf.clear();
                let p = black_box(&message).to_publish(v, QoS::AtLeastOnce, 42, false, false, &[]);
                black_box(Packet::Publish(p).encode(v, &mut buf).expect("encodes"))
            })
        });
        group.bench_function(format!("bare_{v}"), |b| {
            b.iter(|| {
                buf.clear();
                let p = black_box(&message).bare(v, QoS::AtLeastOnce, 42, false, false, &[]).expect("no properties");
                black_box(p.encode(v, &mut buf).expect("encodes"))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, matching, delivering);
criterion_main!(benches);
