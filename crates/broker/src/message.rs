//! The application message as the broker holds it: one `Arc<Message>` per publish, shared by every subscriber's
//! queue, payload and topic never copied.

use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use skein_codec::{MAX_PACKET_SIZE, Packet, Properties, PropertyContext, ProtocolVersion, Publish, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets at most its granted QoS.
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5.0 properties that travel with the message (payload format, expiry, content type, response topic,
    /// correlation data, user properties). Empty (a null pointer) when there are none, as nearly always.
    pub properties: Properties,
    /// Client id of the publisher, for MQTT 5.0 No Local.
    pub publisher: Option<ByteString>,
    /// When this node received it, for its Message Expiry Interval; `None` for a message without one (the only
    /// use: a clock read for every message would cost more than the rest of building it).
    pub received: Option<Instant>,
    /// Who published it where, in a cluster (see [`MessageId`]); [`MessageId::NONE`] on a single node.
    pub id: MessageId,
}

/// A message's identity across a cluster: the node it was published on and a number that node gave it. Every copy
/// of one publish carries the same id whichever way it went (forwarded, relayed for a session that moved, handed
/// over with that session), so a session that has just moved, and may be reached by two of those ways at once,
/// takes it once (see `Session::first_delivery`). Not kept in the store or the Raft log: it matters only while a
/// message is on its way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MessageId {
    pub node: u64,
    pub seq: u64,
}

/// The next numbers of this process (`MessageId::next`), handed to threads in blocks: one shared count taken once
/// per `ID_BLOCK` messages. Starts at the wall-clock millisecond shifted left by 20 bits, so that a restarted node
/// goes on above the numbers of its last run unless it published more than a million messages a millisecond on
/// average.
static NEXT_ID_BLOCK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block of numbers: the next, and the end.
    static ID_RANGE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

impl MessageId {
    /// No id: a single node's message, or one read back from the store.
    pub const NONE: MessageId = MessageId { node: 0, seq: 0 };

    pub fn is_none(&self) -> bool {
        self.seq == 0
    }

    /// A new id for a message published on node `node`: unique in this process, and in practice across its
    /// restarts (see `NEXT_ID_BLOCK`).
    pub fn next(node: u64) -> MessageId {
        use std::sync::atomic::Ordering;
        let seq = ID_RANGE.with(|r| {
            let (mut next, mut end) = r.get();
            if next == end {
                let start = unix_ms(SystemTime::now()) << 20;
                let _ = NEXT_ID_BLOCK.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
                next = NEXT_ID_BLOCK.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            r.set((next + 1, end));
            next
        });
        MessageId { node, seq }
    }
}

/// Marks the wall-clock expiry after a stored message's PUBLISH (see [`Message::encode_stored_into`]).
const EXPIRES_AT: u8 = 0x01;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The receive time a message with these properties keeps (see `Message::received`).
fn received_now(props: &Properties) -> Option<Instant> {
    props.message_expiry_interval.map(|_| Instant::now())
}

impl Message {
    /// The message a PUBLISH carries. Topic Alias and Subscription Identifiers are per connection, not per
    /// message, so they are dropped here [MQTT-3.3.2-12]; the topic is the resolved one.
    pub fn from_publish(publish: Publish, publisher: Option<ByteString>) -> Message {
        let mut props = publish.properties;
        if let Some(values) = props.values_mut() {
            values.topic_alias = None;
            values.subscription_identifiers.clear();
        }
        let properties = if props.is_empty() { Properties::default() } else { props };
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            received: received_now(&properties),
            properties,
            publisher,
            id: MessageId::NONE,
        }
    }

    /// This message in one allocation of its own. A message decoded from a PUBLISH has its topic, payload and
    /// properties as slices of the buffer the packet was read into (16 KB per read of a busy connection, a forward
    /// batch's buffer between nodes); one that is kept for long (retained, queued for a session that is away) would
    /// keep that whole buffer alive. Everything but the buffer stays as it was, the receive time included.
    pub fn compact(&self) -> Message {
        // `encode_v5` would count the time waited against the expiry interval; this keeps it as received.
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            packet_id: if self.qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: self.properties.clone(),
            payload: self.payload.clone(),
        });
        let mut buf = BytesMut::with_capacity(packet.encoded_len(ProtocolVersion::V5).unwrap_or(0));
        match packet.encode(ProtocolVersion::V5, &mut buf).map(|_| Message::decode_v5(buf.freeze(), None)) {
            Ok(Ok((m, _))) => Message { publisher: self.publisher.clone(), received: self.received, id: self.id, ..m },
            // A message the broker holds always encodes and decodes; if one did not, it stays as it is.
            _ => self.clone(),
        }
    }

    /// A will, published when its connection ends without a clean DISCONNECT. Will Delay Interval is not a
    /// PUBLISH property, so it is dropped.
    pub fn from_will(will: skein_codec::Will, publisher: ByteString) -> Message {
        let mut props = will.properties;
        props.retain_allowed(PropertyContext::Publish);
        let properties = if props.is_empty() { Properties::default() } else { props };
        Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            received: received_now(&properties),
            properties,
            publisher: Some(publisher),
            id: MessageId::NONE,
        }
    }

    /// A message the broker itself publishes ($SYS).
    pub fn system(topic: impl Into<ByteString>, payload: impl Into<Bytes>, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain,
            properties: Properties::default(),
            publisher: None,
            received: None,
            id: MessageId::NONE,
        }
    }

    /// Seconds left of its Message Expiry Interval at `now`: `None` when it has none, `Some(0)` once expired. The
    /// interval counts from when this node received it (or read it back, with what was left of it then: see
    /// [`Message::decode_stored`]).
    pub fn expiry_left(&self, now: Instant) -> Option<u32> {
        let interval = self.properties.message_expiry_interval?;
        let waited = self.received.map_or(0, |r| now.saturating_duration_since(r).as_secs());
        Some(u32::try_from(u64::from(interval).saturating_sub(waited)).unwrap_or(0))
    }

    /// It has a Message Expiry Interval (checking costs a clock read only then).
    pub fn has_expiry(&self) -> bool {
        self.properties.message_expiry_interval.is_some()
    }

    /// Its Message Expiry Interval has passed: it is not delivered any more [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expiry_left(now) == Some(0)
    }

    /// The PUBLISH that delivers this message at `qos` with `packet_id` to a client speaking `version`. `retain` is
    /// the flag as delivered, which depends on why it is sent (live or retained-on-subscribe) and the subscription's
    /// options. Properties are copied only for MQTT 5.0, the one version that carries them.
    pub fn to_publish(
        &self,
        version: ProtocolVersion,
        qos: QoS,
        packet_id: u16,
        retain: bool,
        dup: bool,
        sub_ids: &[u32],
    ) -> Publish {
        let mut properties = Properties::default();
        if version.is_v5() {
            if !self.properties.is_empty() {
                properties.clone_from(&self.properties);
                // [MQTT-3.3.2-6]: the interval as received, less the time the message waited here.
                if self.properties.message_expiry_interval.is_some()
                    && let Some(left) = self.expiry_left(Instant::now())
                {
                    properties.message_expiry_interval = Some(left.max(1));
                }
            }
            if !sub_ids.is_empty() {
                properties.subscription_identifiers.extend_from_slice(sub_ids);
            }
        }
        Publish { dup, qos, retain, topic: self.topic.clone(), packet_id, properties, payload: self.payload.clone() }
    }

    /// The message as a PUBLISH without properties, when that is how it goes out for `version`: every 3.x packet,
    /// and a 5.0 one for a message that has none and no Subscription Identifiers to carry. The same bytes as
    /// [`Message::to_publish`] then, without building a `Publish` (the common case of delivery and forwarding).
    pub fn bare(
        &self,
        version: ProtocolVersion,
        qos: QoS,
        packet_id: u16,
        retain: bool,
        dup: bool,
        sub_ids: &[u32],
    ) -> Option<skein_codec::BarePublish<'_>> {
        (!version.is_v5() || (self.properties.is_empty() && sub_ids.is_empty())).then(|| skein_codec::BarePublish {
            dup,
            qos,
            retain,
            topic: &self.topic,
            packet_id,
            payload: &self.payload,
        })
    }

    /// The message as stored and as sent between nodes: an MQTT 5.0 PUBLISH, with `sub_ids` as its Subscription
    /// Identifiers. One encoding for the store and the cluster.
    pub fn encode_v5(&self, sub_ids: &[u32]) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_v5_into(sub_ids, &mut buf);
        buf.freeze()
    }

    /// `encode_v5`, appended to `buf` (many messages in one allocation: `buf.split().freeze()` after each).
    pub fn encode_v5_into(&self, sub_ids: &[u32], buf: &mut BytesMut) {
        if let Some(bare) = self.bare(ProtocolVersion::V5, self.qos, 1, self.retain, false, sub_ids) {
            let _ = bare.encode(ProtocolVersion::V5, buf);
            return;
        }
        let packet = Packet::Publish(self.to_publish(ProtocolVersion::V5, self.qos, 1, self.retain, false, sub_ids));
        buf.reserve(packet.encoded_len(ProtocolVersion::V5).unwrap_or(0));
        // A message that was decoded or built by the broker always encodes.
        let _ = packet.encode(ProtocolVersion::V5, buf);
    }

    /// The message as kept for later (the store's retained and queued messages, the cluster's retained messages in
    /// its log): `encode_v5`, then, for a message with a Message Expiry Interval, when that ends as wall-clock time
    /// (`EXPIRES_AT`, then milliseconds since the Unix epoch as a u64). The PUBLISH alone would carry the interval
    /// left at writing, and a message read back after a restart (or by a node that applies the log later) would
    /// start it again. Readers that predate the trailer read the PUBLISH and ignore what follows it.
    pub fn encode_stored_into(&self, sub_ids: &[u32], buf: &mut BytesMut) {
        use bytes::BufMut;
        self.encode_v5_into(sub_ids, buf);
        if let Some(at) = self.expires_at() {
            buf.put_u8(EXPIRES_AT);
            buf.put_u64(at);
        }
    }

    /// `encode_stored_into`, in a buffer of its own.
    pub fn encode_stored(&self, sub_ids: &[u32]) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_stored_into(sub_ids, &mut buf);
        buf.freeze()
    }

    /// The message `encode_stored` (or, before it, `encode_v5`) wrote, and its Subscription Identifiers; its expiry
    /// interval is what is left of it now, `Some(0)` (expired) once its time has passed.
    pub fn decode_stored(bytes: Bytes, publisher: Option<ByteString>) -> Result<(Message, Vec<u32>), String> {
        use bytes::Buf;
        let mut buf = bytes;
        let (mut message, sub_ids) = Message::decode_v5_from(&mut buf, publisher)?;
        if buf.len() == 9 && buf[0] == EXPIRES_AT {
            buf.advance(1);
            let at = buf.get_u64();
            if let Some(p) = message.properties.values_mut().filter(|p| p.message_expiry_interval.is_some()) {
                let left_ms = at.saturating_sub(unix_ms(SystemTime::now()));
                p.message_expiry_interval = Some(u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX));
                message.received = Some(Instant::now());
            }
        }
        Ok((message, sub_ids))
    }

    /// When its Message Expiry Interval ends, in milliseconds since the Unix epoch; `None` when it has none.
    fn expires_at(&self) -> Option<u64> {
        let interval = self.properties.message_expiry_interval?;
        let waited = self.received.map_or(Duration::ZERO, |r| r.elapsed());
        let now = SystemTime::now();
        Some(unix_ms(now + Duration::from_secs(interval.into())).saturating_sub(waited.as_millis() as u64))
    }

    /// The message `encode_v5` wrote, and its Subscription Identifiers. The payload stays a slice of `bytes`.
    pub fn decode_v5(bytes: Bytes, publisher: Option<ByteString>) -> Result<(Message, Vec<u32>), String> {
        let mut buf = bytes;
        Message::decode_v5_from(&mut buf, publisher)
    }

    /// `decode_v5` of the PUBLISH at the front of `buf`, leaving what follows it there.
    fn decode_v5_from(buf: &mut Bytes, publisher: Option<ByteString>) -> Result<(Message, Vec<u32>), String> {
        // Most messages have no properties: those are read without building a `Publish` (every forwarded message
        // comes this way).
        if let Ok(Some(p)) = skein_codec::decode_publish_parts(buf, ProtocolVersion::V5, MAX_PACKET_SIZE) {
            let message = Message {
                topic: p.topic,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: Properties::default(),
                publisher,
                received: None,
                id: MessageId::NONE,
            };
            return Ok((message, Vec::new()));
        }
        match skein_codec::decode_bytes(buf, ProtocolVersion::V5, MAX_PACKET_SIZE) {
            Ok(Some(Packet::Publish(p))) => {
                let sub_ids = p.properties.subscription_identifiers.clone();
                Ok((Message::from_publish(Publish { packet_id: 0, ..p }, publisher), sub_ids))
            }
            Ok(_) => Err("not a PUBLISH record".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_across_threads_and_above_zero() {
        let threads: Vec<_> =
            (0..4).map(|_| std::thread::spawn(|| (0..3000).map(|_| MessageId::next(9)).collect::<Vec<_>>())).collect();
        let all: Vec<MessageId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        assert!(all.iter().all(|id| id.node == 9 && !id.is_none()));
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        // Numbered from the clock: a later run starts above an earlier one's numbers.
        assert!(all[0].seq >> 20 > 1_700_000_000_000, "{:?}", all[0]);
    }

    fn with_expiry(interval: u32, waited: Duration) -> Message {
        let mut m = Message::system("t", "p", true);
        m.properties = Properties::from(skein_codec::PropertyValues {
            message_expiry_interval: Some(interval),
            ..Default::default()
        });
        m.received = Some(Instant::now() - waited);
        m
    }

    #[test]
    fn a_stored_message_keeps_its_expiry_as_wall_clock_time() {
        let m = with_expiry(60, Duration::from_secs(10));
        let (back, _) = Message::decode_stored(m.encode_stored(&[]), None).unwrap();
        assert_eq!(back.expiry_left(Instant::now()), Some(50));
        let gone = with_expiry(4, Duration::from_secs(6));
        let (back, _) = Message::decode_stored(gone.encode_stored(&[]), None).unwrap();
        assert!(back.is_expired(Instant::now()), "{back:?}");
        // Read back as time goes on: what is left then, not the interval again.
        let mut bytes = BytesMut::from(&with_expiry(60, Duration::ZERO).encode_stored(&[])[..]);
        let n = bytes.len();
        let at = u64::from_be_bytes(bytes[n - 8..].try_into().unwrap()) - 45_000;
        bytes[n - 8..].copy_from_slice(&at.to_be_bytes());
        let (back, _) = Message::decode_stored(bytes.freeze(), None).unwrap();
        assert!(matches!(back.expiry_left(Instant::now()), Some(14 | 15)), "{back:?}");
    }

    #[test]
    fn stored_messages_read_both_ways_with_and_without_the_expiry_trailer() {
        let m = with_expiry(60, Duration::ZERO);
        // A reader before the trailer reads the PUBLISH and ignores it.
        let (old_reader, _) = Message::decode_v5(m.encode_stored(&[7]), None).unwrap();
        assert_eq!((old_reader.topic.as_ref(), old_reader.expiry_left(Instant::now())), ("t", Some(60)));
        // A record written before it reads as it did.
        let (from_old, ids) = Message::decode_stored(m.encode_v5(&[7]), None).unwrap();
        assert_eq!((from_old.expiry_left(Instant::now()), ids), (Some(60), vec![7]));
        // No trailer for a message without an expiry.
        let plain = Message::system("t", "p", true);
        assert_eq!(plain.encode_stored(&[]), plain.encode_v5(&[]));
    }

    #[test]
    fn compact_keeps_everything_but_the_buffer() {
        let read = Bytes::from(vec![b'x'; 16 * 1024]);
        let properties = Properties::from(skein_codec::PropertyValues {
            message_expiry_interval: Some(60),
            correlation_data: Some(read.slice(100..104)),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        });
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: ByteString::try_from(read.slice(0..10)).unwrap(),
            packet_id: 9,
            properties,
            payload: read.slice(10..100),
        };
        let m = Message::from_publish(p, Some("pub".into()));
        let c = m.compact();
        assert_eq!((&c.topic, &c.payload, c.qos, c.retain), (&m.topic, &m.payload, m.qos, m.retain));
        assert_eq!(c.properties, m.properties, "the interval as received, not what is left of it");
        assert_eq!((c.publisher.as_deref(), c.received), (Some("pub"), m.received));
        let inside = |b: &[u8]| {
            let (start, at) = (read.as_ptr() as usize, b.as_ptr() as usize);
            at >= start && at < start + read.len()
        };
        assert!(inside(m.payload.as_ref()) && inside(m.topic.as_bytes()), "the original is a slice of the read");
        assert!(!inside(c.payload.as_ref()) && !inside(c.topic.as_bytes()), "the copy is not");
        assert!(!inside(c.properties.correlation_data.as_deref().unwrap()));
    }
}
