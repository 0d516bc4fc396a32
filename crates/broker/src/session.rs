//! One client's session as a plain state machine (MQTT 5.0 section 4.1, 3.1.1 section 4.1): its subscriptions,
//! the messages queued for it, the QoS 1/2 messages in flight to it, and the QoS 2 packet identifiers it has in
//! flight to us. No sockets, no tasks, no clock: the connection driver feeds it events and writes what it returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use skein_codec::{Ack, Packet, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

use crate::message::{Message, MessageId};

/// Wakes the connection attached to a session when the session has something new for it: a flag and the
/// connection task's waker. Lighter than a `Notify` (no waiter list, no lock, no future for the connection to keep).
/// It also carries the connection's kick (see [`Kick`]): one allocation per connection for both.
#[derive(Debug, Default)]
pub struct Signal {
    set: AtomicBool,
    /// The reason code of a kick (see [`Kick`]); 0 while there is none.
    kicked: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    pub fn notify(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// The reason the connection was kicked with, once it has been (the first kick counts).
    pub fn kicked(&self) -> Option<ReasonCode> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            code => ReasonCode::from_u8(code),
        }
    }

    /// Ready with the kick's reason once the connection is kicked.
    pub fn poll_kicked(&self, cx: &mut Context<'_>) -> Poll<ReasonCode> {
        if let Some(reason) = self.kicked() {
            return Poll::Ready(reason);
        }
        self.waker.register(cx.waker());
        // A kick between the first look and the registration found no waker to wake.
        self.kicked().map_or(Poll::Pending, Poll::Ready)
    }

    fn kick(&self, reason: ReasonCode) {
        let _ = self.kicked.compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire);
        // Woken whatever the flag said: the connection looks at the kick on every wake.
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Leaves `waker` to be woken by the next notification, without taking one: true if one is already there.
    pub fn register(&self, waker: &std::task::Waker) -> bool {
        self.waker.register(waker);
        self.set.load(Ordering::Acquire)
    }

    /// Ready once per notification (several before a poll count as one).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notification between the first look and the registration found no waker to wake.
        if self.set.swap(false, Ordering::AcqRel) { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// Closes the connection whose [`Signal`] it holds, with a reason: another connection took its session over, or the
/// broker shuts down. Dropped unsent, it closes the connection as taken over (the session was let go of, which only a
/// take-over does). The connection hears it as it hears its session: through its signal.
#[derive(Debug)]
pub struct Kick(Option<Arc<Signal>>);

impl Kick {
    pub fn new(signal: Arc<Signal>) -> Kick {
        Kick(Some(signal))
    }

    pub fn send(mut self, reason: ReasonCode) {
        if let Some(signal) = self.0.take() {
            signal.kick(reason);
        }
    }
}

impl Drop for Kick {
    fn drop(&mut self) {
        if let Some(signal) = self.0.take() {
            signal.kick(ReasonCode::SessionTakenOver);
        }
    }
}

/// A subscription as the session holds it, keyed by its filter string (which may be a `$share/` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// MQTT 5.0 Subscription Identifier.
    pub id: Option<u32>,
}

/// A message on its way to this session.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// The QoS it is delivered at: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag as delivered.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Key of its durable copy, for persistent sessions at QoS > 0.
    pub stored: Option<u64>,
    /// The shared group (`$share/{group}/{filter}`) it was given to this session for: if the session ends before
    /// acknowledging it, another member gets it.
    pub group: Option<ByteString>,
}

impl Subscription {
    /// A subscription as stored and as handed between nodes: an MQTT 5.0 SUBSCRIBE with this one filter.
    pub fn encode_v5(&self, filter: &ByteString, buf: &mut BytesMut) {
        let packet = Packet::Subscribe(skein_codec::Subscribe {
            packet_id: 1,
            properties: skein_codec::Properties::from(skein_codec::PropertyValues {
                subscription_identifiers: self.id.into_iter().collect(),
                ..Default::default()
            }),
            filters: vec![(filter.clone(), self.options)],
        });
        // A filter taken from a decoded SUBSCRIBE always encodes again.
        let _ = packet.encode(ProtocolVersion::V5, buf);
    }

    /// The subscriptions in a run of `encode_v5` SUBSCRIBE packets.
    pub fn decode_v5(bytes: &[u8]) -> Result<Vec<(ByteString, Subscription)>, String> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while !buf.is_empty() {
            match skein_codec::decode(&mut buf, ProtocolVersion::V5, skein_codec::MAX_PACKET_SIZE) {
                Ok(Some(Packet::Subscribe(s))) => {
                    let id = s.properties.subscription_identifiers.first().copied();
                    out.extend(s.filters.into_iter().map(|(filter, options)| (filter, Subscription { options, id })));
                }
                Ok(_) => return Err("not a SUBSCRIBE record".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 sent, PUBACK outstanding.
    AwaitingPubAck,
    /// QoS 2 sent, PUBREC outstanding.
    AwaitingPubRec,
    /// PUBREL sent, PUBCOMP outstanding: the message itself is delivered, only the identifier is in use.
    AwaitingPubComp,
}

#[derive(Debug, Clone)]
struct Inflight {
    packet_id: u16,
    out: Outgoing,
    state: InflightState,
}

impl InflightState {
    /// The number the store and the cluster keep for a message's state: 0 not sent, then 1, 2, 3.
    pub fn code(sent: Option<(u16, InflightState)>) -> (u16, u8) {
        match sent {
            None => (0, 0),
            Some((id, InflightState::AwaitingPubAck)) => (id, 1),
            Some((id, InflightState::AwaitingPubRec)) => (id, 2),
            Some((id, InflightState::AwaitingPubComp)) => (id, 3),
        }
    }

    /// The state `code` wrote; `Err` for a code it never writes.
    pub fn from_code(packet_id: u16, code: u8) -> Result<Option<(u16, InflightState)>, String> {
        Ok(match code {
            0 => None,
            1 => Some((packet_id, InflightState::AwaitingPubAck)),
            2 => Some((packet_id, InflightState::AwaitingPubRec)),
            3 => Some((packet_id, InflightState::AwaitingPubComp)),
            c => return Err(format!("unknown inflight state {c}")),
        })
    }
}

/// What a QoS 2 PUBLISH from the client is, next to the ones not yet released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingQos2 {
    New,
    Repeat,
    OverLimit,
}

/// A persistent session moving to another node: its subscriptions and what was queued or in flight, in order.
#[derive(Debug, Clone, Default)]
pub struct SessionExport {
    pub subscriptions: Vec<(ByteString, Subscription)>,
    pub messages: Vec<ExportedMessage>,
    /// QoS 2 identifiers received from the client whose PUBREL has not come: a PUBLISH repeated with one of them
    /// where the session goes is not delivered again [MQTT-4.3.3-10].
    pub incoming_qos2: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct ExportedMessage {
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Packet identifier and state if it had been sent.
    pub sent: Option<(u16, InflightState)>,
    /// The shared group that gave it to the session (see `Outgoing::group`).
    pub group: Option<ByteString>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// `max_queued_messages` or `max_queued_bytes` reached.
    QueueFull,
    /// QoS 0 for a client that is not connected (unless `queue_qos0_messages`).
    Offline,
}

/// A change the durable copy of the session needs after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreUpdate {
    /// The stored message `key` went out with `packet_id` and is now in `state`.
    Sent { key: u64, packet_id: u16, state: InflightState },
    /// The stored message `key` is done: acknowledged, or dropped.
    Done { key: u64 },
}

#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// 0 = no limit.
    pub max_inflight: u32,
    /// 0 = no limit.
    pub max_queued: u32,
    /// Payload bytes queued (beyond those in flight) under which a message is still queued; 0 = no limit.
    pub max_queued_bytes: usize,
    /// The client's MQTT 5.0 Maximum Packet Size; larger publishes are dropped for it [MQTT-3.1.2-25].
    pub max_packet_size: Option<u32>,
    pub queue_qos0_offline: bool,
    /// The client's MQTT 5.0 Topic Alias Maximum: aliases the server may use towards it (0: none).
    pub topic_alias_maximum: u16,
}

/// The parts of a session few use: QoS 2 publishes from the client, topic aliases towards it, a move between nodes.
/// Boxed, as an empty map is 48 bytes inline in every session.
#[derive(Debug, Default)]
struct Rare {
    /// QoS 2 identifiers received, PUBREL not yet: a repeated PUBLISH with one of these is not delivered again.
    incoming_qos2: HashSet<u16>,
    /// Topic aliases used towards the client on this connection.
    aliases: HashMap<ByteString, u16>,
    /// The node the session moved to, while this node still routes its messages there (see
    /// `Broker::take_over_relaying`).
    relay_to: Option<u64>,
    /// The session has just moved here from another node: what it was given since (see `first_delivery`).
    moved: Option<Box<Moved>>,
}

/// The messages a session that moved here was given while other nodes may still send it copies of them: the old
/// node relays what it still gets for the session, while the publishing nodes already send here directly, and what
/// the session brought with it may still come either way (see `Broker::connect`'s import).
#[derive(Debug)]
struct Moved {
    until: std::time::Instant,
    seen: HashSet<MessageId>,
    /// `seen` in the order given, for forgetting the oldest past `MOVED_SEEN_MAX`.
    order: VecDeque<MessageId>,
}

/// The most message ids a moved session remembers (about 40 bytes each): at thousands of messages a second for
/// that one session, the oldest are forgotten before the window ends.
const MOVED_SEEN_MAX: usize = 16_384;

/// Payloads this large or larger go out from where they are (`Outbox`), not copied into the send buffer: below it,
/// one write of many small packets costs less than the copy saves.
pub const SPLICE_MIN: usize = 8 * 1024;

/// What a connection has to send: `buf`, with large payloads spliced in at offsets of it, in order, so that they are
/// written from where they are (a vectored write) rather than copied.
#[derive(Debug, Default)]
pub struct Outbox {
    pub buf: BytesMut,
    /// (offset in `buf`, payload), offsets rising.
    spliced: VecDeque<(usize, Bytes)>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.spliced.is_empty()
    }

    /// Bytes to send, spliced payloads included.
    pub fn len(&self) -> usize {
        self.buf.len() + self.spliced.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    /// True when all of it is in `buf`.
    pub fn is_contiguous(&self) -> bool {
        self.spliced.is_empty()
    }

    /// Fills `slices` with what is to send, in order, as far as they go; returns how many it filled.
    pub fn slices<'a>(&'a self, slices: &mut [std::io::IoSlice<'a>]) -> usize {
        let (mut n, mut at) = (0, 0);
        for (offset, payload) in &self.spliced {
            if *offset > at {
                if n == slices.len() {
                    return n;
                }
                slices[n] = std::io::IoSlice::new(&self.buf[at..*offset]);
                n += 1;
            }
            if n == slices.len() {
                return n;
            }
            slices[n] = std::io::IoSlice::new(payload);
            n += 1;
            at = *offset;
        }
        if at < self.buf.len() && n < slices.len() {
            slices[n] = std::io::IoSlice::new(&self.buf[at..]);
            n += 1;
        }
        n
    }

    /// The first `n` bytes went out.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let before = self.spliced.front().map_or(self.buf.len(), |(offset, _)| *offset);
            if before > 0 {
                let k = before.min(n);
                self.buf.advance(k);
                for (offset, _) in self.spliced.iter_mut() {
                    *offset -= k;
                }
                n -= k;
                continue;
            }
            let Some((_, payload)) = self.spliced.front_mut() else { break };
            let k = payload.len().min(n);
            payload.advance(k);
            n -= k;
            if payload.is_empty() {
                self.spliced.pop_front();
            }
        }
    }
}

/// How many whole MQTT packets `buf` holds (control packets and publishes, as encoded here): each fixed header
/// walked, nothing decoded.
fn packets_in(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while let Some(rest) = skein_codec::packet_size(buf).and_then(|size| buf.get(size..)) {
        n += 1;
        buf = rest;
    }
    n
}

/// What one `Session::write_pending_to` wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// PUBLISH packets, first sends and resends.
    pub publishes: usize,
    /// All packets: those, resent PUBRELs and control packets.
    pub packets: u64,
    /// The PUBLISH packets' payload bytes (Mosquitto's `$SYS/broker/publish/bytes/sent`).
    pub payload_bytes: u64,
}

/// A client's session. Its client id is the handle's (`SessionHandle::client_id`).
#[derive(Debug)]
pub struct Session {
    /// The session outlives its connection (Clean Session 0, or a non-zero Session Expiry Interval).
    pub persistent: bool,
    pub subscriptions: HashMap<ByteString, Subscription>,
    queue: VecDeque<Outgoing>,
    /// The payload bytes in `queue`.
    queued_bytes: usize,
    inflight: VecDeque<Inflight>,
    /// What few sessions use, allocated when first needed.
    rare: Option<Box<Rare>>,
    next_packet_id: u16,
    /// Inflight messages must go out again, in order, with DUP set [MQTT-4.4.0-1].
    resend: bool,
    /// Acknowledgements and other packets of the current connection, already encoded.
    pub control: BytesMut,
    pub limits: SessionLimits,
    pub online: bool,
    pub version: ProtocolVersion,
    /// The connection attached now: only it may take from the queue or add control packets.
    pub connection_id: u64,
    /// Wakes the attached connection's writer.
    pub waker: Option<Arc<Signal>>,
    /// Messages dropped for this session, by any reason (saturating: 32 bits keep the session in a smaller
    /// allocation size).
    pub dropped: u32,
    /// Messages whose Message Expiry Interval passed before they could be sent (saturating).
    pub expired: u32,
    /// Session Expiry Interval, seconds after the connection ends; `u32::MAX` never (3.x persistent sessions).
    pub expiry: u32,
    /// The user name of its last connection, for the ACL.
    pub username: Option<ByteString>,
}

impl Session {
    pub fn new(limits: SessionLimits) -> Session {
        Session {
            persistent: false,
            subscriptions: HashMap::new(),
            rare: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_packet_id: 1,
            resend: false,
            control: BytesMut::new(),
            limits,
            online: false,
            version: ProtocolVersion::V311,
            connection_id: 0,
            waker: None,
            dropped: 0,
            expired: 0,
            expiry: u32::MAX,
            username: None,
        }
    }

    /// Takes out the QoS 1/2 messages a shared group gave this session that it has not acknowledged (queued, or
    /// in flight short of PUBCOMP's last step), for another member of the group.
    pub fn take_group_messages(&mut self) -> Vec<Outgoing> {
        let inflight = self
            .inflight
            .iter()
            .filter(|i| i.state != InflightState::AwaitingPubComp)
            .map(|i| i.out.clone())
            .filter(|o| o.group.is_some() && o.qos != QoS::AtMostOnce);
        let queued = self.queue.iter().filter(|o| o.group.is_some() && o.qos != QoS::AtMostOnce).cloned();
        inflight.chain(queued).collect()
    }

    /// Forgets everything but the client id (Clean Session 1 / Clean Start 1). Returns the stored keys to delete.
    pub fn clear(&mut self) -> Vec<u64> {
        let keys = self.stored_keys();
        self.subscriptions.clear();
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        if let Some(rare) = &mut self.rare {
            rare.incoming_qos2.clear();
            // A session started afresh has taken nothing yet.
            rare.moved = None;
        }
        self.resend = false;
        self.control.clear();
        keys
    }

    /// The node this session moved to, while what still comes for it here goes there.
    pub fn relay_to(&self) -> Option<u64> {
        self.rare.as_ref().and_then(|r| r.relay_to)
    }

    /// The session moved to `node`, its messages with it (they were exported): everything but its subscriptions is
    /// cleared (the stored keys of what it held are returned), and what those match goes to `node` until
    /// `Broker::end_relay`.
    pub fn relay_to_node(&mut self, node: u64) -> Vec<u64> {
        let subscriptions = std::mem::take(&mut self.subscriptions);
        let keys = self.clear();
        self.subscriptions = subscriptions;
        self.rare.get_or_insert_default().relay_to = Some(node);
        keys
    }

    /// The session has just moved here: until `until`, a message with one of the `ids` it brought, or
    /// one it is given meanwhile, is not taken a second time (see `first_delivery`).
    pub fn moved_here(&mut self, until: std::time::Instant, ids: impl IntoIterator<Item = MessageId>) {
        let mut moved = Moved { until, seen: HashSet::new(), order: VecDeque::new() };
        for id in ids.into_iter().filter(|id| !id.is_none()) {
            if moved.seen.insert(id) {
                moved.order.push_back(id);
            }
        }
        self.rare.get_or_insert_default().moved = Some(Box::new(moved));
    }

    /// Whether a message with `id` is new to this session: always, but for a session that moved here within its
    /// window (see `moved_here`), which takes each id once. `now` is asked only for such a session.
    pub fn first_delivery(&mut self, id: MessageId, now: impl FnOnce() -> std::time::Instant) -> bool {
        let Some(rare) = self.rare.as_mut() else { return true };
        let Some(moved) = rare.moved.as_mut() else { return true };
        if now() >= moved.until {
            rare.moved = None;
            return true;
        }
        if id.is_none() {
            return true;
        }
        if !moved.seen.insert(id) {
            return false;
        }
        moved.order.push_back(id);
        if moved.order.len() > MOVED_SEEN_MAX
            && let Some(old) = moved.order.pop_front()
        {
            moved.seen.remove(&old);
        }
        true
    }

    fn stored_keys(&self) -> Vec<u64> {
        self.queue.iter().map(|o| o.stored).chain(self.inflight.iter().map(|i| i.out.stored)).flatten().collect()
    }

    /// A new connection took this session over: what was in flight goes out again first, and the last connection's
    /// unsent acknowledgements are void.
    pub fn connected(
        &mut self,
        connection_id: u64,
        waker: Arc<Signal>,
        version: ProtocolVersion,
        limits: SessionLimits,
    ) {
        self.online = true;
        self.connection_id = connection_id;
        self.waker = Some(waker);
        self.version = version;
        self.limits = limits;
        self.control.clear();
        self.resend = !self.inflight.is_empty();
        // Topic aliases belong to a connection [MQTT-3.3.2-7].
        if let Some(rare) = &mut self.rare {
            rare.aliases.clear();
        }
    }

    /// Replaces a PUBLISH's topic by an alias when the client allows them (MQTT 5.0 section 3.3.2.3.4): a topic
    /// sent before goes as an empty name and its alias; a new one takes the next free alias while there is one.
    fn aliased(&mut self, mut p: skein_codec::Publish) -> skein_codec::Publish {
        let max = self.limits.topic_alias_maximum;
        if max == 0 || !self.version.is_v5() {
            return p;
        }
        let aliases = &mut self.rare.get_or_insert_default().aliases;
        if let Some(alias) = aliases.get(&p.topic) {
            p.properties.topic_alias = Some(*alias);
            p.topic = ByteString::new();
        } else if aliases.len() < usize::from(max) {
            let alias = aliases.len() as u16 + 1;
            // A copy: the message's topic is a slice of the buffer it was read into, which the map would keep alive.
            aliases.insert(ByteString::from(&*p.topic), alias);
            p.properties.topic_alias = Some(alias);
        }
        p
    }

    pub fn disconnected(&mut self) {
        self.online = false;
        self.waker = None;
        self.control.clear();
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Queues a message for delivery.
    pub fn enqueue(&mut self, out: Outgoing) -> Result<(), Dropped> {
        if !self.online && out.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
            self.dropped = self.dropped.saturating_add(1);
            return Err(Dropped::Offline);
        }
        if (self.limits.max_queued != 0 && self.queue.len() >= self.limits.max_queued as usize)
            || (self.limits.max_queued_bytes != 0 && self.queued_bytes >= self.limits.max_queued_bytes)
        {
            self.dropped = self.dropped.saturating_add(1);
            return Err(Dropped::QueueFull);
        }
        self.push_queued(out);
        Ok(())
    }

    fn push_queued(&mut self, out: Outgoing) {
        self.queued_bytes += out.message.payload.len();
        self.queue.push_back(out);
    }

    fn pop_queued(&mut self) -> Option<Outgoing> {
        let out = self.queue.pop_front()?;
        debug_assert!(self.queued_bytes >= out.message.payload.len());
        self.queued_bytes = self.queued_bytes.saturating_sub(out.message.payload.len());
        Some(out)
    }

    /// Puts back at the front what `pop_queued` took.
    fn unpop_queued(&mut self, out: Outgoing) {
        self.queued_bytes += out.message.payload.len();
        self.queue.push_front(out);
    }

    /// The payload bytes queued (not in flight).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Re-queues a message restored from the store, with its packet identifier if it had been sent.
    pub fn restore(&mut self, out: Outgoing, sent: Option<(u16, InflightState)>) {
        match sent {
            Some((packet_id, state)) => {
                self.next_packet_id = self.next_packet_id.max(packet_id.wrapping_add(1)).max(1);
                self.inflight.push_back(Inflight { packet_id, out, state });
            }
            None => self.push_queued(out),
        }
    }

    fn allocate_packet_id(&mut self) -> Option<u16> {
        // Identifiers in use are the inflight ones; with at most 65,535 of them a free one always exists when the
        // window has room.
        for _ in 0..=u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if id != 0 && !self.inflight.iter().any(|i| i.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    fn window_open(&self) -> bool {
        let max = match self.limits.max_inflight {
            0 => u16::MAX as usize,
            n => n.min(u32::from(u16::MAX)) as usize,
        };
        self.inflight.len() < max
    }

    /// Appends to `buf` what can be written now: resends, then control packets, then queued messages as far as the
    /// inflight window allows. Durable-copy changes are pushed to `updates`. Returns the messages written.
    pub fn write_pending(&mut self, buf: &mut BytesMut, updates: &mut Vec<StoreUpdate>) -> usize {
        self.write_into(buf, None, updates).publishes
    }

    /// `write_pending` into an `Outbox`: a payload of `SPLICE_MIN` bytes or more of a publish without properties is
    /// spliced in, not copied. `Written::packets` counts the control packets too.
    pub fn write_pending_to(&mut self, out: &mut Outbox, updates: &mut Vec<StoreUpdate>) -> Written {
        let control = packets_in(&self.control);
        let mut written = self.write_into(&mut out.buf, Some(&mut out.spliced), updates);
        written.packets += control;
        written
    }

    fn write_into(
        &mut self,
        buf: &mut BytesMut,
        mut spliced: Option<&mut VecDeque<(usize, Bytes)>>,
        updates: &mut Vec<StoreUpdate>,
    ) -> Written {
        let mut written = Written::default();
        let version = self.version;
        if self.resend {
            self.resend = false;
            for i in &self.inflight {
                let packet = match i.state {
                    InflightState::AwaitingPubComp => Packet::PubRel(Ack::new(i.packet_id)),
                    // Resends keep their full topic: aliases are optional per message.
                    _ => {
                        written.publishes += 1;
                        written.payload_bytes += i.out.message.payload.len() as u64;
                        Packet::Publish(i.out.message.to_publish(
                            version,
                            i.out.qos,
                            i.packet_id,
                            i.out.retain,
                            true,
                            &i.out.subscription_ids,
                        ))
                    }
                };
                // The packet encoded once already; it cannot fail now.
                let _ = packet.encode(version, buf);
                written.packets += 1;
            }
        }
        if !self.control.is_empty() {
            buf.extend_from_slice(&self.control);
            self.control.clear();
        }
        while let Some(front) = self.queue.front() {
            if front.qos != QoS::AtMostOnce && !self.window_open() {
                break;
            }
            let Some(out) = self.pop_queued() else { break };
            if out.message.has_expiry() && out.message.is_expired(std::time::Instant::now()) {
                // [MQTT-3.3.2-5]: not yet on its way to this subscriber, so it is deleted.
                self.expired = self.expired.saturating_add(1);
                if let Some(key) = out.stored {
                    updates.push(StoreUpdate::Done { key });
                }
                continue;
            }
            let packet_id = if out.qos == QoS::AtMostOnce {
                0
            } else {
                match self.allocate_packet_id() {
                    Some(id) => id,
                    None => {
                        self.unpop_queued(out);
                        break;
                    }
                }
            };
            let max = self.limits.max_packet_size.map(|m| m as usize);
            let fits = |len: Result<usize, _>| len.is_ok_and(|len| max.is_none_or(|max| len <= max));
            // Topic aliases are properties: a session that uses them takes the full path.
            let aliasing = version.is_v5() && self.limits.topic_alias_maximum > 0;
            let bare = out.message.bare(version, out.qos, packet_id, out.retain, false, &out.subscription_ids);
            let written_now = match bare.filter(|_| !aliasing) {
                Some(bare) => {
                    fits(bare.encoded_len(version))
                        && match spliced.as_deref_mut().filter(|_| bare.payload.len() >= SPLICE_MIN) {
                            Some(spliced) => {
                                let encoded = bare.encode_without_payload(version, buf).is_ok();
                                if encoded {
                                    spliced.push_back((buf.len(), out.message.payload.clone()));
                                }
                                encoded
                            }
                            None => bare.encode(version, buf).is_ok(),
                        }
                }
                None => {
                    let publish =
                        out.message.to_publish(version, out.qos, packet_id, out.retain, false, &out.subscription_ids);
                    let packet = Packet::Publish(self.aliased(publish));
                    fits(packet.encoded_len(version)) && packet.encode(version, buf).is_ok()
                }
            };
            if !written_now {
                // [MQTT-3.1.2-25]: discarded as if delivered.
                self.dropped = self.dropped.saturating_add(1);
                if let Some(key) = out.stored {
                    updates.push(StoreUpdate::Done { key });
                }
                continue;
            }
            written.publishes += 1;
            written.packets += 1;
            written.payload_bytes += out.message.payload.len() as u64;
            if out.qos != QoS::AtMostOnce {
                let state = if out.qos == QoS::AtLeastOnce {
                    InflightState::AwaitingPubAck
                } else {
                    InflightState::AwaitingPubRec
                };
                if let Some(key) = out.stored {
                    updates.push(StoreUpdate::Sent { key, packet_id, state });
                }
                self.inflight.push_back(Inflight { packet_id, out, state });
            }
        }
        written
    }

    /// Ends the inflight message `packet_id` in `state`, its durable copy with it; false if there was none.
    fn finish_inflight(&mut self, packet_id: u16, state: InflightState, updates: &mut Vec<StoreUpdate>) -> bool {
        let Some(pos) = self.inflight.iter().position(|i| i.packet_id == packet_id && i.state == state) else {
            return false;
        };
        if let Some(key) = self.inflight.remove(pos).and_then(|i| i.out.stored) {
            updates.push(StoreUpdate::Done { key });
        }
        true
    }

    /// PUBACK from the client: the QoS 1 message is delivered. False for an identifier not in flight (ignored).
    pub fn on_puback(&mut self, packet_id: u16, updates: &mut Vec<StoreUpdate>) -> bool {
        self.finish_inflight(packet_id, InflightState::AwaitingPubAck, updates)
    }

    /// PUBREC from the client. A success moves the message on to PUBREL; a 5.0 failure code ends it
    /// (MQTT 5.0 section 4.3.3). Changes to the durable copy go to `updates`.
    pub fn on_pubrec(&mut self, packet_id: u16, reason: ReasonCode, updates: &mut Vec<StoreUpdate>) {
        let Some(i) =
            self.inflight.iter_mut().find(|i| i.packet_id == packet_id && i.state == InflightState::AwaitingPubRec)
        else {
            // Not ours (or a repeat): answer so the client can finish its own state; 5.0 says why (0x92, section 3.6.2.1).
            let mut ack = Ack::new(packet_id);
            if self.version.is_v5() {
                ack.reason_code = ReasonCode::PacketIdentifierNotFound;
            }
            if !reason.is_error() {
                let _ = Packet::PubRel(ack).encode(self.version, &mut self.control);
            }
            return;
        };
        if reason.is_error() {
            self.finish_inflight(packet_id, InflightState::AwaitingPubRec, updates);
            return;
        }
        i.state = InflightState::AwaitingPubComp;
        if let Some(key) = i.out.stored {
            updates.push(StoreUpdate::Sent { key, packet_id, state: InflightState::AwaitingPubComp });
        }
        let _ = Packet::PubRel(Ack::new(packet_id)).encode(self.version, &mut self.control);
    }

    /// PUBCOMP from the client: the QoS 2 exchange is over and the identifier free.
    pub fn on_pubcomp(&mut self, packet_id: u16, updates: &mut Vec<StoreUpdate>) -> bool {
        self.finish_inflight(packet_id, InflightState::AwaitingPubComp, updates)
    }

    /// A QoS 2 PUBLISH from the client, with `limit` unreleased ones allowed (our Receive Maximum): new and to be
    /// delivered, a repeat of one whose PUBREL has not come yet [MQTT-4.3.3-10], or one too many.
    pub fn on_incoming_qos2(&mut self, packet_id: u16, limit: usize) -> IncomingQos2 {
        let incoming = &mut self.rare.get_or_insert_default().incoming_qos2;
        if incoming.contains(&packet_id) {
            IncomingQos2::Repeat
        } else if incoming.len() >= limit {
            IncomingQos2::OverLimit
        } else {
            incoming.insert(packet_id);
            IncomingQos2::New
        }
    }

    /// QoS 2 identifiers received from the client whose PUBREL has not come, in order.
    pub fn unreleased_qos2(&self) -> Vec<u16> {
        let mut ids: Vec<u16> =
            self.rare.as_ref().map(|r| r.incoming_qos2.iter().copied().collect()).unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// QoS 2 identifiers unreleased where the session was before: another node, or this one before a restart.
    pub fn restore_incoming_qos2(&mut self, ids: &[u16]) {
        if !ids.is_empty() {
            self.rare.get_or_insert_default().incoming_qos2.extend(ids);
        }
    }

    /// PUBREL from the client: frees the identifier; false if it was not in use.
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        self.rare.as_mut().is_some_and(|r| r.incoming_qos2.remove(&packet_id))
    }

    /// QoS 2 identifiers the client has in flight to us.
    pub fn incoming_inflight(&self) -> usize {
        self.rare.as_ref().map_or(0, |r| r.incoming_qos2.len())
    }

    /// Queues an encoded control packet for the current connection.
    pub fn send(&mut self, packet: &Packet) {
        let _ = packet.encode(self.version, &mut self.control);
    }

    /// Messages queued or in flight, in order, for persisting or handing over.
    pub fn pending(&self) -> impl Iterator<Item = &Outgoing> {
        self.inflight.iter().map(|i| &i.out).chain(self.queue.iter())
    }

    /// Everything another node needs to carry this session on.
    pub fn export(&self) -> SessionExport {
        let one = |o: &Outgoing, sent| ExportedMessage {
            message: (*o.message).clone(),
            qos: o.qos,
            retain: o.retain,
            subscription_ids: o.subscription_ids.clone(),
            sent,
            group: o.group.clone(),
        };
        let mut messages: Vec<ExportedMessage> =
            self.inflight.iter().map(|i| one(&i.out, Some((i.packet_id, i.state)))).collect();
        // A queued message whose expiry interval has passed is deleted, not handed on [MQTT-3.3.2-5]: its encoding
        // would say "1 s left" (an interval of 0 means none). One in flight has started its delivery and goes on.
        let now = std::time::Instant::now();
        messages.extend(
            self.queue.iter().filter(|o| !(o.message.has_expiry() && o.message.is_expired(now))).map(|o| one(o, None)),
        );
        SessionExport {
            subscriptions: self.subscriptions.iter().map(|(f, s)| (f.clone(), *s)).collect(),
            messages,
            incoming_qos2: self.unreleased_qos2(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its wakes.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_signal_is_ready_once_per_notification_and_wakes_a_waiting_task() {
        let wakes = Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();
        assert!(signal.poll(&mut cx).is_pending(), "nothing notified yet");
        signal.notify();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the registered task is woken");
        signal.notify();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "a second notification before the poll wakes no one again");
        assert!(signal.poll(&mut cx).is_ready());
        assert!(signal.poll(&mut cx).is_pending(), "both notifications were one");
        // Notified while nobody waits: the next poll is ready at once.
        signal.notify();
        assert!(signal.poll(&mut cx).is_ready());
    }
    use skein_codec::{MAX_PACKET_SIZE, Publish, decode};

    fn limits(max_inflight: u32, max_queued: u32) -> SessionLimits {
        SessionLimits {
            max_inflight,
            max_queued,
            max_queued_bytes: 0,
            max_packet_size: None,
            queue_qos0_offline: false,
            topic_alias_maximum: 0,
        }
    }

    fn sized(topic: &str, qos: QoS, payload: usize) -> Outgoing {
        let message = Arc::new(Message::system(topic.to_string(), "x".repeat(payload), false));
        Outgoing { message, ..out(topic, qos) }
    }

    #[test]
    fn a_kick_wakes_the_connection_with_its_reason_and_an_unsent_one_says_taken_over() {
        let signal = Arc::new(Signal::default());
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(signal.poll_kicked(&mut cx).is_pending());
        Kick::new(signal.clone()).send(ReasonCode::ServerShuttingDown);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the waiting connection is woken");
        assert_eq!(signal.poll_kicked(&mut cx), Poll::Ready(ReasonCode::ServerShuttingDown));
        // The first kick counts.
        drop(Kick::new(signal.clone()));
        assert_eq!(signal.kicked(), Some(ReasonCode::ServerShuttingDown));

        // A kick dropped unsent: the session was let go of, which only a take-over does.
        let signal = Arc::new(Signal::default());
        assert!(!signal.register(&waker), "nothing yet");
        drop(Kick::new(signal.clone()));
        assert_eq!(signal.kicked(), Some(ReasonCode::SessionTakenOver));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        // A connection about to park finds it through the flag as well (see `connection::park`).
        assert!(signal.register(&waker));
    }

    fn session(max_inflight: u32, max_queued: u32) -> Session {
        let mut s = Session::new(limits(max_inflight, max_queued));
        s.connected(1, Arc::new(Signal::default()), ProtocolVersion::V311, limits(max_inflight, max_queued));
        s
    }

    fn out(topic: &str, qos: QoS) -> Outgoing {
        let message = Arc::new(Message::system(topic.to_string(), "x", false));
        Outgoing { message, qos, retain: false, subscription_ids: vec![], stored: None, group: None }
    }

    fn packets(buf: &mut BytesMut) -> Vec<Packet> {
        let mut v = Vec::new();
        while let Some(p) = decode(buf, ProtocolVersion::V311, MAX_PACKET_SIZE).unwrap() {
            v.push(p);
        }
        v
    }

    fn publishes(buf: &mut BytesMut) -> Vec<Publish> {
        packets(buf)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_expired_message_is_not_sent_and_leaves_the_store() {
        let mut s = session(10, 10);
        let mut expiring = Message::system("t/old", "x", false);
        expiring.properties = skein_codec::Properties::from(skein_codec::PropertyValues {
            message_expiry_interval: Some(1),
            ..Default::default()
        });
        expiring.received = Some(std::time::Instant::now() - std::time::Duration::from_secs(2));
        let stale = Outgoing {
            message: Arc::new(expiring),
            qos: QoS::AtLeastOnce,
            stored: Some(9),
            ..out("", QoS::AtLeastOnce)
        };
        s.enqueue(stale).unwrap();
        s.enqueue(out("t/new", QoS::AtLeastOnce)).unwrap();
        let (mut buf, mut updates) = (BytesMut::new(), Vec::new());
        assert_eq!(s.write_pending(&mut buf, &mut updates), 1);
        assert!(matches!(&packets(&mut buf)[..], [Packet::Publish(p)] if &*p.topic == "t/new"));
        assert_eq!(updates, vec![StoreUpdate::Done { key: 9 }]);
        assert_eq!(s.expired, 1);
    }

    #[test]
    fn max_queued_bytes_queues_while_what_is_queued_is_under_it_and_counts_only_the_queue() {
        let mut s = session(1, 0);
        s.limits.max_queued_bytes = 100;
        // The first goes in flight at once; its bytes are then the window's, not the queue's.
        s.enqueue(sized("a", QoS::AtLeastOnce, 40)).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 1);
        assert_eq!(s.queued_bytes(), 0);
        for t in ["b", "c", "d"] {
            s.enqueue(sized(t, QoS::AtLeastOnce, 40)).unwrap();
        }
        assert_eq!(s.queued_bytes(), 120, "under the limit at each message, so all three are queued");
        assert_eq!(s.enqueue(sized("e", QoS::AtLeastOnce, 1)), Err(Dropped::QueueFull));
        assert_eq!(s.enqueue(sized("f", QoS::AtMostOnce, 0)), Err(Dropped::QueueFull), "QoS 0 too");
        assert_eq!(s.dropped, 2);
        // A message going out makes room again.
        assert!(s.on_puback(1, &mut vec![]));
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 1);
        assert_eq!(s.queued_bytes(), 80);
        s.enqueue(sized("g", QoS::AtLeastOnce, 40)).unwrap();
        let topics: Vec<String> = publishes(&mut buf).iter().map(|p| p.topic.to_string()).collect();
        assert_eq!(topics, ["a", "b"]);
        // No packet id free and the window closed: what stays queued is still counted.
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 0);
        assert_eq!(s.queued_bytes(), 120);
        assert!(s.clear().is_empty());
        assert_eq!(s.queued_bytes(), 0, "a session started afresh has nothing queued");
    }

    /// Writes `out` the way a writer that takes at most `step` bytes a call would, through `slices` and `advance`.
    fn drain(out: &mut Outbox, step: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while !out.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); 3];
            let k = out.slices(&mut slices);
            let mut n = 0;
            for s in &slices[..k] {
                let take = s.len().min(step - n);
                sent.extend_from_slice(&s[..take]);
                n += take;
                if n == step {
                    break;
                }
            }
            out.advance(n);
        }
        sent
    }

    #[test]
    fn large_payloads_are_spliced_in_and_the_bytes_on_the_wire_are_the_same() {
        let mut s = session(10, 0);
        let small = sized("a", QoS::AtLeastOnce, 10);
        let large = sized("b", QoS::AtMostOnce, SPLICE_MIN);
        let items = [large.clone(), small.clone(), large.clone(), large, small];
        for o in items.iter().cloned() {
            s.enqueue(o).unwrap();
        }
        s.control.extend_from_slice(&[0x40, 2, 0, 9]); // a PUBACK
        let mut out = Outbox::default();
        let written = s.write_pending_to(&mut out, &mut vec![]);
        assert_eq!((written.publishes, written.packets), (5, 6), "5 publishes, 6 packets with the PUBACK");
        assert_eq!(written.payload_bytes, 3 * SPLICE_MIN as u64 + 2 * 10, "their payloads");
        assert!(!out.is_contiguous());
        assert!(out.buf.len() < 1000, "the three large payloads are not in the buffer");
        let total = out.len();
        // The same messages through the copying path give the same bytes.
        let mut t = session(10, 0);
        for o in items {
            t.enqueue(o).unwrap();
        }
        t.control.extend_from_slice(&[0x40, 2, 0, 9]);
        let mut copied = BytesMut::new();
        t.write_pending(&mut copied, &mut vec![]);
        assert_eq!(total, copied.len());
        for step in [1, 7, 4096, SPLICE_MIN + 3, usize::MAX] {
            let mut again = Outbox::default();
            let mut u = session(10, 0);
            for o in [sized("b", QoS::AtMostOnce, SPLICE_MIN), sized("a", QoS::AtLeastOnce, 10)] {
                u.enqueue(o).unwrap();
            }
            u.write_pending_to(&mut again, &mut vec![]);
            let mut expect = BytesMut::new();
            let mut v = session(10, 0);
            for o in [sized("b", QoS::AtMostOnce, SPLICE_MIN), sized("a", QoS::AtLeastOnce, 10)] {
                v.enqueue(o).unwrap();
            }
            v.write_pending(&mut expect, &mut vec![]);
            assert_eq!(drain(&mut again, step), &expect[..], "written {step} bytes at a time");
        }
        assert_eq!(drain(&mut out, 1000), &copied[..]);
        assert!(out.is_empty());
    }

    #[test]
    fn qos1_flow_and_inflight_window() {
        let mut s = session(2, 0);
        for t in ["a", "b", "c"] {
            s.enqueue(out(t, QoS::AtLeastOnce)).unwrap();
        }
        let mut buf = BytesMut::new();
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 2, "window of two");
        let sent = publishes(&mut buf);
        assert_eq!(sent.iter().map(|p| p.packet_id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 0, "window full");
        assert!(s.on_puback(1, &mut vec![]));
        assert!(!s.on_puback(1, &mut vec![]), "a repeated PUBACK is ignored");
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 1);
        let sent = publishes(&mut buf);
        assert_eq!((&*sent[0].topic, sent[0].packet_id), ("c", 3));
    }

    #[test]
    fn qos0_is_not_held_by_the_window_but_keeps_order() {
        let mut s = session(1, 0);
        s.enqueue(out("a", QoS::AtLeastOnce)).unwrap();
        s.enqueue(out("b", QoS::AtMostOnce)).unwrap();
        s.enqueue(out("c", QoS::AtLeastOnce)).unwrap();
        s.enqueue(out("d", QoS::AtMostOnce)).unwrap();
        let mut buf = BytesMut::new();
        s.write_pending(&mut buf, &mut vec![]);
        let topics: Vec<String> = publishes(&mut buf).iter().map(|p| p.topic.to_string()).collect();
        assert_eq!(topics, ["a", "b"], "c waits for the window and d waits behind c");
    }

    #[test]
    fn qos2_flow_sends_pubrel_then_frees_on_pubcomp() {
        let mut s = session(10, 0);
        s.enqueue(out("a", QoS::ExactlyOnce)).unwrap();
        let mut buf = BytesMut::new();
        s.write_pending(&mut buf, &mut vec![]);
        assert_eq!(publishes(&mut buf)[0].qos, QoS::ExactlyOnce);
        s.on_pubrec(1, ReasonCode::Success, &mut vec![]);
        s.write_pending(&mut buf, &mut vec![]);
        assert_eq!(packets(&mut buf), vec![Packet::PubRel(Ack::new(1))]);
        assert_eq!(s.inflight(), 1, "identifier still in use until PUBCOMP");
        assert!(s.on_pubcomp(1, &mut vec![]));
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn reconnect_resends_inflight_in_order_with_dup() {
        let mut s = session(10, 0);
        s.enqueue(out("a", QoS::AtLeastOnce)).unwrap();
        s.enqueue(out("b", QoS::ExactlyOnce)).unwrap();
        s.enqueue(out("c", QoS::ExactlyOnce)).unwrap();
        let mut buf = BytesMut::new();
        s.write_pending(&mut buf, &mut vec![]);
        buf.clear();
        s.on_pubrec(3, ReasonCode::Success, &mut vec![]);
        s.disconnected();
        s.connected(2, Arc::new(Signal::default()), ProtocolVersion::V311, limits(10, 0));
        s.write_pending(&mut buf, &mut vec![]);
        let p = packets(&mut buf);
        assert_eq!(p.len(), 3);
        let Packet::Publish(a) = &p[0] else { panic!() };
        assert!(a.dup && a.packet_id == 1 && &*a.topic == "a");
        let Packet::Publish(b) = &p[1] else { panic!() };
        assert!(b.dup && b.packet_id == 2);
        assert_eq!(p[2], Packet::PubRel(Ack::new(3)), "PUBREL, not the message, once PUBREC came");
    }

    #[test]
    fn limits_drop_and_count() {
        let mut s = session(1, 2);
        for _ in 0..3 {
            let _ = s.enqueue(out("a", QoS::AtLeastOnce));
        }
        assert_eq!(s.queued(), 2);
        assert_eq!(s.dropped, 1);
        s.disconnected();
        assert_eq!(s.enqueue(out("b", QoS::AtMostOnce)), Err(Dropped::Offline));
    }

    #[test]
    fn repeated_qos2_publish_is_delivered_once() {
        let mut s = session(10, 0);
        assert_eq!(s.on_incoming_qos2(7, 2), IncomingQos2::New);
        assert_eq!(s.on_incoming_qos2(7, 2), IncomingQos2::Repeat, "the repeat before PUBREL is not new");
        assert_eq!(s.on_incoming_qos2(8, 2), IncomingQos2::New);
        assert_eq!(s.on_incoming_qos2(9, 2), IncomingQos2::OverLimit, "a third unreleased one is one too many");
        assert_eq!(s.on_incoming_qos2(8, 2), IncomingQos2::Repeat, "a repeat is not over the limit");
        assert!(s.on_pubrel(7));
        assert!(!s.on_pubrel(7));
        assert_eq!(s.on_incoming_qos2(7, 2), IncomingQos2::New, "after PUBREL the identifier may be reused");
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_wrap() {
        let mut s = session(0, 0);
        s.next_packet_id = u16::MAX;
        s.enqueue(out("a", QoS::AtLeastOnce)).unwrap();
        s.enqueue(out("b", QoS::AtLeastOnce)).unwrap();
        let mut buf = BytesMut::new();
        s.write_pending(&mut buf, &mut vec![]);
        let ids: Vec<u16> = publishes(&mut buf).iter().map(|p| p.packet_id).collect();
        assert_eq!(ids, vec![u16::MAX, 1], "0 is never used");
    }

    #[test]
    fn store_updates_follow_the_stored_message() {
        let mut s = session(10, 0);
        let mut o = out("a", QoS::ExactlyOnce);
        o.stored = Some(42);
        s.enqueue(o).unwrap();
        let mut updates = vec![];
        s.write_pending(&mut BytesMut::new(), &mut updates);
        assert_eq!(updates, vec![StoreUpdate::Sent { key: 42, packet_id: 1, state: InflightState::AwaitingPubRec }]);
        updates.clear();
        s.on_pubrec(1, ReasonCode::Success, &mut updates);
        assert_eq!(updates, vec![StoreUpdate::Sent { key: 42, packet_id: 1, state: InflightState::AwaitingPubComp }]);
        updates.clear();
        assert!(s.on_pubcomp(1, &mut updates));
        assert_eq!(updates, vec![StoreUpdate::Done { key: 42 }]);
    }

    #[test]
    fn a_session_that_moved_takes_each_message_id_once_within_its_window() {
        use std::time::{Duration, Instant};
        let id = |seq| MessageId { node: 2, seq };
        let start = Instant::now();
        let mut s = session(10, 10);
        assert!(s.first_delivery(id(1), || panic!("no clock read for a session that never moved")));
        assert!(s.first_delivery(id(1), Instant::now), "a session that never moved takes everything");
        s.moved_here(start + Duration::from_secs(20), [id(5), MessageId::NONE, id(6)]);
        assert!(!s.first_delivery(id(5), || start), "one it brought with it");
        assert!(s.first_delivery(id(7), || start));
        assert!(!s.first_delivery(id(7), || start), "one it was given since");
        assert!(s.first_delivery(MessageId { node: 3, seq: 7 }, || start), "the same number from another node");
        assert!(s.first_delivery(MessageId::NONE, || start) && s.first_delivery(MessageId::NONE, || start));
        // Past the cap the oldest are forgotten, the newest kept.
        for seq in 100..100 + MOVED_SEEN_MAX as u64 {
            assert!(s.first_delivery(id(seq), || start));
        }
        assert!(s.first_delivery(id(5), || start), "forgotten past the cap");
        assert!(!s.first_delivery(id(100 + MOVED_SEEN_MAX as u64 - 1), || start));
        // A session started afresh (Clean Start) has taken nothing yet.
        let mut fresh = session(10, 10);
        fresh.moved_here(start + Duration::from_secs(20), [id(5)]);
        fresh.clear();
        assert!(fresh.first_delivery(id(5), || start));
        // After the window, the memory goes and everything is taken.
        let later = start + Duration::from_secs(20);
        assert!(s.first_delivery(id(7), || later));
        assert!(s.first_delivery(id(7), || panic!("no clock read once the window is gone")));
    }

    #[test]
    fn too_large_for_the_client_is_dropped() {
        let mut s = session(10, 0);
        s.limits.max_packet_size = Some(8);
        s.enqueue(out("a-long-topic", QoS::AtMostOnce)).unwrap();
        let mut buf = BytesMut::new();
        assert_eq!(s.write_pending(&mut buf, &mut vec![]), 0);
        assert!(buf.is_empty());
        assert_eq!(s.dropped, 1);
    }
}
