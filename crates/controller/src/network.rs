//! How this voter reaches the others: openraft's `RaftNetworkFactory` over gRPC (the
//! `strom.raft.v1.Raft` service on each voter's control port), and the channel cache the
//! request forwarding shares.
//!
//! A [`PeerTransport`] is one peer's RPCs in transport terms; [`GrpcTransport`] is the tonic
//! client. [`PeerNetwork`] maps transport failures to what openraft expects: `Unreachable`
//! (openraft backs off), `Network` (it retries at once), and the peer's own refusals as
//! `RemoteError` (a snapshot stream that must restart).
//!
//! Every RPC names its sender and the replica it is meant for (node id and directory id,
//! KIP-853's replica keys, from the sender's membership): a replica that is not that one
//! refuses it (FAILED_PRECONDITION), which the sender takes as an unreachable peer. The time
//! of each peer's last answer is kept ([`Contacts`]) for DescribeQuorum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, SnapshotMismatch,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::EntryPayload;
use strom_metadata::quorum::DirectoryId;
use strom_proto::raft as pb;
use strom_proto::raft::raft_client::RaftClient;
use tonic::transport::{Channel, Endpoint};

use crate::codec::{self, CodecError};
use crate::types::{ControllerNode, Entry, LogId, TypeConfig};

/// The largest gRPC message a node sends or accepts on the control port (raft RPCs, relayed
/// requests, the metadata stream): a batch of entries or a snapshot chunk with room to spare.
pub const RPC_MESSAGE_BYTES_MAX: usize = 16 << 20;

/// The snapshot bytes sent per InstallSnapshot chunk.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Encoded entry bytes one AppendEntries carries: openraft sends up to `max_payload_entries`
/// entries at once and waits one raft heartbeat for the answer, so a batch of large entries is
/// cut here to what fits (always at least one entry) and the rest goes in the next RPC.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 512 << 10;

/// Bytes an entry adds around its records on the wire (ids, tags), and a membership entry.
const ENTRY_WIRE_OVERHEAD_BYTES: usize = 64;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX * 2 <= RPC_MESSAGE_BYTES_MAX);
// One entry over the byte budget travels alone: the largest entry the controller proposes and
// a full budget of small ones both fit a message with room to spare.
const _: () = assert!(
    (strom_metadata::control::ENTRY_BYTES_MAX + APPEND_ENTRIES_BYTES_MAX) * 4
        <= RPC_MESSAGE_BYTES_MAX
);

/// The longest a connection attempt to a peer may take; shorter with short election timeouts.
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 1_000;

/// Peers (and active controllers) whose channels are kept; more distinct addresses than this
/// means a misconfiguration, and the cache starts over rather than grow.
pub const CHANNELS_MAX: usize = 64;

/// Why a peer RPC failed before the peer answered.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer cannot be reached (down, partitioned, its raft stopped).
    #[error("controller {target} at '{addr}' is unreachable: {reason}")]
    Unreachable { target: u64, addr: String, reason: String },
    /// The peer was reached but the exchange broke (bad frame, reset stream, deadline).
    #[error("RPC to controller {target} failed: {reason}")]
    Rpc { target: u64, reason: String },
    /// The peer is not the replica the membership names (another node id, or another
    /// directory id: its disk was replaced); it refused the RPC.
    #[error("controller {target} at '{addr}' refused: {reason}")]
    Refused { target: u64, addr: String, reason: String },
}

/// One peer's RPCs, in transport terms: a tonic client implements this. `timeout` is how long
/// the caller (openraft) waits for the answer.
pub trait PeerTransport: Send + Sync + 'static {
    fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<AppendEntriesResponse<u64>, TransportError>> + Send;
    /// `Ok(Err(mismatch))`: the peer expected another chunk; the stream restarts at 0.
    fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> impl std::future::Future<
        Output = Result<Result<InstallSnapshotResponse<u64>, SnapshotMismatch>, TransportError>,
    > + Send;
    fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<VoteResponse<u64>, TransportError>> + Send;
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, ControllerNode, E>>;

/// Maps transport failures to what openraft retries on: `Unreachable` backs off, a broken
/// exchange is a `Network` error.
fn to_rpc_error<E: std::error::Error>(e: TransportError) -> RPCError<u64, ControllerNode, E> {
    match &e {
        // A refusal lasts until the membership changes: back off as from a peer that is down.
        TransportError::Unreachable { .. } | TransportError::Refused { .. } => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        TransportError::Rpc { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

/// Milliseconds since the epoch, for answers Kafka reports as timestamps.
pub(crate) fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When each peer last answered a replication RPC (wall-clock ms), as the leader saw it:
/// DescribeQuorum's `LastFetchTimestamp` (openraft pushes, so an answer is a follower's
/// fetch). At most [`CHANNELS_MAX`] peers; more and it starts over.
#[derive(Clone, Debug, Default)]
pub(crate) struct Contacts(Arc<Mutex<HashMap<u64, i64>>>);

impl Contacts {
    fn answered(&self, target: u64) {
        let mut peers = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if peers.len() >= CHANNELS_MAX && !peers.contains_key(&target) {
            peers.clear();
        }
        peers.insert(target, wall_ms());
    }

    /// The last answer of `target`, wall-clock ms.
    pub(crate) fn last_answer_ms(&self, target: u64) -> Option<i64> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&target).copied()
    }
}

/// openraft's view of one peer over a [`PeerTransport`].
pub struct PeerNetwork<T> {
    target: u64,
    node: ControllerNode,
    transport: T,
    contacts: Contacts,
}

impl<T: PeerTransport> RaftNetwork<TypeConfig> for PeerNetwork<T> {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let cut_after = bound_entries(&mut rpc.entries);
        let answer =
            self.transport.append_entries(rpc, option.hard_ttl()).await.map_err(to_rpc_error)?;
        self.contacts.answered(self.target);
        // The peer took every entry sent; openraft sends the rest from there.
        Ok(match (answer, cut_after) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (answer, _) => answer,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self.transport.install_snapshot(rpc, option.hard_ttl()).await {
            Ok(Ok(resp)) => {
                self.contacts.answered(self.target);
                Ok(resp)
            }
            Ok(Err(mismatch)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(mismatch)),
            ))),
            Err(e) => Err(to_rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.transport.vote(rpc, option.hard_ttl()).await.map_err(to_rpc_error)
    }
}

/// Keeps the entries that fit [`APPEND_ENTRIES_BYTES_MAX`] (at least one); returns the log id
/// of the last one kept when some were cut.
fn bound_entries(entries: &mut Vec<Entry>) -> Option<LogId> {
    let mut total = 0;
    let mut keep = entries.len();
    for (i, entry) in entries.iter().enumerate() {
        total += entry_wire_bytes(entry);
        if i > 0 && total > APPEND_ENTRIES_BYTES_MAX {
            keep = i;
            break;
        }
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

fn entry_wire_bytes(entry: &Entry) -> usize {
    let records = match &entry.payload {
        EntryPayload::Normal(batch) => prost::Message::encoded_len(batch),
        EntryPayload::Blank | EntryPayload::Membership(_) => 0,
    };
    records + ENTRY_WIRE_OVERHEAD_BYTES
}

/// Lazily connected channels by control address, shared by raft replication and request
/// forwarding; a channel reconnects by itself after its peer comes back.
#[derive(Clone, Debug)]
pub struct Channels {
    connect_timeout: Duration,
    rpc_timeout: Duration,
    cache: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Channels {
    /// `rpc_timeout` bounds every call (its own deadline may be shorter); `connect_timeout`
    /// bounds a connection attempt.
    pub fn new(connect_timeout: Duration, rpc_timeout: Duration) -> Channels {
        Channels { connect_timeout, rpc_timeout, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Timeouts derived from the election timeout: an RPC that outlasts an election is of no
    /// use to raft, and a connect must leave time for the call.
    pub fn for_election_timeout(
        election_timeout_min_ms: u64,
        election_timeout_max_ms: u64,
    ) -> Self {
        let connect_ms = (election_timeout_min_ms / 2).clamp(1, CONNECT_TIMEOUT_MS_MAX);
        Channels::new(
            Duration::from_millis(connect_ms),
            Duration::from_millis(election_timeout_max_ms.max(1)),
        )
    }

    /// The channel to `addr` (`host:port`), created on first use; the connection itself is
    /// made by the first call.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().map_err(|_| "channel cache poisoned".to_string())?;
        if let Some(channel) = cache.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid control address '{addr}': {e}"))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.rpc_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        if cache.len() >= CHANNELS_MAX {
            cache.clear();
        }
        cache.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A replica: its node id and, when known, its directory id (KIP-853's replica key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaKey {
    pub node_id: u64,
    pub directory_id: Option<DirectoryId>,
}

fn directory_bytes(id: Option<DirectoryId>) -> Vec<u8> {
    id.map(|d| d.0.to_vec()).unwrap_or_default()
}

/// The keys a request from `from` to `to` carries.
pub(crate) fn keys_to_pb(from: ReplicaKey, to: ReplicaKey) -> pb::ReplicaKeys {
    pb::ReplicaKeys {
        from_node_id: from.node_id,
        from_directory_id: directory_bytes(from.directory_id),
        to_node_id: to.node_id,
        to_directory_id: directory_bytes(to.directory_id),
    }
}

/// Whether this replica (`me`) may act on an RPC carrying `keys`: it must be meant for this
/// node id and, when the sender knows a directory id for it, this directory. The refusal says
/// what to do about it.
pub(crate) fn check_keys(me: ReplicaKey, keys: Option<&pb::ReplicaKeys>) -> Result<(), String> {
    // A sender without keys predates them; it cannot have meant another replica.
    let Some(keys) = keys else { return Ok(()) };
    if keys.to_node_id != me.node_id {
        return Err(format!(
            "this is node {}, not node {} that controller {} addressed: its membership has a \
             stale control address for node {}",
            me.node_id, keys.to_node_id, keys.from_node_id, keys.to_node_id
        ));
    }
    let meant = DirectoryId::from_slice(&keys.to_directory_id);
    match (meant, me.directory_id) {
        (Some(meant), Some(mine)) if meant != mine => Err(format!(
            "INVALID_VOTER_KEY: the metadata quorum knows node {} by directory id {meant}, and \
             this node's directory id is {mine} (its data directory was replaced): it cannot \
             act as its former self; remove the voter (strom cluster remove-voter --node-id {} \
             --directory-id {meant}), after which this node joins as an observer and can be \
             added again (strom cluster add-voter --node-id {})",
            me.node_id, me.node_id, me.node_id
        )),
        _ => Ok(()),
    }
}

/// The tonic client of one peer's `Raft` service.
pub struct GrpcTransport {
    target: u64,
    addr: String,
    /// Who sends, and which replica the membership says `target` is.
    keys: pb::ReplicaKeys,
    /// `Err`: the address cannot be used; every call fails as unreachable.
    client: Result<RaftClient<Channel>, String>,
}

impl GrpcTransport {
    pub fn new(from: ReplicaKey, to: ReplicaKey, addr: &str, channels: &Channels) -> Self {
        let client = channels.get(addr).map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(RPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RPC_MESSAGE_BYTES_MAX)
        });
        GrpcTransport {
            target: to.node_id,
            addr: addr.to_string(),
            keys: keys_to_pb(from, to),
            client,
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, TransportError> {
        self.client.clone().map_err(|reason| TransportError::Unreachable {
            target: self.target,
            addr: self.addr.clone(),
            reason,
        })
    }

    fn status_error(&self, status: tonic::Status) -> TransportError {
        match status.code() {
            // A refused or dropped connection: the peer is down or restarting.
            tonic::Code::Unavailable | tonic::Code::Cancelled => TransportError::Unreachable {
                target: self.target,
                addr: self.addr.clone(),
                reason: status.message().to_string(),
            },
            tonic::Code::FailedPrecondition => TransportError::Refused {
                target: self.target,
                addr: self.addr.clone(),
                reason: status.message().to_string(),
            },
            code => TransportError::Rpc {
                target: self.target,
                reason: format!("{code:?}: {}", status.message()),
            },
        }
    }

    fn decode_error(&self, e: CodecError) -> TransportError {
        TransportError::Rpc { target: self.target, reason: format!("bad answer: {e}") }
    }

    /// A raft call's answer, decoded, or the transport error it amounts to.
    fn answer<T, R>(
        &self,
        answer: Result<tonic::Response<T>, tonic::Status>,
        decode: impl FnOnce(T) -> Result<R, CodecError>,
    ) -> Result<R, TransportError> {
        let answer = answer.map_err(|s| self.status_error(s))?;
        decode(answer.into_inner()).map_err(|e| self.decode_error(e))
    }
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

impl PeerTransport for GrpcTransport {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<u64>, TransportError> {
        let mut message = codec::append_request_to_pb(&rpc);
        message.keys = Some(self.keys.clone());
        let answer = self.client()?.append_entries(request(message, timeout)).await;
        self.answer(answer, codec::append_response_from_pb)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<Result<InstallSnapshotResponse<u64>, SnapshotMismatch>, TransportError> {
        let mut message = codec::install_request_to_pb(rpc);
        message.keys = Some(self.keys.clone());
        let answer = self.client()?.install_snapshot(request(message, timeout)).await;
        self.answer(answer, codec::install_reply_from_pb)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        timeout: Duration,
    ) -> Result<VoteResponse<u64>, TransportError> {
        let mut message = codec::vote_request_to_pb(&rpc);
        message.keys = Some(self.keys.clone());
        let answer = self.client()?.vote(request(message, timeout)).await;
        self.answer(answer, codec::vote_response_from_pb)
    }
}

/// Hands openraft a gRPC [`PeerNetwork`] per peer.
#[derive(Clone, Debug)]
pub struct GrpcNetwork {
    channels: Channels,
    /// This replica: the sender of every RPC.
    me: ReplicaKey,
    contacts: Contacts,
}

impl GrpcNetwork {
    pub fn new(channels: Channels, me: ReplicaKey) -> GrpcNetwork {
        GrpcNetwork { channels, me, contacts: Contacts::default() }
    }

    /// When each peer last answered.
    pub(crate) fn contacts(&self) -> Contacts {
        self.contacts.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerNetwork<GrpcTransport>;

    async fn new_client(&mut self, target: u64, node: &ControllerNode) -> Self::Network {
        let to = ReplicaKey { node_id: target, directory_id: node.directory_id };
        PeerNetwork {
            target,
            node: node.clone(),
            transport: GrpcTransport::new(self.me, to, &node.control_addr, &self.channels),
            contacts: self.contacts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use strom_metadata::records::{
        metadata_record::Record, FeatureRecord, MetadataBatch, MetadataRecord,
    };

    use super::*;

    fn entry(index: u64, records: usize) -> Entry {
        let record = MetadataRecord {
            record: Some(Record::Feature(FeatureRecord {
                name: "f".repeat(1_000),
                feature_level: 1,
            })),
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(MetadataBatch { records: vec![record; records] }),
        }
    }

    #[test]
    fn a_replica_refuses_rpcs_meant_for_another_node_or_directory() {
        let me = ReplicaKey { node_id: 3, directory_id: Some(DirectoryId([3; 16])) };
        let from = ReplicaKey { node_id: 1, directory_id: Some(DirectoryId([1; 16])) };
        let to = |node_id, directory_id| ReplicaKey { node_id, directory_id };
        assert_eq!(check_keys(me, None), Ok(()), "no keys: an older sender");
        assert_eq!(check_keys(me, Some(&keys_to_pb(from, me))), Ok(()));
        // The sender knows no directory id for node 3 yet (a static quorum): accepted.
        assert_eq!(check_keys(me, Some(&keys_to_pb(from, to(3, None)))), Ok(()));
        // A wiped disk: node 3 came back with another directory id.
        let refused = check_keys(me, Some(&keys_to_pb(from, to(3, Some(DirectoryId([9; 16]))))))
            .expect_err("another directory");
        assert!(refused.contains("INVALID_VOTER_KEY"), "{refused}");
        assert!(refused.contains("strom cluster remove-voter --node-id 3"), "{refused}");
        // Another node answers at node 4's address.
        let refused = check_keys(me, Some(&keys_to_pb(from, to(4, None)))).expect_err("node 4");
        assert!(refused.contains("not node 4"), "{refused}");
        // A replica that does not know its own directory id (none: a test) takes anything
        // addressed to its node id.
        let blank = ReplicaKey { node_id: 3, directory_id: None };
        let keyed = keys_to_pb(from, to(3, Some(DirectoryId([9; 16]))));
        assert_eq!(check_keys(blank, Some(&keyed)), Ok(()));
    }

    #[test]
    fn an_append_is_cut_to_its_byte_budget_but_always_carries_an_entry() {
        // Small entries all go.
        let mut small: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
        assert_eq!(bound_entries(&mut small), None);
        assert_eq!(small.len(), 10);
        // 200 KB entries: two fit 512 KiB, the third waits for the next RPC.
        let mut large: Vec<Entry> = (1..=5).map(|i| entry(i, 200)).collect();
        let last = bound_entries(&mut large).expect("cut");
        assert_eq!((large.len(), last.index), (2, 2));
        // One entry over the budget still goes, alone.
        let mut huge = vec![entry(7, 1_000), entry(8, 1)];
        assert_eq!(bound_entries(&mut huge).map(|l| l.index), Some(7));
        assert_eq!(huge.len(), 1);
        let mut none: Vec<Entry> = Vec::new();
        assert_eq!(bound_entries(&mut none), None);
    }
}
