//! A raw Kafka connection over `std::net::TcpStream` for tests that send what no well-behaved
//! client would: garbage, truncated frames, oversize lengths, unknown API keys and versions,
//! record batches with a wrong CRC. Valid parts are encoded with the `kafka-protocol` crate.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::segment;

/// Largest response frame the tests accept (a sanity bound, not the broker's limit).
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Socket read/write timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Byte offsets inside a v2 record batch (Kafka's layout).
pub mod batch_layout {
    /// base_offset i64, batch_length i32, partition_leader_epoch i32, magic i8, crc u32, ...
    pub const BATCH_LENGTH_OFFSET: usize = 8;
    pub const MAGIC_OFFSET: usize = 16;
    pub const CRC_OFFSET: usize = 17;
    /// Size of the header fields that precede the records.
    pub const HEADER_BYTES: usize = 61;
    /// base_offset + batch_length: bytes not counted by batch_length.
    pub const LOG_OVERHEAD: usize = 12;
}

/// One TCP connection speaking (or abusing) the Kafka protocol.
pub struct RawConnection {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl RawConnection {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<RawConnection> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(RawConnection { stream, next_correlation_id: 1 })
    }

    /// Writes bytes as they are, no framing.
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).context("write raw bytes")?;
        self.stream.flush()?;
        Ok(())
    }

    /// Closes our sending side (the broker reads EOF) while the socket stays open for reading.
    /// A connection the broker already closed counts as done.
    pub fn shutdown_write(&mut self) -> anyhow::Result<()> {
        match self.stream.shutdown(std::net::Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(e).context("shutdown write"),
        }
    }

    /// Encodes `body` at `body_version` under a header that claims `header_api_version`
    /// (they differ only when a test lies about the version) and sends the frame.
    pub fn send_request<R: Encodable + HeaderVersion>(
        &mut self,
        api_key: i16,
        header_api_version: i16,
        body: &R,
        body_version: i16,
    ) -> anyhow::Result<i32> {
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let frame = encode_frame(api_key, header_api_version, correlation_id, body, body_version)?;
        self.send_raw(&frame)?;
        Ok(correlation_id)
    }

    /// Reads one length-prefixed response frame.
    pub fn read_frame(&mut self) -> anyhow::Result<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).context("read response length")?;
        let len = i32::from_be_bytes(len);
        if len < 0 || len as usize > RESPONSE_BYTES_MAX {
            bail!("response frame length {len} out of range");
        }
        let mut body = vec![0u8; len as usize];
        self.stream.read_exact(&mut body).context("read response body")?;
        Ok(Bytes::from(body))
    }

    /// Reads a response, checks its correlation id, decodes its body at `version`.
    pub fn read_response<R: Decodable + HeaderVersion>(
        &mut self,
        correlation_id: i32,
        version: i16,
    ) -> anyhow::Result<R> {
        let mut frame = self.read_frame()?;
        let header = ResponseHeader::decode(&mut frame, R::header_version(version))
            .context("decode response header")?;
        anyhow::ensure!(
            header.correlation_id == correlation_id,
            "response correlation id {} for request {correlation_id}",
            header.correlation_id
        );
        let response = R::decode(&mut frame, version).context("decode response body")?;
        anyhow::ensure!(
            !frame.has_remaining(),
            "{} bytes left after the response body",
            frame.remaining()
        );
        Ok(response)
    }

    /// Succeeds when the broker closes the connection (EOF or reset) within `timeout`; bytes it
    /// sends before closing are discarded (bounded).
    pub fn expect_closed(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut discarded = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the broker kept the connection open for {timeout:?} ({discarded} bytes read)"
                );
            }
            self.stream.set_read_timeout(Some(left.min(IO_TIMEOUT)))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    discarded += n;
                    if discarded > RESPONSE_BYTES_MAX {
                        bail!("the broker keeps sending instead of closing");
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if matches!(e.kind(), ErrorKind::Interrupted) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e).context("read while waiting for close"),
            }
        }
    }

    /// ApiVersions v3 round trip; returns the broker's max version of `api_key`.
    pub fn max_version(&mut self, api_key: ApiKey) -> anyhow::Result<i16> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("strom-tests"))
            .with_client_software_version(StrBytes::from_static_str("0"));
        let id = self.send_request(ApiKey::ApiVersions as i16, 3, &request, 3)?;
        let response: ApiVersionsResponse = self.read_response(id, 3)?;
        anyhow::ensure!(response.error_code == 0, "ApiVersions error {}", response.error_code);
        response
            .api_keys
            .iter()
            .find(|v| v.api_key == api_key as i16)
            .map(|v| v.max_version)
            .with_context(|| format!("broker does not list {api_key:?}"))
    }

    /// Sends a Produce (acks=-1) of `batch` to `topic`/`partition` at the highest version both
    /// sides know and returns that partition's error code.
    pub fn produce(&mut self, topic: &str, partition: i32, batch: Bytes) -> anyhow::Result<i16> {
        Ok(self.produce_answer(topic, partition, batch)?.error_code)
    }

    /// Sends a Produce (acks=-1) of `batch` as [`Self::produce`] does and returns the
    /// partition's whole answer (error code, base offset, ...).
    pub fn produce_answer(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
    ) -> anyhow::Result<PartitionProduceResponse> {
        let version = self.produce_version()?;
        let id = self.send_produce(topic, partition, batch, version)?;
        self.read_produce_answer(id, version, partition)
    }

    /// Reads the answer to a Produce sent with [`Self::send_produce`] (answers come in request
    /// order) and returns `partition`'s part of it.
    pub fn read_produce_answer(
        &mut self,
        correlation_id: i32,
        version: i16,
        partition: i32,
    ) -> anyhow::Result<PartitionProduceResponse> {
        let response: ProduceResponse = self.read_response(correlation_id, version)?;
        response
            .responses
            .into_iter()
            .flat_map(|t| t.partition_responses)
            .find(|p| p.index == partition)
            .context("Produce response has no entry for the partition")
    }

    /// InitProducerId for an idempotent producer (no transactional id) at the highest version
    /// both sides know; the caller checks the answer's error code.
    pub fn init_producer_id(&mut self) -> anyhow::Result<InitProducerIdResponse> {
        let version = self.max_version(ApiKey::InitProducerId)?.min(INIT_PRODUCER_ID_VERSION_MAX);
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000);
        let id = self.send_request(ApiKey::InitProducerId as i16, version, &request, version)?;
        self.read_response(id, version)
    }

    /// The Produce version [`Self::produce`] sends: the highest both sides know.
    pub fn produce_version(&mut self) -> anyhow::Result<i16> {
        Ok(self.max_version(ApiKey::Produce)?.min(PRODUCE_VERSION_MAX))
    }

    /// Sends a Produce (acks=-1) at `version` without waiting for the answer.
    pub fn send_produce(
        &mut self,
        topic: &str,
        partition: i32,
        batch: Bytes,
        version: i16,
    ) -> anyhow::Result<i32> {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(batch))])]);
        self.send_request(ApiKey::Produce as i16, version, &request, version)
    }

    /// Fetches `topic`/`partition` from `offset` without waiting and returns the partition's
    /// error code and high watermark.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<(i16, i64)> {
        let version = self.max_version(ApiKey::Fetch)?.min(FETCH_VERSION_MAX);
        let request = FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1024 * 1024)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(1024 * 1024)])]);
        let id = self.send_request(ApiKey::Fetch as i16, version, &request, version)?;
        let response: FetchResponse = self.read_response(id, version)?;
        anyhow::ensure!(response.error_code == 0, "Fetch top-level error {}", response.error_code);
        response
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .map(|p| (p.error_code, p.high_watermark))
            .context("Fetch response has no entry for the partition")
    }

    /// A consumer's Fetch (no replica id, no wait, up to 8 MiB) of `topic`/`partition` from
    /// `offset`, sent at `version`; the partition's entry of the answer.
    pub fn fetch_partition(
        &mut self,
        version: i16,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<PartitionData> {
        let request = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(8 * 1024 * 1024)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(8 * 1024 * 1024)])]);
        let id = self.send_request(ApiKey::Fetch as i16, version, &request, version)?;
        let response: FetchResponse = self.read_response(id, version)?;
        anyhow::ensure!(response.error_code == 0, "Fetch top-level error {}", response.error_code);
        response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .context("Fetch response has no entry for the partition")
    }
}

/// The error code of `partition` in a Produce response.
pub fn produce_error_code(response: &ProduceResponse, partition: i32) -> anyhow::Result<i16> {
    response
        .responses
        .iter()
        .flat_map(|t| t.partition_responses.iter())
        .find(|p| p.index == partition)
        .map(|p| p.error_code)
        .context("Produce response has no entry for the partition")
}

/// Highest Produce version the tests send: v13 replaces topic names by topic ids.
pub const PRODUCE_VERSION_MAX: i16 = 12;
/// Highest Fetch version the tests send: v13 replaces topic names by topic ids.
pub const FETCH_VERSION_MAX: i16 = 12;
/// Highest InitProducerId version the `kafka-protocol` crate encodes.
pub const INIT_PRODUCER_ID_VERSION_MAX: i16 = 5;

/// `len | header | body` for one request.
pub fn encode_frame<R: Encodable + HeaderVersion>(
    api_key: i16,
    header_api_version: i16,
    correlation_id: i32,
    body: &R,
    body_version: i16,
) -> anyhow::Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(header_api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("strom-tests-raw")));
    let mut payload = BytesMut::new();
    header
        .encode(&mut payload, R::header_version(body_version))
        .context("encode request header")?;
    body.encode(&mut payload, body_version).context("encode request body")?;
    let mut frame = BytesMut::with_capacity(4 + payload.len());
    frame.put_i32(i32::try_from(payload.len())?);
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// A request header (v1: api key, version, correlation id, client id) with no body, for API
/// keys the `kafka-protocol` crate cannot encode because they do not exist.
pub fn header_only_frame(api_key: i16, api_version: i16, correlation_id: i32) -> Vec<u8> {
    let client_id = b"strom-tests-raw";
    let mut payload = Vec::new();
    payload.extend_from_slice(&api_key.to_be_bytes());
    payload.extend_from_slice(&api_version.to_be_bytes());
    payload.extend_from_slice(&correlation_id.to_be_bytes());
    payload.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    payload.extend_from_slice(client_id);
    let mut frame = (payload.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A valid, uncompressed v2 record batch of `values` (CreateTime `timestamp_ms`, no key).
pub fn record_batch(values: &[&[u8]], timestamp_ms: i64) -> anyhow::Result<Bytes> {
    encode_batch(values, (-1, -1, -1), false, timestamp_ms)
}

/// The same batch from an idempotent producer: `producer_id` and `producer_epoch` in its header,
/// its records numbered from `base_sequence`.
pub fn idempotent_batch(
    values: &[&[u8]],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_ms: i64,
) -> anyhow::Result<Bytes> {
    encode_batch(values, (producer_id, producer_epoch, base_sequence), false, timestamp_ms)
}

/// The same batch inside a transaction (the transactional attribute set).
pub fn transactional_batch(
    values: &[&[u8]],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_ms: i64,
) -> anyhow::Result<Bytes> {
    encode_batch(values, (producer_id, producer_epoch, base_sequence), true, timestamp_ms)
}

/// One batch; `producer` is (id, epoch, base sequence), all -1 for a producer without
/// idempotence.
fn encode_batch(
    values: &[&[u8]],
    producer: (i64, i16, i32),
    transactional: bool,
    timestamp_ms: i64,
) -> anyhow::Result<Bytes> {
    let (producer_id, producer_epoch, base_sequence) = producer;
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch unless offset - sequence stays constant, and
            // writes the first record's sequence as the batch's base sequence (-1: none).
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp: timestamp_ms,
            key: None,
            value: Some(Bytes::copy_from_slice(value)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )
    .context("encode record batch")?;
    Ok(buf.freeze())
}

/// One record as a consumer's Fetch served it, with its batch's producer fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: i64,
    /// -1 for a producer without idempotence.
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The batch's base sequence plus the record's offset delta (-1 without idempotence).
    pub sequence: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// Fetch requests a partition read may take before it gives up.
const READ_FETCHES_MAX: usize = 10_000;

/// Reads `topic`/`partition` from offset 0 up to the high watermark of the first answer with
/// consumer Fetches to `addr` (which must lead the partition); control records are left out.
pub fn read_partition(
    addr: SocketAddr,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Vec<FetchedRecord>> {
    let mut conn = RawConnection::connect(addr)?;
    let version = conn.max_version(ApiKey::Fetch)?.min(FETCH_VERSION_MAX);
    let mut out = Vec::new();
    let (mut next, mut high_watermark) = (0i64, None);
    for _ in 0..READ_FETCHES_MAX {
        if high_watermark.is_some_and(|hw| next >= hw) {
            return Ok(out);
        }
        // A batch that starts below the fetch offset is served whole: its records below are
        // already read.
        let from = next;
        let data = conn.fetch_partition(version, topic, partition, from)?;
        anyhow::ensure!(
            data.error_code == 0,
            "Fetch {topic}-{partition} at {from} from {addr}: error {}",
            data.error_code
        );
        let hw = *high_watermark.get_or_insert(data.high_watermark);
        let bytes = data.records.unwrap_or_default();
        for info in segment::batches(&bytes) {
            let mut slice = bytes.slice(info.position..info.end());
            let set = RecordBatchDecoder::decode(&mut slice)
                .with_context(|| format!("decode the batch at {}", info.base_offset))?;
            for record in set.records {
                next = next.max(record.offset + 1);
                if !record.control && (from..hw).contains(&record.offset) {
                    out.push(FetchedRecord {
                        offset: record.offset,
                        producer_id: record.producer_id,
                        producer_epoch: record.producer_epoch,
                        sequence: record.sequence,
                        key: record.key,
                        value: record.value,
                    });
                }
            }
            // A batch of only control records still moves the position on.
            next = next.max(info.next_offset());
        }
    }
    bail!("{topic}-{partition}: not read up to its high watermark in {READ_FETCHES_MAX} fetches")
}

/// `batch` with one bit of its CRC field flipped.
pub fn with_wrong_crc(batch: &Bytes) -> Bytes {
    let mut bytes = BytesMut::from(&batch[..]);
    bytes[batch_layout::CRC_OFFSET] ^= 0x01;
    bytes.freeze()
}
