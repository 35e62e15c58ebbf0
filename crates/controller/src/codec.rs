//! How raft state is laid out in bytes: CRC-32C-checked frames, conversions between openraft's
//! types (log entries, votes, snapshot metadata, and the voter-to-voter RPCs) and the prost
//! messages of `proto/raft.proto`, and small files replaced atomically.
//!
//! A frame is `[payload length: u32 LE][crc32c(payload): u32 LE][payload]`. Segment files are
//! frames back to back; the vote, committed and purged files hold one frame; a snapshot file
//! holds two (its `SnapshotMeta`, then the encoded `MetadataSnapshot`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

use openraft::error::SnapshotMismatch;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, SnapshotSegmentId};
use prost::Message;
use strom_metadata::quorum::DirectoryId;
use strom_metadata::records::MetadataBatch;
use strom_proto::raft as pb;

use crate::types::{
    ControllerNode, Entry, LogId, Membership, SnapshotMeta, StoredMembership, TypeConfig, Vote,
};

/// Bytes in front of every frame's payload: length and CRC.
pub(crate) const FRAME_HEADER_BYTES: usize = 8;

/// The largest payload a frame may claim. A length above it is garbage (a torn or overwritten
/// header), not an entry: no metadata batch comes near it.
pub(crate) const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// Bytes a log entry adds around its records (term, leader, index, field tags).
pub(crate) const ENTRY_OVERHEAD_BYTES_MAX: usize = 64;

// The controller refuses entries over `ENTRY_BYTES_MAX` before proposing them, so an entry's
// frame is always far from the limit that marks a header as garbage.
const _: () = assert!(
    (strom_metadata::control::ENTRY_BYTES_MAX + ENTRY_OVERHEAD_BYTES_MAX) * 4
        <= FRAME_PAYLOAD_BYTES_MAX
);

/// Why bytes could not be turned back into raft state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("frame is cut short: {0}")]
    Truncated(&'static str),
    #[error("frame claims {0} payload bytes, more than the {FRAME_PAYLOAD_BYTES_MAX} allowed")]
    Oversized(usize),
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("protobuf decode failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("message lacks required field '{0}'")]
    MissingField(&'static str),
}

impl From<CodecError> for io::Error {
    fn from(e: CodecError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Appends one frame holding `payload` to `out`; a payload over the limit is refused (a
/// reader would take its header for garbage), and `out` is left as it was.
pub(crate) fn put_frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), CodecError> {
    if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
        return Err(CodecError::Oversized(payload.len()));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reads the frame at the start of `buf`: its payload and the total bytes it spans.
pub(crate) fn get_frame(buf: &[u8]) -> Result<(&[u8], usize), CodecError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Err(CodecError::Truncated("header"));
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(CodecError::Oversized(len));
    }
    let end = FRAME_HEADER_BYTES + len;
    let payload = buf.get(FRAME_HEADER_BYTES..end).ok_or(CodecError::Truncated("payload"))?;
    let computed = crc32c::crc32c(payload);
    if computed != stored {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok((payload, end))
}

pub(crate) fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId { term: id.leader_id.term, leader_node_id: id.leader_id.node_id, index: id.index }
}

pub(crate) fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId::new(CommittedLeaderId::new(id.term, id.leader_node_id), id.index)
}

pub(crate) fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|ids| pb::VoterSet { node_ids: ids.iter().copied().collect() })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| {
                let directory_id = n.directory_id.map(|d| d.0.to_vec()).unwrap_or_default();
                (*id, pb::Node { control_addr: n.control_addr.clone(), directory_id })
            })
            .collect(),
    }
}

pub(crate) fn membership_from_pb(m: &pb::Membership) -> Membership {
    let configs: Vec<BTreeSet<u64>> =
        m.configs.iter().map(|c| c.node_ids.iter().copied().collect()).collect();
    let nodes: BTreeMap<u64, ControllerNode> = m
        .nodes
        .iter()
        .map(|(id, n)| {
            // Anything but 16 bytes (none written yet) reads as "not known".
            let directory_id = DirectoryId::from_slice(&n.directory_id);
            (*id, ControllerNode { control_addr: n.control_addr.clone(), directory_id })
        })
        .collect();
    Membership::new(configs, nodes)
}

pub(crate) fn entry_to_pb(entry: &Entry) -> pb::LogEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::log_entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(batch) => pb::log_entry::Payload::Normal(batch.encode_to_vec()),
        EntryPayload::Membership(m) => pb::log_entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::LogEntry {
        term: entry.log_id.leader_id.term,
        leader_node_id: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        payload: Some(payload),
    }
}

pub(crate) fn entry_from_pb(entry: pb::LogEntry) -> Result<Entry, CodecError> {
    let log_id = LogId::new(CommittedLeaderId::new(entry.term, entry.leader_node_id), entry.index);
    let payload = match entry.payload.ok_or(CodecError::MissingField("LogEntry.payload"))? {
        pb::log_entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::log_entry::Payload::Normal(bytes) => {
            EntryPayload::Normal(MetadataBatch::decode(bytes.as_slice())?)
        }
        pb::log_entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)),
    };
    Ok(Entry { log_id, payload })
}

/// One entry as the frame a segment stores.
pub(crate) fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> Result<(), CodecError> {
    put_frame(out, &entry_to_pb(entry).encode_to_vec())
}

pub(crate) fn decode_entry(payload: &[u8]) -> Result<Entry, CodecError> {
    entry_from_pb(pb::LogEntry::decode(payload)?)
}

pub(crate) fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote { term: v.leader_id.term, node_id: v.leader_id.node_id, committed: v.committed }
}

pub(crate) fn vote_from_pb(v: &pb::Vote) -> Vote {
    if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    }
}

pub(crate) fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_to_pb),
        last_membership_log_id: meta.last_membership.log_id().as_ref().map(log_id_to_pb),
        last_membership: Some(membership_to_pb(meta.last_membership.membership())),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

pub(crate) fn snapshot_meta_from_pb(meta: &pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    let membership = meta
        .last_membership
        .as_ref()
        .ok_or(CodecError::MissingField("SnapshotMeta.last_membership"))?;
    Ok(SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_from_pb),
        last_membership: StoredMembership::new(
            meta.last_membership_log_id.as_ref().map(log_id_from_pb),
            membership_from_pb(membership),
        ),
        snapshot_id: meta.snapshot_id.clone(),
    })
}

fn required<T>(field: Option<T>, name: &'static str) -> Result<T, CodecError> {
    field.ok_or(CodecError::MissingField(name))
}

pub(crate) fn append_request_to_pb(
    r: &AppendEntriesRequest<TypeConfig>,
) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_to_pb),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: r.leader_commit.as_ref().map(log_id_to_pb),
        keys: None,
    }
}

pub(crate) fn append_request_from_pb(
    r: pb::AppendEntriesRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(&required(r.vote, "AppendEntriesRequest.vote")?),
        prev_log_id: r.prev_log_id.as_ref().map(log_id_from_pb),
        entries: r.entries.into_iter().map(entry_from_pb).collect::<Result<_, _>>()?,
        leader_commit: r.leader_commit.as_ref().map(log_id_from_pb),
    })
}

pub(crate) fn append_response_to_pb(r: &AppendEntriesResponse<u64>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as R;
    let result = match r {
        AppendEntriesResponse::Success => R::Success(pb::Blank {}),
        AppendEntriesResponse::PartialSuccess(matching) => {
            R::PartialSuccess(pb::PartialSuccess { matching: matching.as_ref().map(log_id_to_pb) })
        }
        AppendEntriesResponse::Conflict => R::Conflict(pb::Blank {}),
        AppendEntriesResponse::HigherVote(v) => R::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

pub(crate) fn append_response_from_pb(
    r: pb::AppendEntriesResponse,
) -> Result<AppendEntriesResponse<u64>, CodecError> {
    use pb::append_entries_response::Result as R;
    Ok(match required(r.result, "AppendEntriesResponse.result")? {
        R::Success(_) => AppendEntriesResponse::Success,
        R::PartialSuccess(p) => {
            AppendEntriesResponse::PartialSuccess(p.matching.as_ref().map(log_id_from_pb))
        }
        R::Conflict(_) => AppendEntriesResponse::Conflict,
        R::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from_pb(&v)),
    })
}

pub(crate) fn vote_request_to_pb(r: &VoteRequest<u64>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
        keys: None,
    }
}

pub(crate) fn vote_request_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<u64>, CodecError> {
    Ok(VoteRequest {
        vote: vote_from_pb(&required(r.vote, "VoteRequest.vote")?),
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

pub(crate) fn vote_response_to_pb(r: &VoteResponse<u64>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to_pb),
    }
}

pub(crate) fn vote_response_from_pb(r: pb::VoteResponse) -> Result<VoteResponse<u64>, CodecError> {
    Ok(VoteResponse {
        vote: vote_from_pb(&required(r.vote, "VoteResponse.vote")?),
        vote_granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_from_pb),
    })
}

pub(crate) fn install_request_to_pb(
    r: InstallSnapshotRequest<TypeConfig>,
) -> pb::InstallSnapshotRequest {
    pb::InstallSnapshotRequest {
        vote: Some(vote_to_pb(&r.vote)),
        meta: Some(snapshot_meta_to_pb(&r.meta)),
        offset: r.offset,
        data: r.data,
        done: r.done,
        keys: None,
    }
}

pub(crate) fn install_request_from_pb(
    r: pb::InstallSnapshotRequest,
) -> Result<InstallSnapshotRequest<TypeConfig>, CodecError> {
    Ok(InstallSnapshotRequest {
        vote: vote_from_pb(&required(r.vote, "InstallSnapshotRequest.vote")?),
        meta: snapshot_meta_from_pb(&required(r.meta, "InstallSnapshotRequest.meta")?)?,
        offset: r.offset,
        data: r.data,
        done: r.done,
    })
}

fn segment_to_pb(s: &SnapshotSegmentId) -> pb::SnapshotSegmentId {
    pb::SnapshotSegmentId { snapshot_id: s.id.clone(), offset: s.offset }
}

fn segment_from_pb(s: pb::SnapshotSegmentId) -> SnapshotSegmentId {
    SnapshotSegmentId { id: s.snapshot_id, offset: s.offset }
}

/// A chunk's answer: taken (the receiver's vote), or the stream must restart.
pub(crate) fn install_reply_to_pb(
    r: &Result<InstallSnapshotResponse<u64>, SnapshotMismatch>,
) -> pb::InstallSnapshotReply {
    use pb::install_snapshot_reply::Result as R;
    let result = match r {
        Ok(resp) => R::Vote(vote_to_pb(&resp.vote)),
        Err(m) => R::Mismatch(pb::SnapshotMismatch {
            expect: Some(segment_to_pb(&m.expect)),
            got: Some(segment_to_pb(&m.got)),
        }),
    };
    pb::InstallSnapshotReply { result: Some(result) }
}

pub(crate) fn install_reply_from_pb(
    r: pb::InstallSnapshotReply,
) -> Result<Result<InstallSnapshotResponse<u64>, SnapshotMismatch>, CodecError> {
    use pb::install_snapshot_reply::Result as R;
    Ok(match required(r.result, "InstallSnapshotReply.result")? {
        R::Vote(v) => Ok(InstallSnapshotResponse { vote: vote_from_pb(&v) }),
        R::Mismatch(m) => Err(SnapshotMismatch {
            expect: segment_from_pb(required(m.expect, "SnapshotMismatch.expect")?),
            got: segment_from_pb(required(m.got, "SnapshotMismatch.got")?),
        }),
    })
}

/// Makes renames and creations in `dir` durable: without it a crash may forget a new name.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    strom_fsio::sync_dir(dir)
}

/// Replaces `dir/name` with `bytes`: a reader (or a restart after a crash) sees the old file or
/// the new one, never a mixture. Write a temp file, fsync it, rename it over, fsync the dir.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    strom_fsio::write_atomically(&dir.join(name), bytes)
}

/// Writes one framed message with [`write_atomic`].
pub(crate) fn write_message_atomic<M: Message>(dir: &Path, name: &str, msg: &M) -> io::Result<()> {
    let mut out = Vec::new();
    put_frame(&mut out, &msg.encode_to_vec())?;
    write_atomic(dir, name, &out)
}

/// Reads a file written by [`write_message_atomic`]; `None` if it was never written.
pub(crate) fn read_message<M: Message + Default>(path: &Path) -> io::Result<Option<M>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let (payload, end) = get_frame(&bytes)?;
    if end != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} has {} bytes after its frame", path.display(), bytes.len() - end),
        ));
    }
    Ok(Some(M::decode(payload).map_err(CodecError::from)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_metadata::records::{metadata_record::Record, FeatureRecord, MetadataRecord};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    #[test]
    fn every_entry_kind_survives_encoding() {
        let batch = MetadataBatch {
            records: vec![MetadataRecord {
                record: Some(Record::Feature(FeatureRecord {
                    name: "metadata.version".into(),
                    feature_level: 3,
                })),
            }],
        };
        let nodes = BTreeMap::from([
            (1, ControllerNode { control_addr: "a:1".into(), directory_id: None }),
            (
                2,
                ControllerNode {
                    control_addr: "b:2".into(),
                    directory_id: Some(DirectoryId([2; 16])),
                },
            ),
            (9, ControllerNode { control_addr: "learner:9".into(), directory_id: None }),
        ]);
        let joint = Membership::new(vec![BTreeSet::from([1]), BTreeSet::from([1, 2])], nodes);
        for entry in [
            Entry { log_id: log_id(3, 2, 7), payload: EntryPayload::Blank },
            Entry { log_id: log_id(3, 2, 8), payload: EntryPayload::Normal(batch) },
            Entry { log_id: log_id(4, 1, 9), payload: EntryPayload::Membership(joint) },
        ] {
            let mut out = Vec::new();
            encode_entry(&entry, &mut out).expect("a small entry encodes");
            let (payload, end) = get_frame(&out).expect("a whole frame");
            assert_eq!(end, out.len());
            assert_eq!(decode_entry(payload).expect("decodes"), entry);
        }
    }

    #[test]
    fn a_flipped_bit_or_a_cut_frame_is_refused() {
        let mut out = Vec::new();
        put_frame(&mut out, b"metadata").expect("a small frame");
        let mut flipped = out.clone();
        flipped[FRAME_HEADER_BYTES + 2] ^= 0x10;
        assert!(matches!(get_frame(&flipped), Err(CodecError::Checksum { .. })));
        assert!(matches!(get_frame(&out[..out.len() - 1]), Err(CodecError::Truncated(_))));
        assert!(matches!(get_frame(&out[..3]), Err(CodecError::Truncated(_))));
        let mut huge = out.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(get_frame(&huge), Err(CodecError::Oversized(_))));
    }

    #[test]
    fn an_oversized_payload_is_an_error_not_a_panic() {
        let mut out = b"kept".to_vec();
        let payload = vec![0u8; FRAME_PAYLOAD_BYTES_MAX + 1];
        let refused = put_frame(&mut out, &payload);
        assert!(matches!(refused, Err(CodecError::Oversized(n)) if n == payload.len()));
        assert_eq!(out, b"kept", "nothing is written");
    }

    #[test]
    fn voter_rpcs_survive_the_wire() {
        let entry = Entry { log_id: log_id(3, 2, 8), payload: EntryPayload::Blank };
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: Some(log_id(3, 2, 7)),
            entries: vec![entry.clone()],
            leader_commit: Some(log_id(2, 1, 5)),
        };
        let back = append_request_from_pb(append_request_to_pb(&append)).expect("decodes");
        assert_eq!(
            (back.vote, back.prev_log_id, back.leader_commit),
            (append.vote, append.prev_log_id, append.leader_commit)
        );
        assert_eq!(back.entries, vec![entry]);
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 2, 7))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 1)),
        ] {
            assert_eq!(
                append_response_from_pb(append_response_to_pb(&resp)).expect("decodes"),
                resp
            );
        }
        let vote = VoteRequest { vote: Vote::new(5, 3), last_log_id: Some(log_id(4, 1, 9)) };
        assert_eq!(vote_request_from_pb(vote_request_to_pb(&vote)).expect("decodes"), vote);
        let granted = VoteResponse { vote: Vote::new(5, 3), vote_granted: true, last_log_id: None };
        assert_eq!(vote_response_from_pb(vote_response_to_pb(&granted)).expect("decodes"), granted);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 40)),
            last_membership: StoredMembership::new(
                Some(log_id(1, 1, 0)),
                Membership::new(vec![BTreeSet::from([1, 2, 3])], ()),
            ),
            snapshot_id: "40-2".into(),
        };
        let chunk = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            meta: meta.clone(),
            offset: 1 << 20,
            data: vec![1, 2, 3],
            done: true,
        };
        let back = install_request_from_pb(install_request_to_pb(chunk)).expect("decodes");
        assert_eq!(
            (back.meta, back.offset, back.data, back.done),
            (meta, 1 << 20, vec![1, 2, 3], true)
        );
        let mismatch = SnapshotMismatch {
            expect: SnapshotSegmentId { id: "40-2".into(), offset: 0 },
            got: SnapshotSegmentId { id: "40-2".into(), offset: 7 },
        };
        for reply in [Ok(InstallSnapshotResponse { vote: Vote::new(2, 1) }), Err(mismatch)] {
            assert_eq!(install_reply_from_pb(install_reply_to_pb(&reply)).expect("decodes"), reply);
        }
        // A peer's message without its vote is refused, not defaulted.
        assert!(vote_request_from_pb(pb::VoteRequest {
            vote: None,
            last_log_id: None,
            keys: None
        })
        .is_err());
    }

    #[test]
    fn votes_and_snapshot_meta_round_trip() {
        for vote in [Vote::new(5, 2), Vote::new_committed(6, 3)] {
            assert_eq!(vote_from_pb(&vote_to_pb(&vote)), vote);
        }
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 40)),
            last_membership: StoredMembership::new(
                Some(log_id(1, 1, 0)),
                Membership::new(vec![BTreeSet::from([1, 2, 3])], ()),
            ),
            snapshot_id: "40-2".into(),
        };
        let back = snapshot_meta_from_pb(&snapshot_meta_to_pb(&meta)).expect("decodes");
        assert_eq!(back, meta);
    }
}
