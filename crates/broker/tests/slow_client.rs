//! Clients that do not read what they are sent. One task per connection reads and writes side by side: a write the
//! client does not take holds up neither reading nor other clients, and only the acknowledgements queued behind it,
//! past a bound, stop reading (TCP then holds the client back) until it reads again. Socket buffers of a few
//! kilobytes on both ends make the broker's writes block early.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use skein_broker::{Broker, BrokerConfig, SingleNode};
use skein_codec::*;
use tokio::io::AsyncWriteExt;

mod support;
use support::Client;

const BUFFER: u32 = 8 * 1024;

/// A broker whose connections have small socket buffers, and a client `id` connected to it with small ones too.
async fn small_buffers(id: &str) -> (Arc<Broker>, std::net::SocketAddr, Client) {
    let broker = Broker::open(BrokerConfig::default(), None, Arc::new(SingleNode)).unwrap();
    let addr = support::serve_with_buffers(broker.clone(), BUFFER).await;
    let mut c = Client::open_with_buffers(addr, BUFFER).await;
    c.send_connect(id, true, 0, Properties::default()).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success));
    (broker, addr, c)
}

fn encode(p: Packet, out: &mut BytesMut) {
    p.encode(ProtocolVersion::V5, out).unwrap();
}

async fn subscribe(c: &mut Client, filter: &str) {
    let mut out = BytesMut::new();
    encode(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(filter.into(), SubscriptionOptions::default())],
        }),
        &mut out,
    );
    c.stream.write_all(&out).await.unwrap();
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

/// The next packet on a connection's read half; fails after 10 s without one.
async fn recv(reader: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut) -> Option<Packet> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(p) = decode(buf, ProtocolVersion::V5, MAX_PACKET_SIZE).unwrap() {
            return Some(p);
        }
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read_buf(buf));
        if read.await.expect("an answer in time").unwrap() == 0 {
            return None;
        }
    }
}

fn publish(topic: String, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 0,
        properties: Properties::default(),
        payload,
    })
}

/// UNSUBSCRIBEs of filters never subscribed (each answered by an UNSUBACK with its packet identifier, so that the
/// order shows) with PINGREQs between them: about 1 MB of requests and as much in answers, all sent before anything is
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_is_read_up_to_a_bound_and_then_gets_every_answer_in_order() {
    const REQUESTS: u16 = 60_000;
    const PINGS: usize = 4;
    let (broker, _, c) = small_buffers("slow").await;

    let mut requests = BytesMut::new();
    for id in 1..=REQUESTS {
        encode(
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: vec!["never/subscribed".into()],
            }),
            &mut requests,
        );
        for _ in 0..PINGS {
            encode(Packet::PingReq, &mut requests);
        }
    }
    let total = requests.len();
    let received_before = broker.stats.bytes_received.load(Ordering::Relaxed);
    let (mut reader, mut writer) = c.stream.into_split();
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let sending = tokio::spawn(async move {
        let mut sent = 0;
        while sent < requests.len() {
            sent += tokio::io::AsyncWriteExt::write(&mut writer, &requests[sent..]).await.unwrap();
            progress_tx.send_replace(sent);
        }
        writer
    });
    // Until the client's writes stop getting anywhere (the broker has stopped reading), or all are sent.
    while let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), progress.changed()).await {}
    let sent = *progress.borrow();
    let read = broker.stats.bytes_received.load(Ordering::Relaxed) - received_before;
    println!("sent {sent} of {total} bytes, the broker read {read}, before the client read anything");
    assert!(
        sent < total / 2,
        "the broker read {read} of {total} bytes from a client that reads nothing: its answers queue without bound"
    );

    let mut buf = BytesMut::new();
    for id in 1..=REQUESTS {
        match recv(&mut reader, &mut buf).await {
            Some(Packet::UnsubAck(a)) => assert_eq!(a.packet_id, id, "answers in the order of the requests"),
            other => panic!("expected UNSUBACK {id}, got {other:?}"),
        }
        for _ in 0..PINGS {
            assert!(
                matches!(recv(&mut reader, &mut buf).await, Some(Packet::PingResp)),
                "PINGRESP after UNSUBACK {id}"
            );
        }
    }
    let writer = sending.await.unwrap();
    drop(writer);
}

/// A subscriber whose socket is full (it reads nothing while a flood comes to it) still publishes, and what it
/// publishes reaches the others at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_deliveries_are_stuck_is_still_read() {
    // Fewer than the watcher's queue holds (max_queued_messages, 1000), as they all come at once.
    const MESSAGES: usize = 500;
    let (broker, addr, mut stuck) = small_buffers("stuck").await;
    subscribe(&mut stuck, "flood").await;
    let mut watcher = Client::connect(addr, "watcher", false).await;
    subscribe(&mut watcher, "alive/#").await;

    // Flood `stuck` until its queue overflows: only then is it certain that its socket takes nothing more.
    let mut flooder = Client::connect(addr, "flooder", false).await;
    let payload = Bytes::from(vec![b'f'; 1024]);
    let mut flooded = 0;
    while broker.stats.publish_dropped.load(Ordering::Relaxed) == 0 {
        assert!(
            flooded < 100_000,
            "{flooded} messages of 1 KB and the queue of a client that reads nothing is not full"
        );
        let mut out = BytesMut::new();
        for _ in 0..100 {
            encode(publish("flood".into(), payload.clone()), &mut out);
        }
        flooder.stream.write_all(&out).await.unwrap();
        flooded += 100;
        // The flooder's PINGRESP comes after its publishes were handled.
        flooder.send(Packet::PingReq).await;
        assert!(matches!(flooder.recv().await, Some(Packet::PingResp)));
    }
    println!("{flooded} messages flooded before the first drop");

    // About 140 KB, far more than the socket buffers take: they arrive only if the broker goes on reading.
    let mut out = BytesMut::new();
    let payload = Bytes::from(vec![b'a'; 256]);
    for i in 0..MESSAGES {
        encode(publish(format!("alive/{i}"), payload.clone()), &mut out);
    }
    let sending = tokio::spawn(async move {
        stuck.stream.write_all(&out).await.unwrap();
        stuck
    });
    for i in 0..MESSAGES {
        match watcher.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&*p.topic, format!("alive/{i}")),
            other => panic!("expected alive/{i}, got {other:?}"),
        }
    }
    let stuck = sending.await.unwrap();
    drop(stuck);
}
