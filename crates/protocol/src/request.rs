//! Request decoding and response encoding around the `kafka-protocol` codecs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, AddRaftVoterRequest,
    AlterClientQuotasRequest, AlterConfigsRequest, AlterPartitionReassignmentsRequest, ApiKey,
    ApiVersionsRequest, ConsumerGroupDescribeRequest, ConsumerGroupHeartbeatRequest,
    CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest, DeleteRecordsRequest,
    DeleteTopicsRequest, DescribeClientQuotasRequest, DescribeClusterRequest,
    DescribeConfigsRequest, DescribeGroupsRequest, DescribeLogDirsRequest,
    DescribeProducersRequest, DescribeQuorumRequest, DescribeTopicPartitionsRequest,
    DescribeTransactionsRequest, ElectLeadersRequest, EndTxnRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, IncrementalAlterConfigsRequest,
    InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest,
    ListOffsetsRequest, ListPartitionReassignmentsRequest, ListTransactionsRequest,
    MetadataRequest, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
    OffsetForLeaderEpochRequest, ProduceRequest, ProduceResponse, RemoveRaftVoterRequest,
    RequestHeader, ResponseHeader, SyncGroupRequest, TxnOffsetCommitRequest,
    UpdateRaftVoterRequest, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::versions::is_supported;

/// The served request APIs, each as its `ApiKey` name and its body type. One list makes both
/// [`Request`] and the decoder's dispatch on the api key, so the two cannot disagree.
macro_rules! requests {
    ($($api:ident($body:ty),)*) => {
        /// A decoded request of one of the served APIs.
        #[derive(Debug)]
        pub enum Request {
            $($api($body),)*
        }

        /// The body of a request of `api_key`; `None` for a key not in the list.
        fn decode_body(
            api_key: ApiKey,
            body: &mut Bytes,
            version: i16,
        ) -> Option<Result<Request, String>> {
            match api_key {
                $(ApiKey::$api => Some(decode(body, version).map(Request::$api)),)*
                _ => None,
            }
        }
    };
}

requests! {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    FindCoordinator(FindCoordinatorRequest),
    ListOffsets(ListOffsetsRequest),
    OffsetForLeaderEpoch(OffsetForLeaderEpochRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    AlterConfigs(AlterConfigsRequest),
    IncrementalAlterConfigs(IncrementalAlterConfigsRequest),
    DescribeCluster(DescribeClusterRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
    InitProducerId(InitProducerIdRequest),
    WriteTxnMarkers(WriteTxnMarkersRequest),
    TxnOffsetCommit(TxnOffsetCommitRequest),
    DescribeProducers(DescribeProducersRequest),
    AddPartitionsToTxn(AddPartitionsToTxnRequest),
    AddOffsetsToTxn(AddOffsetsToTxnRequest),
    EndTxn(EndTxnRequest),
    DescribeTransactions(DescribeTransactionsRequest),
    ListTransactions(ListTransactionsRequest),
    DescribeQuorum(DescribeQuorumRequest),
    AddRaftVoter(AddRaftVoterRequest),
    RemoveRaftVoter(RemoveRaftVoterRequest),
    UpdateRaftVoter(UpdateRaftVoterRequest),
    DeleteRecords(DeleteRecordsRequest),
    DescribeLogDirs(DescribeLogDirsRequest),
    ElectLeaders(ElectLeadersRequest),
    AlterPartitionReassignments(AlterPartitionReassignmentsRequest),
    ListPartitionReassignments(ListPartitionReassignmentsRequest),
    DescribeTopicPartitions(DescribeTopicPartitionsRequest),
    DescribeClientQuotas(DescribeClientQuotasRequest),
    AlterClientQuotas(AlterClientQuotasRequest),
    ConsumerGroupHeartbeat(ConsumerGroupHeartbeatRequest),
    ConsumerGroupDescribe(ConsumerGroupDescribeRequest),
}

/// One request frame: its header and decoded body.
#[derive(Debug)]
pub struct RequestFrame {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
    pub request: Request,
}

/// Why a frame could not become a request. Only `UnsupportedVersion` of ApiVersions has an
/// answer in the protocol; for the rest Kafka closes the connection, and so does strom.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("frame of {0} bytes is too short for a request header")]
    Truncated(usize),
    #[error("unknown api key {api_key} (correlation id {correlation_id})")]
    UnknownApiKey { api_key: i16, correlation_id: i32 },
    #[error("{api_key:?} v{version} is not supported (correlation id {correlation_id})")]
    UnsupportedVersion { api_key: ApiKey, version: i16, correlation_id: i32 },
    #[error(
        "malformed {api_key:?} v{version} request (correlation id {correlation_id}): {reason}"
    )]
    Malformed { api_key: ApiKey, version: i16, correlation_id: i32, reason: String },
}

/// Decodes a whole frame (without its length prefix).
pub fn decode_request(mut frame: Bytes) -> Result<RequestFrame, RequestError> {
    if frame.len() < crate::frame::HEADER_FIXED_BYTES {
        return Err(RequestError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key)
        .map_err(|_| RequestError::UnknownApiKey { api_key: raw_key, correlation_id })?;
    if !is_supported(api_key, version) {
        return Err(RequestError::UnsupportedVersion { api_key, version, correlation_id });
    }
    let malformed =
        |reason: String| RequestError::Malformed { api_key, version, correlation_id, reason };
    let header = RequestHeader::decode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| malformed(e.to_string()))?;
    let Some(request) = decode_body(api_key, &mut frame, version) else {
        // is_supported() admitted only the keys of the list
        return Err(RequestError::UnsupportedVersion { api_key, version, correlation_id });
    };
    let request = request.map_err(malformed)?;
    Ok(RequestFrame { api_key, api_version: version, header, request })
}

fn decode<T: Decodable>(body: &mut Bytes, version: i16) -> Result<T, String> {
    T::decode(body, version).map_err(|e| e.to_string())
}

/// Encodes a whole response frame: length prefix, response header (its version chosen by the
/// API and version, e.g. always v0 for ApiVersions), then the body.
pub fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, String> {
    let buf = encode_frame(api_key, version, correlation_id, body, BytesMut::with_capacity)?;
    Ok(buf.freeze())
}

/// Encodes a response frame like [`encode_response`], except that the byte fields that are one
/// of `shared` (record batches served by Fetch) are not copied: the frame comes back as a chain
/// of buffers, written back to back, in which those fields are the `shared` buffers themselves.
/// Byte fields below `SHARED_BYTES_MIN` are copied all the same (an extra buffer costs more).
pub fn encode_response_sharing<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
    shared: &[Bytes],
) -> Result<Vec<Bytes>, String> {
    let shared_len: usize = shared.iter().map(Bytes::len).sum();
    let buf = encode_frame(api_key, version, correlation_id, body, |size| SharingBuf {
        done: Vec::with_capacity(2 * shared.len() + 1),
        done_len: 0,
        head: BytesMut::with_capacity(size.saturating_sub(shared_len)),
        shared,
        next: 0,
    })?;
    Ok(buf.into_chain())
}

/// Shared byte fields smaller than this are copied into the frame.
pub const SHARED_BYTES_MIN: usize = 1024;

/// Length prefix, response header (its version chosen by the API and version, e.g. always v0
/// for ApiVersions), then the body, into a buffer made for the frame's size.
fn encode_frame<R: Encodable, B: ByteBufMut>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
    make_buf: impl FnOnce(usize) -> B,
) -> Result<B, String> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api_key.response_header_version(version);
    let size = header.compute_size(header_version).map_err(|e| e.to_string())?
        + body.compute_size(version).map_err(|e| e.to_string())?;
    let mut buf = make_buf(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    debug_assert_eq!(buf.offset(), 4 + size);
    Ok(buf)
}

/// An encoding buffer that splices `shared` byte fields in by reference. The codecs write a
/// byte field with one `put_slice` of the field's own bytes, so a slice that starts where one
/// of `shared` starts, with its length, is that buffer.
struct SharingBuf<'a> {
    /// Finished parts of the frame, in order.
    done: Vec<Bytes>,
    done_len: usize,
    /// Bytes written since the last shared part.
    head: BytesMut,
    shared: &'a [Bytes],
    /// Where in `shared` to look first: fields are usually encoded in the order given.
    next: usize,
}

impl SharingBuf<'_> {
    fn find_shared(&mut self, src: &[u8]) -> Option<Bytes> {
        if src.len() < SHARED_BYTES_MIN {
            return None;
        }
        let is = |b: &Bytes| b.as_ptr() == src.as_ptr() && b.len() == src.len();
        let n = self.shared.len();
        let i = (0..n).map(|k| (self.next + k) % n).find(|&i| is(&self.shared[i]))?;
        self.next = i + 1;
        Some(self.shared[i].clone())
    }

    fn into_chain(mut self) -> Vec<Bytes> {
        if !self.head.is_empty() {
            self.done.push(self.head.freeze());
        }
        self.done
    }
}

// SAFETY: every method delegates to the `BytesMut` behind it, which upholds `BufMut`'s
// contract; `put_slice` either delegates too or appends nothing to `head`.
#[allow(unsafe_code)]
unsafe impl BufMut for SharingBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `cnt` is about `chunk_mut`, which is `head`'s.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.find_shared(src) {
            Some(part) => {
                let head = self.head.split().freeze();
                if !head.is_empty() {
                    self.done_len += head.len();
                    self.done.push(head);
                }
                self.done_len += part.len();
                self.done.push(part);
            }
            None => self.head.put_slice(src),
        }
    }
}

impl ByteBufMut for SharingBuf<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.head.len()
    }

    /// Gaps (length fields filled in later) may only reach back into the unshared tail.
    fn seek(&mut self, offset: usize) {
        assert!(offset >= self.done_len, "seek before a shared part of the frame");
        self.head.resize(offset - self.done_len, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        assert!(r.start >= self.done_len, "range before a shared part of the frame");
        &mut self.head[r.start - self.done_len..r.end - self.done_len]
    }
}

/// Encodes a whole request frame (the client side, used by replica fetchers).
pub fn encode_request<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &R,
) -> Result<Bytes, String> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_string(client_id.into())));
    let header_version = api_key.request_header_version(version);
    let size = header.compute_size(header_version).map_err(|e| e.to_string())?
        + body.compute_size(version).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header.encode(&mut buf, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// Decodes a response frame (without its length prefix): its correlation id and body.
pub fn decode_response<R: Decodable>(
    api_key: ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<(i32, R), String> {
    let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
        .map_err(|e| e.to_string())?;
    let body = R::decode(&mut frame, version).map_err(|e| e.to_string())?;
    Ok((header.correlation_id, body))
}

/// Reads the correlation id of a frame too broken to decode, for logging.
pub fn peek_correlation_id(frame: &[u8]) -> Option<i32> {
    let mut b = frame.get(4..8)?;
    Some(b.get_i32())
}

/// A Produce response frame (as [`encode_response`] made it) with its `throttle_time_ms` set
/// (KIP-219: the broker tells a client over its quota how long it is held). The field sits
/// after the variable-length body, so the small response is decoded and encoded again.
pub fn produce_response_throttled(
    version: i16,
    frame: &Bytes,
    throttle_time_ms: i32,
) -> Result<Bytes, String> {
    let mut body = frame.slice(4.min(frame.len())..);
    let header =
        ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version))
            .map_err(|e| e.to_string())?;
    let mut response = ProduceResponse::decode(&mut body, version).map_err(|e| e.to_string())?;
    response.throttle_time_ms = throttle_time_ms;
    encode_response(ApiKey::Produce, version, header.correlation_id, &response)
}

/// Sets `throttle_time_ms` of a Fetch response frame (v1+) in place of its first buffer: the
/// field is the body's first, right after the response header, which strom writes without
/// tagged fields. The records the frame shares are not touched. False if the frame is too
/// short to hold it (not a Fetch response).
pub fn set_fetch_throttle_time(version: i16, chain: &mut [Bytes], throttle_time_ms: i32) -> bool {
    // length prefix, correlation id, and the flexible header's empty tagged fields
    let at = 4 + 4 + usize::from(ApiKey::Fetch.response_header_version(version) >= 1);
    let Some(first) = chain.first_mut() else { return false };
    if version < 1 || first.len() < at + 4 {
        return false;
    }
    let mut patched = BytesMut::from(first.as_ref());
    patched[at..at + 4].copy_from_slice(&throttle_time_ms.to_be_bytes());
    *first = patched.freeze();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsResponse;
    use kafka_protocol::protocol::StrBytes;

    fn frame(key: i16, version: i16, correlation: i32, body: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(key);
        b.put_i16(version);
        b.put_i32(correlation);
        b.put_slice(body);
        b.freeze()
    }

    #[test]
    fn throttle_times_land_in_produce_and_fetch_responses_of_every_served_version() {
        use kafka_protocol::messages::FetchResponse;
        for version in 3..=10 {
            let frame =
                encode_response(ApiKey::Produce, version, 9, &ProduceResponse::default()).unwrap();
            let throttled = produce_response_throttled(version, &frame, 1234).unwrap();
            let mut body = throttled.slice(4..);
            let header =
                ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version))
                    .unwrap();
            assert_eq!(header.correlation_id, 9);
            let back = ProduceResponse::decode(&mut body, version).unwrap();
            assert_eq!(back.throttle_time_ms, 1234, "v{version}");
        }
        for version in 4..=16 {
            let records = Bytes::from(vec![7u8; 2 * SHARED_BYTES_MIN]);
            let mut resp = FetchResponse::default();
            resp.responses.push(
                kafka_protocol::messages::fetch_response::FetchableTopicResponse::default()
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_response::PartitionData::default()
                            .with_records(Some(records.clone())),
                    ]),
            );
            let mut chain = encode_response_sharing(
                ApiKey::Fetch,
                version,
                5,
                &resp,
                std::slice::from_ref(&records),
            )
            .unwrap();
            assert!(set_fetch_throttle_time(version, &mut chain, 4321));
            let whole: Vec<u8> = chain.iter().flat_map(|b| b.iter().copied()).collect();
            let mut body = Bytes::from(whole).slice(4..);
            ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(version))
                .unwrap();
            let back = FetchResponse::decode(&mut body, version).unwrap();
            assert_eq!(back.throttle_time_ms, 4321, "v{version}");
            assert_eq!(back.responses[0].partitions[0].records.as_ref(), Some(&records));
        }
    }

    #[test]
    fn decodes_a_real_api_versions_v3_request() {
        let mut b = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(3)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        header.encode(&mut b, 2).unwrap();
        ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("x"))
            .encode(&mut b, 3)
            .unwrap();
        let f = decode_request(b.freeze()).unwrap();
        assert_eq!(f.header.correlation_id, 7);
        assert!(matches!(f.request, Request::ApiVersions(_)));
    }

    #[test]
    fn refuses_unknown_keys_versions_and_garbage_without_panicking() {
        assert!(matches!(
            decode_request(frame(999, 0, 5, &[])),
            Err(RequestError::UnknownApiKey { api_key: 999, correlation_id: 5 })
        ));
        assert!(matches!(
            decode_request(frame(ApiKey::Produce as i16, 99, 6, &[])),
            Err(RequestError::UnsupportedVersion { version: 99, .. })
        ));
        assert!(matches!(
            decode_request(Bytes::from_static(&[0, 1])),
            Err(RequestError::Truncated(2))
        ));
        // every prefix of a valid produce header with junk must fail cleanly
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = decode_request(frame(ApiKey::Produce as i16, 9, 1, &junk));
            let _ = decode_request(frame(ApiKey::Metadata as i16, 12, 1, &junk));
            let _ = decode_request(frame(ApiKey::Fetch as i16, 12, 1, &junk));
        }
    }

    #[test]
    fn api_versions_response_header_is_always_v0() {
        let resp = ApiVersionsResponse::default();
        let v3 = encode_response(ApiKey::ApiVersions, 3, 9, &resp).unwrap();
        // length, correlation id, then straight into the body: no tagged-field byte
        assert_eq!(&v3[4..8], &9i32.to_be_bytes());
        assert_eq!(v3.len(), 4 + 4 + resp.compute_size(3).unwrap());
    }

    #[test]
    fn a_shared_fetch_response_is_the_copied_one_without_copying_the_records() {
        use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
        use kafka_protocol::messages::FetchResponse;
        let big = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"under the sharing threshold");
        let other_big = Bytes::from(vec![7u8; 3000]);
        let partition = |i: i32, records: &Bytes| {
            PartitionData::default().with_partition_index(i).with_records(Some(records.clone()))
        };
        let resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_partitions(vec![
                partition(0, &big),
                partition(1, &small),
                partition(2, &other_big),
                partition(3, &Bytes::new()),
            ])]);
        // Non-flexible (i32 lengths) and flexible (varint lengths, tagged fields) versions.
        for version in [4, 12, 16] {
            let copied = encode_response(ApiKey::Fetch, version, 3, &resp).unwrap();
            let shared = [big.clone(), small.clone(), other_big.clone()];
            let chain = encode_response_sharing(ApiKey::Fetch, version, 3, &resp, &shared).unwrap();
            assert_eq!(chain.concat(), copied.to_vec(), "v{version}");
            for records in [&big, &other_big] {
                assert!(chain.iter().any(|part| part.as_ptr() == records.as_ptr()), "v{version}");
            }
            assert!(!chain.iter().any(|part| part.as_ptr() == small.as_ptr()), "v{version}");
            assert_eq!(chain.len(), 5, "head, big, middle, other_big, tail (v{version})");
        }
    }
}
