//! A takeover request from another node ends only connections and sessions older than the connection that sent it:
//! one that arrives late (a slow peer, a retried notice) must not end a session a newer connection made here.

mod support;

use std::sync::Arc;
use std::time::SystemTime;

use skein_broker::{Broker, BrokerConfig, SingleNode};
use skein_codec::{Disconnect, Packet};
use support::Client;

#[tokio::test]
async fn a_late_takeover_request_leaves_a_newer_session_alone() {
    let broker = Broker::open(BrokerConfig::default(), None, Arc::new(SingleNode)).unwrap();
    let addr = support::serve(broker.clone()).await;
    let asked_at = SystemTime::now();
    // The client reconnects here after the other node's connect, and leaves its session behind.
    let mut c = Client::connect(addr, "late", true).await;
    c.send(Packet::Disconnect(Disconnect::default())).await;
    assert_eq!(c.recv().await, None, "the broker closes after DISCONNECT");
    assert_eq!(broker.persistent_sessions(), vec!["late"]);
    // The request the other node sent before that arrives now: nothing ends.
    assert!(broker.take_over("late", true, asked_at).await.is_none(), "a late request gets no session");
    assert_eq!(broker.persistent_sessions(), vec!["late"], "the newer session stays");
    // A request from a connection after it takes the session.
    let export = broker.take_over("late", true, SystemTime::now()).await;
    assert!(export.is_some(), "a newer connect elsewhere gets the session");
    assert!(broker.persistent_sessions().is_empty());
}
