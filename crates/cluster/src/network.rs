//! Raft's network: openraft's RPCs over the `Cluster` gRPC service, each request and response serialized as JSON.

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tonic::transport::Channel;

use crate::proto::RaftMessage;
use crate::proto::cluster_client::ClusterClient;
use crate::state::NodeId;
use crate::store::TypeConfig;

/// A client of a peer's gRPC service; connects on first use and reconnects as tonic does. One channel per peer,
/// shared: every call (a takeover per client connect, proposals) is a stream on the same HTTP/2 connection rather
/// than a new TCP (and TLS) connection.
pub fn client(addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    let channels = CHANNELS.get_or_init(Default::default);
    if let Some(c) = channels.lock().unwrap_or_else(|e| e.into_inner()).get(addr) {
        return Ok(unlimited(ClusterClient::new(c.clone())));
    }
    let channel = channel(addr)?;
    channels.lock().unwrap_or_else(|e| e.into_inner()).insert(addr.to_string(), channel.clone());
    Ok(unlimited(ClusterClient::new(channel)))
}

/// Lifts gRPC's 4 MiB message limit, both ways. An MQTT message may be up to 256 MiB, and one that is over 4 MiB
/// must still reach the other nodes (as a forwarded batch, a Raft entry with a retained message, a session's
/// queue handed over); a peer is a member, not a stranger. The server's side is lifted where the service starts
/// (`ClusterNode::start`).
fn unlimited(c: ClusterClient<Channel>) -> ClusterClient<Channel> {
    c.max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
}

/// A client on a connection of its own, for a long-lived stream (Raft replication, publish forwarding) that should
/// not share its TCP window with the short calls.
pub fn dedicated_client(addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
    Ok(unlimited(ClusterClient::new(channel(addr)?)))
}

/// A channel to `addr`; with peer TLS, each connection it makes is a TLS one with the files in force then (HTTP/2
/// inside, so the URI's scheme stays `http`).
fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    Ok(match crate::peer_tls::active() {
        Some(tls) => endpoint.connect_with_connector_lazy(crate::peer_tls::Connector(tls.clone())),
        None => endpoint.connect_lazy(),
    })
}

pub struct Factory;

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network { target, client: dedicated_client(&node.addr).ok() }
    }
}

pub struct Network {
    target: NodeId,
    client: Option<ClusterClient<Channel>>,
}

pub fn to_message<T: Serialize>(value: &T) -> Result<RaftMessage, serde_json::Error> {
    Ok(RaftMessage { json: serde_json::to_vec(value)?.into() })
}

impl Network {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        rpc: impl AsyncFnOnce(
            &mut ClusterClient<Channel>,
            RaftMessage,
        ) -> Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other("bad peer address"))));
        };
        let msg = to_message(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = rpc(client, msg).await.map_err(|s| RPCError::Unreachable(Unreachable::new(&s)))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().json).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, async |c, m| c.append_entries(m).await).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(&rpc, async |c, m| c.install_snapshot(m).await).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, async |c, m| c.vote(m).await).await
    }
}

/// HTTP/2 flow-control window of each stream between nodes, both ways (HTTP/2's default is 64 KiB). A forward batch
/// may hold up to 1 MiB of messages, and a single MQTT message up to 256 MiB: with the default window, every 64 KiB
/// of one waits for the receiver's WINDOW_UPDATE, a round trip, and a busy receiver sends those late. The window
/// bounds what a peer may have sent and this node not yet read, per stream.
pub const STREAM_WINDOW: u32 = 4 << 20;
/// The window of a whole connection (all its streams together); see `STREAM_WINDOW`.
pub const CONNECTION_WINDOW: u32 = 8 << 20;
