//! The broker's one view of a cluster: a small trait, so that a node runs, and is tested, alone.
//!
//! The cluster crate implements it (route table in Raft, forwarding to peers, client registry). A single node uses
//! [`SingleNode`], which has nothing to tell and nowhere to forward.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;
use crate::session::SessionExport;

/// Resolves when the other nodes have closed any connection of a client id; carries its session if one of them
/// held it persistently.
pub type TakenOver = Pin<Box<dyn Future<Output = Option<SessionExport>> + Send>>;

/// Resolves when every node a message was forwarded to has accepted it: true if all did, false if one could not
/// be reached in time (counted and logged by the cluster).
pub type Accepted = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What forwarding a message did.
#[derive(Default)]
pub struct Forwarded {
    /// What a QoS 1/2 acknowledgement waits for; `None` when nothing needs waiting for.
    pub accepted: Option<Accepted>,
    /// Shared groups (`$share/{group}/{filter}`) another node serves for this message: this node must not.
    pub groups_elsewhere: Vec<bytestring::ByteString>,
}

/// What the broker tells the cluster, and asks of it.
pub trait Cluster: Send + Sync + 'static {
    /// Sends `message` to every other node with a subscriber it matches, once per node, and picks one node for
    /// each matching shared group. Called for messages published on this node, never for ones forwarded to it.
    /// With `retain` (only when [`Cluster::replicates_retained`]), the message also changes its topic's retained
    /// message cluster-wide (an empty payload clears it): the acknowledgement then waits for that too.
    fn forward(&self, message: &Arc<Message>, retain: bool) -> Forwarded {
        let _ = (message, retain);
        Forwarded::default()
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

    /// Whether retained messages (other than `$` topics) are the cluster's: kept in its replicated log rather than
    /// in this node's store. The broker then forwards each one published here with `retain`, and the cluster tells
    /// the broker what to hold ([`crate::Broker::retained_changed`], [`crate::Broker::replace_retained`]).
    fn replicates_retained(&self) -> bool {
        false
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
}

/// A node on its own.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Cluster for SingleNode {}
