//! The broker's one view of a cluster: a small trait, so that a node runs, and is tested, alone.
//!
//! The cluster crate implements it (route table in Raft, forwarding to peers, client registry). A single node uses
//! [`SingleNode`], which has nothing to tell and nowhere to forward.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;

/// Resolves when every node a message was forwarded to has accepted it: true if all did, false if one could not
/// be reached in time (counted and logged by the cluster).
pub type Accepted = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What the broker tells the cluster, and asks of it.
pub trait Cluster: Send + Sync + 'static {
    /// Sends `message` to every other node with a subscriber it matches, once per node. `None` when there is no
    /// such node. Called for messages published on this node, never for ones forwarded to it.
    fn forward(&self, message: &Arc<Message>) -> Option<Accepted> {
        let _ = message;
        None
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
