//! The broker's one view of a cluster: a small trait, so that a node runs, and is tested, alone.
//!
//! The cluster crate implements it (route table in Raft, forwarding to peers, client registry). A single node uses
//! [`SingleNode`], which has nothing to tell and nowhere to forward.

/// What the broker tells the cluster, and asks of it.
pub trait Cluster: Send + Sync + 'static {
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
