//! A persistent session on the wire between nodes: the broker's `SessionExport` to and from the `TakeoverReply`
//! message, in the broker's own MQTT 5.0 encodings of messages and subscriptions (the ones its store uses).

use bytes::BytesMut;
use skein_broker::message::Message;
use skein_broker::session::{ExportedMessage, InflightState, SessionExport, Subscription};
use skein_codec::QoS;

use crate::proto::{Forwarded, Queued, TakeoverReply};

pub fn encode_message(m: &Message, shared_groups: Vec<String>, retain_seq: u64, groups_only: bool) -> Forwarded {
    encode_message_into(m, shared_groups, retain_seq, groups_only, &mut BytesMut::new())
}

/// `encode_message` with the packet written into `buf`, so that a batch of messages shares one allocation.
pub fn encode_message_into(
    m: &Message,
    shared_groups: Vec<String>,
    retain_seq: u64,
    groups_only: bool,
    buf: &mut BytesMut,
) -> Forwarded {
    m.encode_v5_into(&[], buf);
    Forwarded {
        publish: buf.split().freeze(),
        publisher: m.publisher.as_ref().map(|p| p.as_bytes().clone()).unwrap_or_default(),
        shared_groups,
        retain_seq,
        groups_only,
    }
}

pub fn decode_message(f: &Forwarded) -> Option<Message> {
    let publisher =
        if f.publisher.is_empty() { None } else { Some(skein_codec::ByteString::try_from(f.publisher.clone()).ok()?) };
    Message::decode_v5(f.publish.clone(), publisher).ok().map(|(m, _)| m)
}

pub fn to_reply(export: Option<SessionExport>) -> TakeoverReply {
    let Some(e) = export else { return TakeoverReply::default() };
    let subscriptions = e
        .subscriptions
        .iter()
        .map(|(filter, sub)| {
            let mut buf = BytesMut::new();
            sub.encode_v5(filter, &mut buf);
            buf.freeze()
        })
        .collect();
    let messages = e
        .messages
        .iter()
        .map(|m| {
            let (packet_id, state) = InflightState::code(m.sent);
            Queued {
                message: Some(encode_message(&m.message, Vec::new(), 0, false)),
                qos: m.qos as u32,
                retain: m.retain,
                subscription_ids: m.subscription_ids.clone(),
                packet_id: u32::from(packet_id),
                state: u32::from(state),
            }
        })
        .collect();
    TakeoverReply { had_session: true, subscriptions, messages }
}

pub fn from_reply(r: TakeoverReply) -> Option<SessionExport> {
    if !r.had_session {
        return None;
    }
    let mut export = SessionExport::default();
    for bytes in &r.subscriptions {
        export.subscriptions.extend(Subscription::decode_v5(bytes).unwrap_or_default());
    }
    for q in &r.messages {
        let Some(message) = q.message.as_ref().and_then(decode_message) else { continue };
        let (Ok(packet_id), Ok(code)) = (u16::try_from(q.packet_id), u8::try_from(q.state)) else { continue };
        let sent = InflightState::from_code(packet_id, code).ok().flatten();
        export.messages.push(ExportedMessage {
            message,
            qos: QoS::from_u8(q.qos as u8).unwrap_or(QoS::AtLeastOnce),
            retain: q.retain,
            subscription_ids: q.subscription_ids.clone(),
            sent,
        });
    }
    Some(export)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_codec::SubscriptionOptions;

    #[test]
    fn a_session_survives_the_trip() {
        let export = SessionExport {
            subscriptions: vec![(
                "a/#".into(),
                Subscription {
                    options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
                    id: Some(4),
                },
            )],
            messages: vec![
                ExportedMessage {
                    message: Message::system("a/b", "one", false),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![4],
                    sent: Some((9, InflightState::AwaitingPubAck)),
                },
                ExportedMessage {
                    message: Message::system("a/c", "two", false),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    subscription_ids: vec![],
                    sent: None,
                },
            ],
        };
        let back = from_reply(to_reply(Some(export.clone()))).expect("a session");
        assert_eq!(back.subscriptions, export.subscriptions);
        assert_eq!(back.messages.len(), 2);
        assert_eq!(back.messages[0].sent, Some((9, InflightState::AwaitingPubAck)));
        assert_eq!(&back.messages[1].message.payload[..], b"two");
        assert!(back.messages[1].retain && back.messages[1].sent.is_none());
        assert!(from_reply(to_reply(None)).is_none());
    }
}
