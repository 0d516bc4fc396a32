//! One node of a cluster: its Raft instance, the gRPC service peers call, formation and joining, route proposals,
//! and publish forwarding. Implements the broker's `Cluster` trait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, SnapshotPolicy};
use skein_broker::Broker;
use skein_broker::cluster::Accepted;
use skein_broker::message::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::handover;
use crate::network::{self, Factory, to_message};
use crate::proto::cluster_server::{Cluster as ClusterService, ClusterServer};
use crate::proto::{
    ElectReply, ElectRequest, ForwardAck, ForwardBatch, HelloReply, HelloRequest, JoinReply, JoinRequest, RaftMessage,
    ReleaseReply, ReleaseRequest, TakeoverReply, TakeoverRequest,
};
use crate::state::{Claim, Claimed, Command, Member, NodeId, RouteIndex};
use crate::store::{self, Raft, RetainedChange, StateMachine};

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Where the node-to-node gRPC service listens.
    pub listen: SocketAddr,
    /// The address peers reach that service at.
    pub advertise: String,
    /// The MQTT address clients reach this node at (shown in status).
    pub mqtt_advertise: String,
    /// Seed nodes' cluster addresses. Nodes started with the same list form one cluster; a node not in the list
    /// joins through any of them.
    pub join: Vec<String>,
    /// How many voters the cluster keeps; further nodes are learners, which still apply the log.
    pub voters: usize,
    /// A member that has not answered for this long has its routes purged; it announces them again on return.
    /// Forwarded messages it has not taken by then are given up (and counted).
    pub node_timeout: Duration,
    /// Log entries between snapshots; a node that lags further than the log kept behind one gets the snapshot.
    pub snapshot_logs: u64,
    /// Largest retained payload the cluster keeps (0: no limit); see `Cluster::retained_max_size`.
    pub retain_max_size: usize,
    pub data_dir: PathBuf,
    /// Mutual TLS between peers: only nodes with a certificate from the cluster CA can talk to this one.
    pub tls: Option<crate::peer_tls::PeerTls>,
}

/// A route change the broker reported, waiting to be proposed; numbered (see `ClusterNode::routes_sent`).
#[derive(Debug, Clone)]
enum RouteChange {
    Added(String, u64),
    Removed(String, u64),
}

/// The cluster's figures as one node sees them, for `/metrics`; `status()` has the same and more, as JSON.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub node_id: NodeId,
    /// Voters and learners.
    pub members: usize,
    pub voters: usize,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    /// Topic filters in the replicated route table.
    pub routes: usize,
    /// Persistent sessions in the client registry.
    pub registered_sessions: usize,
    pub forwarded: u64,
    pub forward_batches: u64,
    pub forward_failures: u64,
    pub forward_pending: u64,
    pub takeovers_answered: u64,
    /// Sessions that moved from here and still relay to their new node.
    pub relaying: usize,
    /// Messages relayed to the node a session moved to (also counted in `forwarded`).
    pub relayed: u64,
}

pub struct ClusterNode {
    pub config: ClusterConfig,
    pub raft: Raft,
    sm: StateMachine,
    broker: OnceLock<Arc<Broker>>,
    routes: mpsc::UnboundedSender<RouteChange>,
    routes_rx: Mutex<Option<mpsc::UnboundedReceiver<RouteChange>>>,
    retains: mpsc::UnboundedSender<RetainChange>,
    /// Numbers this node's retained changes; starts at the clock so that it keeps rising across restarts.
    retain_seq: AtomicU64,
    retains_rx: Mutex<Option<mpsc::UnboundedReceiver<RetainChange>>>,
    index: RwLock<(u64, Arc<RouteIndex>)>,
    /// Tells this node's thread-local route index handles from another node's in the same process (tests).
    instance: u64,
    forwarders: Mutex<HashMap<NodeId, mpsc::UnboundedSender<Vec<Outbound>>>>,
    /// Nodes whose forward stream is open now: a retained change's copy is waited for only there.
    forward_up: Mutex<BTreeSet<NodeId>>,
    /// Nodes whose forward stream cannot be opened now (they are down or cut off): a shared group served elsewhere
    /// too is planned past them. `forward_down_count` is its size, read without the lock for every plan.
    forward_down: Mutex<BTreeSet<NodeId>>,
    forward_down_count: AtomicUsize,
    /// Per sending node: its forward stream task's epoch and the last batch taken from it (see `first_delivery`).
    forward_seen: Mutex<HashMap<NodeId, (u64, u64)>>,
    /// Sessions that moved from here and whose subscriptions still relay to their new node (see `Relay`).
    relays: Mutex<Vec<Relay>>,
    /// Take-over requests being answered (see `relaying`).
    handing_over: AtomicUsize,
    /// Sessions being taken over here: what the node they leave relays for them before they are attached waits here
    /// (client id → when the take-over began, the messages).
    relay_inbox: Mutex<HashMap<String, (tokio::time::Instant, Vec<handover::Unpacked>)>>,
    /// Per peer: clean-session connects to tell it of, sent in batches (see `release_loop`).
    releasers: Mutex<HashMap<String, mpsc::UnboundedSender<TakeoverRequest>>>,
    /// Forwarded messages that could not be handed to a node in time.
    pub forward_failures: AtomicU64,
    /// Messages and batches sent to other nodes (counted once, however often resent after reconnects).
    forwarded: AtomicU64,
    forward_batches: AtomicU64,
    /// Messages queued or sent for other nodes that they have not acknowledged yet.
    forward_pending: AtomicU64,
    /// Takeover requests (a persistent session wanted elsewhere) this node has answered.
    takeovers_answered: AtomicU64,
    relayed: AtomicU64,
    /// Said once: a seed answered with this node's id from an address this node does not advertise.
    warned_self_seed: std::sync::atomic::AtomicBool,
    /// This node itself, for the tasks it starts from `&self`.
    this: std::sync::Weak<ClusterNode>,
    /// Route changes reported and not yet proposed.
    pending_routes: std::sync::atomic::AtomicUsize,
    /// Numbers this node's route changes as the broker makes them; `routes_settled` carries the number up to which
    /// every member routes by them (or they were given up on: see `ROUTES_WAIT`).
    routes_sent: AtomicU64,
    routes_settled: watch::Sender<u64>,
    /// On the leader: fewer than a majority of the voters (itself included) have answered its probes for
    /// `QUORUM_LOST_AFTER` (see `watch_members`). Raft keeps it leader; it reports no leader and is not ready, as a
    /// follower cut off from the majority does.
    quorum_lost: std::sync::atomic::AtomicBool,
    /// Set by `leave`: this node announces no more routes.
    leaving: std::sync::atomic::AtomicBool,
    /// Set once `ready` has seen the log applied up to its end and up to `catch_up_to`.
    caught_up: std::sync::atomic::AtomicBool,
    /// The leader's applied index, asked once after start (`u64::MAX` until known): entries a node missed while it
    /// was down are in the leader's log and not yet in its own.
    catch_up_to: AtomicU64,
    /// Rotates the node that serves a shared group, message by message.
    shared_turn: std::sync::atomic::AtomicUsize,
    /// Changes of the client registry, waiting to be proposed (see `propose_clients`).
    clients: mpsc::UnboundedSender<ClientChange>,
    clients_rx: Mutex<Option<mpsc::UnboundedReceiver<ClientChange>>>,
    /// Connects waiting for their claim to be applied here, by client id and `since`.
    claim_waiters: Mutex<HashMap<(String, u64), oneshot::Sender<Claimed>>>,
    /// Client ids that connected here lately: `reconcile_clients` leaves them alone while they settle.
    recent: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Sessions held here that the registry gives to another node, and since when this node has seen so.
    stranded: Mutex<HashMap<String, tokio::time::Instant>>,
}

/// A change of the client registry from this node.
enum ClientChange {
    Claimed(String, u64),
    Released(String, u64),
}

/// How long a persistent connect waits for its claim to reach the log before it asks every peer instead.
const CLAIM_WAIT: Duration = Duration::from_secs(2);
/// How long a node whose Raft state says it is a member waits to hear from a leader before it asks to be added again
/// (see `form`): past an election timeout and a heartbeat, with room to spare.
const REJOIN_AFTER: Duration = Duration::from_secs(5);
/// A connect this recent is still settling (its claim waits up to `CLAIM_WAIT`, its ask up to a second): the
/// registry and the broker may disagree about it meanwhile. Should one take longer, an entry dropped too early is
/// registered again on the next round.
const SETTLING: Duration = Duration::from_secs(3);
/// A session held here that the registry has given to another node for this long was left behind by a race (two
/// connects of one client id at once, or this node away meanwhile): it goes.
const STRANDED: Duration = Duration::from_secs(5);

/// A retained message published here, waiting to be proposed; `done` hears whether it was committed.
struct RetainChange {
    seq: u64,
    topic: String,
    message: Option<Vec<u8>>,
    done: oneshot::Sender<()>,
}

/// A message for a node: the shared groups it serves for it, and (at QoS 1/2) who waits for it to accept it.
struct Outbound {
    message: Arc<Message>,
    groups: Vec<String>,
    /// The retained change it carries (see `Forwarded.retain_seq`), or 0.
    retain_seq: u64,
    /// For the named groups only (see `Forwarded.groups_only`).
    groups_only: bool,
    /// Owed to the publisher's read once the node has the message (QoS 1/2).
    accepted: Option<skein_broker::cluster::Owed>,
    /// For one session only (a relayed message).
    target: Option<Box<handover::Target>>,
    /// Not a message: a mark in the stream, accepted once everything queued before it was delivered (see `flush_to`).
    barrier: bool,
    /// The route table it was planned with, as of this log index (`StateMachine::routes_index`).
    planned_at: u64,
}

/// A session that moved from here to `to`: its subscriptions stay here, relaying what they match, until every
/// plain filter of it shows `to` in the route table as this node has applied it, and `RELAY_SETTLE` more (the other
/// nodes apply the same log a moment apart), or until `node_timeout`.
struct Relay {
    client_id: String,
    to: NodeId,
    filters: Vec<String>,
    since: tokio::time::Instant,
    /// When the routes were first seen in place.
    settled: Option<tokio::time::Instant>,
    handle: skein_broker::Relaying,
}

thread_local! {
    /// While a forwarded batch, or a client's read (`begin_batch` to `end_batch`), is handled on this thread: the
    /// new nodes' acceptance of the QoS 1/2 messages it relayed, which its acknowledgements wait for. So the
    /// publisher is answered only once the session's new node has the message, and cannot send its next message,
    /// planned with the new routes straight to that node, ahead of it.
    static RELAY_OWED: std::cell::RefCell<Option<skein_broker::cluster::Acceptance>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts collecting, on this thread, what relays owe (`RELAY_OWED`).
fn collect_relays() {
    RELAY_OWED.with(|r| *r.borrow_mut() = Some(Default::default()));
}

/// What relays owed since `collect_relays`, and the end of collecting.
fn relays_owed() -> skein_broker::cluster::Acceptance {
    RELAY_OWED.with(|r| r.borrow_mut().take()).unwrap_or_default()
}

/// A relayed record as what its session is given, with that session's client id.
fn relayed_outgoing(u: handover::Unpacked) -> Option<(skein_codec::ByteString, skein_broker::session::Outgoing)> {
    let target = u.target?;
    let out = skein_broker::session::Outgoing {
        message: Arc::new(u.message),
        qos: target.qos,
        retain: target.retain,
        subscription_ids: target.subscription_ids,
        stored: None,
        group: u.shared_groups.into_iter().next(),
    };
    Some((target.client_id, out))
}

/// One take-over request being answered, counted in `ClusterNode::handing_over` for as long as it lives (the
/// request's future may also be dropped half-way, when the asking node goes).
struct HandingOver<'a>(&'a AtomicUsize);

impl<'a> HandingOver<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        HandingOver(count)
    }
}

impl Drop for HandingOver<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a node a session moves to waits for each member to flush its forward stream to it (see `flush_peers`).
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long a relay goes on after the new node's routes are in place here.
const RELAY_SETTLE: Duration = Duration::from_millis(500);
/// How long relayed messages wait here for the session they are for to be attached.
const RELAY_INBOX_LIMIT: Duration = Duration::from_secs(10);
/// How long, after its route changes are committed, a node waits for every member to route by them (see
/// `ClusterNode::routes_everywhere`); a SUBACK waits at most twice that for both (see `Cluster::routes_settled`).
const ROUTES_WAIT: Duration = Duration::from_secs(1);
/// How long a leader goes without answers from a majority of the voters before it reports no leader (a follower
/// cut off from them sees no leader after an election timeout or two).
const QUORUM_LOST_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the Raft store: {0}")]
    Store(#[from] store::OpenError),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("cannot listen for the cluster on {addr}: {error}")]
    Listen { addr: SocketAddr, error: std::io::Error },
    #[error("cluster TLS: {0}")]
    Tls(String),
}

impl ClusterNode {
    pub async fn new(config: ClusterConfig) -> Result<Arc<ClusterNode>, StartError> {
        let raft_config = Config {
            cluster_name: "skein".into(),
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: config.snapshot_logs.min(1000),
            ..Config::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| StartError::Raft(e.to_string()))?);
        // Before Raft starts: its first messages already go through the peer channels.
        if let Some(files) = &config.tls {
            crate::peer_tls::enable(files.clone()).map_err(StartError::Tls)?;
        }
        let (log, sm) = store::open(&config.data_dir)?;
        let raft = Raft::new(config.node_id, raft_config, Factory, log, sm.clone())
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (retains, retains_rx) = mpsc::unbounded_channel();
        let (clients, clients_rx) = mpsc::unbounded_channel();
        Ok(Arc::new_cyclic(|this| ClusterNode {
            clients,
            clients_rx: Mutex::new(Some(clients_rx)),
            claim_waiters: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
            stranded: Mutex::new(HashMap::new()),
            this: this.clone(),
            pending_routes: std::sync::atomic::AtomicUsize::new(0),
            routes_sent: AtomicU64::new(0),
            routes_settled: watch::Sender::new(0),
            quorum_lost: std::sync::atomic::AtomicBool::new(false),
            leaving: std::sync::atomic::AtomicBool::new(false),
            caught_up: std::sync::atomic::AtomicBool::new(false),
            catch_up_to: AtomicU64::new(u64::MAX),
            shared_turn: std::sync::atomic::AtomicUsize::new(0),
            config,
            raft,
            sm,
            broker: OnceLock::new(),
            routes: tx,
            routes_rx: Mutex::new(Some(rx)),
            retains,
            retain_seq: AtomicU64::new(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
            ),
            retains_rx: Mutex::new(Some(retains_rx)),
            index: RwLock::new((0, Arc::new(RouteIndex::default()))),
            instance: {
                static INSTANCES: AtomicU64 = AtomicU64::new(1);
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            },
            forwarders: Mutex::new(HashMap::new()),
            forward_up: Mutex::new(BTreeSet::new()),
            forward_down: Mutex::new(BTreeSet::new()),
            forward_down_count: AtomicUsize::new(0),
            forward_seen: Mutex::new(HashMap::new()),
            relays: Mutex::new(Vec::new()),
            handing_over: AtomicUsize::new(0),
            relay_inbox: Mutex::new(HashMap::new()),
            releasers: Mutex::new(HashMap::new()),
            forward_failures: AtomicU64::new(0),
            takeovers_answered: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            warned_self_seed: Default::default(),
            forwarded: AtomicU64::new(0),
            forward_batches: AtomicU64::new(0),
            forward_pending: AtomicU64::new(0),
        }))
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    /// Starts the gRPC service, forms or joins the cluster, and proposes route changes; returns once listening.
    pub async fn start(self: &Arc<Self>, broker: Arc<Broker>) -> Result<(), StartError> {
        // The broker holds what the log holds, from its snapshot and replay on, and hears every later change.
        let weak = Arc::downgrade(&broker);
        self.sm.watch_retained(Arc::new(move |change| {
            let Some(broker) = weak.upgrade() else { return };
            let decode =
                |topic: &str, bytes: &[u8]| match Message::decode_stored(bytes::Bytes::copy_from_slice(bytes), None) {
                    Ok((m, _)) => Some(m),
                    Err(e) => {
                        tracing::error!(topic, error = %e, "replicated retained message cannot be decoded");
                        None
                    }
                };
            match change {
                RetainedChange::Set { topic, message } => broker.retained_changed(topic, decode(topic, message)),
                RetainedChange::Cleared { topic } => broker.retained_changed(topic, None),
                RetainedChange::All(all) => {
                    broker.replace_retained(all.iter().filter_map(|(t, m)| decode(t, m)).collect())
                }
            }
        }));
        *lock(&self.forward_seen) = taken_marks(&broker);
        let _ = self.broker.set(broker);
        let weak = self.this.clone();
        self.sm.watch_claims(Arc::new(move |node, claimed| {
            let Some(me) = weak.upgrade() else { return };
            if node != me.id() {
                return;
            }
            let key = (claimed.client_id.clone(), claimed.since);
            if let Some(waiter) = lock(&me.claim_waiters).remove(&key) {
                let _ = waiter.send(claimed);
            }
        }));
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|error| StartError::Listen { addr: self.config.listen, error })?;
        tracing::info!(local = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), node_id = self.id(), "listening for the cluster");
        // Messages over gRPC's default 4 MiB limit are taken (see `network::unlimited`).
        let service = ClusterServer::new(Service(self.clone()))
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mut incoming = accept_peers(listener);
        // The windows this node offers its peers for what they send it (see `network::STREAM_WINDOW`).
        let server = tonic::transport::Server::builder()
            .initial_stream_window_size(network::STREAM_WINDOW)
            .initial_connection_window_size(network::CONNECTION_WINDOW)
            .add_service(service);
        match &self.config.tls {
            None => {
                tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming).map(Ok::<_, std::io::Error>);
                    if let Err(e) = server.serve_with_incoming(incoming).await {
                        tracing::error!(error = %e, "cluster service stopped");
                    }
                });
            }
            Some(files) => {
                // The server asks every peer for a certificate the cluster CA signed; clients show ours.
                let tls = crate::peer_tls::enable(files.clone()).map_err(StartError::Tls)?;
                tokio::spawn(tls.clone().watch(Duration::from_secs(2)));
                tracing::info!("cluster traffic uses mutual TLS");
                // Each handshake in a task of its own, so that a slow or silent peer holds up no other.
                let (tx, rx) = mpsc::channel::<std::io::Result<crate::peer_tls::PeerStream>>(64);
                tokio::spawn(async move {
                    while let Some(tcp) = incoming.recv().await {
                        let (tls, tx) = (tls.clone(), tx.clone());
                        tokio::spawn(async move {
                            let peer = tcp.peer_addr().ok();
                            match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                                Ok(Ok(stream)) => {
                                    let _ = tx.send(Ok(stream)).await;
                                }
                                Ok(Err(error)) => tracing::debug!(?peer, %error, "peer TLS handshake failed"),
                                Err(_) => tracing::debug!(?peer, "peer TLS handshake timed out"),
                            }
                        });
                    }
                });
                tokio::spawn(async move {
                    let accepted = tokio_stream::wrappers::ReceiverStream::new(rx);
                    if let Err(e) = server.serve_with_incoming(accepted).await {
                        tracing::error!(error = %e, "cluster service stopped");
                    }
                });
            }
        }
        let me = self.clone();
        tokio::spawn(async move { me.form().await });
        let me = self.clone();
        tokio::spawn(async move { me.learn_catch_up().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_members().await });
        let me = self.clone();
        tokio::spawn(async move { me.reconcile_routes().await });
        let me = self.clone();
        tokio::spawn(async move { me.watch_relays().await });
        let me = self.clone();
        let rx = self.routes_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            tokio::spawn(async move { me.propose_routes(rx).await });
        }
        let me = self.clone();
        let rx = self.retains_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            tokio::spawn(async move { me.propose_retained(rx).await });
        }
        let me = self.clone();
        let rx = lock(&self.clients_rx).take();
        if let Some(rx) = rx {
            tokio::spawn(async move { me.propose_clients(rx).await });
        }
        Ok(())
    }

    /// Forms the cluster from the seed list, or joins it, then announces this node.
    async fn form(self: Arc<Self>) {
        let mut wait = Duration::from_millis(200);
        loop {
            if self.raft.is_initialized().await.unwrap_or(false) {
                break;
            }
            match self.try_form().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "cluster not formed yet"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
        // Wait until this node is a member that has caught up with the leader, then say who we are and what we
        // route. A node that left the cluster (or was removed) and starts again from its data never gets there: it is
        // no longer a member, whatever the end of its own log says, and no leader sends it anything. After a while it
        // asks to be added again, as a new node would; for a member that only waits out an election or a lost quorum,
        // the request changes nothing (the leader finds it a member already, or there is no leader to ask).
        let mut since = tokio::time::Instant::now();
        let mut asked = false;
        while !self.ready() {
            if since.elapsed() >= REJOIN_AFTER {
                if !asked {
                    tracing::info!(
                        node_id = self.id(),
                        "not served by a leader: asking the cluster to add this node again, in case it left or was \
                         removed"
                    );
                    asked = true;
                }
                if let Err(e) = self.try_form().await {
                    tracing::debug!(error = %e, "not added again yet");
                }
                since = tokio::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let member =
            Member { cluster_addr: self.config.advertise.clone(), mqtt_addr: self.config.mqtt_advertise.clone() };
        self.propose(Command::Member { node: self.id(), member }).await;
        let filters = self.broker.get().map(|b| b.local_filters()).unwrap_or_default();
        self.propose(Command::Announce { node: self.id(), filters }).await;
        tracing::info!(node_id = self.id(), "joined the cluster");
    }

    /// On the leader: probes every member and purges the routes of one that has not answered for `node_timeout`,
    /// so that publishes stop waiting on it. Leadership changes and lost quorum only pause this; delivery on the
    /// live nodes goes on regardless.
    async fn watch_members(self: Arc<Self>) {
        let mut last_seen: HashMap<NodeId, tokio::time::Instant> = HashMap::new();
        let mut purged: BTreeSet<NodeId> = BTreeSet::new();
        // Members reported as not answering, so that a long outage is said once as it starts and once as it ends
        // (the Raft library's own warnings about it are let through once a minute).
        let mut silent: BTreeSet<NodeId> = BTreeSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.id()) {
                last_seen.clear();
                self.quorum_lost.store(false, Ordering::Release);
                continue;
            }
            let now = tokio::time::Instant::now();
            let members: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id())
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            for (id, addr) in members {
                let alive = match network::client(&addr) {
                    Ok(mut c) => tokio::time::timeout(Duration::from_millis(500), c.hello(HelloRequest {}))
                        .await
                        .is_ok_and(|r| r.is_ok()),
                    Err(_) => false,
                };
                let seen = last_seen.entry(id).or_insert(now);
                if alive {
                    *seen = now;
                    purged.remove(&id);
                    if silent.remove(&id) {
                        tracing::info!(node = id, %addr, "node answering again");
                    }
                    continue;
                }
                let quiet_for = now.duration_since(*seen);
                if quiet_for >= SILENT_AFTER && silent.insert(id) {
                    tracing::warn!(
                        node = id,
                        %addr,
                        timeout = ?self.config.node_timeout,
                        "node not answering; its routes and sessions are purged if it stays away for the node timeout"
                    );
                }
                if quiet_for > self.config.node_timeout && !purged.contains(&id) {
                    let holds_any = {
                        let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
                        a.state.routes.values().any(|n| n.contains(&id))
                            || a.state.clients.values().any(|c| c.node == id)
                    };
                    if holds_any {
                        tracing::warn!(node = id, "node away for the node timeout; purging its routes and sessions");
                        // In a task: without quorum it waits, and the probes (and `quorum_lost`) go on.
                        let me = self.clone();
                        tokio::spawn(async move { me.propose(Command::Purge { node: id }).await });
                    }
                    purged.insert(id);
                }
            }
            let me = self.id();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let answering = voters
                .iter()
                .filter(|v| **v == me || last_seen.get(v).is_some_and(|t| now.duration_since(*t) < QUORUM_LOST_AFTER))
                .count();
            let lost = answering * 2 <= voters.len();
            if lost != self.quorum_lost.swap(lost, Ordering::AcqRel) {
                if lost {
                    tracing::warn!(answering, voters = voters.len(), "leader without quorum: reporting no leader");
                } else {
                    tracing::info!(answering, voters = voters.len(), "leader has its quorum again");
                }
            }
        }
    }

    /// A leader cut off from the majority of the voters (see `quorum_lost`) counts as no leader.
    fn leader_with_quorum(&self, leader: Option<NodeId>) -> Option<NodeId> {
        leader.filter(|l| *l != self.id() || !self.quorum_lost.load(Ordering::Acquire))
    }

    /// Every node, every second: if the route table's entries for this node differ from what its broker holds
    /// (it was purged while away, or a proposal was lost), announce the whole set again.
    async fn reconcile_routes(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !self.ready() || self.pending_routes.load(Ordering::Acquire) != 0 || self.leaving.load(Ordering::Acquire)
            {
                continue;
            }
            let Some(broker) = self.broker.get() else { continue };
            let local: BTreeSet<String> = broker.local_filters().into_iter().collect();
            let replicated: BTreeSet<String> = {
                let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
                a.state.routes.iter().filter(|(_, n)| n.contains(&self.id())).map(|(f, _)| f.clone()).collect()
            };
            if local != replicated {
                tracing::info!(node = self.id(), routes = local.len(), "announcing this node's routes again");
                self.propose(Command::Announce { node: self.id(), filters: local.into_iter().collect() }).await;
            }
            self.reconcile_clients(broker);
            self.drop_departed_peers();
        }
    }

    /// Ends the forward and release tasks of nodes that are no longer members (their channels close them).
    fn drop_departed_peers(&self) {
        let members = self.members();
        lock(&self.forwarders).retain(|id, _| members.iter().any(|(m, _)| m == id));
        lock(&self.releasers).retain(|addr, _| members.iter().any(|(_, a)| a == addr));
    }

    /// Brings the client registry in line with the persistent sessions held here: registers those it lacks (after
    /// a restart or a purge), drops entries of sessions that ended here, and ends sessions here that the registry
    /// has given to another node for a while (left behind by a race). Connects still settling are left alone.
    fn reconcile_clients(&self, broker: &Broker) {
        let now = tokio::time::Instant::now();
        let recent: std::collections::HashSet<String> = {
            let mut r = lock(&self.recent);
            r.retain(|_, at| now.duration_since(*at) < SETTLING);
            r.keys().cloned().collect()
        };
        let local = broker.persistent_sessions();
        let me = self.id();
        let (mut claims, mut releases, mut stranded) = (Vec::new(), Vec::new(), Vec::new());
        {
            let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
            let held: std::collections::HashSet<&str> = local.iter().map(|c| &**c).collect();
            for (client_id, claim) in &a.state.clients {
                if claim.node == me && !held.contains(client_id.as_str()) && !recent.contains(client_id) {
                    releases.push((client_id.clone(), claim.since));
                }
            }
            for client_id in &local {
                if recent.contains(&**client_id) {
                    continue;
                }
                match a.state.clients.get(&**client_id) {
                    None => claims.push((client_id.to_string(), 0)),
                    Some(c) if c.node != me => stranded.push((client_id.to_string(), c.since)),
                    Some(_) => {}
                }
            }
        }
        for (c, since) in claims {
            let _ = self.clients.send(ClientChange::Claimed(c, since));
        }
        for (c, since) in releases {
            let _ = self.clients.send(ClientChange::Released(c, since));
        }
        let mut seen = lock(&self.stranded);
        let before: HashMap<String, tokio::time::Instant> = std::mem::take(&mut *seen);
        for (client_id, since) in stranded {
            let first = before.get(&client_id).copied().unwrap_or(now);
            if now.duration_since(first) < STRANDED {
                seen.insert(client_id, first);
                continue;
            }
            tracing::info!(%client_id, "session held here belongs to another node now; ending it");
            let Some(broker) = self.broker.get().cloned() else { continue };
            tokio::spawn(async move {
                let newer_than = std::time::UNIX_EPOCH + Duration::from_nanos(since);
                broker.take_over(&client_id, false, newer_than).await;
            });
        }
    }

    /// One attempt: true when this node is part of a cluster.
    async fn try_form(&self) -> Result<bool, String> {
        let me = self.id();
        let seeds: Vec<String> = self.config.join.iter().filter(|a| **a != self.config.advertise).cloned().collect();
        let am_seed = self.config.join.contains(&self.config.advertise);
        let mut known = BTreeMap::from([(me, self.config.advertise.clone())]);
        let mut initialized = Vec::new();
        for addr in &seeds {
            let Ok(mut c) = network::client(addr) else { continue };
            match c.hello(HelloRequest {}).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.node_id == me && !self.warned_self_seed.swap(true, Ordering::Relaxed) {
                        // Our own address under another spelling (or another node with our id): this node then
                        // never counts itself as that seed, and the seeds never all answer.
                        tracing::warn!(
                            seed = %addr, node_id = me, advertise = %self.config.advertise,
                            "a seed in the join list answers with this node's id, but this node advertises another \
                             address: the cluster cannot form until --cluster-advertise is written exactly as the join \
                             list names this node (or, if it is another node, the two ids differ)"
                        );
                    }
                    known.insert(r.node_id, r.cluster_addr.clone());
                    if r.initialized {
                        initialized.push(addr.clone());
                    }
                }
                Err(e) => {
                    // Not up yet, or (with peer TLS) our certificates do not match: say which.
                    tracing::debug!(seed = %addr, error = %e, source = ?std::error::Error::source(&e), "seed did not answer");
                    continue;
                }
            }
        }
        // An existing cluster: ask it to add us.
        if let Some(addr) = initialized.first() {
            let mut c = network::client(addr).map_err(|e| e.to_string())?;
            let reply = c
                .join(JoinRequest {
                    node_id: me,
                    cluster_addr: self.config.advertise.clone(),
                    mqtt_addr: self.config.mqtt_advertise.clone(),
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if reply.ok {
                return Ok(true);
            }
            return Err(reply.error);
        }
        // A new cluster: the seed with the lowest id initializes it, once every seed has answered, so that two
        // nodes starting together never both do.
        let all_answered = known.len() == self.config.join.len();
        if am_seed && all_answered && known.keys().next() == Some(&me) {
            let voters: BTreeMap<NodeId, BasicNode> = known
                .iter()
                .take(self.config.voters.max(1))
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            tracing::info!(node_id = me, voters = ?voters.keys().collect::<Vec<_>>(), "forming a new cluster");
            self.raft.initialize(voters).await.map_err(|e| e.to_string())?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Adds a node (as a voter while there are fewer than `voters`, else as a learner). Leader only.
    async fn add_node(&self, id: NodeId, addr: String) -> Result<(), String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_some() {
            return Ok(());
        }
        self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(|e| e.to_string())?;
        let voters = membership.voter_ids().count();
        if voters < self.config.voters {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Removes a node from the membership (a voter's place goes to a learner if there is one). Leader only.
    async fn remove_node(&self, id: NodeId) -> Result<(), String> {
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            let learner = membership.learner_ids().find(|l| *l != id);
            if let Some(l) = learner {
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([l])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| e.to_string())?;
        // Whatever it announced before it was removed goes too; announcements after are ignored by the state machine.
        self.raft.client_write(Command::Purge { node: id }).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `leave` was asked: this node is no member any more, or is on its way out.
    pub fn has_left(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Leaves the cluster cleanly: routes purged, membership without this node. The caller then shuts the node
    /// down, which closes its clients with a reason so they reconnect elsewhere.
    pub async fn leave(&self) -> Result<(), String> {
        self.leaving.store(true, Ordering::Release);
        self.propose(Command::Purge { node: self.id() }).await;
        let req =
            JoinRequest { node_id: self.id(), cluster_addr: self.config.advertise.clone(), mqtt_addr: String::new() };
        let addr = self.leader_addr().ok_or("no leader: the cluster has no quorum")?;
        let mut c = network::client(&addr).map_err(|e| e.to_string())?;
        let reply = c.leave(req).await.map_err(|e| e.to_string())?.into_inner();
        if reply.ok { Ok(()) } else { Err(reply.error) }
    }

    /// Removes another member that cannot leave by itself (it is gone for good): its place in the membership (a
    /// voter's passes to a learner, if there is one), its routes and its sessions in the registry. A voter removed
    /// this way no longer counts towards the quorum, so the others keep one when more nodes fail.
    pub async fn remove(&self, id: NodeId) -> Result<(), String> {
        if id == self.id() {
            return Err("this is the node itself: use leave".into());
        }
        if !self.is_member(id) {
            return Err(format!("node {id} is not a member"));
        }
        let req = JoinRequest { node_id: id, cluster_addr: String::new(), mqtt_addr: String::new() };
        let addr = self.leader_addr().ok_or("no leader: the cluster has no quorum")?;
        let mut c = network::client(&addr).map_err(|e| e.to_string())?;
        let reply = c.leave(req).await.map_err(|e| e.to_string())?.into_inner();
        if reply.ok { Ok(()) } else { Err(reply.error) }
    }

    /// A stopping leader hands its leadership to the voter that holds all of its log: that voter stands for election
    /// (`Elect`) and this node votes for it. Otherwise the others would elect a leader only an election timeout
    /// (1-2 s) after this node is gone, with no route changes or session registrations meanwhile, just when the
    /// clients closed here reconnect through them. Returns the new leader; `None` when this node is not the leader,
    /// or no voter took over within `limit` (the others then elect one once this node is gone, as after a crash).
    pub async fn hand_off_leadership(&self, limit: Duration) -> Option<NodeId> {
        let deadline = tokio::time::Instant::now() + limit;
        let me = self.id();
        if self.raft.metrics().borrow().current_leader != Some(me) {
            return None;
        }
        // A leader that stepped down would otherwise stand again, and could win against the successor it asked.
        self.raft.runtime_config().elect(false);
        // Raft's leader lease: a node gives no vote within an election timeout of the vote it last took part in (for
        // a leader, its own election), so that one node cannot unseat a leader the others still follow.
        let lease = Duration::from_millis(self.raft.config().election_timeout_max) + Duration::from_millis(10);
        let mut asked = None;
        while tokio::time::Instant::now() < deadline {
            let m = self.raft.metrics().borrow().clone();
            match m.current_leader {
                Some(leader) if leader == me => {}
                Some(leader) => {
                    tracing::info!(leader, "leadership handed on");
                    return Some(leader);
                }
                None if asked.is_none() => return None,
                // Between terms: the voter asked is being elected.
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
            if let Ok(Some(voted)) = self.raft.with_raft_state(|st| st.vote_last_modified()).await
                && voted + lease > tokio::time::Instant::now()
            {
                tokio::time::sleep_until((voted + lease).min(deadline)).await;
                continue;
            }
            let membership = m.membership_config.membership().clone();
            let matched = |id: &NodeId| m.replication.as_ref()?.get(id).cloned().flatten().map(|l| l.index);
            // A voter behind this node's log would be refused its vote: wait for one to catch up. The one asked
            // before is asked again (its campaign may have lost to a write), else the lowest id.
            let Some(successor) = membership
                .voter_ids()
                .filter(|id| *id != me && matched(id).is_some() && matched(id) >= m.last_log_index)
                .max_by_key(|id| (Some(*id) == asked, std::cmp::Reverse(*id)))
            else {
                if membership.voter_ids().all(|id| id == me) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let addr = membership.get_node(&successor).map(|n| n.addr.clone())?;
            let ask = async {
                let mut c = network::client(&addr).ok()?;
                c.elect(crate::proto::ElectRequest { from_node: me }).await.ok()
            };
            if tokio::time::timeout(Duration::from_millis(500), ask).await.ok().flatten().is_none() {
                tracing::debug!(successor, "could not ask a voter to take the leadership over");
            }
            asked = Some(successor);
            let wait = self.raft.wait(Some(Duration::from_millis(500)));
            let _ = wait.metrics(|m| m.current_leader != Some(me), "leadership handed on").await;
        }
        tracing::info!("leadership not handed on in time; the others elect a leader once this node is gone");
        None
    }

    /// A message another node relayed for one session (see `Broker::take_over_relaying`): held while that session is
    /// being taken over here, else queued for it; dropped, counted, if it is not here.
    /// True when it made a durable write (to flush before the batch is acknowledged).
    fn deliver_relayed(&self, broker: &Broker, u: handover::Unpacked) -> bool {
        {
            let mut inbox = lock(&self.relay_inbox);
            if let Some((_, held)) = u.target.as_ref().and_then(|t| inbox.get_mut(&*t.client_id)) {
                held.push(u);
                return false;
            }
        }
        // Not under the inbox's lock: the broker takes the session's lock, and a connect taking a session over here
        // holds that while it takes what is held (`take_held`). What comes after that goes behind it, in order.
        self.deliver_relayed_now(broker, u)
    }

    fn deliver_relayed_now(&self, broker: &Broker, u: handover::Unpacked) -> bool {
        let Some((client_id, out)) = relayed_outgoing(u) else { return false };
        let out = match broker.deliver_relayed(&client_id, out) {
            Ok(durable) => return durable,
            Err(out) => out,
        };
        // The session moved on from here before this reached it (back to where it came from, say): it goes after
        // the session while this node still relays for it, by the latest relay (the session went there last from
        // here: following those never leads back).
        let onward = lock(&self.relays).iter().rev().find(|r| *r.client_id == *client_id).map(|r| r.to);
        match onward {
            Some(node) => {
                tracing::debug!(%client_id, to = node, "a message relayed for a session that moved on; relayed after it");
                skein_broker::Cluster::relay(self, node, &client_id, &out);
            }
            None => {
                self.forward_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client_id, "a message relayed for a session that is not here; dropped");
            }
        }
        false
    }

    /// Notes when the new node's routes for every plain filter of `r` are in this node's route table.
    fn settle(&self, r: &mut Relay) {
        if r.settled.is_some() {
            return;
        }
        let applied = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
        if r.filters.iter().all(|f| applied.state.routes.get(f).is_some_and(|n| n.contains(&r.to))) {
            r.settled = Some(tokio::time::Instant::now());
        }
    }

    /// A session is about to be asked for: what its old node relays for it before it is attached here waits for it
    /// (see `session_attached`).
    fn await_relays(&self, client_id: &str) {
        let now = tokio::time::Instant::now();
        lock(&self.relay_inbox).entry(client_id.to_string()).or_insert_with(|| (now, Vec::new()));
    }

    /// Resolves once everything queued for `node`'s forward stream so far has been delivered there: true then,
    /// false if `node` cannot be reached or that takes longer than `limit`.
    async fn flush_to(&self, node: NodeId, limit: Duration) -> bool {
        let mut delivered = skein_broker::cluster::Acceptance::default();
        let barrier = Outbound {
            message: Arc::new(Message::system("", "", false)),
            groups: Vec::new(),
            retain_seq: 0,
            groups_only: true,
            accepted: Some(delivered.owe()),
            target: None,
            planned_at: 0,
            barrier: true,
        };
        if !self.send_to(node, barrier) {
            return false;
        }
        tokio::time::timeout(limit, delivered.wait()).await.unwrap_or(false)
    }

    /// Asks every other member to flush its forward stream to this node (see `Flush`), all at once, each for at most
    /// `FLUSH_WAIT`: a session that moved here is taken only once the copies of its messages that other nodes sent
    /// here before the move have arrived (and gone to the other subscribers they were for).
    async fn flush_peers(&self) {
        let me = self.id();
        let flushes: Vec<_> = self
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| {
                tokio::spawn(async move {
                    let asked = async {
                        let mut c = network::client(&addr).ok()?;
                        c.flush(crate::proto::FlushRequest { from_node: me }).await.ok().map(|r| r.into_inner().flushed)
                    };
                    let flushed = tokio::time::timeout(FLUSH_WAIT, asked).await.ok().flatten();
                    if flushed != Some(true) {
                        tracing::debug!(
                            node = id,
                            "forward stream to here not flushed before a moved session was taken"
                        );
                    }
                })
            })
            .collect();
        for f in flushes {
            let _ = f.await;
        }
    }

    /// `session`, handed over to this node, once the other members have flushed their forward streams to it (see
    /// `flush_peers`), if copies could be on their way here for it: only while a subscription here overlaps one of
    /// its filters does this node's route bring the messages the session had on the old node here too.
    async fn flushed_for(
        &self,
        session: Option<skein_broker::session::SessionExport>,
    ) -> Option<skein_broker::session::SessionExport> {
        let routed_here = |s: &skein_broker::session::SessionExport| {
            self.broker.get().is_none_or(|b| b.subscribed_overlapping(s.subscriptions.iter().map(|(f, _)| &**f)))
        };
        if session.as_ref().is_some_and(routed_here) {
            self.flush_peers().await;
        }
        session
    }

    /// Sessions that moved from here and still relay, or are being handed over now (a stopping node waits for
    /// them, see `main.rs`'s `drain`).
    pub fn relaying(&self) -> usize {
        lock(&self.relays).len() + self.handing_over.load(Ordering::Acquire)
    }

    /// Messages sent to other nodes and not yet acknowledged by them.
    pub fn forward_pending(&self) -> u64 {
        self.forward_pending.load(Ordering::Relaxed)
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some()
    }

    /// Every 100 ms: ends the relays whose new node's routes are in place (see `Relay`), and lets go of relayed
    /// messages held for a take-over that never attached.
    async fn watch_relays(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            lock(&self.relay_inbox).retain(|_, (since, _)| now.duration_since(*since) < RELAY_INBOX_LIMIT);
            let ended: Vec<Relay> = {
                let mut relays = lock(&self.relays);
                if relays.is_empty() {
                    continue;
                }
                for r in relays.iter_mut() {
                    self.settle(r);
                }
                let limit = self.config.node_timeout;
                let (ended, kept) = std::mem::take(&mut *relays).into_iter().partition(|r| {
                    r.settled.is_some_and(|at| now.duration_since(at) >= RELAY_SETTLE)
                        || now.duration_since(r.since) >= limit
                });
                *relays = kept;
                ended
            };
            let Some(broker) = self.broker.get() else { continue };
            for r in ended {
                tracing::debug!(client_id = %r.client_id, to = r.to, "the moved session's routes are in place; relay ended");
                broker.end_relay(r.handle);
            }
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id())
    }

    /// Passes a membership request (join, leave) on to the leader and returns its answer.
    async fn via_leader(
        &self,
        req: JoinRequest,
        rpc: impl AsyncFnOnce(
            &mut crate::proto::cluster_client::ClusterClient<tonic::transport::Channel>,
            JoinRequest,
        ) -> Result<Response<JoinReply>, Status>,
    ) -> JoinReply {
        let Some(addr) = self.leader_addr() else { return join_reply(Err("no leader yet".into())) };
        match network::client(&addr) {
            Ok(mut c) => match rpc(&mut c, req).await {
                Ok(r) => r.into_inner(),
                Err(e) => join_reply(Err(e.to_string())),
            },
            Err(e) => join_reply(Err(e.to_string())),
        }
    }

    fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Writes `command` through the leader, retrying while there is none. Route changes wait for quorum; local
    /// delivery never does.
    async fn propose(&self, command: Command) {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.raft.client_write(command.clone()).await {
                Ok(_) => return,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    if let Some(addr) = self.leader_addr()
                        && let Ok(mut c) = network::client(&addr)
                        && let Ok(msg) = to_message(&command)
                        && let Ok(reply) = c.propose(msg).await
                        && serde_json::from_slice::<Result<(), String>>(&reply.into_inner().json)
                            .is_ok_and(|r| r.is_ok())
                    {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "proposal failed; retrying"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Batches the broker's route changes into one proposal at a time.
    async fn propose_routes(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<RouteChange>) {
        // Each batch's wait for the other members runs beside the next proposals; they settle in order.
        let mut previous: Option<oneshot::Receiver<()>> = None;
        while let Some(first) = rx.recv().await {
            // Collect what else is waiting: a subscribe storm becomes a few proposals, not one per filter.
            let mut changes = vec![first];
            // A moment only: a SUBACK waits for this batch (see `Cluster::routes_settled`), and under a storm the
            // changes gather anyway while the previous proposal is on its way.
            tokio::time::sleep(Duration::from_millis(1)).await;
            while let Ok(c) = rx.try_recv() {
                changes.push(c);
            }
            let n = changes.len();
            let mut last: BTreeMap<String, bool> = BTreeMap::new();
            let mut newest = 0;
            for c in changes {
                let (f, added, seq) = match c {
                    RouteChange::Added(f, seq) => (f, true, seq),
                    RouteChange::Removed(f, seq) => (f, false, seq),
                };
                last.insert(f, added);
                newest = newest.max(seq);
            }
            let added: Vec<String> = last.iter().filter(|(_, a)| **a).map(|(f, _)| f.clone()).collect();
            let removed: Vec<String> = last.iter().filter(|(_, a)| !**a).map(|(f, _)| f.clone()).collect();
            let proposed = !self.leaving.load(Ordering::Acquire);
            let since = tokio::time::Instant::now();
            if proposed {
                self.propose(Command::Routes { node: self.id(), added: added.clone(), removed: removed.clone() }).await;
            }
            self.pending_routes.fetch_sub(n, Ordering::AcqRel);
            let (done, next) = oneshot::channel();
            let before = previous.replace(next);
            let me = self.clone();
            tokio::spawn(async move {
                if proposed && !added.is_empty() {
                    me.routes_everywhere(&added, &removed, since + ROUTES_WAIT).await;
                }
                if let Some(before) = before {
                    let _ = before.await;
                }
                me.routes_settled.send_if_modified(|s| {
                    let moved = newest > *s;
                    *s = (*s).max(newest);
                    moved
                });
                let _ = done.send(());
            });
        }
    }

    /// After this node's route changes were committed: waits, until `deadline` at most, for this node to have
    /// applied them and then for every other member to have applied the log that far, so that a publish on any of
    /// them finds the new routes. A member that does not answer, or is still catching up (it serves no client
    /// yet), is not waited for.
    async fn routes_everywhere(&self, added: &[String], removed: &[String], deadline: tokio::time::Instant) {
        let me = self.id();
        let applied_here = || {
            let sm = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
            let routes = &sm.state.routes;
            added.iter().all(|f| routes.get(f).is_some_and(|n| n.contains(&me)))
                && removed.iter().all(|f| !routes.get(f).is_some_and(|n| n.contains(&me)))
        };
        while !applied_here() {
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(target) = self.raft.metrics().borrow().last_applied.map(|l| l.index) else { return };
        let others: Vec<String> = self.members().into_iter().filter(|(id, _)| *id != me).map(|(_, a)| a).collect();
        // One after the other: the time spent on the first is time the others had too.
        for addr in others {
            let Ok(mut c) = network::client(&addr) else { continue };
            loop {
                let asked = tokio::time::timeout_at(deadline, c.hello(HelloRequest {})).await;
                match asked {
                    Ok(Ok(r)) if r.get_ref().applied_index.is_some_and(|a| a < target) => {}
                    // Applied that far, not ready (catching up), unreachable, or out of time.
                    _ => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    /// Proposes the retained messages published here, in the order they came, as one batch per round trip.
    async fn propose_retained(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<RetainChange>) {
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(c) => c,
                None => match rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            // About a megabyte at most to a batch: each is one log entry, replicated in one call.
            let mut bytes = first.message.as_ref().map_or(0, Vec::len);
            let mut batch = vec![first];
            while bytes < RETAIN_BATCH_BYTES
                && let Ok(c) = rx.try_recv()
            {
                bytes += c.message.as_ref().map_or(0, Vec::len);
                batch.push(c);
            }
            if bytes > RETAIN_BATCH_BYTES && batch.len() > 1 {
                next = batch.pop();
            }
            let (changes, done): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|c| ((c.seq, c.topic, c.message), c.done)).unzip();
            self.propose(Command::Retain { node: self.id(), changes }).await;
            for d in done {
                let _ = d.send(());
            }
        }
    }

    /// Proposes the client registry's changes from this node, in order, as one batch per round trip.
    async fn propose_clients(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<ClientChange>) {
        while let Some(first) = rx.recv().await {
            let (mut claimed, mut released) = (Vec::new(), Vec::new());
            let mut next = Some(first);
            while let Some(change) = next.take().or_else(|| rx.try_recv().ok()) {
                match change {
                    ClientChange::Claimed(c, since) => claimed.push((c, since)),
                    // A release names the claim it drops: its place among the claims does not matter.
                    ClientChange::Released(c, since) => released.push((c, since)),
                }
                if claimed.len() + released.len() >= 4096 {
                    break;
                }
            }
            if !self.leaving.load(Ordering::Acquire) {
                self.propose(Command::Clients { node: self.id(), claimed, released }).await;
            }
        }
    }

    /// Where the registry says `client_id`'s persistent session is.
    pub fn client(&self, client_id: &str) -> Option<Claim> {
        self.sm.inner.read().unwrap_or_else(|e| e.into_inner()).state.clients.get(client_id).copied()
    }

    /// The route index as of `version` of the route table (or later), rebuilt only when the table has moved on.
    fn route_index(&self, version: u64) -> Arc<RouteIndex> {
        {
            let cached = self.index.read().unwrap_or_else(|e| e.into_inner());
            if cached.0 == version {
                return cached.1.clone();
            }
        }
        let index = Arc::new(self.sm.inner.read().unwrap_or_else(|e| e.into_inner()).state.index());
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = (version, index.clone());
        index
    }

    /// Where a message goes: nodes with matching routes, and one node per matching shared group.
    ///
    /// Every runtime thread keeps its own handle on the current route index, so the forwarding path takes no lock
    /// and writes no shared counter per message (two threads taking one lock for every message cost a tenth of a
    /// busy node); only an atomic read tells when the table has changed. Each thread also remembers the plain
    /// routes of the last topic it planned: a client's read usually holds a run of messages to one topic (a device
    /// sending its readings), and those are matched against the table once.
    fn plan(&self, message: &Message) -> crate::state::Plan {
        struct Cached {
            instance: u64,
            version: u64,
            index: Arc<RouteIndex>,
            /// The last topic planned with `index`, and its plain routes.
            last: Option<(String, crate::state::PlainNodes)>,
        }
        thread_local! {
            static CACHED: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
        }
        let me = self.id();
        let unreachable =
            |n: NodeId| self.forward_down_count.load(Ordering::Relaxed) != 0 && lock(&self.forward_down).contains(&n);
        let version = self.sm.routes_version.load(Ordering::Acquire);
        let topic: &str = &message.topic;
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if !cached.as_ref().is_some_and(|c| c.instance == self.instance && c.version == version) {
                *cached = None;
            }
            let c = cached.get_or_insert_with(|| Cached {
                instance: self.instance,
                version,
                index: self.route_index(version),
                last: None,
            });
            match &mut c.last {
                Some((last, plain)) if last == topic => {
                    c.index.plan_with(plain, topic, me, &self.shared_turn, &unreachable)
                }
                last => {
                    let plain = c.index.plain_nodes(topic, me);
                    let plan = c.index.plan_with(&plain, topic, me, &self.shared_turn, &unreachable);
                    // The topic's string is kept across topics: no allocation per change of topic.
                    let (t, p) = last.get_or_insert_with(Default::default);
                    t.clear();
                    t.push_str(topic);
                    *p = plain;
                    plan
                }
            }
        })
    }

    /// Members and their cluster addresses, as this node's Raft knows them (the log's latest membership, which a
    /// follower knows before it has applied it).
    fn members(&self) -> Vec<(NodeId, String)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().nodes().map(|(id, n)| (*id, n.addr.clone())).collect()
    }

    fn member_addr(&self, node: NodeId) -> Option<String> {
        self.members().into_iter().find(|(id, _)| *id == node).map(|(_, a)| a)
    }

    /// Records whether `node`'s forward stream can be opened (see `forward_down`).
    fn set_reachable(&self, node: NodeId, reachable: bool) {
        let mut down = lock(&self.forward_down);
        let changed = if reachable { down.remove(&node) } else { down.insert(node) };
        if changed {
            self.forward_down_count.store(down.len(), Ordering::Relaxed);
            if reachable {
                tracing::info!(node, "forward stream to a node open again");
            } else {
                tracing::warn!(
                    node,
                    "cannot open the forward stream to a node; shared groups it serves go to their other members meanwhile"
                );
            }
        }
    }

    /// Queues `out` for `node`'s forward stream, starting the stream first if there is none; false if `node` is no
    /// member. Sent under the lock rather than with a clone of the sender: a clone and its drop are four more
    /// atomic writes to one shared cache line for every message.
    fn send_to(&self, node: NodeId, out: Outbound) -> bool {
        let mut f = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        self.send_locked(&mut f, node, vec![out])
    }

    /// `send_to` for several messages, with the forwarders already locked.
    fn send_locked(
        &self,
        f: &mut HashMap<NodeId, mpsc::UnboundedSender<Vec<Outbound>>>,
        node: NodeId,
        items: Vec<Outbound>,
    ) -> bool {
        let items = match f.get(&node) {
            Some(tx) => match tx.send(items) {
                Ok(()) => return true,
                // The stream's task has ended (its node left); a new one starts if the node is a member again.
                Err(mpsc::error::SendError(items)) => items,
            },
            None => items,
        };
        let Some(addr) = self.member_addr(node) else { return false };
        let Some(me) = self.this.upgrade() else { return false };
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = tx.send(items).is_ok();
        f.insert(node, tx);
        tokio::spawn(forward_loop(me, node, addr, rx));
        sent
    }

    /// `send_to` for a message of a read being handled (see `Cluster::begin_batch`): kept with the read's others
    /// and sent with them at its end.
    fn queue_to(&self, node: NodeId, out: Outbound) {
        let me = self as *const ClusterNode as usize;
        let out = BATCH.with(|b| match &mut *b.borrow_mut() {
            Some(batch) if batch.owner == me => {
                match batch.nodes.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, items)) => items.push(out),
                    None => batch.nodes.push((node, vec![out])),
                }
                None
            }
            _ => Some(out),
        });
        if let Some(out) = out
            && !self.send_to(node, out)
        {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node, "no way to forward to node");
        }
    }

    /// Sends what `queue_to` kept, each node's messages in the order they were queued: one lock, and one queue
    /// operation per node.
    fn send_batch(&self, nodes: Vec<(NodeId, Vec<Outbound>)>) {
        if nodes.is_empty() {
            return;
        }
        let mut f = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        for (node, items) in nodes {
            let count = items.len() as u64;
            if !self.send_locked(&mut f, node, items) {
                self.forward_failures.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(node, messages = count, "no way to forward to node");
            }
        }
    }

    fn releaser(&self, addr: &str) -> mpsc::UnboundedSender<TakeoverRequest> {
        let mut r = self.releasers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = r.get(addr)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        r.insert(addr.to_string(), tx.clone());
        tokio::spawn(release_loop(addr.to_string(), self.config.node_timeout, rx));
        tx
    }

    /// A JSON view of this node's cluster state, for `GET /cluster` and `skein cluster status`.
    pub fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let members: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| {
                serde_json::json!({
                    "id": id,
                    "cluster_addr": n.addr,
                    "mqtt_addr": a.state.members.get(id).map(|x| x.mqtt_addr.clone()),
                    "role": if Some(*id) == m.current_leader { "leader" } else if voters.contains(id) { "voter" } else { "learner" },
                })
            })
            .collect();
        serde_json::json!({
            "node_id": m.id,
            "state": format!("{:?}", m.state),
            "leader": m.current_leader,
            // This node leads, but a majority of the voters has not answered it lately: it reports no leader.
            "quorum_lost": m.current_leader == Some(m.id) && self.quorum_lost.load(Ordering::Acquire),
            "term": m.current_term,
            "applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            "purged_index": m.purged.map(|l| l.index),
            "members": members,
            "retained": a.state.retained.len(),
            "routes": a.state.routes.len(),
            // The members, and any node the route table still names (one purged later, say); not every node that
            // ever joined.
            "routes_per_node": m.membership_config.membership().nodes().map(|(id, _)| id)
                .chain(a.state.routes.values().flatten()).collect::<BTreeSet<_>>().into_iter()
                .map(|id| (id.to_string(), a.state.routes.values().filter(|n| n.contains(id)).count()))
                .collect::<BTreeMap<_, _>>(),
            "sessions": a.state.clients.len(),
            "sessions_per_node": a.state.clients.values().fold(BTreeMap::<String, usize>::new(), |mut per, c| {
                *per.entry(c.node.to_string()).or_default() += 1;
                per
            }),
            "forwarded": self.forwarded.load(Ordering::Relaxed),
            "forward_batches": self.forward_batches.load(Ordering::Relaxed),
            "forward_pending": self.forward_pending.load(Ordering::Relaxed),
            "forward_failures": self.forward_failures.load(Ordering::Relaxed),
            // Nodes this one has messages for and cannot open its forward stream to now.
            "unreachable": lock(&self.forward_down).iter().copied().collect::<Vec<_>>(),
            "takeovers_answered": self.takeovers_answered.load(Ordering::Relaxed),
        })
    }

    /// What `/metrics` exports of the cluster, as this node sees it.
    pub fn figures(&self) -> Figures {
        let (node_id, leader, term, applied_index, members, voters) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            (
                m.id,
                self.leader_with_quorum(m.current_leader),
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
                membership.nodes().count(),
                membership.voter_ids().count(),
            )
        };
        let (routes, registered_sessions) = {
            let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
            (a.state.routes.len(), a.state.clients.len())
        };
        Figures {
            node_id,
            members,
            voters,
            leader,
            term,
            applied_index,
            routes,
            registered_sessions,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forward_batches: self.forward_batches.load(Ordering::Relaxed),
            forward_failures: self.forward_failures.load(Ordering::Relaxed),
            forward_pending: self.forward_pending.load(Ordering::Relaxed),
            takeovers_answered: self.takeovers_answered.load(Ordering::Relaxed),
            relaying: self.relaying(),
            relayed: self.relayed.load(Ordering::Relaxed),
        }
    }

    /// Joined, with a known leader, and (once, after starting) caught up: everything it had before a restart is
    /// applied again, and so is everything the leader had applied when this node first asked, so retained messages
    /// and routes are all there when clients arrive.
    pub fn ready(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let joined = self.leader_with_quorum(m.current_leader).is_some()
            && m.membership_config.membership().get_node(&m.id).is_some();
        let target = self.catch_up_to.load(Ordering::Acquire);
        if joined && !self.caught_up.load(Ordering::Acquire) && target != u64::MAX {
            let applied = m.last_applied.map(|l| l.index);
            if applied >= m.last_log_index && applied >= Some(target) {
                self.caught_up.store(true, Ordering::Release);
            }
        }
        joined && self.caught_up.load(Ordering::Acquire)
    }

    /// Asks the leader, once, how far it has applied the log (see `catch_up_to`); retries until a leader answers.
    async fn learn_catch_up(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        loop {
            let _ = metrics.wait_for(|m| m.current_leader.is_some()).await;
            if self.is_leader() {
                // A leader has every committed entry in its own log: its own end is the target.
                self.catch_up_to.store(0, Ordering::Release);
                return;
            }
            if let Some(addr) = self.leader_addr() {
                let ask = async {
                    let mut c = network::client(&addr).ok()?;
                    c.hello(HelloRequest {}).await.ok().map(|r| r.into_inner())
                };
                if let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(1), ask).await
                    && let Some(applied) = reply.applied_index
                    && Some(reply.node_id) == self.raft.metrics().borrow().current_leader
                {
                    self.catch_up_to.store(applied, Ordering::Release);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl skein_broker::Cluster for ClusterNode {
    fn begin_batch(&self) {
        let me = self as *const ClusterNode as usize;
        let left = BATCH.with(|b| b.borrow_mut().replace(ReadBatch { owner: me, nodes: Vec::new() }));
        collect_relays();
        // A batch never ended (a read handled by a panic): what it kept goes now, if it is this node's.
        if let Some(left) = left.filter(|l| l.owner == me) {
            self.send_batch(left.nodes);
        }
    }

    fn end_batch(&self, acceptance: &mut skein_broker::cluster::Acceptance) {
        let me = self as *const ClusterNode as usize;
        if let Some(batch) = BATCH.with(|b| b.borrow_mut().take_if(|b| b.owner == me)) {
            self.send_batch(batch.nodes);
        }
        // What this read relayed is owed to its acknowledgements as one acceptance, settled once the new nodes
        // have all of it (rare: only while a session that moved away still relays).
        let relayed = relays_owed();
        if !relayed.is_empty() {
            let owed = acceptance.owe();
            tokio::spawn(async move {
                if relayed.wait().await {
                    owed.accept();
                }
            });
        }
    }

    fn replicates_retained(&self) -> bool {
        true
    }

    fn retained_max_size(&self) -> usize {
        self.config.retain_max_size
    }

    fn forward_to_group(&self, message: &Arc<Message>, group: &str) -> bool {
        let me = self.id();
        let nodes: Vec<NodeId> = {
            let a = self.sm.inner.read().unwrap_or_else(|e| e.into_inner());
            a.state.routes.get(group).map(|n| n.iter().copied().filter(|n| *n != me).collect()).unwrap_or_default()
        };
        if nodes.is_empty() {
            return false;
        }
        let node = nodes[self.shared_turn.fetch_add(1, Ordering::Relaxed) % nodes.len()];
        let groups = vec![group.to_string()];
        let out = Outbound {
            message: message.clone(),
            groups,
            retain_seq: 0,
            groups_only: true,
            accepted: None,
            target: None,
            planned_at: self.sm.routes_index.load(Ordering::Acquire),
            barrier: false,
        };
        self.send_to(node, out)
    }

    fn route_added(&self, filter: &str) {
        self.pending_routes.fetch_add(1, Ordering::AcqRel);
        let seq = self.routes_sent.fetch_add(1, Ordering::AcqRel) + 1;
        if self.routes.send(RouteChange::Added(filter.to_string(), seq)).is_err() {
            self.pending_routes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn route_removed(&self, filter: &str) {
        self.pending_routes.fetch_add(1, Ordering::AcqRel);
        let seq = self.routes_sent.fetch_add(1, Ordering::AcqRel) + 1;
        if self.routes.send(RouteChange::Removed(filter.to_string(), seq)).is_err() {
            self.pending_routes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn routes_settled(&self) -> Option<skein_broker::cluster::Accepted> {
        let sent = self.routes_sent.load(Ordering::Acquire);
        if *self.routes_settled.borrow() >= sent {
            return None;
        }
        let mut settled = self.routes_settled.subscribe();
        Some(Box::pin(async move {
            let settled = settled.wait_for(|s| *s >= sent);
            // Without quorum the change waits for the log; the SUBACK does not wait with it.
            matches!(tokio::time::timeout(ROUTES_WAIT + ROUTES_WAIT, settled).await, Ok(Ok(_)))
        }))
    }

    fn relay(&self, node: u64, client_id: &skein_codec::ByteString, out: &skein_broker::session::Outgoing) {
        // Everything the relay matches goes on, whatever the route table says: a publishing node may have sent the
        // new node a copy too, or not (its route there predates the move, for another subscriber, and the copy came
        // before the session), and the new node takes each message id once (`Cluster::moved_window`).
        let target = handover::Target {
            client_id: client_id.clone(),
            qos: out.qos,
            retain: out.retain,
            subscription_ids: out.subscription_ids.clone(),
        };
        let accepted = match out.qos {
            skein_codec::QoS::AtMostOnce => None,
            _ => RELAY_OWED.with(|r| r.borrow_mut().as_mut().map(skein_broker::cluster::Acceptance::owe)),
        };
        let relayed = Outbound {
            message: out.message.clone(),
            // A relayed record's groups name the shared group that gave the session the message (see
            // `relayed_outgoing`), not groups for the receiving node to serve.
            groups: out.group.iter().map(|g| g.to_string()).collect(),
            retain_seq: 0,
            groups_only: false,
            accepted,
            target: Some(Box::new(target)),
            planned_at: self.sm.routes_index.load(Ordering::Acquire),
            barrier: false,
        };
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        self.relayed.fetch_add(1, Ordering::Relaxed);
        if !self.send_to(node, relayed) {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn message_id(&self) -> skein_broker::message::MessageId {
        skein_broker::message::MessageId::next(self.id())
    }

    fn moved_window(&self) -> Duration {
        // A relay lasts at most the node timeout; what it and the publishing nodes sent may be resent after a
        // reconnect within as long again.
        self.config.node_timeout * 2
    }

    fn take_held(&self, client_id: &str) -> Vec<skein_broker::session::Outgoing> {
        let held = lock(&self.relay_inbox).remove(client_id).map(|(_, held)| held).unwrap_or_default();
        held.into_iter().filter_map(|u| relayed_outgoing(u).map(|(_, out)| out)).collect()
    }

    fn session_attached(&self, client_id: &str) {
        // Held for a take-over that brought no session (`take_held` took them otherwise): for nobody, or for a
        // session that has no subscription of them.
        let Some((_, held)) = lock(&self.relay_inbox).remove(client_id) else { return };
        let Some(broker) = self.broker.get() else { return };
        for u in held {
            self.deliver_relayed_now(broker, u);
        }
    }

    fn take_over(
        &self,
        client_id: &str,
        want_session: bool,
        persistent: bool,
        connected_at: std::time::SystemTime,
    ) -> Option<skein_broker::cluster::TakenOver> {
        let since = connected_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        // Only persistent sessions are the registry's: a clean connect has nothing to settle.
        if persistent {
            let mut recent = lock(&self.recent);
            let now = tokio::time::Instant::now();
            // Pruned here too, as it doubles, for when `reconcile_clients` does not run (no leader).
            if recent.len() >= 4096 && recent.len().is_power_of_two() {
                recent.retain(|_, at| now.duration_since(*at) < SETTLING);
            }
            recent.insert(client_id.to_string(), now);
        }
        let me = self.id();
        let peers: Vec<(NodeId, String)> = self.members().into_iter().filter(|(id, _)| *id != me).collect();
        // A resumed persistent session waits for its claim (the waiter is in place before the claim can apply): the
        // registry then names who held the session.
        let claim = (persistent && want_session && !peers.is_empty()).then(|| {
            let (tx, rx) = oneshot::channel();
            lock(&self.claim_waiters).insert((client_id.to_string(), since), tx);
            rx
        });
        if persistent {
            let _ = self.clients.send(ClientChange::Claimed(client_id.to_string(), since));
        }
        if peers.is_empty() {
            return None;
        }
        if !want_session {
            // A new session has nothing to bring over: the other nodes close their connections of the id, told in
            // batches, and nobody waits for it.
            for (_, addr) in &peers {
                let _ = self.releaser(addr).send(request(client_id, false, since, me));
            }
            return None;
        }
        let me_node = self.this.upgrade()?;
        let Some(claim) = claim else {
            // Wants an old session but keeps none itself (MQTT 5.0, no expiry): it is not in the registry, so
            // every peer is asked.
            self.await_relays(client_id);
            let asked = ask_all(peers.into_iter().map(|(_, a)| a).collect(), request(client_id, true, since, me));
            return Some(Box::pin(async move { me_node.flushed_for(asked.await).await }));
        };
        let client_id = client_id.to_string();
        // Asks the node that held the session, and tells the others to close any connection of the id.
        Some(Box::pin(async move {
            let claimed = match tokio::time::timeout(CLAIM_WAIT, claim).await {
                Ok(Ok(c)) => c,
                _ => {
                    // No quorum in time: the claim stays queued for the log, and the peers are asked as they are.
                    lock(&me_node.claim_waiters).remove(&(client_id.clone(), since));
                    tracing::debug!(%client_id, "claim not applied in time; asking every peer for the session");
                    me_node.await_relays(&client_id);
                    let asked =
                        ask_all(peers.into_iter().map(|(_, a)| a).collect(), request(&client_id, true, since, me));
                    return me_node.flushed_for(asked.await).await;
                }
            };
            let owner = claimed.previous.filter(|p| claimed.won && p.node != me).map(|p| p.node);
            let owner_addr = owner.and_then(|o| peers.iter().find(|(id, _)| *id == o).map(|(_, a)| a.clone()));
            for (_, addr) in peers.iter().filter(|(_, a)| Some(a) != owner_addr.as_ref()) {
                let _ = me_node.releaser(addr).send(request(&client_id, false, since, me));
            }
            match owner_addr {
                Some(addr) => {
                    me_node.await_relays(&client_id);
                    me_node.flushed_for(ask(addr, request(&client_id, true, since, me)).await).await
                }
                // Nobody else held it (or a later connect of the id claimed it first: this one is the older and
                // starts afresh; `reconcile_clients` ends it if it is still here).
                None => None,
            }
        }))
    }

    fn forward(
        &self,
        message: &Arc<Message>,
        retain: bool,
        acceptance: &mut skein_broker::cluster::Acceptance,
    ) -> skein_broker::cluster::Forwarded {
        // Read before planning: the plan is of this table or a later one (see `StateMachine::routes_index`).
        let planned_at = self.sm.routes_index.load(Ordering::Acquire);
        let mut plan = self.plan(message);
        // QoS 0 is sent on without anyone waiting for it: no acknowledgement depends on it.
        let wait = message.qos != skein_codec::QoS::AtMostOnce;
        let mut committed = None;
        let mut retain_seq = 0;
        // Members that get a retained change without a subscriber of it: nobody waits for them.
        let routed = plan.nodes.len();
        if retain {
            // A retained change goes into the log, and to every member at once so that each holds it at once (a
            // subscriber right after the acknowledgement finds it, while the log may still be on its way); the log
            // settles the order (see `StateMachine::unless_applied`). A member that is down only misses the copy.
            retain_seq = self.retain_seq.fetch_add(1, Ordering::Relaxed);
            let (done, rx) = oneshot::channel();
            let change = RetainChange {
                seq: retain_seq,
                topic: message.topic.to_string(),
                message: (!message.payload.is_empty()).then(|| message.encode_stored(&[]).to_vec()),
                done,
            };
            if self.retains.send(change).is_ok() && wait {
                committed = Some(rx);
            }
            let me = self.id();
            for (id, _) in self.members() {
                if id != me && !plan.nodes.iter().any(|(n, _)| *n == id) {
                    plan.nodes.push((id, Vec::new()));
                }
            }
        }
        let mut forwarded = skein_broker::cluster::Forwarded {
            elsewhere: !plan.nodes.is_empty(),
            groups_here: plan.groups_here.iter().map(|g| g.as_str().into()).collect(),
            ..Default::default()
        };
        if plan.nodes.is_empty() && committed.is_none() {
            return forwarded;
        }
        // Members that only get a retained change's copy: waited for briefly (see `RETAIN_COPY_WAIT`), and only
        // while their stream is open.
        let mut copies = skein_broker::cluster::Acceptance::default();
        for (i, (node, groups)) in plan.nodes.into_iter().enumerate() {
            let accepted = if !wait {
                None
            } else if i < routed {
                Some(acceptance.owe())
            } else if lock(&self.forward_up).contains(&node) {
                Some(copies.owe())
            } else {
                None
            };
            let out = Outbound {
                message: message.clone(),
                groups,
                retain_seq,
                // A member with no subscriber of it gets only the retained change to hold: for no subscriber and no
                // group there. A copy for a member that was down waits in its stream until it returns, and must
                // not then reach a client that subscribed after it, as if it were new (nor one older than the
                // retained message it holds by then).
                groups_only: i >= routed,
                accepted,
                target: None,
                planned_at,
                barrier: false,
            };
            self.queue_to(node, out);
        }
        forwarded.groups_elsewhere = plan.groups_elsewhere.into_iter().map(Into::into).collect();
        if !wait || (copies.is_empty() && committed.is_none()) {
            return forwarded;
        }
        let limit = self.config.node_timeout;
        let topic = message.topic.clone();
        forwarded.accepted = Some(Box::pin(async move {
            // A subscriber that comes to another member after the acknowledgement finds the message there as
            // retained; a member that is down or slow holds the acknowledgement up for a moment only (the log
            // brings it the change later), and is no failure of this publish.
            let _ = tokio::time::timeout(RETAIN_COPY_WAIT, copies.wait()).await;
            // Without quorum the change waits, in order, for one; the publisher's acknowledgement does not.
            if let Some(c) = committed
                && !matches!(tokio::time::timeout(limit, c).await, Ok(Ok(())))
            {
                tracing::warn!(%topic, "retained message not committed in time; it stays queued for the log");
                return false;
            }
            true
        }) as Accepted);
        forwarded
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn request(client_id: &str, want_session: bool, connected_at_ns: u64, from_node: NodeId) -> TakeoverRequest {
    TakeoverRequest { client_id: client_id.to_string(), want_session, connected_at_ns, from_node }
}

/// How long a member fails the leader's probes before it is reported as not answering: one missed probe on a busy
/// machine is no outage.
const SILENT_AFTER: Duration = Duration::from_secs(1);

/// Bytes of retained messages after which a batch of retained changes takes no more (see `propose_retained`).
const RETAIN_BATCH_BYTES: usize = 1 << 20;

/// How long a QoS 1/2 retained publish waits for members without a subscriber of it to hold their copy.
const RETAIN_COPY_WAIT: Duration = Duration::from_secs(1);

/// How long a connect waits for a node to hand a session over. A node that is down refuses the call at once; one
/// that does not answer in this time is cut off or stuck, and its copy of the session is lost to the new connection
/// (it ends there once the registry has given the session away, see `reconcile_clients`). Long enough for a live
/// node on a busy machine, short of a client's connect timeout.
const ASK_LIMIT: Duration = Duration::from_secs(5);

/// Asks the node at `addr` to close its connection of a client id and hand its session over.
async fn ask(addr: String, req: TakeoverRequest) -> Option<skein_broker::session::SessionExport> {
    let mut c = network::client(&addr).ok()?;
    let reply = match tokio::time::timeout(ASK_LIMIT, c.takeover(req)).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "a peer did not hand a session over");
            return None;
        }
        Err(_) => {
            tracing::warn!(%addr, "a peer did not answer a session take-over in time; the client starts afresh");
            return None;
        }
    };
    handover::from_reply(reply.into_inner())
}

/// Asks every node in `addrs` at once (see `ask`); the session of whichever held it.
async fn ask_all(addrs: Vec<String>, req: TakeoverRequest) -> Option<skein_broker::session::SessionExport> {
    let asks: Vec<_> = addrs.into_iter().map(|addr| tokio::spawn(ask(addr, req.clone()))).collect();
    let mut session = None;
    for a in asks {
        if let Ok(Some(s)) = a.await {
            session = Some(s);
        }
    }
    session
}

/// Messages sent to a node and not yet acknowledged by it, as one batch.
struct Unacked {
    batch_id: u64,
    items: Vec<Outbound>,
    since: tokio::time::Instant,
    /// Its messages are in allocations of their own (`Message::compact`), not slices of their publishers' read
    /// buffers: done once the batch may wait long, for a node that cannot be reached.
    compact: bool,
}

/// Keeps one stream to `node` and sends it batches; a batch is acknowledged once delivered there. On a broken
/// stream it reconnects and sends the unacknowledged batches again, first and in order (an acknowledgement counts
/// for every batch up to its own).
async fn forward_loop(
    node: Arc<ClusterNode>,
    target: NodeId,
    addr: String,
    mut rx: mpsc::UnboundedReceiver<Vec<Outbound>>,
) {
    let mut next_batch = 1u64;
    let epoch = new_epoch();
    // Oldest first.
    let mut unacked: std::collections::VecDeque<Unacked> = std::collections::VecDeque::new();
    let mut backoff = Duration::from_millis(50);
    // Since when the node cannot be reached: what comes for it meanwhile waits the node timeout from then, not from
    // its own arrival, so that publishes stop waiting on a node that has been gone that long even while its routes
    // stay (without quorum they cannot be purged).
    let mut down_since: Option<tokio::time::Instant> = None;
    'connect: loop {
        lock(&node.forward_up).remove(&target);
        let Ok(mut client) = network::dedicated_client(&addr) else { break };
        let (btx, brx) = mpsc::channel::<ForwardBatch>(64);
        let again: Vec<ForwardBatch> =
            unacked.iter().map(|u| forward_batch(node.id(), epoch, u.batch_id, &u.items)).collect();
        let batches = tokio_stream::iter(again).chain(tokio_stream::wrappers::ReceiverStream::new(brx));
        // A node that accepts the connection and then says nothing (stopped, cut off) is given the node timeout.
        let limit = node.config.node_timeout;
        let opened = match tokio::time::timeout(limit, client.forward(batches)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".to_string()),
        };
        let acks = match opened {
            Ok(acks) => acks,
            Err(error) => {
                tracing::debug!(target, %error, "forward stream not open; retrying");
                node.set_reachable(target, false);
                let down = *down_since.get_or_insert_with(tokio::time::Instant::now);
                // What arrived meanwhile waits with the unacknowledged batches, and times out with them; QoS 0
                // messages, among those and these, are dropped, counted: nobody waits for them, and at full rate
                // they would pile up in memory for the whole node timeout.
                let mut dropped = 0u64;
                for u in unacked.iter_mut().filter(|u| !u.compact) {
                    let gone = keep_waiting(&mut u.items);
                    node.forward_pending.fetch_sub(gone, Ordering::Relaxed);
                    dropped += gone;
                    u.compact = true;
                }
                unacked.retain(|u| !u.items.is_empty());
                while let Some(mut items) = take_batch(&mut rx, None) {
                    dropped += keep_waiting(&mut items);
                    if items.is_empty() {
                        continue;
                    }
                    node.forward_pending.fetch_add(items.len() as u64, Ordering::Relaxed);
                    unacked.push_back(Unacked { batch_id: next_batch, items, since: down, compact: true });
                    next_batch += 1;
                }
                if dropped > 0 {
                    node.forward_failures.fetch_add(dropped, Ordering::Relaxed);
                    tracing::warn!(
                        target,
                        messages = dropped,
                        "QoS 0 messages for a node that cannot be reached dropped"
                    );
                }
                fail_old(&node, &mut unacked);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue 'connect;
            }
        };
        backoff = Duration::from_millis(50);
        down_since = None;
        node.set_reachable(target, true);
        lock(&node.forward_up).insert(target);
        tokio::pin!(acks);
        // Due when the oldest unacknowledged batch has waited the node timeout: a node that stops reading without
        // closing the connection (stopped, or cut off) is then given up on as one that closed it. Moved on lazily.
        let stalled = tokio::time::sleep(limit);
        tokio::pin!(stalled);
        loop {
            tokio::select! {
                () = &mut stalled, if !unacked.is_empty() => {
                    let due = unacked.front().map(|u| u.since + limit);
                    if let Some(due) = due.filter(|d| *d > tokio::time::Instant::now()) {
                        stalled.as_mut().reset(due);
                        continue;
                    }
                    tracing::warn!(target, "a node has not acknowledged forwarded messages in time; reconnecting");
                    fail_old(&node, &mut unacked);
                    continue 'connect;
                }
                item = rx.recv() => {
                    let Some(first) = item else { break 'connect };
                    let Some(items) = take_batch(&mut rx, Some(first)) else { continue };
                    let batch = forward_batch(node.id(), epoch, next_batch, &items);
                    node.forwarded.fetch_add(items.iter().filter(|o| !o.barrier).count() as u64, Ordering::Relaxed);
                    node.forward_batches.fetch_add(1, Ordering::Relaxed);
                    node.forward_pending.fetch_add(items.len() as u64, Ordering::Relaxed);
                    let since = tokio::time::Instant::now();
                    unacked.push_back(Unacked { batch_id: next_batch, items, since, compact: false });
                    next_batch += 1;
                    // A node that has stopped reading (the stream's window and queue are full) is given the node
                    // timeout, then the stream is opened again.
                    if !matches!(tokio::time::timeout(limit, btx.send(batch)).await, Ok(Ok(()))) {
                        tracing::debug!(target, "forward stream not taking batches; reconnecting");
                        fail_old(&node, &mut unacked);
                        continue 'connect;
                    }
                }
                ack = acks.next() => match ack {
                    Some(Ok(ForwardAck { batch_id })) => {
                        while unacked.front().is_some_and(|u| u.batch_id <= batch_id) {
                            let Some(done) = unacked.pop_front() else { break };
                            node.forward_pending.fetch_sub(done.items.len() as u64, Ordering::Relaxed);
                            for accepted in done.items.into_iter().filter_map(|o| o.accepted) {
                                accepted.accept();
                            }
                        }
                    }
                    _ => {
                        tracing::debug!(target, "forward stream closed; reconnecting");
                        fail_old(&node, &mut unacked);
                        tokio::time::sleep(backoff).await;
                        continue 'connect;
                    }
                },
            }
        }
    }
    lock(&node.forward_up).remove(&target);
    node.set_reachable(target, true);
    // The node is no member any more: what it had not taken is lost to it (its publishers are answered).
    let left: u64 = unacked.iter().map(|u| u.items.len() as u64).sum();
    if left > 0 {
        node.forward_pending.fetch_sub(left, Ordering::Relaxed);
        node.forward_failures.fetch_add(left, Ordering::Relaxed);
        tracing::warn!(target, messages = left, "forwarded messages not taken by a node that left");
    }
}

/// Readies messages to wait for a node that cannot be reached: drops the QoS 0 ones (returning how many) and gives
/// each other its own allocation (see `Unacked::compact`).
fn keep_waiting(items: &mut Vec<Outbound>) -> u64 {
    let before = items.len();
    // A barrier (see `flush_to`) waits with the rest, as what it stands behind does.
    items.retain(|o| o.barrier || o.message.qos != skein_codec::QoS::AtMostOnce);
    for o in items.iter_mut() {
        o.message = Arc::new(o.message.compact());
    }
    (before - items.len()) as u64
}

/// `first`, then what is queued, until the batch has `MAX_BATCH` messages or more (each queued item is one read's,
/// so a batch stays under `MAX_BATCH` plus one read's); `None` when there are none.
fn take_batch(rx: &mut mpsc::UnboundedReceiver<Vec<Outbound>>, first: Option<Vec<Outbound>>) -> Option<Vec<Outbound>> {
    let mut items = match first {
        Some(f) => f,
        None => rx.try_recv().ok()?,
    };
    let mut bytes: usize = items.iter().map(|o| o.message.payload.len()).sum();
    while items.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(more) => {
                bytes += more.iter().map(|o| o.message.payload.len()).sum::<usize>();
                items.extend(more);
            }
            Err(_) => break,
        }
    }
    Some(items)
}

/// Messages in one forwarded batch, about (see `take_batch`).
const MAX_BATCH: usize = 256;

/// Payload bytes after which a batch takes no more (it may pass this by the last message taken): large messages
/// go a few at a time, each batch one gRPC message.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The messages for other nodes of the read a connection is handling on this thread (`Cluster::begin_batch` to
/// `end_batch`, with no await between), kept to be sent together: one lock and one queue operation per node and
/// read, not per message. `owner` is the node whose read it is; `nodes` holds each target's messages in order
/// (nearly always one target: the node with the subscribers).
struct ReadBatch {
    owner: usize,
    nodes: Vec<(NodeId, Vec<Outbound>)>,
}

thread_local! {
    static BATCH: std::cell::RefCell<Option<ReadBatch>> = const { std::cell::RefCell::new(None) };
}

/// One batch of `items`, packed (see `ForwardBatch.packed`): one allocation, one copy of each message.
fn forward_batch(from_node: NodeId, epoch: u64, batch_id: u64, items: &[Outbound]) -> ForwardBatch {
    let mut buf = bytes::BytesMut::with_capacity(
        items.iter().map(|o| o.message.payload.len() + o.message.topic.len() + 40).sum(),
    );
    for o in items.iter().filter(|o| !o.barrier) {
        handover::pack_record(&o.message, &o.groups, o.retain_seq, o.groups_only, o.target.as_deref(), &mut buf);
    }
    let mut ids = bytes::BytesMut::new();
    if items.iter().any(|o| !o.message.id.is_none()) {
        ids.reserve(items.len() * 16);
        for o in items.iter().filter(|o| !o.barrier) {
            handover::pack_id(o.message.id, &mut ids);
        }
    }
    // The oldest plan's (for earlier versions, see `ForwardBatch.routes_index`).
    let routes_index = items.iter().map(|o| o.planned_at).min().unwrap_or(0);
    ForwardBatch { batch_id, from_node, packed: buf.freeze(), epoch, routes_index, ids: ids.freeze() }
}

/// A number for a forward stream task, unlike any earlier one of this node's (and, in practice, of any run of it).
fn new_epoch() -> u64 {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    now.wrapping_add(STARTED.fetch_add(1, Ordering::Relaxed))
}

/// Key prefix of the marks (`Store::put_mark`) that record the last batch taken from each node.
const TAKEN_MARK: &[u8] = b"forwarded/";

/// Records the last batch taken from `from`, with the deliveries into persistent sessions it made (the same flush
/// makes both durable): a batch sent again after this node restarted, its acknowledgement lost with the old
/// connection, is then taken once (see `first_delivery`), as it is while the node runs. Only for batches that wrote
/// to the store: what went only to sessions that end with the process cannot be delivered twice by a restart.
fn mark_taken(broker: &Broker, from: NodeId, epoch: u64, batch_id: u64) {
    if let Some(store) = broker.store() {
        let key = [TAKEN_MARK, &from.to_be_bytes()].concat();
        store.put_mark(&key, &[epoch.to_be_bytes(), batch_id.to_be_bytes()].concat());
    }
}

/// The last batches taken from each node before a restart (see `mark_taken`).
fn taken_marks(broker: &Broker) -> HashMap<NodeId, (u64, u64)> {
    let Some(store) = broker.store() else { return HashMap::new() };
    let marks = store.load_marks(TAKEN_MARK).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the record of forwarded batches taken cannot be read");
        Vec::new()
    });
    let number = |b: &[u8]| Some(u64::from_be_bytes(b.try_into().ok()?));
    marks
        .iter()
        .filter_map(|(key, value)| {
            let from = number(key.strip_prefix(TAKEN_MARK)?)?;
            Some((from, (number(value.get(..8)?)?, number(value.get(8..)?)?)))
        })
        .collect()
}

/// Whether a batch from `from` is new here, and so to be delivered: a batch sent again after a reconnect may have
/// been taken already, its acknowledgement lost with the old stream. A sender's batches count up within its epoch;
/// a new epoch (its task restarted) starts afresh.
fn first_delivery(seen: &Mutex<HashMap<NodeId, (u64, u64)>>, from: NodeId, epoch: u64, batch_id: u64) -> bool {
    let mut seen = lock(seen);
    let last = seen.entry(from).or_insert((epoch, 0));
    if last.0 != epoch {
        *last = (epoch, 0);
    }
    if batch_id <= last.1 {
        return false;
    }
    last.1 = batch_id;
    true
}

/// Tells the node at `addr` of connects here whose older connections it must close, as many in one call as have
/// come meanwhile. A batch the node does not take is sent again (a live node on a busy machine may be slow to
/// answer) until it is `give_up` old: a node silent that long is down or cut off, and its connections of those ids
/// are gone with it, or closed when it comes back and its clients reconnect. A late notice closes only connections
/// older than its own (`connected_at_ns`).
async fn release_loop(addr: String, give_up: Duration, mut rx: mpsc::UnboundedReceiver<TakeoverRequest>) {
    let mut client = None;
    let mut unsent: Vec<TakeoverRequest> = Vec::new();
    let mut since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        if unsent.is_empty() {
            let Some(first) = rx.recv().await else { return };
            unsent.push(first);
            since = tokio::time::Instant::now();
        }
        while unsent.len() < 4096 {
            match rx.try_recv() {
                Ok(c) => unsent.push(c),
                Err(_) => break,
            }
        }
        if client.is_none() {
            client = network::client(&addr).ok();
        }
        let sent = match client.as_mut() {
            Some(c) => {
                let clients = unsent.clone();
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), c.release(ReleaseRequest { clients })).await,
                    Ok(Ok(_))
                )
            }
            None => false,
        };
        if sent {
            unsent.clear();
            backoff = Duration::from_millis(50);
            continue;
        }
        client = None;
        if since.elapsed() >= give_up {
            tracing::warn!(%addr, clients = unsent.len(), "a peer did not take connect notices in time; given up");
            unsent.clear();
            continue;
        }
        tracing::debug!(%addr, "connect notices not taken by a peer; sending again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Gives up on batches a node has not taken for `node_timeout`: their publishers are answered (each `Owed`
/// dropped unaccepted counts as a failure), the loss counted.
fn fail_old(node: &ClusterNode, unacked: &mut std::collections::VecDeque<Unacked>) {
    let now = tokio::time::Instant::now();
    while unacked.front().is_some_and(|u| now.duration_since(u.since) >= node.config.node_timeout) {
        let Some(old) = unacked.pop_front() else { break };
        node.forward_pending.fetch_sub(old.items.len() as u64, Ordering::Relaxed);
        node.forward_failures.fetch_add(old.items.len() as u64, Ordering::Relaxed);
        tracing::warn!(messages = old.items.len(), "forwarded messages not accepted in time");
    }
}

struct Service(Arc<ClusterNode>);

fn join_reply(result: Result<(), String>) -> JoinReply {
    match result {
        Ok(()) => JoinReply { ok: true, error: String::new() },
        Err(error) => JoinReply { ok: false, error },
    }
}

fn parse<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.json).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    to_message(v).map(Response::new).map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl ClusterService for Service {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = parse(request.get_ref())?;
        reply(&self.0.raft.append_entries(req).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = parse(request.get_ref())?;
        reply(&self.0.raft.vote(req).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let req = parse(request.get_ref())?;
        reply(&self.0.raft.install_snapshot(req).await)
    }

    async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let n = &self.0;
        Ok(Response::new(HelloReply {
            node_id: n.id(),
            cluster_addr: n.config.advertise.clone(),
            mqtt_addr: n.config.mqtt_advertise.clone(),
            initialized: n.raft.is_initialized().await.unwrap_or(false),
            // Only once ready: a leader fresh from a restart may not have applied all of its committed log yet.
            applied_index: if n.ready() { n.raft.metrics().borrow().last_applied.map(|l| l.index) } else { None },
        }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        let node = &self.0;
        if !node.is_leader() {
            return Ok(Response::new(node.via_leader(req, async |c, r| c.join(r).await).await));
        }
        Ok(Response::new(join_reply(node.add_node(req.node_id, req.cluster_addr).await)))
    }

    async fn leave(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let req = request.into_inner();
        let node = &self.0;
        if !node.is_leader() {
            return Ok(Response::new(node.via_leader(req, async |c, r| c.leave(r).await).await));
        }
        Ok(Response::new(join_reply(node.remove_node(req.node_id).await)))
    }

    async fn propose(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let command: Command = parse(request.get_ref())?;
        let result: Result<(), String> = self.0.raft.client_write(command).await.map(|_| ()).map_err(|e| e.to_string());
        reply(&result)
    }

    async fn takeover(&self, request: Request<TakeoverRequest>) -> Result<Response<TakeoverReply>, Status> {
        let req = request.into_inner();
        self.0.takeovers_answered.fetch_add(1, Ordering::Relaxed);
        let Some(broker) = self.0.broker.get() else { return Ok(Response::new(TakeoverReply::default())) };
        let newer_than = std::time::UNIX_EPOCH + Duration::from_nanos(req.connected_at_ns);
        let node = &self.0;
        // A request from a node that says who it is (and is not this one) gets what comes for the session meanwhile.
        let relay_to =
            (req.want_session && req.from_node != node.id() && node.is_member(req.from_node)).then_some(req.from_node);
        // Counted as relaying from before the session leaves the broker's registry until its relay is in place, so
        // that a stopping node's drain never sees neither (see `relaying`).
        let _handing_over = HandingOver::new(&node.handing_over);
        let (export, relaying) =
            broker.take_over_relaying(&req.client_id, req.want_session, newer_than, relay_to).await;
        if let (Some(export), Some(handle), Some(to)) = (&export, relaying, relay_to) {
            let filters =
                export.subscriptions.iter().map(|(f, _)| f.to_string()).filter(|f| !f.starts_with("$share/")).collect();
            let since = tokio::time::Instant::now();
            let relay = Relay { client_id: req.client_id.clone(), to, filters, since, settled: None, handle };
            lock(&node.relays).push(relay);
        }
        if export.is_some() {
            tracing::info!(client_id = %req.client_id, "session handed over to another node");
        }
        Ok(Response::new(handover::to_reply(export)))
    }

    async fn elect(&self, request: Request<ElectRequest>) -> Result<Response<ElectReply>, Status> {
        let from = request.into_inner().from_node;
        tracing::info!(from, "standing for election: the leader is stopping");
        self.0.raft.trigger().elect().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(ElectReply {}))
    }

    async fn flush(
        &self,
        request: Request<crate::proto::FlushRequest>,
    ) -> Result<Response<crate::proto::FlushReply>, Status> {
        let from = request.into_inner().from_node;
        let flushed = self.0.flush_to(from, FLUSH_WAIT).await;
        Ok(Response::new(crate::proto::FlushReply { flushed }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        let Some(broker) = self.0.broker.get() else { return Ok(Response::new(ReleaseReply {})) };
        for req in request.into_inner().clients {
            let broker = broker.clone();
            // Each waits (up to seconds) for its old connection to close; none holds up the others.
            tokio::spawn(async move {
                let newer_than = std::time::UNIX_EPOCH + Duration::from_nanos(req.connected_at_ns);
                broker.take_over(&req.client_id, false, newer_than).await;
            });
        }
        Ok(Response::new(ReleaseReply {}))
    }

    type ForwardStream = tokio_stream::wrappers::ReceiverStream<Result<ForwardAck, Status>>;

    async fn forward(
        &self,
        request: Request<tonic::Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut batches = request.into_inner();
        let Some(broker) = self.0.broker.get().cloned() else {
            return Err(Status::unavailable("broker not ready"));
        };
        let (tx, rx) = mpsc::channel(64);
        let node = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(batch)) = batches.next().await {
                if !first_delivery(&node.forward_seen, batch.from_node, batch.epoch, batch.batch_id) {
                    tracing::debug!(
                        from = batch.from_node,
                        batch = batch.batch_id,
                        "a batch taken already; acknowledged again"
                    );
                    // Taken on the old stream, whose task may not have made it durable yet.
                    let _ = broker.flush().await;
                    if tx.send(Ok(ForwardAck { batch_id: batch.batch_id })).await.is_err() {
                        break;
                    }
                    continue;
                }
                let mut durable = false;
                let mut deliver = |u: handover::Unpacked| {
                    if u.target.is_some() {
                        durable |= node.deliver_relayed(&broker, u);
                        return;
                    }
                    let m = u.message;
                    if u.retain_seq != 0 {
                        // Held at once, unless the log already brought this change (or a later one); a copy of its
                        // own, not a slice of the batch's buffer.
                        let held = if m.payload.is_empty() { None } else { Some(m.compact()) };
                        node.sm
                            .unless_applied(batch.from_node, u.retain_seq, || broker.retained_changed(&m.topic, held));
                    }
                    durable |= broker.publish_forwarded(m, &u.shared_groups, u.groups_only).durable;
                };
                let mut packed = batch.packed;
                let mut ids = batch.ids;
                collect_relays();
                while let Some(record) = handover::unpack_message(&mut packed) {
                    let id = handover::unpack_id(&mut ids);
                    match record {
                        Ok(mut u) => {
                            u.message.id = id;
                            deliver(u)
                        }
                        Err(error) => {
                            node.forward_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(from = batch.from_node, %error, "a forwarded batch has a record that cannot be read; its rest is dropped");
                        }
                    }
                }
                let relayed = relays_owed();
                if durable {
                    mark_taken(&broker, batch.from_node, batch.epoch, batch.batch_id);
                    let _ = broker.flush().await;
                }
                if !relayed.is_empty() && !relayed.wait().await {
                    tracing::debug!(
                        from = batch.from_node,
                        "a relayed message was not accepted by its session's new node"
                    );
                }
                if tx.send(Ok(ForwardAck { batch_id: batch.batch_id })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// The peer connections `listener` accepts, Nagle off (the clients set it on theirs: a forward stream's
/// acknowledgements are small writes that would otherwise wait for the peer's delayed ACK, and publishers wait for
/// them). Accepted by the broker's `listener::accept`, which waits after a failed accept (out of file descriptors):
/// tonic's own loop retries at once, and spun a core for as long as it lasted.
fn accept_peers(listener: tokio::net::TcpListener) -> mpsc::Receiver<tokio::net::TcpStream> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, _) = skein_broker::listener::accept(&listener, "cluster").await;
            let _ = stream.set_nodelay(true);
            if tx.send(stream).await.is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(seq: u64) -> Outbound {
        let publish = skein_codec::Publish {
            dup: false,
            qos: skein_codec::QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: 0,
            properties: Default::default(),
            payload: bytes::Bytes::copy_from_slice(&seq.to_be_bytes()),
        };
        let message = Arc::new(Message::from_publish(publish, None));
        Outbound {
            message,
            groups: Vec::new(),
            retain_seq: seq,
            groups_only: false,
            accepted: None,
            target: None,
            planned_at: 0,
            barrier: false,
        }
    }

    #[test]
    fn a_relayed_message_keeps_the_shared_group_that_gave_it_to_the_session() {
        let target = handover::Target {
            client_id: "mover".into(),
            qos: skein_codec::QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        };
        let mut m = outbound(1);
        m.groups = vec!["$share/g/t".to_string()];
        m.target = Some(Box::new(target));
        let plain = outbound(2);
        let batch = forward_batch(1, 1, 1, &[m, plain]);
        let mut packed = batch.packed;
        let relayed = handover::unpack_message(&mut packed).unwrap().unwrap();
        let (client_id, out) = relayed_outgoing(relayed).expect("a relayed record");
        assert_eq!(&*client_id, "mover");
        assert_eq!(out.group.as_deref(), Some("$share/g/t"), "another member gets it if the session ends first");
        let plain = handover::unpack_message(&mut packed).unwrap().unwrap();
        assert!(relayed_outgoing(plain).is_none(), "a plain record is no relayed one");
    }

    #[test]
    fn a_forward_batch_takes_whole_reads_in_order_up_to_the_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut seq = 0;
        // Reads of 100 messages each: a batch takes whole reads until it has MAX_BATCH or more.
        for _ in 0..4 {
            tx.send(
                (0..100)
                    .map(|_| {
                        seq += 1;
                        outbound(seq)
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        }
        let first = take_batch(&mut rx, None).unwrap();
        assert_eq!(first.len(), 300, "three reads reach MAX_BATCH ({MAX_BATCH})");
        let second = take_batch(&mut rx, None).unwrap();
        assert_eq!(second.len(), 100);
        let order: Vec<u64> = first.iter().chain(&second).map(|o| o.retain_seq).collect();
        assert_eq!(order, (1..=400).collect::<Vec<_>>(), "in the order queued");
        assert!(take_batch(&mut rx, None).is_none());
    }

    #[test]
    fn a_batch_is_taken_once_per_sender_epoch_however_often_it_comes() {
        let seen = Mutex::new(HashMap::new());
        assert!(first_delivery(&seen, 1, 7, 1));
        assert!(first_delivery(&seen, 1, 7, 2));
        // Sent again after a reconnect: 2 was taken, 3 was not.
        assert!(!first_delivery(&seen, 1, 7, 2));
        assert!(first_delivery(&seen, 1, 7, 3));
        assert!(!first_delivery(&seen, 1, 7, 1));
        // Another sender counts on its own.
        assert!(first_delivery(&seen, 2, 7, 1));
        // The sender's task restarted: a new epoch, counting from 1 again.
        assert!(first_delivery(&seen, 1, 8, 1));
        assert!(!first_delivery(&seen, 1, 8, 1));
        // A batch given up by its sender leaves a gap; what follows is still taken.
        assert!(first_delivery(&seen, 1, 8, 3));
    }

    #[test]
    fn epochs_differ() {
        let a = new_epoch();
        let b = new_epoch();
        assert_ne!(a, b);
    }
}
