//! Skein's cluster: one Raft group (openraft) over gRPC (tonic), with a sled-backed log and a replicated state
//! machine holding the members and the route table; publish forwarding between nodes over long-lived batched
//! streams. It implements the broker's `Cluster` trait and never reaches into the broker otherwise.

// openraft's `StorageError` is large by design and is what its storage traits return.
#![allow(clippy::result_large_err)]

mod compact;
pub mod handover;
pub mod network;
pub mod node;
pub mod peer_tls;
pub mod state;
pub mod store;

/// The generated gRPC code of `proto/cluster.proto`.
pub mod proto {
    tonic::include_proto!("skein.cluster.v1");
}
