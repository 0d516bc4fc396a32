//! The broker's one view of a cluster: a small trait, so that a node runs, and is tested, alone.
//!
//! The cluster crate implements it (route table in Raft, forwarding to peers, client registry). A single node uses
//! [`SingleNode`], which has nothing to tell and nowhere to forward.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::message::Message;
use crate::session::SessionExport;

/// Resolves when the other nodes have closed any connection of a client id; carries its session if one of them
/// held it persistently.
pub type TakenOver = Pin<Box<dyn Future<Output = Option<SessionExport>> + Send>>;

/// Resolves when every node a message was forwarded to has accepted it: true if all did, false if one could not
/// be reached in time (counted and logged by the cluster).
pub type Accepted = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What the acknowledgements of one read wait for from other nodes: how many of the QoS 1/2 messages it forwarded
/// are not yet accepted, a count shared with the forward streams. One allocation for a read that forwards any,
/// however many messages and nodes, and none for one that forwards nothing.
#[derive(Default)]
pub struct Acceptance(Option<Arc<Tally>>);

struct Tally {
    owed: AtomicUsize,
    failed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// One node's acceptance of one message, owed to an [`Acceptance`]: [`Owed::accept`] counts it off, and one
/// dropped unaccepted counts as a failure (the node could not be reached in time).
pub struct Owed {
    tally: Arc<Tally>,
    accepted: bool,
}

impl Acceptance {
    /// One more acceptance to wait for.
    pub fn owe(&mut self) -> Owed {
        let tally = self.0.get_or_insert_with(|| {
            Arc::new(Tally { owed: AtomicUsize::new(0), failed: AtomicBool::new(false), waker: Mutex::new(None) })
        });
        tally.owed.fetch_add(1, Ordering::Relaxed);
        Owed { tally: tally.clone(), accepted: false }
    }

    /// True if nothing was ever owed: there is nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Resolves once everything owed is settled: true if every acceptance came, false if one failed.
    pub fn wait(self) -> impl Future<Output = bool> + Send {
        std::future::poll_fn(move |cx| {
            let Some(tally) = self.0.as_ref() else { return Poll::Ready(true) };
            if tally.owed.load(Ordering::Acquire) != 0 {
                // Stored before looking again: the last settlement either sees this waker or is seen here.
                *tally.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                if tally.owed.load(Ordering::Acquire) != 0 {
                    return Poll::Pending;
                }
            }
            Poll::Ready(!tally.failed.load(Ordering::Acquire))
        })
    }
}

impl Owed {
    /// The node has the message.
    pub fn accept(mut self) {
        self.accepted = true;
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        if !self.accepted {
            self.tally.failed.store(true, Ordering::Release);
        }
        if self.tally.owed.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(w) = self.tally.waker.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            w.wake();
        }
    }
}

/// What forwarding a message did.
#[derive(Default)]
pub struct Forwarded {
    /// What a QoS 1/2 acknowledgement waits for besides the [`Acceptance`] it was given (a retained change's
    /// commit, say); `None` when there is no such thing.
    pub accepted: Option<Accepted>,
    /// The message went to at least one other node.
    pub elsewhere: bool,
    /// Shared groups (`$share/{group}/{filter}`) another node serves for this message: this node must not.
    pub groups_elsewhere: Vec<bytestring::ByteString>,
    /// Shared groups the cluster's table says this node serves for this message (see [`crate::Broker`]'s hand-on
    /// of a group whose last member here has just gone).
    pub groups_here: Vec<bytestring::ByteString>,
}

/// What the broker tells the cluster, and asks of it.
pub trait Cluster: Send + Sync + 'static {
    /// Sends `message` to every other node with a subscriber it matches, once per node, and picks one node for
    /// each matching shared group. Called for messages published on this node, never for ones forwarded to it.
    /// With `retain` (only when [`Cluster::replicates_retained`]), the message also changes its topic's retained
    /// message cluster-wide (an empty payload clears it): the acknowledgement then waits for that too. For a QoS 1/2
    /// message, each node it goes to owes `acceptance` its acceptance.
    fn forward(&self, message: &Arc<Message>, retain: bool, acceptance: &mut Acceptance) -> Forwarded {
        let _ = (message, retain, acceptance);
        Forwarded::default()
    }

    /// The messages `forward` takes from here to `end_batch` (one read's, handled on this thread with no await
    /// between) may be sent to other nodes together at its end, in their order.
    fn begin_batch(&self) {}

    /// Sends what `forward` kept since `begin_batch`. QoS 1/2 messages relayed meanwhile to the node a session
    /// moved to (see `Session::relay_to`) owe `acceptance` that node's acceptance.
    fn end_batch(&self, acceptance: &mut Acceptance) {
        let _ = acceptance;
    }

    /// A client is connecting here: close its connection on any other node (MQTT 5.0 clients hear 0x8E) and, when
    /// `want_session`, bring its persistent session over. `persistent`: the session it gets here outlives the
    /// connection (the cluster then records that this node holds it). `None` when there is nothing to wait for.
    fn take_over(
        &self,
        client_id: &str,
        want_session: bool,
        persistent: bool,
        connected_at: std::time::SystemTime,
    ) -> Option<TakenOver> {
        let _ = (client_id, want_session, persistent, connected_at);
        None
    }

    /// A message for the session of `client_id`, which moved to `node` while this node still has its subscriptions
    /// (see [`crate::Broker::take_over_relaying`]): sends it there, for that session alone.
    fn relay(&self, node: u64, client_id: &bytestring::ByteString, out: &crate::session::Outgoing) {
        let _ = (node, client_id, out);
    }

    /// The id a message published on this node gets ([`crate::message::MessageId`]); none on a single node.
    fn message_id(&self) -> crate::message::MessageId {
        crate::message::MessageId::NONE
    }

    /// How long a session that moved here may still be sent copies of a message it already has (the old node's
    /// relay, see [`Cluster::relay`], and what was on its way to either node): for that long it takes each message
    /// id once ([`crate::session::Session::moved_here`]). Zero on a single node.
    fn moved_window(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// What other nodes relayed for the session of `client_id` while it was being taken over here: the broker queues
    /// it with the session it brought, under the session's lock, so that it goes before anything sent here directly
    /// once the session's subscriptions are in place. Later relayed messages come through
    /// [`crate::Broker::deliver_relayed`].
    fn take_held(&self, client_id: &str) -> Vec<crate::session::Outgoing> {
        let _ = client_id;
        Vec::new()
    }

    /// A connection of `client_id` attached here, with the session it took over if any: what other nodes relayed for
    /// that session meanwhile can be delivered now ([`crate::Broker::deliver_relayed`]).
    fn session_attached(&self, client_id: &str) {
        let _ = client_id;
    }

    /// Whether retained messages (other than `$` topics) are the cluster's: kept in its replicated log rather than
    /// in this node's store. The broker then forwards each one published here with `retain`, and the cluster tells
    /// the broker what to hold ([`crate::Broker::retained_changed`], [`crate::Broker::replace_retained`]).
    fn replicates_retained(&self) -> bool {
        false
    }

    /// The largest retained payload the cluster keeps (0: no limit). Each retained message is one entry of its Raft
    /// log, replicated in calls the leader gives a heartbeat interval each; one of many megabytes outlasts that, is
    /// sent again and again, and starves the followers of heartbeats until they vote the leader out. A larger
    /// retained publish is refused (MQTT 5.0: 0x97 Quota exceeded); a larger retained will goes out unretained.
    fn retained_max_size(&self) -> usize {
        0
    }

    /// Hands a message of shared group `group` (`$share/{group}/{filter}`) to another node that has members of it,
    /// because the member here that held it is gone and no other member is left here. False when there is none.
    fn forward_to_group(&self, message: &Arc<Message>, group: &str) -> bool {
        let _ = (message, group);
        false
    }

    /// This node gained its first local subscriber on `filter` (a plain or `$share/` filter).
    fn route_added(&self, filter: &str) {
        let _ = filter;
    }

    /// This node lost its last local subscriber on `filter`.
    fn route_removed(&self, filter: &str) {
        let _ = filter;
    }

    /// What a SUBACK waits for: until every member routes to this node what its subscribes so far asked for (the
    /// route changes `route_added` passed on), so that a message published on any node right after the SUBACK
    /// reaches the subscriber. `None` when nothing is on its way. Bounded: without quorum, routes cannot change,
    /// and the SUBACK goes after a moment anyway.
    fn routes_settled(&self) -> Option<Accepted> {
        None
    }
}

/// A node on its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Cluster for SingleNode {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` once, with a waker that counts its wakes.
    fn poll_once<F: Future + Unpin>(f: &mut F, wakes: &Arc<Wakes>) -> Poll<F::Output> {
        let waker = Waker::from(wakes.clone());
        Pin::new(f).poll(&mut std::task::Context::from_waker(&waker))
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn nothing_owed_is_ready_at_once() {
        let a = Acceptance::default();
        assert!(a.is_empty());
        let mut wait = Box::pin(a.wait());
        assert_eq!(poll_once(&mut wait, &Arc::default()), Poll::Ready(true));
    }

    #[test]
    fn ready_only_once_every_acceptance_came_and_woken_by_the_last() {
        let mut a = Acceptance::default();
        let owed: Vec<Owed> = (0..3).map(|_| a.owe()).collect();
        assert!(!a.is_empty());
        let wakes = Arc::new(Wakes::default());
        let mut wait = Box::pin(a.wait());
        assert_eq!(poll_once(&mut wait, &wakes), Poll::Pending);
        let mut owed = owed.into_iter();
        owed.next().unwrap().accept();
        owed.next().unwrap().accept();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "not woken before the last");
        assert_eq!(poll_once(&mut wait, &wakes), Poll::Pending);
        owed.next().unwrap().accept();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_once(&mut wait, &wakes), Poll::Ready(true));
    }

    #[test]
    fn one_dropped_unaccepted_is_a_failure() {
        let mut a = Acceptance::default();
        let first = a.owe();
        let second = a.owe();
        first.accept();
        drop(second);
        let mut wait = Box::pin(a.wait());
        assert_eq!(poll_once(&mut wait, &Arc::default()), Poll::Ready(false));
    }

    #[test]
    fn settled_from_other_threads_while_waiting() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        for _ in 0..200 {
            let mut a = Acceptance::default();
            let owed: Vec<Owed> = (0..8).map(|_| a.owe()).collect();
            let threads: Vec<_> = owed.into_iter().map(|o| std::thread::spawn(move || o.accept())).collect();
            assert!(rt.block_on(a.wait()));
            threads.into_iter().for_each(|t| t.join().unwrap());
        }
    }
}
