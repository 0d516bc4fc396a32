//! An idle plain-TCP connection parks without a task (`BrokerConfig::idle_park_after`), and everything a client or
//! its session can do while it is parked brings it back as it was: a delivery, a packet from the client, its keep
//! alive running out, a take-over, a shutdown, the client going away. A parked connection still counts against its
//! listener's limit.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skein_broker::listener::Limits;
use skein_broker::{Broker, BrokerConfig, SingleNode};
use skein_codec::*;
use support::Client;
use tokio::io::AsyncReadExt;

fn broker() -> Arc<Broker> {
    let config = BrokerConfig { idle_park_after: Some(Duration::from_millis(100)), ..BrokerConfig::default() };
    Broker::open(config, None, Arc::new(SingleNode)).unwrap()
}

/// Waits until `holds` does; fails with `what` after 10 s.
async fn eventually(what: &str, holds: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !holds() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until exactly `n` connections are parked.
async fn parked(broker: &Broker, n: u64) {
    eventually(&format!("{n} parked"), || broker.parked_connections() == n).await;
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

async fn subscribe(c: &mut Client, filter: &str) {
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() };
    c.send(Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), options)],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
}

/// A 5.0 client with a will on `will/<id>` and the given keep alive.
async fn connect_with_will(addr: SocketAddr, id: &str, keep_alive: u16) -> Client {
    let mut c = Client::open(addr).await;
    c.send(Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive,
        properties: Properties::default(),
        client_id: id.into(),
        will: Some(Will {
            topic: format!("will/{id}").into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: None,
        password: None,
    })))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success));
    c
}

/// The next PUBLISH `c` gets, acknowledged when QoS 1.
async fn delivered(c: &mut Client) -> Publish {
    match c.recv().await {
        Some(Packet::Publish(p)) => {
            if p.qos == QoS::AtLeastOnce {
                c.send(Packet::PubAck(Ack::new(p.packet_id))).await;
            }
            p
        }
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_gets_its_deliveries_and_is_answered() {
    let broker = broker();
    let addr = support::serve(broker.clone()).await;
    let mut subscriber = Client::connect(addr, "subscriber", false).await;
    subscribe(&mut subscriber, "t/#").await;
    parked(&broker, 1).await;

    // A delivery wakes the parked subscriber.
    let mut publisher = Client::connect(addr, "publisher", false).await;
    publisher.send(publish("t/1", QoS::AtLeastOnce, 1, b"one")).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    assert_eq!(&delivered(&mut subscriber).await.payload[..], b"one");

    // Both parked: a packet from the client wakes it, and it is answered.
    parked(&broker, 2).await;
    subscriber.send(Packet::PingReq).await;
    assert_eq!(subscriber.recv().await, Some(Packet::PingResp));
    parked(&broker, 2).await;
    publisher.send(publish("t/2", QoS::AtLeastOnce, 2, b"two")).await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 2));
    assert_eq!(&delivered(&mut subscriber).await.payload[..], b"two");
    // QoS 0 too, and several in a row, in order.
    parked(&broker, 2).await;
    for payload in [&b"a"[..], b"b", b"c"] {
        publisher.send(publish("t/3", QoS::AtMostOnce, 0, payload)).await;
    }
    for payload in [&b"a"[..], b"b", b"c"] {
        assert_eq!(&delivered(&mut subscriber).await.payload[..], payload);
    }
    assert_eq!(broker.stats.clients_connected.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_goes_silent_is_closed_at_its_keep_alive_and_its_will_sent() {
    let broker = broker();
    let addr = support::serve(broker.clone()).await;
    let mut watcher = Client::connect(addr, "watcher", false).await;
    subscribe(&mut watcher, "will/#").await;
    let started = tokio::time::Instant::now();
    let mut silent = connect_with_will(addr, "silent", 1).await;
    parked(&broker, 2).await;
    // [MQTT-3.1.2-24]: closed after one and a half keep-alive periods without a packet, told why (5.0).
    match silent.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::KeepAliveTimeout),
        other => panic!("expected DISCONNECT 0x8D, got {other:?}"),
    }
    assert_eq!(silent.recv().await, None);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}, before its keep alive ran out");
    let will = delivered(&mut watcher).await;
    assert_eq!((&*will.topic, &will.payload[..]), ("will/silent", &b"gone"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_closes_its_socket_is_let_go_and_its_will_sent() {
    let broker = broker();
    let addr = support::serve(broker.clone()).await;
    let mut watcher = Client::connect(addr, "watcher", false).await;
    subscribe(&mut watcher, "will/#").await;
    let gone = connect_with_will(addr, "gone", 0).await;
    parked(&broker, 2).await;
    drop(gone);
    let will = delivered(&mut watcher).await;
    assert_eq!(&*will.topic, "will/gone");
    eventually("the closed connection is let go", || broker.open_connections() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_closed_by_a_take_over_and_by_a_shutdown() {
    let broker = broker();
    let addr = support::serve(broker.clone()).await;
    let mut first = Client::connect(addr, "same", true).await;
    parked(&broker, 1).await;
    let mut second = Client::connect(addr, "same", true).await;
    match first.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::SessionTakenOver),
        other => panic!("expected DISCONNECT 0x8E, got {other:?}"),
    }
    assert_eq!(first.recv().await, None);
    parked(&broker, 1).await;
    broker.begin_shutdown();
    match second.recv().await {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::ServerShuttingDown),
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert_eq!(second.recv().await, None);
    assert!(broker.wait_closed(Duration::from_secs(10)).await, "every connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_counts_against_its_listener_limit() {
    let broker = broker();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(skein_broker::listener::serve_tcp(broker.clone(), listener, Limits { max_connections: 1 }));
    let only = Client::connect(addr, "only", false).await;
    parked(&broker, 1).await;
    // Over the listener's limit: closed before any handshake.
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), refused.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a second connection is closed at once");
    drop(only);
    // Once the parked one has gone, there is room again.
    eventually("the parked connection is let go", || broker.open_connections() == 0).await;
    Client::connect(addr, "next", false).await;
}

/// A connection quiet since it connected parks after `FIRST_PARK_AFTER` however long `idle_park_after` is; once woken,
/// it waits the whole `idle_park_after` before it parks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_parks_sooner_the_first_time_than_once_woken() {
    use skein_broker::connection::FIRST_PARK_AFTER;
    let config = BrokerConfig { idle_park_after: Some(Duration::from_secs(60)), ..BrokerConfig::default() };
    let broker = Broker::open(config, None, Arc::new(SingleNode)).unwrap();
    let addr = support::serve(broker.clone()).await;
    let connecting = tokio::time::Instant::now();
    let mut c = Client::connect(addr, "first-park", false).await;
    parked(&broker, 1).await;
    let quiet = connecting.elapsed();
    assert!(quiet >= FIRST_PARK_AFTER, "parked after {quiet:?} of quiet, before {FIRST_PARK_AFTER:?}");

    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
    parked(&broker, 0).await;
    // Twice the first wait, with nothing read or sent: still in its task.
    tokio::time::sleep(FIRST_PARK_AFTER * 2).await;
    assert_eq!(broker.parked_connections(), 0, "a woken connection waits idle_park_after (60 s) to park again");
    c.send(Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}
