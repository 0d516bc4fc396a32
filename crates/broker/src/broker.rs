//! The node's shared state: the session registry, the router, retained messages and the store, and the operations
//! connections perform on them (connect, publish, subscribe, disconnect). Locks here are plain `std` locks, taken
//! for the length of a lookup or an update and never across an await.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use skein_codec::topic::{self, Filter};
use skein_codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use tokio::sync::{Notify, watch};

use crate::auth::Auth;
use crate::cluster::Cluster;
use crate::config::BrokerConfig;
use crate::message::{Message, MessageId};
use crate::retained::Retained;
use crate::router::{Groups, Router, Subscriber, Target, delivered_qos};
use crate::session::{Outgoing, Session, SessionExport, SessionLimits, StoreUpdate, Subscription};
use crate::stats::Stats;
use crate::store::{Store, StoreError, StoredSession};

/// Locks a mutex, carrying on past a poisoned one: the state it guards is kept consistent by each holder, and one
/// panicking task must not take the node down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether a subscription of `state` matches `topic` (a relayed message was matched with the subscriptions the
/// session had on its old node; the client may have unsubscribed since [MQTT-3.10.4-2]).
fn subscribed(state: &Session, topic: &str) -> bool {
    state.subscriptions.keys().any(|f| match topic::parse_filter(f) {
        Ok(Filter::Plain(f) | Filter::Shared { filter: f, .. }) => topic::matches(f, topic),
        Err(_) => false,
    })
}

/// A `$SYS` topic: the node's own values.
fn is_sys(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A session and the connection currently attached to it, if any.
pub struct SessionHandle {
    pub client_id: ByteString,
    pub state: Mutex<Session>,
    link: Mutex<Option<Link>>,
    /// When the connection that attached last began its handshake, kept after it leaves: a takeover request from
    /// another node older than that is late and ends nothing.
    attached_at: Mutex<Option<std::time::SystemTime>>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle").field("client_id", &self.client_id).finish()
    }
}

/// A session that moved to another node and still relays there what its subscriptions here match (see
/// [`Broker::take_over_relaying`]); give it to [`Broker::end_relay`].
pub struct Relaying(Arc<SessionHandle>);

/// Set once a connection's teardown is over; whoever takes its session over waits for it. A flag and a `Notify`: a
/// watch channel, which did this before, cost about 300 bytes more for every connection.
#[derive(Default)]
pub struct Finished {
    set: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Finished {
    /// Until the teardown is over (at once if it is).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.set.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A connection's side of its `Finished`: set when dropped, whichever way the connection ends.
pub struct Done(Arc<Finished>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.set.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }
}

/// The connection attached to a session: how to close it, and how to know it has finished.
struct Link {
    id: u64,
    kick: Option<crate::session::Kick>,
    done: Arc<Finished>,
}

impl SessionHandle {
    /// True while connection `id` is the one attached.
    pub fn is_attached(&self, id: u64) -> bool {
        lock(&self.link).as_ref().is_some_and(|l| l.id == id)
    }
}

/// What a connection asks of `Broker::connect`.
pub struct ConnectRequest {
    pub client_id: ByteString,
    /// Discard what the session held [MQTT-3.1.2-4].
    pub clean_start: bool,
    /// The session outlives this connection.
    pub persistent: bool,
    pub version: ProtocolVersion,
    /// The client's MQTT 5.0 Maximum Packet Size.
    pub max_packet_size: Option<u32>,
    /// The client's MQTT 5.0 Receive Maximum.
    pub receive_maximum: Option<u16>,
    /// The client's MQTT 5.0 Topic Alias Maximum.
    pub topic_alias_maximum: u16,
    /// Session Expiry Interval in seconds (`u32::MAX`: never); meaningful when `persistent`.
    pub session_expiry: u32,
    /// The user name it authenticated with: what the ACL knows the session by.
    pub username: Option<ByteString>,
    /// The session another node handed over, if it held one.
    pub imported: Option<SessionExport>,
    /// When the connection began its handshake: what other nodes compare their connections of the id with (the
    /// later one stays), as `Broker::take_over` does here.
    pub connected_at: std::time::SystemTime,
}

/// Handshakes of one client id under way on this node.
#[derive(Default)]
struct Connecting {
    count: usize,
    /// The latest `connected_at` of a connection of the id on another node, reported meanwhile.
    newer_elsewhere: Option<std::time::SystemTime>,
}

/// A handshake under way (see `Broker::begin_connect`); its mark goes when dropped.
pub struct ConnectGuard<'a> {
    broker: &'a Broker,
    client_id: ByteString,
}

impl Drop for ConnectGuard<'_> {
    fn drop(&mut self) {
        let mut connecting = lock(&self.broker.connecting);
        if let Some(c) = connecting.get_mut(&self.client_id) {
            c.count -= 1;
            if c.count == 0 {
                connecting.remove(&self.client_id);
            }
        }
    }
}

/// What `Broker::connect` hands the connection.
pub struct Attached {
    pub session: Arc<SessionHandle>,
    pub session_present: bool,
    pub connection_id: u64,
    /// Dropped when this connection has finished its teardown (which tells whoever waits to take the session over).
    pub done: Done,
    /// A later connection of the id on another node, reported during the handshake: that one stays, so this one is
    /// to be taken over at once (`Broker::take_over` with this time), as if the report had come after it attached.
    pub superseded_by: Option<std::time::SystemTime>,
    /// Wakes this connection's writer.
    pub waker: Arc<crate::session::Signal>,
}

/// Result of routing one publish.
#[derive(Default)]
pub struct Routed {
    /// Sessions the message was queued for on this node.
    pub delivered: usize,
    /// A durable write was made: flush before acknowledging.
    pub durable: bool,
    /// What an acknowledgement (QoS > 0) waits for besides the other nodes' acceptance (see [`Broker::publish_counted`]).
    pub remote: Option<crate::cluster::Accepted>,
    /// Forwarded to at least one other node.
    pub elsewhere: bool,
}

pub struct Broker {
    pub config: BrokerConfig,
    sessions: Mutex<HashMap<ByteString, Arc<SessionHandle>>>,
    router: RwLock<Router>,
    retained: RwLock<Retained>,
    store: Option<Store>,
    cluster: Arc<dyn Cluster>,
    pub stats: Stats,
    pub started: Instant,
    next_connection: AtomicU64,
    /// Client ids with a handshake under way here (see `Broker::begin_connect`).
    connecting: Mutex<HashMap<ByteString, Connecting>>,
    shutdown: watch::Sender<bool>,
    /// Open network connections, whatever their state.
    connections: watch::Sender<usize>,
    /// Session expiries and delayed wills, by (deadline, sequence).
    timers: Mutex<BTreeMap<(Instant, u64), Due>>,
    timer_seq: AtomicU64,
    /// Wills waiting out their Will Delay Interval: client id → (the connection it belongs to, the will).
    wills: Mutex<HashMap<ByteString, (u64, Message)>>,
    /// The password and ACL files in force; replaced whole on reload.
    auth: RwLock<Arc<Auth>>,
    /// Messages of shared groups taken from sessions that ended, waiting for `redeliver`.
    orphans: Mutex<Vec<Outgoing>>,
    /// `max_connection_rate`, over all listeners.
    connection_rate: Option<Mutex<crate::stats::Bucket>>,
    /// Enhanced authentication methods, by name.
    auth_methods: RwLock<HashMap<String, Arc<dyn crate::auth::AuthMethod>>>,
    /// An ACL is in force: without one, publishes and deliveries skip the lock above (shared by every thread).
    acl_active: std::sync::atomic::AtomicBool,
    /// Idle connections parked without a task; started by the first (`None` if that failed).
    parking: std::sync::OnceLock<Option<crate::parking::Parking>>,
}

/// A deadline: what happens then, unless a connection attached to the session after `connection_id`.
struct Due {
    client_id: ByteString,
    connection_id: u64,
    what: Timer,
}

enum Timer {
    /// The persistent session ends (MQTT 5.0 Session Expiry Interval).
    SessionExpiry,
    /// The delayed will is published [MQTT-3.1.3-9].
    Will,
}

/// Counts one open connection for as long as it lives.
pub struct ConnectionGuard(Arc<Broker>);

impl ConnectionGuard {
    pub fn broker(&self) -> &Arc<Broker> {
        &self.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Broker {
    /// A broker with its durable state in `data_dir` (restored from it), or in memory only when `None`.
    pub fn open(
        config: BrokerConfig,
        data_dir: Option<&Path>,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Arc<Broker>, StoreError> {
        let store = data_dir.map(Store::open).transpose()?;
        let connection_rate = (config.max_connection_rate > 0.0)
            .then(|| Mutex::new(crate::stats::Bucket::new(config.max_connection_rate)));
        let broker = Arc::new(Broker {
            config,
            sessions: Mutex::new(HashMap::new()),
            router: RwLock::new(Router::default()),
            retained: RwLock::new(Retained::default()),
            store,
            cluster,
            stats: Stats::default(),
            started: Instant::now(),
            next_connection: AtomicU64::new(1),
            connecting: Mutex::new(HashMap::new()),
            shutdown: watch::channel(false).0,
            connections: watch::channel(0).0,
            timers: Mutex::new(BTreeMap::new()),
            timer_seq: AtomicU64::new(0),
            wills: Mutex::new(HashMap::new()),
            auth: RwLock::new(Arc::new(Auth::default())),
            acl_active: std::sync::atomic::AtomicBool::new(false),
            parking: std::sync::OnceLock::new(),
            orphans: Mutex::new(Vec::new()),
            connection_rate,
            auth_methods: RwLock::new(HashMap::new()),
        });
        broker.restore()?;
        Ok(broker)
    }

    fn restore(self: &Arc<Self>) -> Result<(), StoreError> {
        let Some(store) = &self.store else { return Ok(()) };
        let mut retained = write(&self.retained);
        let now = std::time::Instant::now();
        for m in store.load_retained()? {
            if m.is_expired(now) {
                // Expired while the node was down: gone from the store too.
                store.put_retained(&Message::system(m.topic.clone(), bytes::Bytes::new(), true));
                continue;
            }
            retained.set(Arc::new(m));
        }
        drop(retained);
        for (stored, messages) in store.load_sessions()? {
            let handle = self.new_session(stored.client_id.clone());
            {
                let mut state = lock(&handle.state);
                state.persistent = true;
                for (filter, sub) in &stored.subscriptions {
                    state.subscriptions.insert(filter.clone(), *sub);
                    self.route_subscribe(
                        filter,
                        Subscriber { session: handle.clone(), options: sub.options, id: sub.id },
                    );
                }
                for m in messages {
                    let out = Outgoing {
                        message: Arc::new(m.message),
                        qos: m.qos,
                        retain: m.retain,
                        subscription_ids: m.subscription_ids,
                        stored: Some(m.key),
                        group: None,
                    };
                    state.restore(out, m.sent);
                }
            }
            lock(&handle.state).username = stored.username.clone();
            if stored.expiry != u32::MAX {
                // The clock kept running while the node was down.
                let gone = stored.disconnected_at.map_or(0, |at| unix_now().saturating_sub(at));
                let left = u64::from(stored.expiry).saturating_sub(gone);
                lock(&handle.state).expiry = stored.expiry;
                self.schedule(Duration::from_secs(left), &stored.client_id, 0, Timer::SessionExpiry);
            }
            lock(&self.sessions).insert(stored.client_id, handle);
        }
        for (key, ids) in store.take_marks(UNRELEASED_QOS2)? {
            let client_id = String::from_utf8_lossy(&key[UNRELEASED_QOS2.len()..]).into_owned();
            let ids: Vec<u16> = ids.chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
            if let Some(handle) = lock(&self.sessions).get(client_id.as_str()) {
                lock(&handle.state).restore_incoming_qos2(&ids);
            }
        }
        Ok(())
    }

    /// At a clean stop, after the last connection closed and before the last flush: keeps the QoS 2 identifiers
    /// persistent sessions' clients have not released, so that a PUBLISH repeated after the restart is not delivered
    /// again [MQTT-4.3.3-10]. Read back, and removed, at the next start (`restore`), so a crash later never brings
    /// back identifiers released since (which would swallow a new message reusing one). After a crash there are
    /// none: a repeat is then delivered again, as it was before they were kept at all.
    pub fn keep_unreleased_qos2(&self) {
        let Some(store) = &self.store else { return };
        let sessions: Vec<Arc<SessionHandle>> = lock(&self.sessions).values().cloned().collect();
        for session in sessions {
            let ids = {
                let state = lock(&session.state);
                if !state.persistent {
                    continue;
                }
                state.unreleased_qos2()
            };
            if !ids.is_empty() {
                let key = [UNRELEASED_QOS2, session.client_id.as_bytes()].concat();
                store.put_mark(&key, &ids.iter().flat_map(|id| id.to_be_bytes()).collect::<Vec<u8>>());
            }
        }
    }

    fn schedule(&self, after: Duration, client_id: &ByteString, connection_id: u64, what: Timer) {
        let seq = self.timer_seq.fetch_add(1, Ordering::Relaxed);
        let due = Due { client_id: client_id.clone(), connection_id, what };
        lock(&self.timers).insert((Instant::now() + after, seq), due);
    }

    /// Holds the will of connection `connection_id` back for `delay` (its Will Delay Interval, at most the
    /// session's expiry): published then, unless the client connects to its session again first [MQTT-3.1.3-9].
    pub fn delay_will(&self, client_id: &ByteString, connection_id: u64, will: Message, delay: Duration) {
        lock(&self.wills).insert(client_id.clone(), (connection_id, will));
        self.schedule(delay, client_id, connection_id, Timer::Will);
    }

    /// Takes a delayed will of `client_id` out; when its session has ended rather than resumed, publishes it now.
    async fn settle_will(&self, client_id: &str, session_ended: bool) {
        let will = lock(&self.wills).remove(client_id);
        if let Some((_, will)) = will.filter(|_| session_ended)
            && self.publish(will).durable
        {
            let _ = self.flush().await;
        }
    }

    /// Ends expired sessions and publishes delayed wills as they come due; runs for the broker's life.
    pub async fn run_timers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            // Store writes no acknowledgement waits for (a subscriber's acknowledgements, expired sessions) reach
            // the disk within a tick, as sled's own background flush did when writes went to it at once.
            if let Some(store) = self.store.as_ref().filter(|s| s.has_pending())
                && let Err(e) = store.flush().await
            {
                tracing::error!(error = %e, "data store flush failed");
            }
            let due: Vec<Due> = {
                let mut timers = lock(&self.timers);
                let later = timers.split_off(&(Instant::now(), u64::MAX));
                std::mem::replace(&mut *timers, later).into_values().collect()
            };
            for d in due {
                match d.what {
                    Timer::Will => {
                        let will = {
                            let mut wills = lock(&self.wills);
                            match wills.get(&d.client_id) {
                                Some((id, _)) if *id == d.connection_id => wills.remove(&d.client_id),
                                _ => None,
                            }
                        };
                        if let Some((_, will)) = will
                            && self.publish(will).durable
                        {
                            let _ = self.flush().await;
                        }
                    }
                    Timer::SessionExpiry => {
                        if self.expire_session(&d.client_id, d.connection_id) {
                            self.settle_will(&d.client_id, true).await;
                        }
                    }
                }
            }
        }
    }

    /// Ends the session of `client_id` if no connection attached to it since `connection_id` left. True if it did.
    fn expire_session(&self, client_id: &str, connection_id: u64) -> bool {
        let Some(session) = lock(&self.sessions).get(client_id).cloned() else { return false };
        let link = lock(&session.link);
        let mut state = lock(&session.state);
        if link.is_some() || state.online || !state.persistent || state.connection_id != connection_id {
            return false;
        }
        tracing::debug!(client_id, "session expired");
        Stats::add(&self.stats.sessions_expired, 1);
        state.persistent = false;
        let removed = self.clear_session(&session, &mut state);
        drop(state);
        drop(link);
        self.forget(&session, removed);
        if let Some(store) = &self.store {
            store.remove_session(&session.client_id);
        }
        true
    }

    /// The session record to store for `state`.
    fn stored_session(client_id: &ByteString, state: &Session) -> StoredSession {
        StoredSession {
            client_id: client_id.clone(),
            subscriptions: state.subscriptions.iter().map(|(f, s)| (f.clone(), *s)).collect(),
            expiry: state.expiry,
            disconnected_at: (!state.online).then(unix_now),
            username: state.username.clone(),
        }
    }

    /// Puts new password and ACL files in force; connections stay, the next check uses them.
    pub fn set_auth(&self, auth: Auth) {
        let acl = auth.has_acl();
        *write(&self.auth) = Arc::new(auth);
        self.acl_active.store(acl, Ordering::Release);
    }

    /// Offers an enhanced authentication method to MQTT 5.0 clients.
    pub fn add_auth_method(&self, method: Arc<dyn crate::auth::AuthMethod>) {
        write(&self.auth_methods).insert(method.name().to_string(), method);
    }

    /// The enhanced authentication method named `name`, if offered.
    pub fn auth_method(&self, name: &str) -> Option<Arc<dyn crate::auth::AuthMethod>> {
        read(&self.auth_methods).get(name).cloned()
    }

    /// The ACL in force, if there is one (cheap when there is none).
    pub fn acl(&self) -> Option<Arc<Auth>> {
        self.acl_active.load(Ordering::Acquire).then(|| self.auth())
    }

    /// Whether a client may publish on `topic` (a PUBLISH, or its will): never on a `$SYS` or `$share` topic, which
    /// are the server's whatever the ACL says (as Mosquitto has it), and otherwise as the ACL file says.
    pub fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        !server_topic(topic)
            && self.acl().is_none_or(|a| a.allows(username, client_id, topic, skein_auth::Access::Write))
    }

    /// The password and ACL files in force.
    pub fn auth(&self) -> Arc<Auth> {
        read(&self.auth).clone()
    }

    fn limits(&self) -> SessionLimits {
        SessionLimits {
            // Counts past 4 billion are no limit in practice.
            max_inflight: u32::try_from(self.config.max_inflight_messages).unwrap_or(u32::MAX),
            max_queued: u32::try_from(self.config.max_queued_messages).unwrap_or(u32::MAX),
            max_queued_bytes: self.config.max_queued_bytes,
            max_packet_size: None,
            topic_alias_maximum: 0,
            queue_qos0_offline: self.config.queue_qos0_messages,
        }
    }

    fn new_session(&self, client_id: ByteString) -> Arc<SessionHandle> {
        Arc::new(SessionHandle {
            state: Mutex::new(Session::new(self.limits())),
            client_id,
            link: Mutex::new(None),
            attached_at: Mutex::new(None),
        })
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// A receiver that turns true when the broker shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every connection to close (MQTT 5.0 clients hear 0x8B, Server shutting down).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        // Attached connections hear it through their session's kick (no per-connection watcher of the signal);
        // one that attaches after this checks the signal itself.
        let sessions: Vec<Arc<SessionHandle>> = lock(&self.sessions).values().cloned().collect();
        for session in sessions {
            if let Some(kick) = lock(&session.link).as_mut().and_then(|l| l.kick.take()) {
                kick.send(ReasonCode::ServerShuttingDown);
            }
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits, when new connections come faster than `max_connection_rate`, until the next may be served.
    pub async fn admit(&self) {
        let Some(bucket) = &self.connection_rate else { return };
        loop {
            let taken = lock(bucket).take();
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Registers an open connection; it counts until the guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections.send_modify(|n| *n += 1);
        ConnectionGuard(self.clone())
    }

    /// Where idle connections park; started on first use, from within the runtime that resumes them.
    pub(crate) fn parking(&self) -> Option<&crate::parking::Parking> {
        self.parking
            .get_or_init(|| match crate::parking::Parking::start(tokio::runtime::Handle::current()) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "idle connections cannot be parked: each keeps its task");
                    None
                }
            })
            .as_ref()
    }

    /// Connections parked now: idle, without a task (see `BrokerConfig::idle_park_after`).
    pub fn parked_connections(&self) -> u64 {
        self.parking.get().and_then(Option::as_ref).map_or(0, |p| p.parked())
    }

    pub fn open_connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Waits until every connection has closed, or `limit` has passed; true if all closed.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let mut rx = self.connections.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await.is_ok()
    }

    /// Attaches a new connection to the session of its client id, closing the one attached before it
    /// [MQTT-3.1.4-2] and waiting (boundedly) for that one to finish.
    pub async fn connect(&self, request: ConnectRequest) -> Result<Attached, StoreError> {
        let ConnectRequest {
            client_id,
            clean_start,
            persistent,
            version,
            max_packet_size,
            receive_maximum,
            topic_alias_maximum,
            session_expiry,
            username,
            imported,
            connected_at,
        } = request;
        let connection_id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        // The connection's signal, which also carries its kick: when another connection takes the session over,
        // with the reason to give the client.
        let waker = Arc::new(crate::session::Signal::default());
        let kick = crate::session::Kick::new(waker.clone());
        let finished = Arc::new(Finished::default());
        let done = Done(finished.clone());
        let session = lock(&self.sessions)
            .entry(client_id.clone())
            .or_insert_with(|| self.new_session(client_id.clone()))
            .clone();
        let previous = {
            // Both under the link's lock, as `take_over` reads them.
            let mut link = lock(&session.link);
            *lock(&session.attached_at) = Some(connected_at);
            link.replace(Link { id: connection_id, kick: Some(kick), done: finished })
        };
        // Another node reported a later connection of this id while this one was in its handshake.
        let superseded_by =
            lock(&self.connecting).get(&client_id).and_then(|c| c.newer_elsewhere).filter(|t| *t > connected_at);
        if let Some(mut prev) = previous {
            if let Some(kick) = prev.kick.take() {
                kick.send(ReasonCode::SessionTakenOver);
            }
            // The old connection publishes its will and lets go of the session; don't let a stuck one hold us.
            let _ = tokio::time::timeout(Duration::from_secs(5), prev.done.wait()).await;
        }
        let mut limits = self.limits();
        limits.max_packet_size = max_packet_size;
        limits.topic_alias_maximum = topic_alias_maximum;
        if let Some(rm) = receive_maximum {
            let rm = u32::from(rm);
            limits.max_inflight = if limits.max_inflight == 0 { rm } else { limits.max_inflight.min(rm) };
        }
        let (session_present, removed) = {
            let mut state = lock(&session.state);
            // A session that was not persistent ended with its connection, even if its teardown has not run yet.
            let mut existed = state.persistent && !clean_start;
            let removed = if existed { Vec::new() } else { self.clear_session(&session, &mut state) };
            state.persistent = persistent;
            state.expiry = if persistent { session_expiry } else { 0 };
            state.username = username;
            if let Some(export) = imported.filter(|_| !clean_start && !existed) {
                // The session another node held: its subscriptions route here now, its messages go out from here.
                for (filter, sub) in export.subscriptions {
                    state.subscriptions.insert(filter.clone(), sub);
                    self.route_subscribe(
                        &filter,
                        Subscriber { session: session.clone(), options: sub.options, id: sub.id },
                    );
                }
                // What it brought may still come here another way: by the old node's relay, or straight from a
                // publishing node that routed it both there and here.
                let moved_ids: Vec<MessageId> = export.messages.iter().map(|m| m.message.id).collect();
                state.moved_here(Instant::now() + self.cluster.moved_window(), moved_ids);
                let exported = export.messages.into_iter().map(|m| {
                    let out = Outgoing {
                        message: Arc::new(m.message),
                        qos: m.qos,
                        retain: m.retain,
                        subscription_ids: m.subscription_ids,
                        stored: None,
                        group: m.group,
                    };
                    (out, m.sent)
                });
                // Then what the old node relayed while the session was on its way, before anything sent here
                // directly can reach it (that waits for this lock): a message relayed there came before such a one.
                let mut held = self.cluster.take_held(&client_id);
                held.retain(|out| subscribed(&state, &out.message.topic));
                let relayed = held.len();
                held.retain(|out| state.first_delivery(out.message.id, Instant::now));
                Stats::add(&self.stats.duplicates_skipped, (relayed - held.len()) as u64);
                for (mut out, sent) in exported.chain(held.into_iter().map(|out| (out, None))) {
                    if persistent
                        && let Some(store) = &self.store
                        && let Ok(key) = store.next_key()
                    {
                        store.put_queued(&client_id, key, &out, sent);
                        out.stored = Some(key);
                    }
                    state.restore(out, sent);
                }
                state.restore_incoming_qos2(&export.incoming_qos2);
                existed = true;
            }
            state.connected(connection_id, waker.clone(), version, limits);
            (existed, removed)
        };
        // A session this connection replaced may have left shared-group messages behind.
        self.redeliver();
        // A will held back for this client: a resumed session cancels it, an ended one sends it [MQTT-3.1.3-9].
        self.settle_will(&client_id, !session_present).await;
        if let Some(store) = &self.store {
            for key in removed {
                store.remove_queued(&client_id, key);
            }
            if persistent {
                let record = Self::stored_session(&client_id, &lock(&session.state));
                store.put_session(&record);
            } else {
                store.remove_session(&client_id);
            }
        }
        self.cluster.session_attached(&client_id);
        Ok(Attached { session, session_present, connection_id, done, waker, superseded_by })
    }

    /// Marks a handshake of `client_id` under way until the guard is dropped (after `connect`): a take-over request
    /// that another node sends meanwhile, for a later connection of the id, is remembered, so that this connection
    /// is closed once attached rather than left beside the later one.
    pub fn begin_connect(&self, client_id: &ByteString) -> ConnectGuard<'_> {
        lock(&self.connecting).entry(client_id.clone()).or_default().count += 1;
        ConnectGuard { broker: self, client_id: client_id.clone() }
    }

    /// Another node is taking `client_id` over: closes its connection here (and waits for it to finish), and hands
    /// back its session if it was persistent and `want_session`. The session is gone from this node afterwards.
    pub async fn take_over(
        &self,
        client_id: &str,
        want_session: bool,
        newer_than: std::time::SystemTime,
    ) -> Option<SessionExport> {
        self.take_over_relaying(client_id, want_session, newer_than, None).await.0
    }

    /// `take_over`, for a session moving to node `relay_to`: its subscriptions stay here, and what they match goes
    /// to that node ([`Cluster::relay`]), until the returned handle is given to [`Broker::end_relay`] (once that
    /// node's routes are in place). Without it, a message published on a third node that still routed
    /// it here would find no subscriber, and one published there after this node's route went and before the new
    /// one came would go nowhere.
    pub async fn take_over_relaying(
        &self,
        client_id: &str,
        want_session: bool,
        newer_than: std::time::SystemTime,
        relay_to: Option<u64>,
    ) -> (Option<SessionExport>, Option<Relaying>) {
        // A handshake of the id under way here attaches after this call: it learns of the connection elsewhere.
        if let Some(c) = lock(&self.connecting).get_mut(client_id) {
            tracing::info!(%client_id, "another node has a connection of this client id; one is in its handshake here");
            c.newer_elsewhere = Some(c.newer_elsewhere.map_or(newer_than, |t| t.max(newer_than)));
        }
        let Some(session) = lock(&self.sessions).get(client_id).cloned() else { return (None, None) };
        let previous = {
            let mut link = lock(&session.link);
            if lock(&session.attached_at).is_some_and(|at| at > newer_than) {
                // A connection here came after the one asking (attached now or since gone): the request is late,
                // and ends nothing.
                return (None, None);
            }
            link.take()
        };
        if let Some(mut prev) = previous {
            if let Some(kick) = prev.kick.take() {
                kick.send(ReasonCode::SessionTakenOver);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), prev.done.wait()).await;
        }
        if lock(&session.link).is_some() {
            // A connection came back here meanwhile; it wins.
            return (None, None);
        }
        let (export, removed, relaying) = {
            let mut state = lock(&session.state);
            let export = (state.persistent && want_session).then(|| state.export());
            state.disconnected();
            state.persistent = false;
            match relay_to.filter(|_| export.is_some() && !state.subscriptions.is_empty()) {
                Some(node) => (export, state.relay_to_node(node), Some(Relaying(session.clone()))),
                None => (export, self.clear_session(&session, &mut state), None),
            }
        };
        self.forget(&session, removed);
        if let Some(store) = &self.store {
            store.remove_session(&session.client_id);
        }
        // The client connected elsewhere: to this session (its will is cancelled) or to a new one (it is sent).
        self.settle_will(client_id, export.is_none()).await;
        (export, relaying)
    }

    /// Ends the relaying of a session that moved (see [`Broker::take_over_relaying`]): its subscriptions go from
    /// this node, and with the last of a filter, this node's route.
    pub fn end_relay(&self, relaying: Relaying) {
        let session = relaying.0;
        let removed = {
            let mut state = lock(&session.state);
            self.clear_session(&session, &mut state)
        };
        self.redeliver();
        if let Some(store) = &self.store {
            for key in removed {
                store.remove_queued(&session.client_id, key);
            }
        }
    }

    /// A message another node relayed for the session of `client_id` (see [`Cluster::relay`]): queued for it if
    /// it is here (or dropped, counted, as any message for a full queue). Returns whether a durable write was made
    /// (flush before acknowledging it), or the message back when the session is not here.
    pub fn deliver_relayed(&self, client_id: &str, out: Outgoing) -> Result<bool, Outgoing> {
        let Some(session) = lock(&self.sessions).get(client_id).cloned() else { return Err(out) };
        // The old node matched it with the subscriptions the session had there; the client may have unsubscribed
        // here since [MQTT-3.10.4-2]. Then it is not for the session any more: taken, and delivered to nobody.
        let name = &out.message.topic;
        if !subscribed(&lock(&session.state), name) {
            tracing::info!(%client_id, topic = %name, "a relayed message no subscription of the session matches now; not queued");
            return Ok(false);
        }
        Ok(self.enqueue(&session, out, &mut None).1)
    }

    /// Drops an ended session from the registry (unless a connection attached to it meanwhile) and its stored
    /// messages `removed` from the store.
    fn forget(&self, session: &Arc<SessionHandle>, removed: Vec<u64>) {
        {
            let mut sessions = lock(&self.sessions);
            if sessions.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session))
                && lock(&session.link).is_none()
            {
                sessions.remove(&session.client_id);
            }
        }
        if let Some(store) = &self.store {
            for key in removed {
                store.remove_queued(&session.client_id, key);
            }
        }
        self.redeliver();
    }

    pub fn cluster(&self) -> &Arc<dyn Cluster> {
        &self.cluster
    }

    /// Drops a session's subscriptions from the router and empties it. Returns the stored message keys to delete.
    fn clear_session(&self, handle: &Arc<SessionHandle>, state: &mut Session) -> Vec<u64> {
        if !state.subscriptions.is_empty() {
            let mut router = write(&self.router);
            for filter in state.subscriptions.keys() {
                if router.unsubscribe(filter, handle).node_changed {
                    self.cluster.route_removed(filter);
                }
            }
        }
        // What a shared group gave this session and it did not acknowledge goes to another member, once the
        // locks are let go (see `redeliver`).
        let orphans = state.take_group_messages();
        if !orphans.is_empty() {
            lock(&self.orphans).extend(orphans);
        }
        state.clear()
    }

    /// Hands messages of shared groups whose member session ended to another member of each group (MQTT 5.0
    /// section 4.8.2 lets the server do so); with no member left here the message is dropped, counted and logged.
    fn redeliver(&self) {
        let orphans = std::mem::take(&mut *lock(&self.orphans));
        for mut out in orphans {
            let Some(key) = out.group.clone() else { continue };
            let member = read(&self.router).next_member(&key);
            let Some(member) = member else {
                // None left here: a member on another node, if the cluster knows one.
                if self.cluster.forward_to_group(&out.message, &key) {
                    tracing::debug!(group = %key, "message handed to the group on another node");
                    continue;
                }
                Stats::add(&self.stats.publish_dropped, 1);
                tracing::warn!(group = %key, topic = %out.message.topic, "shared group has no member left; message dropped");
                continue;
            };
            out.qos = delivered_qos(out.message.qos, member.options.qos);
            out.subscription_ids = member.id.into_iter().collect();
            out.stored = None;
            tracing::debug!(group = %key, client_id = %member.session.client_id, "message handed to another member");
            let _ = self.enqueue(&member.session, out, &mut None);
        }
    }

    /// Connection `connection_id` has ended. A non-persistent session ends with it [MQTT-3.1.2-6]; a persistent
    /// one stays, collecting messages, until the client returns.
    pub fn disconnect(&self, session: &Arc<SessionHandle>, connection_id: u64) {
        let mut link = lock(&session.link);
        if link.as_ref().is_none_or(|l| l.id != connection_id) {
            // Taken over: the new connection owns the session now.
            return;
        }
        *link = None;
        let mut state = lock(&session.state);
        state.disconnected();
        if state.persistent {
            if state.expiry != u32::MAX {
                self.schedule(Duration::from_secs(u64::from(state.expiry)), &session.client_id, connection_id, {
                    Timer::SessionExpiry
                });
                // The record keeps when the clock started, for a restart.
                if let Some(store) = &self.store {
                    store.put_session(&Self::stored_session(&session.client_id, &state));
                }
            }
            return;
        }
        let removed = self.clear_session(session, &mut state);
        drop(state);
        drop(link);
        self.forget(session, removed);
    }

    /// Routes `message` to every matching subscription here and on other nodes, and keeps it if retained. Never
    /// blocks on a subscriber.
    pub fn publish(&self, message: Message) -> Routed {
        self.publish_counted(message, &mut crate::cluster::Acceptance::default())
    }

    /// [`Broker::publish`], where each other node a QoS 1/2 message goes to owes `acceptance` its acceptance: the
    /// publisher's acknowledgement waits for it, and for [`Routed::remote`].
    pub fn publish_counted(&self, mut message: Message, acceptance: &mut crate::cluster::Acceptance) -> Routed {
        if message.id.is_none() {
            message.id = self.cluster.message_id();
        }
        let message = Arc::new(message);
        let mut routed = Routed::default();
        let replicate = self.keep_retained(&message, true, &mut routed);
        // `$SYS` values are this node's own (its clients, its counters), as a single broker's are: a subscriber
        // sees those of the node it is connected to, not every node's in turn under the same topics.
        if is_sys(&message.topic) {
            self.route_local(&message, &Groups::All, &mut routed);
            return routed;
        }
        let forwarded = self.cluster.forward(&message, replicate, acceptance);
        self.route_local(&message, &Groups::Except(&forwarded.groups_elsewhere), &mut routed);
        self.hand_on_unserved(&message, &forwarded.groups_here, true);
        routed.remote = forwarded.accepted;
        routed.elsewhere = forwarded.elsewhere;
        routed
    }

    /// Delivers a message another node forwarded here: to local subscribers only, and to the shared groups the
    /// publishing node asked this one to serve; with `groups_only`, to those groups alone (a message a departed
    /// member elsewhere left behind, which the plain subscribers here already had).
    pub fn publish_forwarded(&self, message: Message, groups: &[ByteString], groups_only: bool) -> Routed {
        let mut routed = Routed::default();
        if is_sys(&message.topic) {
            // Another node's own values (see `publish_counted`), from a version that still sent them.
            return routed;
        }
        let message = Arc::new(message);
        if groups_only {
            self.route_local(&message, &Groups::GroupsOnly(groups), &mut routed);
            // Handed on once already: not again, or two nodes whose members both went could pass it back and forth.
            self.hand_on_unserved(&message, groups, false);
            return routed;
        }
        self.keep_retained(&message, false, &mut routed);
        self.route_local(&message, &Groups::Only(groups), &mut routed);
        self.hand_on_unserved(&message, groups, true);
        routed
    }

    /// A message this node was to serve shared groups `groups` with, by a table made before the last member of one
    /// left here (its route's removal is on its way through the log): that group gets it on another node that has
    /// members, as the message of a member that left does (see `redeliver`); with none (or `hand_on` false) it is
    /// dropped, counted and logged, not lost unseen.
    fn hand_on_unserved(&self, message: &Arc<Message>, groups: &[ByteString], hand_on: bool) {
        if groups.is_empty() {
            return;
        }
        let unserved: Vec<&ByteString> = {
            let router = read(&self.router);
            groups.iter().filter(|g| !router.has_members(g)).collect()
        };
        for key in unserved {
            if hand_on && self.cluster.forward_to_group(message, key) {
                tracing::debug!(group = %key, "no member here any more; message handed to the group on another node");
                continue;
            }
            Stats::add(&self.stats.publish_dropped, 1);
            tracing::warn!(group = %key, topic = %message.topic, "shared group has no member left; message dropped");
        }
    }

    /// Whether a subscription on this node matches a topic in common with one of `filters`.
    pub fn subscribed_overlapping<'a>(&self, mut filters: impl Iterator<Item = &'a str>) -> bool {
        let router = read(&self.router);
        filters.any(|f| router.overlaps(f))
    }

    /// Whether a retained message of `size` payload bytes on `topic` is more than the cluster keeps (see
    /// [`Cluster::retained_max_size`]). An empty one clears the topic, and a `$` topic is the node's own.
    pub fn retained_too_large(&self, topic: &str, size: usize) -> bool {
        let max = self.cluster.retained_max_size();
        max != 0 && size > max && !topic.starts_with('$')
    }

    /// Keeps `message` as its topic's retained message if it is one: in this node's store, or, when the cluster
    /// replicates retained messages, through the cluster (only from the node it was published on: the cluster
    /// brings it to the others, and its log settles the one order every node applies). True when the cluster must
    /// replicate it.
    fn keep_retained(&self, message: &Arc<Message>, here: bool, routed: &mut Routed) -> bool {
        if !message.retain || !self.config.retain_available {
            return false;
        }
        if here && self.retained_too_large(&message.topic, message.payload.len()) {
            // A client's publish was refused before it came here; this is a will.
            tracing::warn!(topic = %message.topic, size = message.payload.len(), "a retained will over cluster_retain_max_size goes out unretained");
            return false;
        }
        // `$SYS` values are the node's own and current; a restart republishes them rather than restoring.
        let node_own = message.topic.starts_with('$');
        // Kept for long: in an allocation of its own, not a slice of the publisher's read buffer.
        // A retained message is a delivery of its own to each later subscriber, not a copy of the live one.
        let kept = || Arc::new(Message { id: MessageId::NONE, ..message.compact() });
        if !node_own && self.cluster.replicates_retained() {
            if !here {
                return false;
            }
            // Held at once, so this node's next subscriber sees it; the log's order settles it on every node.
            write(&self.retained).set(kept());
            return true;
        }
        write(&self.retained).set(kept());
        if let Some(store) = self.store.as_ref().filter(|_| !node_own) {
            store.put_retained(message);
            routed.durable |= message.qos != QoS::AtMostOnce;
        }
        false
    }

    /// The cluster applied a retained message change (`None` clears the topic); see [`Cluster::replicates_retained`].
    /// The message is kept as given, so it should be one of its own (see [`Message::compact`]).
    pub fn retained_changed(&self, topic: &str, message: Option<Message>) {
        let mut retained = write(&self.retained);
        match message {
            // One that expired before it came (a node applying the log late, or again after a restart) is none.
            Some(m) if !m.is_expired(std::time::Instant::now()) => {
                // Without the live message's id (see `keep_retained`).
                retained.set(Arc::new(Message { id: MessageId::NONE, ..m }));
            }
            _ => {
                retained.clear(topic);
            }
        }
    }

    /// The cluster's whole set of retained messages replaces this node's (its own `$` topics stay).
    pub fn replace_retained(&self, messages: Vec<Message>) {
        let mut retained = write(&self.retained);
        for topic in retained.matching("#") {
            retained.clear(&topic.topic);
        }
        let now = std::time::Instant::now();
        for m in messages.into_iter().filter(|m| !m.is_expired(now)) {
            retained.set(Arc::new(m));
        }
    }

    fn route_local(&self, message: &Arc<Message>, groups: &Groups<'_>, routed: &mut Routed) {
        let mut targets = crate::router::Targets::new();
        read(&self.router).route(&message.topic, groups, &mut targets);
        if targets.is_empty() {
            return;
        }
        let acl = self.acl();
        let message = message.clone();
        // A session matched by several subscriptions gets the message once, at the highest QoS, with every
        // Subscription Identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3].
        targets.sort_unstable_by_key(|t| Arc::as_ptr(&t.subscriber.session) as usize);
        // The copy queued for sessions that are away, made once (see `enqueue`).
        let mut kept = None;
        let mut i = 0;
        while i < targets.len() {
            let session = targets[i].subscriber.session.clone();
            let mut qos = None::<QoS>;
            let mut retain = false;
            let mut ids = Vec::new();
            let mut group = None;
            while i < targets.len() && Arc::ptr_eq(&targets[i].subscriber.session, &session) {
                let Target { subscriber, shared } = &targets[i];
                i += 1;
                // [MQTT-3.8.3-3]: No Local keeps a client's own messages from it (not for shared subscriptions).
                if subscriber.options.no_local
                    && shared.is_none()
                    && message.publisher.as_ref().is_some_and(|p| *p == session.client_id)
                {
                    continue;
                }
                let q = delivered_qos(message.qos, subscriber.options.qos);
                qos = Some(qos.map_or(q, |prev| prev.max(q)));
                // [MQTT-3.3.1-12] / [MQTT-3.3.1-13]: the live RETAIN flag is 0 unless Retain As Published.
                retain |= subscriber.options.retain_as_published && message.retain;
                ids.extend(subscriber.id);
                if shared.is_some() {
                    group.clone_from(shared);
                }
            }
            let Some(qos) = qos else { continue };
            // The ACL decides at each delivery, so a reloaded file applies to subscriptions made before it.
            if let Some(auth) = &acl
                && !self.may(auth, &session, &message.topic, skein_auth::Access::Read)
            {
                Stats::add(&self.stats.acl_denied, 1);
                continue;
            }
            let out = Outgoing { message: message.clone(), qos, retain, subscription_ids: ids, stored: None, group };
            let (queued, durable) = self.enqueue(&session, out, &mut kept);
            routed.delivered += usize::from(queued);
            routed.durable |= durable;
        }
    }

    fn may(&self, auth: &Auth, session: &SessionHandle, topic: &str, access: skein_auth::Access) -> bool {
        let username = lock(&session.state).username.clone();
        auth.allows(username.as_deref(), &session.client_id, topic, access)
    }

    /// Queues `out` for `session`, storing it first when the session is persistent and the QoS is above 0.
    /// Returns (queued, durable write made). A session that is away may hold the message for long, so it gets a
    /// compact copy (`Message::compact`), made once per message in `kept` and shared by every such session.
    fn enqueue(
        &self,
        session: &Arc<SessionHandle>,
        mut out: Outgoing,
        kept: &mut Option<Arc<Message>>,
    ) -> (bool, bool) {
        let mut state = lock(&session.state);
        if let Some(node) = state.relay_to() {
            drop(state);
            self.cluster.relay(node, &session.client_id, &out);
            return (true, false);
        }
        if !state.first_delivery(out.message.id, Instant::now) {
            // A session that has just moved here already has this message: it came another way too.
            drop(state);
            Stats::add(&self.stats.duplicates_skipped, 1);
            tracing::debug!(client_id = %session.client_id, topic = %out.message.topic, "a moved session already has this message; not queued twice");
            return (true, false);
        }
        if state.waker.is_none() {
            out.message = kept.get_or_insert_with(|| Arc::new(out.message.compact())).clone();
        }
        let mut durable = false;
        if state.persistent
            && out.qos != QoS::AtMostOnce
            && let Some(store) = &self.store
        {
            match store.next_key() {
                Ok(key) => {
                    store.put_queued(&session.client_id, key, &out, None);
                    out.stored = Some(key);
                    durable = true;
                }
                Err(e) => tracing::error!(client_id = %session.client_id, error = %e, "queued message not stored"),
            }
        }
        let stored = out.stored;
        match state.enqueue(out) {
            Ok(()) => {
                let waker = state.waker.clone();
                drop(state);
                if let Some(w) = waker {
                    w.notify();
                }
                (true, durable)
            }
            Err(reason) => {
                drop(state);
                Stats::add(&self.stats.publish_dropped, 1);
                tracing::debug!(client_id = %session.client_id, ?reason, "message dropped for subscriber");
                if let (Some(store), Some(key)) = (&self.store, stored) {
                    store.remove_queued(&session.client_id, key);
                }
                (false, false)
            }
        }
    }

    fn route_subscribe(&self, filter: &ByteString, sub: Subscriber) -> bool {
        let change = write(&self.router).subscribe(filter, sub);
        if change.node_changed {
            self.cluster.route_added(filter);
        }
        change.session_changed
    }

    /// Subscribes `session` to each filter. Returns one reason code per filter [MQTT-3.9.3-1], the retained
    /// messages to send after the SUBACK, and whether a durable write was made.
    pub fn subscribe(
        &self,
        session: &Arc<SessionHandle>,
        filters: &[(ByteString, SubscriptionOptions)],
        id: Option<u32>,
    ) -> (Vec<ReasonCode>, Vec<Outgoing>, bool) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let auth = self.auth();
        for (filter, options) in filters {
            let parsed = match topic::parse_filter(filter) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(client_id = %session.client_id, %filter, error = %e, "subscription refused");
                    codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            // Length over the whole filter; levels over the topic filter, not a shared group's prefix.
            if self.config.too_long(filter) || self.config.too_many_levels(parsed.topic_filter()) {
                tracing::debug!(client_id = %session.client_id, %filter, "subscription refused: too long or too many levels");
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let max = self.config.max_subscriptions;
            if max != 0 && {
                let state = lock(&session.state);
                state.subscriptions.len() >= max && !state.subscriptions.contains_key(filter)
            } {
                tracing::debug!(client_id = %session.client_id, %filter, "subscription refused: max_subscriptions");
                codes.push(ReasonCode::QuotaExceeded);
                continue;
            }
            if auth.has_acl() && !self.may(&auth, session, parsed.topic_filter(), skein_auth::Access::Subscribe) {
                tracing::debug!(client_id = %session.client_id, %filter, "subscription refused by the ACL");
                Stats::add(&self.stats.acl_denied, 1);
                codes.push(ReasonCode::NotAuthorized);
                continue;
            }
            let sub = Subscription { options: *options, id };
            // A copy of the filter: the packet's is a slice of the read buffer, which the session would keep alive.
            lock(&session.state).subscriptions.insert(ByteString::from(&**filter), sub);
            let is_new = self.route_subscribe(filter, Subscriber { session: session.clone(), options: *options, id });
            codes.push(ReasonCode::granted(options.qos));
            // Retained messages on subscribe [MQTT-3.3.1-9] as Retain Handling says [MQTT-3.3.1-10] [MQTT-3.3.1-11];
            // none for shared subscriptions (MQTT 5.0 section 4.8.2).
            let send = match (parsed, options.retain_handling) {
                (Filter::Shared { .. }, _) => false,
                (_, RetainHandling::SendAtSubscribe) => true,
                (_, RetainHandling::SendIfNew) => is_new,
                (_, RetainHandling::DoNotSend) => false,
            };
            if send {
                for m in read(&self.retained).matching(parsed.topic_filter()) {
                    if auth.has_acl() && !self.may(&auth, session, &m.topic, skein_auth::Access::Read) {
                        continue;
                    }
                    let qos = delivered_qos(m.qos, options.qos);
                    retained.push(Outgoing {
                        message: m,
                        qos,
                        retain: true,
                        subscription_ids: id.into_iter().collect(),
                        stored: None,
                        group: None,
                    });
                }
            }
        }
        let durable = self.persist_subscriptions(session);
        (codes, retained, durable)
    }

    /// Removes `session`'s subscriptions on each filter; a code per filter.
    pub fn unsubscribe(&self, session: &Arc<SessionHandle>, filters: &[ByteString]) -> (Vec<ReasonCode>, bool) {
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            if topic::parse_filter(filter).is_err() {
                // MQTT 5.0 section 3.11.2.1: not a filter anyone could have subscribed with.
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            lock(&session.state).subscriptions.remove(filter);
            let change = write(&self.router).unsubscribe(filter, session);
            if change.node_changed {
                self.cluster.route_removed(filter);
            }
            codes.push(if change.session_changed { ReasonCode::Success } else { ReasonCode::NoSubscriptionExisted });
        }
        (codes, self.persist_subscriptions(session))
    }

    fn persist_subscriptions(&self, session: &Arc<SessionHandle>) -> bool {
        let Some(store) = &self.store else { return false };
        let state = lock(&session.state);
        if !state.persistent {
            return false;
        }
        let record = Self::stored_session(&session.client_id, &state);
        drop(state);
        store.put_session(&record);
        true
    }

    /// Queues retained messages (from a subscribe) for `session`.
    pub fn deliver(&self, session: &Arc<SessionHandle>, messages: Vec<Outgoing>) -> bool {
        let mut durable = false;
        for out in messages {
            durable |= self.enqueue(session, out, &mut None).1;
        }
        durable
    }

    /// Applies durable-copy changes a session reported.
    pub fn apply_store_updates(&self, client_id: &ByteString, updates: &[StoreUpdate]) {
        let Some(store) = &self.store else { return };
        for u in updates {
            match *u {
                StoreUpdate::Sent { key, packet_id, state } => store.mark_sent(client_id, key, packet_id, state),
                StoreUpdate::Done { key } => store.remove_queued(client_id, key),
            }
        }
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => store.flush().await,
            None => Ok(()),
        }
    }

    pub fn session_count(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn subscription_count(&self) -> usize {
        read(&self.router).len()
    }

    /// Shared subscriptions held here (members of `$share/...` groups).
    pub fn shared_subscription_count(&self) -> usize {
        read(&self.router).shared_len()
    }

    /// The client ids of the persistent sessions held here, connected or not.
    pub fn persistent_sessions(&self) -> Vec<ByteString> {
        self.persistent_sessions_where(|_| true)
    }

    /// The client ids of the persistent sessions whose clients are connected now.
    pub fn connected_persistent_sessions(&self) -> Vec<ByteString> {
        self.persistent_sessions_where(|s| lock(&s.link).is_some())
    }

    fn persistent_sessions_where(&self, keep: impl Fn(&SessionHandle) -> bool) -> Vec<ByteString> {
        let sessions: Vec<_> = lock(&self.sessions).values().cloned().collect();
        // The link is locked before the state, as everywhere else.
        sessions.iter().filter(|s| keep(s) && lock(&s.state).persistent).map(|s| s.client_id.clone()).collect()
    }

    /// Whether a session of `client_id` is held here (it has not ended or moved to another node).
    pub fn holds_session(&self, client_id: &str) -> bool {
        lock(&self.sessions).contains_key(client_id)
    }

    /// The filters this node has at least one subscriber on: its full route set, for announcing to a cluster.
    pub fn local_filters(&self) -> Vec<String> {
        read(&self.router).filters().map(|f| f.to_string()).collect()
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    /// Messages queued for or in flight to all sessions.
    pub fn queued_count(&self) -> usize {
        let sessions: Vec<_> = lock(&self.sessions).values().cloned().collect();
        sessions
            .iter()
            .map(|s| {
                let st = lock(&s.state);
                st.queued() + st.inflight()
            })
            .sum()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Key prefix of the marks that keep persistent sessions' unreleased QoS 2 identifiers over a clean restart (see
/// `Broker::keep_unreleased_qos2`); the client id follows.
const UNRELEASED_QOS2: &[u8] = b"unreleased-qos2/";

/// A topic only the server publishes on: `$SYS/...` (its figures) and `$share/...` (the shared subscription prefix,
/// never a topic a subscriber could be given).
pub fn server_topic(topic: &str) -> bool {
    let first = topic.split('/').next().unwrap_or("");
    first == "$SYS" || first == "$share"
}
