//! The Raft storage of one node, in sled under `<data_dir>/raft`: the log, the vote, the committed id and the last
//! snapshot are durable; the state machine is rebuilt from the snapshot and the log after a restart (the snapshot
//! is loaded here, openraft re-applies the committed log after it).

use skein_broker::store::Flusher;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::state::{Applied, Claimed, ClusterState, Command, NodeId};

openraft::declare_raft_types!(
    /// The Raft types of a Skein cluster.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type Raft = openraft::Raft<TypeConfig>;
type Error = StorageError<NodeId>;

fn io<E: std::error::Error + 'static>(make: fn(AnyError) -> StorageIOError<NodeId>) -> impl Fn(E) -> Error {
    move |e| make(AnyError::new(&e)).into()
}

/// Opens (or creates) the node's Raft storage, with the state machine at its last snapshot: the log before it may
/// be purged, so it cannot be rebuilt from the log alone.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine), OpenError> {
    let db = sled::Config::new().path(dir.join("raft")).open()?;
    // One group-commit flusher for the log and the state machine (sled's flush_async can deadlock when called
    // concurrently; see `skein_broker::store::Flusher`).
    let flusher = Flusher::new(db.clone());
    let log = LogStore { logs: db.open_tree("log")?, meta: db.open_tree("meta")?, db: flusher.clone() };
    let snapshots = db.open_tree("snapshot")?;
    let mut applier = Applier::default();
    if let Some(v) = snapshots.get("current")? {
        let s: StoredSnapshot = serde_json::from_slice(&v).map_err(OpenError::Snapshot)?;
        applier.state = serde_json::from_slice(&s.data).map_err(OpenError::Snapshot)?;
        applier.last_applied = s.meta.last_log_id;
        applier.last_membership = s.meta.last_membership;
    }
    let applier_index = applier.last_applied.map_or(0, |l| l.index);
    let sm = StateMachine {
        inner: Arc::new(RwLock::new(applier)),
        routes_version: Arc::new(AtomicU64::new(1)),
        routes_index: Arc::new(AtomicU64::new(applier_index)),
        sink: Arc::default(),
        claims: Arc::default(),
        snapshots,
        db: flusher,
    };
    Ok((log, sm))
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error("the stored Raft snapshot cannot be read ({0}); move the raft directory aside to rejoin from the cluster")]
    Snapshot(serde_json::Error),
}

/// A change to the replicated retained messages, as the state machine applies it.
pub enum RetainedChange<'a> {
    /// A topic's retained message, encoded with `Message::encode_v5`.
    Set {
        topic: &'a str,
        message: &'a [u8],
    },
    Cleared {
        topic: &'a str,
    },
    /// Every retained message: the state was replaced (a snapshot), or a watcher starts.
    All(&'a BTreeMap<String, Vec<u8>>),
}

/// Hears every [`RetainedChange`], in log order, while the state machine is locked.
pub type RetainedSink = Arc<dyn Fn(RetainedChange<'_>) + Send + Sync>;

/// Hears every claim of the client registry as it is applied (the node that made it, and what it did), while the
/// state machine is locked.
pub type ClaimSink = Arc<dyn Fn(NodeId, Claimed) + Send + Sync>;

#[derive(Clone)]
pub struct LogStore {
    db: Flusher,
    logs: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.meta.get(key).map_err(io(StorageIOError::read))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(io(StorageIOError::read))?)),
            None => Ok(None),
        }
    }

    async fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), Error> {
        let v = serde_json::to_vec(value).map_err(io(StorageIOError::write))?;
        self.meta.insert(key, v).map_err(io(StorageIOError::write))?;
        self.db.flush().await.map_err(io(StorageIOError::write))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        self.entries(range, usize::MAX)
    }

    /// What replication sends a follower in one AppendEntries: entries up to about `APPEND_BYTES` (at least one).
    /// The leader gives each call the heartbeat interval; hundreds of batches of retained messages in one call could
    /// outlast it, and a call that always times out starves the follower of heartbeats until it stands for leader.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, Error> {
        self.entries(start..end, APPEND_BYTES)
    }
}

/// About how many bytes of stored entries one AppendEntries carries (see `limited_get_log_entries`).
const APPEND_BYTES: usize = 1 << 20;

impl LogStore {
    /// The entries in `range`, stopping after the one that brings their stored size to `limit`.
    fn entries<RB: RangeBounds<u64>>(&self, range: RB, limit: usize) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let (mut out, mut size) = (Vec::new(), 0);
        for item in self.logs.range(start.to_be_bytes()..) {
            let (k, v) = item.map_err(io(StorageIOError::read_logs))?;
            let index = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(io(StorageIOError::read_logs))?);
            size += v.len();
            if size >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let last = match self.logs.last().map_err(io(StorageIOError::read_logs))? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(io(StorageIOError::read_logs))?;
                Some(e.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Error> {
        self.put_meta("vote", vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Error> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), Error> {
        self.put_meta("committed", &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, Error> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for e in entries {
            let v = serde_json::to_vec(&e).map_err(io(StorageIOError::write_logs))?;
            batch.insert(&e.log_id.index.to_be_bytes(), v);
        }
        self.logs.apply_batch(batch).map_err(io(StorageIOError::write_logs))?;
        let flushed = self.db.flush().await.map(|_| ()).map_err(std::io::Error::other);
        callback.log_io_completed(flushed);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let keys: Vec<_> = self
            .logs
            .range(log_id.index.to_be_bytes()..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io(StorageIOError::write_logs))?;
        for k in keys {
            self.logs.remove(k).map_err(io(StorageIOError::write_logs))?;
        }
        self.db.flush().await.map_err(io(StorageIOError::write_logs))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        self.put_meta("last_purged", &log_id).await?;
        let keys: Vec<_> = self
            .logs
            .range(..=log_id.index.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(io(StorageIOError::write_logs))?;
        for k in keys {
            self.logs.remove(k).map_err(io(StorageIOError::write_logs))?;
        }
        Ok(())
    }
}

/// The applied state and what openraft needs to know about it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applier {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, BasicNode>,
    pub state: ClusterState,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine. Readers (the forwarding path) take `inner` for reading only.
#[derive(Clone)]
pub struct StateMachine {
    pub inner: Arc<RwLock<Applier>>,
    /// Moves on after every change that may touch the route table (an applied entry other than a registry or
    /// retained change, or a snapshot), once the change is in `inner`: the forwarding path's index is rebuilt only
    /// when it moves.
    pub routes_version: Arc<AtomicU64>,
    /// The log index of the last applied entry that may have changed the route table: a node's forwarding plans are
    /// of the table as of this index (see `ForwardBatch.routes_index`).
    pub routes_index: Arc<AtomicU64>,
    sink: Arc<RwLock<Option<RetainedSink>>>,
    claims: Arc<RwLock<Option<ClaimSink>>>,
    snapshots: sled::Tree,
    db: Flusher,
}

impl StateMachine {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applier> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applier> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `sink` every retained message now, then every change as it is applied; nothing is missed between.
    pub fn watch_retained(&self, sink: RetainedSink) {
        let a = self.write();
        sink(RetainedChange::All(&a.state.retained));
        *self.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
        drop(a);
    }

    /// Sends `sink` every claim applied from now on.
    pub fn watch_claims(&self, sink: ClaimSink) {
        *self.claims.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Runs `hold` (which sets the retained message of a forwarded copy) unless the log has already applied
    /// `node`'s change `seq` or a later one; under the lock, so no change is applied in between.
    pub fn unless_applied(&self, node: NodeId, seq: u64, hold: impl FnOnce()) {
        let a = self.read();
        if a.state.retain_applied.get(&node).is_none_or(|applied| *applied < seq) {
            hold();
        }
    }

    fn tell(&self, change: RetainedChange<'_>) {
        if let Some(sink) = self.sink.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            sink(change);
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let (data, last_log_id, last_membership) = {
            let a = self.read();
            let data = serde_json::to_vec(&a.state).map_err(io(StorageIOError::read_state_machine))?;
            (data, a.last_applied, a.last_membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let stored = serde_json::to_vec(&StoredSnapshot { meta: meta.clone(), data: data.clone() })
            .map_err(io(StorageIOError::write_state_machine))?;
        self.snapshots.insert("current", stored).map_err(io(StorageIOError::write_state_machine))?;
        self.db.flush().await.map_err(io(StorageIOError::write_state_machine))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), Error> {
        let a = self.read();
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.write();
        let mut out = Vec::new();
        let mut routes_touched = None;
        for e in entries {
            a.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(cmd) => {
                    if !matches!(cmd, Command::Clients { .. } | Command::Retain { .. }) {
                        routes_touched = Some(e.log_id.index);
                    }
                    // Routes belong to members: a late announcement from a node that has left changes nothing.
                    let from_non_member = match &cmd {
                        Command::Routes { node, .. }
                        | Command::Announce { node, .. }
                        | Command::Clients { node, .. } => a.last_membership.membership().get_node(node).is_none(),
                        _ => false,
                    };
                    if from_non_member {
                        Applied::default()
                    } else {
                        let sink = self.claims.read().unwrap_or_else(|e| e.into_inner()).clone();
                        let applied = a.state.apply_at(&cmd, e.log_id.index, |node, claimed| {
                            if let Some(sink) = &sink {
                                sink(node, claimed);
                            }
                        });
                        if let Command::Retain { changes, .. } = &cmd {
                            for (_, topic, message) in changes {
                                self.tell(match message {
                                    Some(message) => RetainedChange::Set { topic, message },
                                    None => RetainedChange::Cleared { topic },
                                });
                            }
                        }
                        applied
                    }
                }
                EntryPayload::Membership(m) => {
                    a.last_membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::default()
                }
            });
        }
        drop(a);
        if let Some(index) = routes_touched {
            self.routes_version.fetch_add(1, Ordering::Release);
            // After the version: whoever reads this index first and then plans, plans with this table or a later one.
            self.routes_index.store(index, Ordering::Release);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data)
            .map_err(|e| Error::from(StorageIOError::read_snapshot(None, AnyError::new(&e))))?;
        {
            let mut a = self.write();
            a.state = state;
            a.last_applied = meta.last_log_id;
            a.last_membership = meta.last_membership.clone();
            self.tell(RetainedChange::All(&a.state.retained));
        }
        self.routes_version.fetch_add(1, Ordering::Release);
        self.routes_index.store(meta.last_log_id.map_or(0, |l| l.index), Ordering::Release);
        let stored = serde_json::to_vec(&StoredSnapshot { meta: meta.clone(), data })
            .map_err(io(StorageIOError::write_state_machine))?;
        self.snapshots.insert("current", stored).map_err(io(StorageIOError::write_state_machine))?;
        self.db.flush().await.map_err(io(StorageIOError::write_state_machine))?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let Some(v) = self.snapshots.get("current").map_err(io(StorageIOError::read_state_machine))? else {
            return Ok(None);
        };
        let s: StoredSnapshot = serde_json::from_slice(&v).map_err(io(StorageIOError::read_state_machine))?;
        Ok(Some(Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::StorageError;
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let (log, sm) = open(dir.path()).expect("opens");
            Ok((dir, log, sm))
        }
    }

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    /// The log before a snapshot may be purged: a restarted node must come back at its snapshot, not at nothing.
    #[tokio::test]
    async fn a_reopened_store_starts_at_its_snapshot_and_reports_retained_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let retain = |t: &str, m: Option<&[u8]>| Command::Retain {
            node: 1,
            changes: vec![(1, t.into(), m.map(<[u8]>::to_vec))],
        };
        {
            let (_log, mut sm) = open(dir.path()).expect("opens");
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let s = seen.clone();
            sm.watch_retained(Arc::new(move |c| {
                s.lock().unwrap().push(match c {
                    RetainedChange::Set { topic, message } => format!("set {topic} {}", message.len()),
                    RetainedChange::Cleared { topic } => format!("clear {topic}"),
                    RetainedChange::All(all) => format!("all {}", all.len()),
                })
            }));
            sm.apply([
                entry(1, retain("a", Some(b"xy"))),
                entry(2, retain("b", Some(b"z"))),
                entry(3, retain("a", None)),
            ])
            .await
            .expect("applies");
            assert_eq!(*seen.lock().unwrap(), ["all 0", "set a 2", "set b 1", "clear a"]);
            sm.build_snapshot().await.expect("snapshot");
        }
        let (_log, mut sm) = open(dir.path()).expect("reopens");
        let (applied, _) = sm.applied_state().await.expect("state");
        assert_eq!(applied.map(|l| l.index), Some(3));
        let a = sm.read();
        assert_eq!(a.state.retained.keys().collect::<Vec<_>>(), ["b"]);
    }

    /// The forwarding path rebuilds its route index only when `routes_version` moves: it must move for every entry
    /// that can change routes, and may stay for registry and retained changes (most of a busy cluster's log).
    #[tokio::test]
    async fn the_routes_version_moves_with_route_changes_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_log, sm) = open(dir.path()).expect("opens");
        let version = || sm.routes_version.load(Ordering::Acquire);
        let v0 = version();
        let mut sm2 = sm.clone();
        sm2.apply([entry(1, Command::Retain { node: 1, changes: vec![(1, "r".into(), Some(vec![1]))] })])
            .await
            .unwrap();
        sm2.apply([entry(2, Command::Clients { node: 1, claimed: vec![("c".into(), 5)], released: vec![] })])
            .await
            .unwrap();
        assert_eq!(version(), v0, "no route can have changed");
        for (i, command) in [
            Command::Routes { node: 1, added: vec!["a/#".into()], removed: vec![] },
            Command::Announce { node: 1, filters: vec!["b".into()] },
            Command::Purge { node: 1 },
        ]
        .into_iter()
        .enumerate()
        {
            let before = version();
            sm2.apply([entry(3 + i as u64, command)]).await.unwrap();
            assert!(version() > before, "entry {} may have changed routes", 3 + i);
        }
    }

    /// openraft's own storage test suite, against the sled stores.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("the suite passes");
    }
}
