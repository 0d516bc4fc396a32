//! Durable state in sled, under the node's data directory: retained messages, persistent sessions (their
//! subscriptions) and the QoS 1/2 messages queued or in flight to them.
//!
//! Records reuse the wire format: a stored message is an MQTT 5.0 PUBLISH, a session's subscriptions are MQTT 5.0
//! SUBSCRIBE packets, so there is one encoding to test, not two.
//!
//! Durability: writes go to sled at once; `flush` makes them durable (fsync). The connection driver flushes before
//! it sends a PUBACK/PUBREC or SUBACK that depends on a write, batching every write of one read into one flush.

use std::path::Path;

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
    /// Flushes started so far.
    started: std::sync::atomic::AtomicU64,
    /// The number (1-based, in start order) of the last flush that completed; held while one runs.
    completed: tokio::sync::Mutex<u64>,
}

impl Flusher {
    pub fn new(db: sled::Db) -> Flusher {
        Flusher(std::sync::Arc::new(FlusherState {
            db,
            started: std::sync::atomic::AtomicU64::new(0),
            completed: tokio::sync::Mutex::new(0),
        }))
    }

    /// Makes every write made before this call durable.
    pub async fn flush(&self) -> sled::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        // A flush numbered above `seen` started after this call began, so after its caller's writes.
        let seen = self.0.started.load(SeqCst);
        let mut completed = self.0.completed.lock().await;
        if *completed > seen {
            return Ok(());
        }
        let mine = self.0.started.fetch_add(1, SeqCst) + 1;
        let db = self.0.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
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
    retained: sled::Tree,
    sessions: sled::Tree,
    queue: sled::Tree,
}

const FORMAT: u8 = 1;
/// Session records with expiry: FORMAT_EXPIRY, expiry (u32), disconnected at (u64, 0 = connected), user name
/// (u16 length + UTF-8, 0xFFFF = none), subscriptions.
const FORMAT_EXPIRY: u8 = 2;

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir.join("sled")).mode(sled::Mode::HighThroughput).open()?;
        Ok(Store {
            retained: db.open_tree("retained")?,
            sessions: db.open_tree("sessions")?,
            queue: db.open_tree("queue")?,
            flusher: Flusher::new(db.clone()),
            db,
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flusher.flush().await?;
        Ok(())
    }

    /// A fresh key for a queued message, increasing across restarts.
    pub fn next_key(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    pub fn put_retained(&self, message: &Message) -> Result<(), StoreError> {
        if message.payload.is_empty() {
            self.retained.remove(message.topic.as_bytes())?;
        } else {
            self.retained.insert(message.topic.as_bytes(), &message.encode_v5(&[])[..])?;
        }
        Ok(())
    }

    pub fn load_retained(&self) -> Result<Vec<Message>, StoreError> {
        let mut out = Vec::new();
        for item in self.retained.iter() {
            let (key, value) = item?;
            let (message, _) = Message::decode_v5(Bytes::copy_from_slice(&value), None)
                .map_err(|what| corrupt("retained", &key, what))?;
            out.push(message);
        }
        Ok(out)
    }

    pub fn put_session(&self, session: &StoredSession) -> Result<(), StoreError> {
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
        self.sessions.insert(session.client_id.as_bytes(), &buf[..])?;
        Ok(())
    }

    /// Forgets a session and everything queued for it.
    pub fn remove_session(&self, client_id: &str) -> Result<(), StoreError> {
        self.sessions.remove(client_id.as_bytes())?;
        for item in self.queue.scan_prefix(queue_prefix(client_id)) {
            let (key, _) = item?;
            self.queue.remove(key)?;
        }
        Ok(())
    }

    pub fn load_sessions(&self) -> Result<Vec<(StoredSession, Vec<StoredMessage>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.sessions.iter() {
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
            for item in self.queue.scan_prefix(queue_prefix(&client_id)) {
                let (k, v) = item?;
                let seq = k.len().checked_sub(8).and_then(|at| k.get(at..)).map(|mut b| b.get_u64());
                let Some(seq) = seq else { return Err(corrupt("queue", &k, "short key".into())) };
                messages.push(decode_queued(seq, &v).map_err(|what| corrupt("queue", &k, what))?);
            }
            out.push((StoredSession { client_id, subscriptions, expiry, disconnected_at, username }, messages));
        }
        Ok(out)
    }

    pub fn put_queued(
        &self,
        client_id: &str,
        key: u64,
        out: &crate::session::Outgoing,
        sent: Option<(u16, InflightState)>,
    ) -> Result<(), StoreError> {
        let mut buf = BytesMut::new();
        buf.put_u8(FORMAT);
        let (packet_id, state) = InflightState::code(sent);
        buf.put_u8(state);
        buf.put_u16(packet_id);
        buf.put_u8(out.qos as u8);
        buf.put_u8(u8::from(out.retain));
        buf.extend_from_slice(&out.message.encode_v5(&out.subscription_ids));
        self.queue.insert(queue_key(client_id, key), &buf[..])?;
        Ok(())
    }

    /// Changes the sent state of a stored queued message, keeping the message.
    pub fn mark_sent(&self, client_id: &str, key: u64, packet_id: u16, state: InflightState) -> Result<(), StoreError> {
        let k = queue_key(client_id, key);
        let (_, code) = InflightState::code(Some((packet_id, state)));
        self.queue.fetch_and_update(&k, |old| {
            let mut v = old?.to_vec();
            if v.len() >= 4 {
                v[1] = code;
                v[2..4].copy_from_slice(&packet_id.to_be_bytes());
            }
            Some(v)
        })?;
        Ok(())
    }

    pub fn remove_queued(&self, client_id: &str, key: u64) -> Result<(), StoreError> {
        self.queue.remove(queue_key(client_id, key))?;
        Ok(())
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
    let (message, subscription_ids) = Message::decode_v5(Bytes::copy_from_slice(&bytes[6..]), None)?;
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

    #[test]
    fn sessions_queued_and_retained_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let session = StoredSession {
                client_id: "c1".into(),
                subscriptions: vec![
                    ("a/#".into(), Subscription { options: options(QoS::AtLeastOnce), id: None }),
                    ("$share/g/b".into(), Subscription { options: options(QoS::ExactlyOnce), id: Some(7) }),
                ],
                expiry: 300,
                disconnected_at: Some(1_700_000_000),
                username: Some("ada".into()),
            };
            store.put_session(&session).unwrap();
            let message = Arc::new(Message::system("a/b", "hello", false));
            let out = Outgoing {
                message,
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![7],
                stored: None,
                group: None,
            };
            store.put_queued("c1", 5, &out, None).unwrap();
            store.put_queued("c1", 6, &out, None).unwrap();
            store.mark_sent("c1", 6, 9, InflightState::AwaitingPubAck).unwrap();
            store.put_queued("c10", 7, &out, None).unwrap();
            store.put_retained(&Message::system("r/t", "kept", true)).unwrap();
            store.put_retained(&Message::system("r/gone", "x", true)).unwrap();
            store.put_retained(&Message::system("r/gone", "", true)).unwrap();
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
        store.remove_session("c1").unwrap();
        assert!(store.load_sessions().unwrap().is_empty());
    }
}
