//! A persistent session that moves to this node may, for a while, be sent a message it brought with it: the old
//! node's relay and the publishing node can each send a copy. Each message id is queued once, and the copies left
//! out are counted (`Stats::duplicates_skipped`, exported as `skein_cluster_duplicates_skipped_total`). What a
//! shared group gave the session before it moved stays that group's: if the session ends without acknowledging it,
//! another member here gets it.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use skein_broker::cluster::{Cluster, TakenOver};
use skein_broker::message::{Message, MessageId};
use skein_broker::session::{ExportedMessage, SessionExport, Subscription};
use skein_broker::stats::Stats;
use skein_broker::{Broker, BrokerConfig};
use skein_codec::{Ack, Packet, QoS, Subscribe, SubscriptionOptions};
use support::Client;

/// Another node that holds one session and hands it over on the first connect of its client.
struct OtherNode {
    session: Mutex<Option<SessionExport>>,
}

impl Cluster for OtherNode {
    fn take_over(
        &self,
        _client_id: &str,
        want_session: bool,
        _persistent: bool,
        _connected_at: std::time::SystemTime,
    ) -> Option<TakenOver> {
        let session = if want_session { self.session.lock().unwrap().take() } else { None };
        Some(Box::pin(async move { session }))
    }

    fn moved_window(&self) -> Duration {
        Duration::from_secs(60)
    }
}

fn message(seq: u64, payload: &'static str) -> Message {
    let publish = skein_codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "moved/t".into(),
        packet_id: 1,
        properties: Default::default(),
        payload: payload.into(),
    };
    Message { id: MessageId { node: 2, seq }, ..Message::from_publish(publish, None) }
}

fn payload_of(p: Option<Packet>) -> (u16, bytes::Bytes) {
    match p {
        Some(Packet::Publish(p)) => (p.packet_id, p.payload),
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn a_moved_session_takes_each_message_once_and_the_copies_are_counted() {
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let brought = SessionExport {
        subscriptions: vec![("moved/t".into(), Subscription { options, id: None })],
        messages: vec![ExportedMessage {
            message: message(7, "brought"),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            sent: None,
            group: None,
        }],
        incoming_qos2: Vec::new(),
    };
    let cluster = Arc::new(OtherNode { session: Mutex::new(Some(brought)) });
    let broker = Broker::open(BrokerConfig::default(), None, cluster).unwrap();
    let addr = support::serve(broker.clone()).await;

    let mut c = Client::connect(addr, "mover", true).await;
    let (id, payload) = payload_of(c.recv().await);
    assert_eq!(payload, "brought", "the message the session brought goes out");
    c.send(Packet::PubAck(Ack::new(id))).await;

    // The same message again (the old node's relay, or the publishing node's own copy), then a new one.
    let again = broker.publish_forwarded(message(7, "brought"), &[], false);
    assert_eq!(again.delivered, 1, "accepted for the session, which has it already");
    broker.publish_forwarded(message(8, "new"), &[], false);
    let (_, payload) = payload_of(c.recv().await);
    assert_eq!(payload, "new", "the copy of the message it had is not delivered a second time");
    assert_eq!(Stats::get(&broker.stats.duplicates_skipped), 1);

    // Another node's message with the same number is another message.
    broker.publish_forwarded(Message { id: MessageId { node: 3, seq: 7 }, ..message(7, "other node") }, &[], false);
    let (_, payload) = payload_of(c.recv().await);
    assert_eq!(payload, "other node");
    assert_eq!(Stats::get(&broker.stats.duplicates_skipped), 1);
}

#[tokio::test]
async fn what_a_shared_group_gave_a_session_before_it_moved_goes_to_another_member_if_it_ends() {
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    let group = "$share/g/moved/t";
    let brought = SessionExport {
        subscriptions: vec![(group.into(), Subscription { options, id: None })],
        messages: vec![ExportedMessage {
            message: message(7, "given by the group"),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            sent: None,
            group: Some(group.into()),
        }],
        incoming_qos2: Vec::new(),
    };
    let cluster = Arc::new(OtherNode { session: Mutex::new(Some(brought)) });
    let broker = Broker::open(BrokerConfig::default(), None, cluster).unwrap();
    let addr = support::serve(broker.clone()).await;

    let mut member = Client::connect(addr, "member", false).await;
    member
        .send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(group.into(), options)],
        }))
        .await;
    assert!(matches!(member.recv().await, Some(Packet::SubAck(_))));

    // The session arrives with the message and does not acknowledge it; then its client starts afresh.
    let mut mover = Client::connect(addr, "mover", true).await;
    let (_, payload) = payload_of(mover.recv().await);
    assert_eq!(payload, "given by the group");
    drop(mover);
    let mut again = Client::open(addr).await;
    again.send_connect("mover", true, 0, Default::default()).await;
    assert!(matches!(again.recv().await, Some(Packet::ConnAck(a)) if !a.session_present));

    let (_, payload) = payload_of(member.recv().await);
    assert_eq!(payload, "given by the group", "the group's other member gets what the ended session did not take");
}
