//! A persistent session on the wire between nodes: the broker's `SessionExport` to and from the `TakeoverReply`
//! message, reusing MQTT 5.0 packets for subscriptions and messages.

use bytes::BytesMut;
use skein_broker::message::Message;
use skein_broker::session::{ExportedMessage, InflightState, SessionExport, Subscription};
use skein_codec::{MAX_PACKET_SIZE, Packet, Properties, ProtocolVersion, QoS, Subscribe, decode};

use crate::proto::{Forwarded, Queued, TakeoverReply};

pub fn encode_message(m: &Message, shared_groups: Vec<String>) -> Forwarded {
    let packet = Packet::Publish(m.to_publish(m.qos, 1, m.retain, false, &[]));
    let mut buf = BytesMut::with_capacity(packet.encoded_len(ProtocolVersion::V5).unwrap_or(0));
    let _ = packet.encode(ProtocolVersion::V5, &mut buf);
    Forwarded { publish: buf.freeze(), publisher: m.publisher.as_deref().unwrap_or("").to_string(), shared_groups }
}

pub fn decode_message(f: &Forwarded) -> Option<Message> {
    // Zero-copy when the buffer is ours alone; the payload then stays a slice of the received message.
    let mut buf = BytesMut::from(f.publish.clone());
    match decode(&mut buf, ProtocolVersion::V5, MAX_PACKET_SIZE) {
        Ok(Some(Packet::Publish(p))) => {
            let publisher = (!f.publisher.is_empty()).then(|| f.publisher.as_str().into());
            Some(Message::from_publish(p, publisher))
        }
        _ => None,
    }
}

pub fn to_reply(export: Option<SessionExport>) -> TakeoverReply {
    let Some(e) = export else { return TakeoverReply::default() };
    let subscriptions = e
        .subscriptions
        .iter()
        .map(|(filter, sub)| {
            let mut buf = BytesMut::new();
            let _ = Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties { subscription_identifiers: sub.id.into_iter().collect(), ..Default::default() },
                filters: vec![(filter.clone(), sub.options)],
            })
            .encode(ProtocolVersion::V5, &mut buf);
            buf.freeze()
        })
        .collect();
    let messages = e
        .messages
        .iter()
        .map(|m| {
            let (packet_id, state) = match m.sent {
                None => (0, 0),
                Some((id, InflightState::AwaitingPubAck)) => (u32::from(id), 1),
                Some((id, InflightState::AwaitingPubRec)) => (u32::from(id), 2),
                Some((id, InflightState::AwaitingPubComp)) => (u32::from(id), 3),
            };
            Queued {
                message: Some(encode_message(&m.message, Vec::new())),
                qos: m.qos as u32,
                retain: m.retain,
                subscription_ids: m.subscription_ids.clone(),
                packet_id,
                state,
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
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(Packet::Subscribe(s))) = decode(&mut buf, ProtocolVersion::V5, MAX_PACKET_SIZE) {
            let id = s.properties.subscription_identifiers.first().copied();
            for (filter, options) in s.filters {
                export.subscriptions.push((filter, Subscription { options, id }));
            }
        }
    }
    for q in &r.messages {
        let Some(message) = q.message.as_ref().and_then(decode_message) else { continue };
        let sent = u16::try_from(q.packet_id).ok().filter(|id| *id != 0).and_then(|id| match q.state {
            1 => Some((id, InflightState::AwaitingPubAck)),
            2 => Some((id, InflightState::AwaitingPubRec)),
            3 => Some((id, InflightState::AwaitingPubComp)),
            _ => None,
        });
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
