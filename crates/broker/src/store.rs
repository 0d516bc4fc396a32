//! Durable state in sled, under the node's data directory: retained messages, persistent sessions (their
//! subscriptions) and the QoS 1/2 messages queued or in flight to them.
//!
//! Records reuse the wire format: a stored message is an MQTT 5.0 PUBLISH, a session's subscriptions are MQTT 5.0
//! SUBSCRIBE packets, so there is one encoding to test, not two.
//!
//! Durability: a write is kept in order in memory (`Pending`) and applied to sled by the next `flush`, which then
//! makes it durable (fsync); a flush covers exactly the writes made before it started. The connection driver
//! flushes before it sends a PUBACK/PUBREC or SUBACK that depends on a write, batching every write of one read into
//! one flush; the broker's timers flush what is left (acknowledgements from subscribers) four times a second.
//!
//! Why not write to sled at once: a message queued for a connected persistent subscriber is usually acknowledged
//! within a round trip, while the flush that makes its insert durable takes milliseconds. Kept in memory until then,
//! its insert and its removal cancel and sled never sees either; written at once, each was three sled writes (queued,
//! sent, removed), each copying a sled leaf, and they were most of a persistent QoS 1 load's CPU. What is acknowledged
//! to a publisher is unchanged: durable, or already acknowledged by every subscriber it was queued for.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use skein_codec::QoS;

use crate::message::Message;
use crate::session::{InflightState, Subscription};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data store: {0}")]
    Sled(#[from] sled::Error),
    #[error("data store record {key:?} in {tree} is damaged: {what}")]
    Corrupt { tree: &'static str, key: String, what: String },
}

/// A persistent session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: ByteString,
    pub subscriptions: Vec<(ByteString, Subscription)>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry: u32,
    /// When its client disconnected (seconds since the Unix epoch); `None` while connected, or not known.
    pub disconnected_at: Option<u64>,
    /// The user name its client authenticated with, for the ACL.
    pub username: Option<ByteString>,
}

/// A message queued for (or in flight to) a stored session.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub key: u64,
    pub message: Message,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub sent: Option<(u16, InflightState)>,
}

/// Group commit over one sled database: one flush at a time, run on tokio's blocking pool, and a caller whose writes
/// a flush that started after them already covered returns at once. Not sled's `flush_async`: concurrent calls of it
/// park sled's own I/O threads waiting for a write that then has no thread to run on (sled 0.34's open issue #1308);
/// under QoS 1 load from many persistent sessions the node stopped acknowledging anything, for good.
#[derive(Clone)]
pub struct Flusher(std::sync::Arc<FlusherState>);

struct FlusherState {
    db: sled::Db,
    /// Run on the flush's thread before sled's flush: what must reach sled first (the store's pending writes).
    prepare: Option<Box<dyn Fn() -> Result<(), StoreError> + Send + Sync>>,
    /// Flushes started so far.
    started: std::sync::atomic::AtomicU64,
    /// The number (1-based, in start order) of the last flush that completed; held while one runs.
    completed: tokio::sync::Mutex<u64>,
}

impl Flusher {
    pub fn new(db: sled::Db) -> Flusher {
        Flusher::with_prepare(db, None)
    }

    fn with_prepare(db: sled::Db, prepare: Option<Box<dyn Fn() -> Result<(), StoreError> + Send + Sync>>) -> Flusher {
        Flusher(std::sync::Arc::new(FlusherState {
            db,
            prepare,
            started: std::sync::atomic::AtomicU64::new(0),
            completed: tokio::sync::Mutex::new(0),
        }))
    }

    /// Makes every write made before this call durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        // A flush numbered above `seen` started after this call began, so after its caller's writes.
        let seen = self.0.started.load(SeqCst);
        let mut completed = self.0.completed.lock().await;
        if *completed > seen {
            return Ok(());
        }
        let mine = self.0.started.fetch_add(1, SeqCst) + 1;
        let state = self.0.clone();
        tokio::task::spawn_blocking(move || {
            // Both steps always run: a write that failed to apply is reported, the others still become durable.
            let prepared = state.prepare.as_ref().map_or(Ok(()), |p| p());
            let flushed = state.db.flush().map(|_| ()).map_err(StoreError::from);
            prepared.and(flushed)
        })
        .await
        .map_err(|e| sled::Error::ReportableBug(format!("flush task failed: {e}")))??;
        *completed = mine;
        Ok(())
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    flusher: Flusher,
    trees: Arc<Trees>,
}

/// The sled trees and the writes not yet applied to them. The last handle applies what is left when dropped (as
/// sled flushes when its last handle drops).
struct Trees {
    retained: sled::Tree,
    sessions: sled::Tree,
    queue: sled::Tree,
    /// Small records other parts keep with the broker's writes (see `Store::put_mark`).
    marks: sled::Tree,
    pending: Mutex<Pending>,
    /// Held while writes are applied, so that two batches (a flush's, a load's) never apply interleaved.
    applying: Mutex<()>,
}

/// Writes made but not yet applied to sled, in the order they were made.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    /// Queued messages whose insert is in `ops`, not yet applied: key (unique in the store, see `next_key`) → its
    /// index there.
    inserts: HashMap<u64, usize>,
}

enum Op {
    /// The message is kept as it was queued and encoded only when applied (a cancelled one never is).
    Queued {
        client_id: ByteString,
        key: u64,
        out: crate::session::Outgoing,
        sent: Option<(u16, InflightState)>,
    },
    Sent {
        client_id: ByteString,
        key: u64,
        packet_id: u16,
        state: InflightState,
    },
    Unqueued {
        client_id: ByteString,
        key: u64,
    },
    Session {
        client_id: ByteString,
        record: Bytes,
    },
    NoSession(ByteString),
    Retained {
        topic: ByteString,
        record: Option<Bytes>,
    },
    Mark {
        key: Bytes,
        value: Bytes,
    },
    /// A queued message removed before its insert was applied: nothing to write.
    Cancelled,
}

impl Pending {
    fn push(&mut self, op: Op) {
        if let Op::Queued { key, .. } = &op {
            self.inserts.insert(*key, self.ops.len());
        }
        self.ops.push(op);
    }

    /// The pending insert of a queued message, if it has not been applied yet.
    fn insert_of(&mut self, key: u64) -> Option<&mut Op> {
        let at = *self.inserts.get(&key)?;
        self.ops.get_mut(at)
    }
}

impl Trees {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the pending writes to sled, in order (not yet durable: sled's flush does that). Every write is
    /// tried; the first error is returned.
    fn apply(&self) -> Result<(), StoreError> {
        let _order = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let ops = {
            let mut pending = self.pending();
            pending.inserts.clear();
            std::mem::take(&mut pending.ops)
        };
        let mut first_error = None;
        let mut buf = BytesMut::new();
        for op in ops {
            if let Err(e) = self.apply_one(op, &mut buf) {
                tracing::error!(error = %e, "a write to the data store failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn apply_one(&self, op: Op, buf: &mut BytesMut) -> Result<(), StoreError> {
        match op {
            Op::Queued { client_id, key, out, sent } => {
                buf.clear();
                buf.put_u8(FORMAT);
                let (packet_id, state) = InflightState::code(sent);
                buf.put_u8(state);
                buf.put_u16(packet_id);
                buf.put_u8(out.qos as u8);
                buf.put_u8(u8::from(out.retain));
                out.message.encode_stored_into(&out.subscription_ids, buf);
                self.queue.insert(queue_key(&client_id, key), &buf[..])?;
            }
            Op::Sent { client_id, key, packet_id, state } => {
                let (_, code) = InflightState::code(Some((packet_id, state)));
                self.queue.fetch_and_update(queue_key(&client_id, key), |old| {
                    let mut v = old?.to_vec();
                    if v.len() >= 4 {
                        v[1] = code;
                        v[2..4].copy_from_slice(&packet_id.to_be_bytes());
                    }
                    Some(v)
                })?;
            }
            Op::Unqueued { client_id, key } => {
                self.queue.remove(queue_key(&client_id, key))?;
            }
            Op::Session { client_id, record } => {
                self.sessions.insert(client_id.as_bytes(), &record[..])?;
            }
            Op::NoSession(client_id) => {
                self.sessions.remove(client_id.as_bytes())?;
                for item in self.queue.scan_prefix(queue_prefix(&client_id)) {
                    let (key, _) = item?;
                    self.queue.remove(key)?;
                }
            }
            Op::Retained { topic, record: Some(record) } => {
                self.retained.insert(topic.as_bytes(), &record[..])?;
            }
            Op::Retained { topic, record: None } => {
                self.retained.remove(topic.as_bytes())?;
            }
            Op::Mark { key, value } => {
                self.marks.insert(&key[..], &value[..])?;
            }
            Op::Cancelled => {}
        }
        Ok(())
    }
}

impl Drop for Trees {
    fn drop(&mut self) {
        if let Err(e) = self.apply() {
            tracing::error!(error = %e, "writes to the data store were lost at close");
        }
    }
}

/// A mark's key and value (see `Store::put_mark`).
pub type Mark = (Vec<u8>, Vec<u8>);

const FORMAT: u8 = 1;
/// Session records with expiry: FORMAT_EXPIRY, expiry (u32), disconnected at (u64, 0 = connected), user name
/// (u16 length + UTF-8, 0xFFFF = none), subscriptions.
const FORMAT_EXPIRY: u8 = 2;

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir.join("sled")).mode(sled::Mode::HighThroughput).open()?;
        let trees = Arc::new(Trees {
            retained: db.open_tree("retained")?,
            sessions: db.open_tree("sessions")?,
            queue: db.open_tree("queue")?,
            marks: db.open_tree("marks")?,
            pending: Mutex::default(),
            applying: Mutex::default(),
        });
        // The flusher holds the trees weakly: the store's last handle, not a flush task, closes them.
        let weak = Arc::downgrade(&trees);
        let prepare = move || weak.upgrade().map_or(Ok(()), |t| t.apply());
        Ok(Store { flusher: Flusher::with_prepare(db.clone(), Some(Box::new(prepare))), db, trees })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await
    }

    /// Whether writes are waiting for a flush.
    pub fn has_pending(&self) -> bool {
        !self.trees.pending().ops.is_empty()
    }

    /// A fresh key for a queued message, increasing across restarts.
    pub fn next_key(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Keeps `value` under `key`, written in order with the writes made before it: a flush that makes this mark
    /// durable has made them durable too, so a mark can say how far something has been stored (the cluster's record
    /// of the forwarded batches it has taken).
    pub fn put_mark(&self, key: &[u8], value: &[u8]) {
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        self.trees.pending().push(Op::Mark { key, value });
    }

    /// The marks whose keys start with `prefix`, as (key, value).
    pub fn load_marks(&self, prefix: &[u8]) -> Result<Vec<Mark>, StoreError> {
        self.trees.apply()?;
        let mut out = Vec::new();
        for item in self.trees.marks.scan_prefix(prefix) {
            let (key, value) = item?;
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    /// The marks whose keys start with `prefix`, taken: they are removed, durably, before this returns. For what
    /// holds only until the next start (see `Broker::keep_unreleased_qos2`).
    pub fn take_marks(&self, prefix: &[u8]) -> Result<Vec<Mark>, StoreError> {
        let marks = self.load_marks(prefix)?;
        if !marks.is_empty() {
            for (key, _) in &marks {
                self.trees.marks.remove(key)?;
            }
            self.db.flush()?;
        }
        Ok(marks)
    }

    pub fn put_retained(&self, message: &Message) {
        let record = (!message.payload.is_empty()).then(|| message.encode_stored(&[]));
        self.trees.pending().push(Op::Retained { topic: message.topic.clone(), record });
    }

    pub fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        self.trees.apply()?;
        let mut out = Vec::new();
        for item in self.trees.retained.iter() {
            let (key, value) = item?;
            let (message, _) = Message::decode_stored(Bytes::copy_from_slice(&value), None)
                .map_err(|what| corrupt("retained", &key, what))?;
            out.push(message);
        }
        Ok(out)
    }

    pub fn put_session(&self, session: &StoredSession) {
        let mut buf = BytesMut::new();
        buf.put_u8(FORMAT_EXPIRY);
        buf.put_u32(session.expiry);
        buf.put_u64(session.disconnected_at.unwrap_or(0));
        match &session.username {
            Some(u) if u.len() < 0xFFFF => {
                buf.put_u16(u.len() as u16);
                buf.put_slice(u.as_bytes());
            }
            _ => buf.put_u16(0xFFFF),
        }
        for (filter, sub) in &session.subscriptions {
            sub.encode_v5(filter, &mut buf);
        }
        self.trees.pending().push(Op::Session { client_id: session.client_id.clone(), record: buf.freeze() });
    }

    /// Forgets a session and everything queued for it.
    pub fn remove_session(&self, client_id: &ByteString) {
        self.trees.pending().push(Op::NoSession(client_id.clone()));
    }

    pub fn load_sessions(&self) -> Result<Vec<(StoredSession, Vec<StoredMessage>)>, StoreError> {
        self.trees.apply()?;
        let mut out = Vec::new();
        for item in self.trees.sessions.iter() {
            let (key, value) = item?;
            let client_id = ByteString::try_from(Bytes::copy_from_slice(&key))
                .map_err(|_| corrupt("sessions", &key, "client id is not UTF-8".into()))?;
            let (expiry, disconnected_at, username, subscriptions) = match value.split_first() {
                // Written before sessions had an expiry: they never expire.
                Some((&FORMAT, rest)) => Subscription::decode_v5(rest).map(|s| (u32::MAX, None, None, s)),
                Some((&FORMAT_EXPIRY, rest)) => decode_session_head(rest)
                    .and_then(|(e, at, u, rest)| Subscription::decode_v5(rest).map(|s| (e, at, u, s))),
                _ => Err("unknown record format".into()),
            }
            .map_err(|what| corrupt("sessions", &key, what))?;
            let mut messages = Vec::new();
            for item in self.trees.queue.scan_prefix(queue_prefix(&client_id)) {
                let (k, v) = item?;
                let seq = k.len().checked_sub(8).and_then(|at| k.get(at..)).map(|mut b| b.get_u64());
                let Some(seq) = seq else { return Err(corrupt("queue", &k, "short key".into())) };
                messages.push(decode_queued(seq, &v).map_err(|what| corrupt("queue", &k, what))?);
            }
            out.push((StoredSession { client_id, subscriptions, expiry, disconnected_at, username }, messages));
        }
        Ok(out)
    }

    /// Keeps a message queued for (or, with `sent`, in flight to) a persistent session.
    pub fn put_queued(
        &self,
        client_id: &ByteString,
        key: u64,
        out: &crate::session::Outgoing,
        sent: Option<(u16, InflightState)>,
    ) {
        self.trees.pending().push(Op::Queued { client_id: client_id.clone(), key, out: out.clone(), sent });
    }

    /// Changes the sent state of a stored queued message, keeping the message.
    pub fn mark_sent(&self, client_id: &ByteString, key: u64, packet_id: u16, state: InflightState) {
        let mut pending = self.trees.pending();
        match pending.insert_of(key) {
            Some(Op::Queued { sent, .. }) => *sent = Some((packet_id, state)),
            _ => pending.push(Op::Sent { client_id: client_id.clone(), key, packet_id, state }),
        }
    }

    pub fn remove_queued(&self, client_id: &ByteString, key: u64) {
        let mut pending = self.trees.pending();
        match pending.inserts.remove(&key) {
            Some(at) => {
                if let Some(op) = pending.ops.get_mut(at) {
                    *op = Op::Cancelled;
                }
            }
            None => pending.push(Op::Unqueued { client_id: client_id.clone(), key }),
        }
    }
}

fn corrupt(tree: &'static str, key: &[u8], what: String) -> StoreError {
    StoreError::Corrupt { tree, key: String::from_utf8_lossy(key).into_owned(), what }
}

/// Client ids hold no U+0000 [MQTT-1.5.4-2], so `id 0x00` is a prefix no other id shares.
fn queue_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 9);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

fn queue_key(client_id: &str, key: u64) -> Vec<u8> {
    let mut k = queue_prefix(client_id);
    k.extend_from_slice(&key.to_be_bytes());
    k
}

fn decode_queued(key: u64, bytes: &[u8]) -> Result<StoredMessage, String> {
    if bytes.len() < 6 || bytes[0] != FORMAT {
        return Err("unknown record format".into());
    }
    let sent = InflightState::from_code(u16::from_be_bytes([bytes[2], bytes[3]]), bytes[1])?;
    let qos = QoS::from_u8(bytes[4]).ok_or("bad QoS")?;
    let retain = bytes[5] != 0;
    let (message, subscription_ids) = Message::decode_stored(Bytes::copy_from_slice(&bytes[6..]), None)?;
    Ok(StoredMessage { key, message, qos, retain, subscription_ids, sent })
}

/// Expiry, disconnect time and user name at the head of a session record; the rest is its subscriptions.
type SessionHead<'a> = (u32, Option<u64>, Option<ByteString>, &'a [u8]);

fn decode_session_head(mut rest: &[u8]) -> Result<SessionHead<'_>, String> {
    if rest.len() < 14 {
        return Err("short session record".into());
    }
    let expiry = rest.get_u32();
    let at = rest.get_u64();
    let len = usize::from(rest.get_u16());
    let username = if len == 0xFFFF {
        None
    } else {
        let bytes = rest.get(..len).ok_or("short user name")?;
        let name = ByteString::try_from(Bytes::copy_from_slice(bytes)).map_err(|_| "user name is not UTF-8")?;
        rest = &rest[len..];
        Some(name)
    };
    Ok((expiry, (at != 0).then_some(at), username, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_codec::SubscriptionOptions;
    use std::sync::Arc;

    use crate::session::Outgoing;

    fn options(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions { qos, ..Default::default() }
    }

    /// Opens the store again in this process: sled lets go of its lock file a moment after the last handle is
    /// dropped (its background flusher holds one until it wakes), so the first tries may find it still held.
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("store does not open again: {e}"),
            }
        }
    }

    fn session(client_id: &str) -> StoredSession {
        StoredSession {
            client_id: client_id.into(),
            subscriptions: vec![
                ("a/#".into(), Subscription { options: options(QoS::AtLeastOnce), id: None }),
                ("$share/g/b".into(), Subscription { options: options(QoS::ExactlyOnce), id: Some(7) }),
            ],
            expiry: 300,
            disconnected_at: Some(1_700_000_000),
            username: Some("ada".into()),
        }
    }

    fn outgoing(payload: &'static str) -> Outgoing {
        Outgoing {
            message: Arc::new(Message::system("a/b", payload, false)),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![7],
            stored: None,
            group: None,
        }
    }

    fn id(s: &'static str) -> ByteString {
        ByteString::from_static(s)
    }

    #[test]
    fn sessions_queued_and_retained_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_session(&session("c1"));
            let out = outgoing("hello");
            store.put_queued(&id("c1"), 5, &out, None);
            store.put_queued(&id("c1"), 6, &out, None);
            store.mark_sent(&id("c1"), 6, 9, InflightState::AwaitingPubAck);
            store.put_queued(&id("c10"), 7, &out, None);
            store.put_retained(&Message::system("r/t", "kept", true));
            store.put_retained(&Message::system("r/gone", "x", true));
            store.put_retained(&Message::system("r/gone", "", true));
            // Not flushed: the store's last handle applies what is pending when it closes.
        }
        let store = reopen(dir.path());
        let sessions = store.load_sessions().unwrap();
        assert_eq!(sessions.len(), 1, "c10 has queued messages but no session record");
        let (session, queued) = &sessions[0];
        assert_eq!(&*session.client_id, "c1");
        assert_eq!(session.subscriptions.len(), 2);
        assert_eq!(session.subscriptions[1].1.id, Some(7));
        assert_eq!((session.expiry, session.disconnected_at), (300, Some(1_700_000_000)));
        assert_eq!(session.username.as_deref(), Some("ada"));
        assert_eq!(queued.iter().map(|m| m.key).collect::<Vec<_>>(), vec![5, 6], "c10's message is not c1's");
        assert_eq!(queued[0].sent, None);
        assert_eq!(queued[1].sent, Some((9, InflightState::AwaitingPubAck)));
        assert_eq!(&queued[0].message.payload[..], b"hello");
        assert_eq!(queued[0].subscription_ids, vec![7]);
        let retained = store.load_retained().unwrap();
        assert_eq!(retained.len(), 1);
        assert_eq!(&*retained[0].topic, "r/t");
        store.remove_session(&id("c1"));
        assert!(store.load_sessions().unwrap().is_empty());
    }

    /// The sled tree itself, with nothing pending applied: what a crash right now would leave.
    fn on_disk(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store.trees.queue.iter().map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
    }

    #[tokio::test]
    async fn a_message_removed_before_a_flush_is_never_written_and_one_flushed_first_is_removed_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_session(&session("c1"));
        let out = outgoing("m");
        // Queued, sent, acknowledged, all before a flush: nothing reaches sled.
        store.put_queued(&id("c1"), 1, &out, None);
        store.mark_sent(&id("c1"), 1, 1, InflightState::AwaitingPubAck);
        store.remove_queued(&id("c1"), 1);
        // Queued and sent before a flush, acknowledged after it: written once, then removed.
        store.put_queued(&id("c1"), 2, &out, None);
        store.mark_sent(&id("c1"), 2, 2, InflightState::AwaitingPubRec);
        assert!(on_disk(&store).is_empty(), "nothing is written before a flush");
        assert!(store.has_pending());
        store.flush().await.unwrap();
        assert!(!store.has_pending());
        let disk = on_disk(&store);
        assert_eq!(disk.len(), 1, "only the message still in flight");
        assert_eq!(disk[0].0, queue_key("c1", 2));
        assert_eq!(decode_queued(2, &disk[0].1).unwrap().sent, Some((2, InflightState::AwaitingPubRec)));
        // Its later changes go to sled as changes of the record written.
        store.mark_sent(&id("c1"), 2, 2, InflightState::AwaitingPubComp);
        store.flush().await.unwrap();
        assert_eq!(decode_queued(2, &on_disk(&store)[0].1).unwrap().sent, Some((2, InflightState::AwaitingPubComp)));
        store.remove_queued(&id("c1"), 2);
        assert_eq!(on_disk(&store).len(), 1, "the removal waits for a flush too");
        store.flush().await.unwrap();
        assert!(on_disk(&store).is_empty());
    }

    #[tokio::test]
    async fn a_mark_is_written_with_the_writes_before_it_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_session(&session("c1"));
        store.put_queued(&id("c1"), 1, &outgoing("m"), None);
        store.put_mark(b"forwarded/7", b"one");
        store.put_mark(b"forwarded/7", b"two");
        store.put_mark(b"other", b"x");
        assert!(store.trees.marks.is_empty(), "marks wait for a flush as every write does");
        store.flush().await.unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.load_marks(b"forwarded/").unwrap(), vec![(b"forwarded/7".to_vec(), b"two".to_vec())]);
        assert_eq!(store.load_sessions().unwrap()[0].1.len(), 1, "the message written before the mark");
    }

    #[tokio::test]
    async fn a_removed_session_takes_its_pending_and_written_messages_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_session(&session("c1"));
        store.put_queued(&id("c1"), 1, &outgoing("written"), None);
        store.flush().await.unwrap();
        store.put_queued(&id("c1"), 2, &outgoing("pending"), None);
        store.remove_session(&id("c1"));
        // Queued again under the same id after the session ended: a new session's message, kept.
        store.put_session(&session("c1"));
        store.put_queued(&id("c1"), 3, &outgoing("new"), None);
        store.flush().await.unwrap();
        let sessions = store.load_sessions().unwrap();
        assert_eq!(sessions.len(), 1);
        assert_eq!(sessions[0].1.iter().map(|m| m.key).collect::<Vec<_>>(), vec![3], "writes apply in their order");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_flushes_each_cover_every_write_made_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_session(&session("c1"));
        let mut tasks = Vec::new();
        for k in 0..200u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.put_queued(&id("c1"), k, &outgoing("x"), None);
                store.flush().await.unwrap();
                // Durable once flush returned: in sled, not only pending.
                assert!(store.trees.queue.contains_key(queue_key("c1", k)).unwrap(), "message {k} not applied");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
