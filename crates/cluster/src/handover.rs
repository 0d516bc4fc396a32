//! A persistent session on the wire between nodes: the broker's `SessionExport` to and from the `TakeoverReply`
//! message, in the broker's own MQTT 5.0 encodings of messages and subscriptions (the ones its store uses).

use bytes::BytesMut;
use skein_broker::message::Message;
use skein_broker::session::{ExportedMessage, InflightState, SessionExport, Subscription};
use skein_codec::QoS;

use crate::proto::{Forwarded, Queued, TakeoverReply};

/// A message of a session handed over (`Queued.message`).
pub fn encode_message(m: &Message) -> Forwarded {
    Forwarded {
        publish: m.encode_v5(&[]),
        publisher: m.publisher.as_ref().map(|p| p.as_bytes().clone()).unwrap_or_default(),
        id_node: m.id.node,
        id_seq: m.id.seq,
    }
}

/// One message as `ForwardBatch.packed` carries it.
#[derive(Debug)]
pub struct Unpacked {
    pub message: Message,
    pub shared_groups: Vec<skein_codec::ByteString>,
    pub retain_seq: u64,
    pub groups_only: bool,
    /// For one session only, relayed by the node it moved from (see `Broker::take_over_relaying`).
    pub target: Option<Target>,
}

/// The session a relayed message is for, and how that session's subscriptions on the relaying node took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub client_id: skein_codec::ByteString,
    pub qos: skein_codec::QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

const GROUPS_ONLY: u8 = 1;
const RETAIN_SEQ: u8 = 2;
const GROUPS: u8 = 4;
const PUBLISHER: u8 = 8;
const TARGET: u8 = 16;

/// Appends `m` to `buf` as one record of `ForwardBatch.packed` (the format is in `proto/cluster.proto`).
pub fn pack_message(m: &Message, shared_groups: &[String], retain_seq: u64, groups_only: bool, buf: &mut BytesMut) {
    pack_record(m, shared_groups, retain_seq, groups_only, None, buf)
}

/// `pack_message`, for one session only when `target` is given.
pub fn pack_record(
    m: &Message,
    shared_groups: &[String],
    retain_seq: u64,
    groups_only: bool,
    target: Option<&Target>,
    buf: &mut BytesMut,
) {
    use bytes::BufMut;
    // Client ids and share names are MQTT strings: they fit a u16 length. One that does not (none can come
    // through the codec) goes without its publisher or group rather than as a record that cannot be read.
    let publisher = m.publisher.as_ref().filter(|p| u16::try_from(p.len()).is_ok());
    let groups: Vec<&String> = shared_groups.iter().filter(|g| u16::try_from(g.len()).is_ok()).collect();
    let flag = |on: bool, bit: u8| if on { bit } else { 0 };
    let flags = flag(groups_only, GROUPS_ONLY)
        | flag(retain_seq != 0, RETAIN_SEQ)
        | flag(!groups.is_empty(), GROUPS)
        | flag(publisher.is_some(), PUBLISHER)
        | flag(target.is_some(), TARGET);
    buf.put_u8(flags);
    if let Some(t) = target {
        buf.put_u16(t.client_id.len().min(usize::from(u16::MAX)) as u16);
        buf.put_slice(&t.client_id.as_bytes()[..t.client_id.len().min(usize::from(u16::MAX))]);
        buf.put_u8(t.qos as u8);
        buf.put_u8(u8::from(t.retain));
        let ids = &t.subscription_ids[..t.subscription_ids.len().min(usize::from(u16::MAX))];
        buf.put_u16(ids.len() as u16);
        for id in ids {
            buf.put_u32(*id);
        }
    }
    if let Some(p) = publisher {
        buf.put_u16(p.len() as u16);
        buf.put_slice(p.as_bytes());
    }
    if retain_seq != 0 {
        buf.put_u64(retain_seq);
    }
    if !groups.is_empty() {
        buf.put_u16(groups.len().min(usize::from(u16::MAX)) as u16);
        for g in groups.iter().take(usize::from(u16::MAX)) {
            buf.put_u16(g.len() as u16);
            buf.put_slice(g.as_bytes());
        }
    }
    let at = buf.len();
    buf.put_u32(0);
    m.encode_v5_into(&[], buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `id` to a `ForwardBatch.ids` run.
pub fn pack_id(id: skein_broker::message::MessageId, ids: &mut BytesMut) {
    use bytes::BufMut;
    ids.put_u64(id.node);
    ids.put_u64(id.seq);
}

/// The next id of a `ForwardBatch.ids` run, taken off its front; none once it has no whole id left.
pub fn unpack_id(ids: &mut bytes::Bytes) -> skein_broker::message::MessageId {
    use bytes::Buf;
    if ids.len() < 16 {
        return skein_broker::message::MessageId::NONE;
    }
    skein_broker::message::MessageId { node: ids.get_u64(), seq: ids.get_u64() }
}

/// The next record of a `ForwardBatch.packed` run, taken off the front of `packed`; `None` at its end. An error
/// leaves the rest of the run unread: a record that cannot be read gives no way to find the next.
pub fn unpack_message(packed: &mut bytes::Bytes) -> Option<Result<Unpacked, String>> {
    if packed.is_empty() {
        return None;
    }
    let record = unpack(packed);
    if record.is_err() {
        packed.clear();
    }
    Some(record)
}

fn unpack(packed: &mut bytes::Bytes) -> Result<Unpacked, String> {
    use bytes::Buf;
    fn need(b: &bytes::Bytes, n: usize) -> Result<(), String> {
        if b.len() < n { Err(format!("record cut short: {n} bytes wanted, {} left", b.len())) } else { Ok(()) }
    }
    fn string(b: &mut bytes::Bytes) -> Result<skein_codec::ByteString, String> {
        need(b, 2)?;
        let len = usize::from(b.get_u16());
        need(b, len)?;
        skein_codec::ByteString::try_from(b.split_to(len)).map_err(|_| "a string that is not UTF-8".to_string())
    }
    need(packed, 1)?;
    let flags = packed.get_u8();
    if flags & !(GROUPS_ONLY | RETAIN_SEQ | GROUPS | PUBLISHER | TARGET) != 0 {
        return Err(format!("unknown record flags {flags:#04x}"));
    }
    let target = if flags & TARGET != 0 {
        let client_id = string(packed)?;
        need(packed, 4)?;
        let qos = skein_codec::QoS::from_u8(packed.get_u8()).ok_or("a relayed message's QoS is not 0, 1 or 2")?;
        let retain = packed.get_u8() != 0;
        let count = usize::from(packed.get_u16());
        need(packed, count * 4)?;
        let subscription_ids = (0..count).map(|_| packed.get_u32()).collect();
        Some(Target { client_id, qos, retain, subscription_ids })
    } else {
        None
    };
    let publisher = if flags & PUBLISHER != 0 { Some(string(packed)?) } else { None };
    let retain_seq = if flags & RETAIN_SEQ != 0 {
        need(packed, 8)?;
        packed.get_u64()
    } else {
        0
    };
    let mut shared_groups = Vec::new();
    if flags & GROUPS != 0 {
        need(packed, 2)?;
        for _ in 0..packed.get_u16() {
            shared_groups.push(string(packed)?);
        }
    }
    need(packed, 4)?;
    let len = packed.get_u32() as usize;
    need(packed, len)?;
    let (message, _) = Message::decode_v5(packed.split_to(len), publisher)?;
    Ok(Unpacked { message, shared_groups, retain_seq, groups_only: flags & GROUPS_ONLY != 0, target })
}

pub fn decode_message(f: &Forwarded) -> Option<Message> {
    let publisher =
        if f.publisher.is_empty() { None } else { Some(skein_codec::ByteString::try_from(f.publisher.clone()).ok()?) };
    let id = skein_broker::message::MessageId { node: f.id_node, seq: f.id_seq };
    Message::decode_v5(f.publish.clone(), publisher).ok().map(|(m, _)| Message { id, ..m })
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
                message: Some(encode_message(&m.message)),
                qos: m.qos as u32,
                retain: m.retain,
                subscription_ids: m.subscription_ids.clone(),
                packet_id: u32::from(packet_id),
                state: u32::from(state),
                group: m.group.as_ref().map(|g| g.to_string()).unwrap_or_default(),
            }
        })
        .collect();
    let incoming_qos2 = e.incoming_qos2.iter().map(|id| u32::from(*id)).collect();
    TakeoverReply { had_session: true, subscriptions, messages, incoming_qos2 }
}

pub fn from_reply(r: TakeoverReply) -> Option<SessionExport> {
    if !r.had_session {
        return None;
    }
    let mut export = SessionExport {
        incoming_qos2: r.incoming_qos2.iter().filter_map(|id| u16::try_from(*id).ok().filter(|id| *id != 0)).collect(),
        ..SessionExport::default()
    };
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
            group: (!q.group.is_empty()).then(|| q.group.as_str().into()),
        });
    }
    Some(export)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_broker::message::MessageId;
    use skein_codec::SubscriptionOptions;

    fn packed(records: &[(Message, Vec<String>, u64, bool)]) -> bytes::Bytes {
        let mut buf = BytesMut::new();
        for (m, groups, seq, only) in records {
            pack_message(m, groups, *seq, *only, &mut buf);
        }
        buf.freeze()
    }

    fn unpack_all(mut b: bytes::Bytes) -> Vec<Result<Unpacked, String>> {
        std::iter::from_fn(|| unpack_message(&mut b)).collect()
    }

    #[test]
    fn a_relayed_record_names_its_session_and_how_it_is_delivered() {
        let mut m = Message::system("moved/t", "for one session", false);
        m.qos = QoS::ExactlyOnce;
        let target = Target {
            client_id: "mover".into(),
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![7, 300_000],
        };
        let mut buf = BytesMut::new();
        pack_record(&m, &[], 0, false, Some(&target), &mut buf);
        pack_message(&m, &[], 0, false, &mut buf);
        let records = unpack_all(buf.freeze());
        let [Ok(relayed), Ok(plain)] = &records[..] else { panic!("two records: {records:?}") };
        assert_eq!(relayed.target.as_ref(), Some(&target));
        assert_eq!((&*relayed.message.topic, &relayed.message.payload[..]), ("moved/t", &b"for one session"[..]));
        assert_eq!(plain.target, None);
        // Cut anywhere inside the target, the record says so rather than reading past it.
        let mut one = BytesMut::new();
        pack_record(&m, &[], 0, false, Some(&target), &mut one);
        for cut in 1..12 {
            let records = unpack_all(one.clone().freeze().slice(..cut));
            assert!(matches!(&records[..], [Err(_)]), "cut at {cut}: {records:?}");
        }
    }

    #[test]
    fn packed_messages_come_back_as_they_went() {
        let mut from_client = Message::system("a/b", "payload", true);
        from_client.publisher = Some("client-7".into());
        from_client.qos = QoS::ExactlyOnce;
        let with_properties = Message::from_publish(
            skein_codec::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "p/q".into(),
                packet_id: 3,
                properties: skein_codec::Properties::from(skein_codec::PropertyValues {
                    message_expiry_interval: Some(30),
                    user_properties: vec![("k".into(), "v".into())],
                    ..Default::default()
                }),
                payload: bytes::Bytes::from_static(b"with properties"),
            },
            None,
        );
        let records = vec![
            (Message::system("plain", "", false), vec![], 0, false),
            (from_client, vec!["$share/g/a/+".to_string(), "$share/h/#".to_string()], 41, false),
            (with_properties, vec!["$share/g/p/q".to_string()], 0, true),
        ];
        let got = unpack_all(packed(&records));
        assert_eq!(got.len(), 3);
        for ((m, groups, seq, only), u) in records.iter().zip(got) {
            let u = u.unwrap();
            assert_eq!(
                (&*u.message.topic, &u.message.payload[..], u.message.qos, u.message.retain),
                (&*m.topic, &m.payload[..], m.qos, m.retain)
            );
            assert_eq!(u.message.publisher, m.publisher);
            assert_eq!(u.message.properties, m.properties);
            assert_eq!(u.shared_groups.iter().map(|g| g.to_string()).collect::<Vec<_>>(), *groups);
            assert_eq!((u.retain_seq, u.groups_only), (*seq, *only));
        }
    }

    #[test]
    fn ids_come_back_in_their_records_order_and_a_short_run_gives_none() {
        let ids = [MessageId { node: 1, seq: 7 }, MessageId::NONE, MessageId { node: u64::MAX, seq: u64::MAX }];
        let mut run = BytesMut::new();
        for id in ids {
            pack_id(id, &mut run);
        }
        assert_eq!(run.len(), 48);
        let mut run = run.freeze();
        let back: Vec<MessageId> = (0..4).map(|_| unpack_id(&mut run)).collect();
        assert_eq!(back, [ids[0], ids[1], ids[2], MessageId::NONE], "past its end, a run has no ids");
        // A batch from a version without ids: every record has none. A cut id is none, and ends the run.
        assert!(unpack_id(&mut bytes::Bytes::new()).is_none());
        let mut cut = bytes::Bytes::from_static(&[0; 15]);
        assert!(unpack_id(&mut cut).is_none());
    }

    #[test]
    fn a_cut_or_damaged_run_is_an_error_never_a_panic() {
        let mut m = Message::system("t/u", "some payload", false);
        m.publisher = Some("pub".into());
        let first = (m.clone(), vec!["$share/g/t/#".to_string()], 9, false);
        let boundary = packed(std::slice::from_ref(&first)).len();
        let whole = packed(&[first, (m, vec![], 0, false)]);
        assert_eq!(unpack_all(whole.clone()).len(), 2);
        for cut in (1..whole.len()).filter(|c| *c != boundary) {
            let got = unpack_all(whole.slice(..cut));
            assert!(got.last().is_some_and(|r| r.is_err()), "cut at {cut}: {got:?}");
            assert!(got.iter().rev().skip(1).all(|r| r.is_ok()), "only the last record fails: {got:?}");
        }
        // Every byte changed to every value: read or refused, and the reading always ends.
        for at in 0..whole.len() {
            for v in [0x00, 0x01, 0x0f, 0x7f, 0x80, 0xff] {
                let mut damaged = whole.to_vec();
                damaged[at] = v;
                let _ = unpack_all(bytes::Bytes::from(damaged));
            }
        }
        assert!(unpack_all(bytes::Bytes::from_static(&[0x10])).pop().unwrap().is_err(), "unknown flags");
    }

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
                    message: Message {
                        id: MessageId { node: 3, seq: 1 << 60 },
                        ..Message::system("a/b", "one", false)
                    },
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![4],
                    sent: Some((9, InflightState::AwaitingPubAck)),
                    group: Some("$share/g/a/#".into()),
                },
                ExportedMessage {
                    message: Message::system("a/c", "two", false),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    subscription_ids: vec![],
                    sent: None,
                    group: None,
                },
            ],
            incoming_qos2: vec![3, 77],
        };
        let back = from_reply(to_reply(Some(export.clone()))).expect("a session");
        assert_eq!(back.incoming_qos2, [3, 77], "unreleased QoS 2 identifiers go with it");
        assert_eq!(back.subscriptions, export.subscriptions);
        assert_eq!(back.messages.len(), 2);
        assert_eq!(back.messages[0].sent, Some((9, InflightState::AwaitingPubAck)));
        assert_eq!(back.messages[0].message.id, MessageId { node: 3, seq: 1 << 60 }, "its id goes with it");
        assert!(back.messages[1].message.id.is_none());
        assert_eq!(&back.messages[1].message.payload[..], b"two");
        assert!(back.messages[1].retain && back.messages[1].sent.is_none());
        assert_eq!(back.messages[0].group.as_deref(), Some("$share/g/a/#"), "the shared group that gave it");
        assert_eq!(back.messages[1].group, None);
        assert!(from_reply(to_reply(None)).is_none());
    }
}
