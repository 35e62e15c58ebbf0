//! The Kafka listener: one task per connection reads frames, a writer task sends responses in
//! request order, as Kafka requires.
//!
//! Requests are handled in two parts. The ordered part (decoding, appending to logs, admin
//! calls) runs in the reader, in arrival order, so pipelined produce requests append in order.
//! The waiting part (fsync acknowledgement, fetch long-poll) runs in its own task, so a slow
//! request does not stop the connection from reading the next one.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use strom_protocol::frame::{frame_len, FrameError};
use strom_protocol::request::{decode_request, encode_response, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::handlers::{self, Reply};
use crate::BrokerCtx;

/// Requests one connection may have in flight before the reader waits for the writer.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 128;
/// Open client connections, beyond which new ones are refused.
pub const CONNECTIONS_MAX: usize = 10_000;

pub(crate) async fn accept_loop(
    tcp: TcpListener,
    ctx: Arc<BrokerCtx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = tcp.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: {CONNECTIONS_MAX} connections open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(why) = serve(stream, peer, ctx, shutdown).await {
                tracing::info!(%peer, "closing connection: {why}");
            }
            drop(permit);
        });
    }
}

/// A response still being produced, in the order its request arrived.
type Pending = oneshot::Receiver<Option<Frame>>;

/// A response frame: one buffer, or a chain of buffers written back to back (see
/// `Reply::LaterChain`).
enum Frame {
    One(Bytes),
    Chain(Vec<Bytes>),
}

/// The remaining bytes of a chain, for vectored writes (`write_all_buf`).
struct ChainBuf {
    parts: std::collections::VecDeque<Bytes>,
    remaining: usize,
}

impl ChainBuf {
    fn new(parts: Vec<Bytes>) -> ChainBuf {
        let remaining = parts.iter().map(Bytes::len).sum();
        ChainBuf { parts: parts.into_iter().filter(|p| !p.is_empty()).collect(), remaining }
    }
}

impl Buf for ChainBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let n = dst.len().min(self.parts.len());
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = std::io::IoSlice::new(part);
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the chain");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else { break };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

async fn serve(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    ctx: Arc<BrokerCtx>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Pending>(IN_FLIGHT_PER_CONNECTION_MAX);
    let writer = tokio::spawn(write_responses(wr, rx));
    let max = ctx.config.socket_request_max_bytes;
    let result = loop {
        let mut prefix = [0u8; 4];
        let read = tokio::select! {
            r = rd.read_exact(&mut prefix) => r,
            _ = shutdown.changed() => break Ok(()),
        };
        if read.is_err() {
            break Ok(()); // the client went away between requests: normal
        }
        let len = match frame_len(prefix, max) {
            Ok(len) => len,
            Err(e @ FrameError::TooLarge { .. }) => {
                break Err(format!("{e} (raise socket.request.max.bytes to allow it)"))
            }
            Err(e) => break Err(e.to_string()),
        };
        let mut buf = BytesMut::zeroed(len);
        if let Err(e) = rd.read_exact(&mut buf).await {
            break Err(format!("truncated frame: expected {len} bytes: {e}"));
        }
        let frame = match decode_request(buf.freeze()) {
            Ok(f) => f,
            Err(RequestError::UnsupportedVersion {
                api_key: ApiKey::ApiVersions,
                version,
                correlation_id,
            }) => {
                // KIP-511: answer an unknown ApiVersions version with v0 and our ranges, so
                // the client can retry with a version we speak.
                let resp = ApiVersionsResponse::default()
                    .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
                    .with_api_keys(handlers::api_versions::api_keys());
                let bytes = encode_response(ApiKey::ApiVersions, 0, correlation_id, &resp)
                    .map_err(|e| format!("cannot encode ApiVersions v0: {e}"))?;
                tracing::debug!(version, "ApiVersions version unsupported; answered with v0");
                let (otx, orx) = oneshot::channel();
                let _ = otx.send(Some(Frame::One(bytes)));
                if tx.send(orx).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(e.to_string()),
        };
        let (otx, orx) = oneshot::channel();
        if tx.send(orx).await.is_err() {
            break Ok(());
        }
        match handlers::handle(&ctx, frame, peer).await {
            Reply::Now(bytes) => {
                let _ = otx.send(bytes.map(Frame::One));
            }
            Reply::Later(fut) => {
                tokio::spawn(async move {
                    let _ = otx.send(fut.await.map(Frame::One));
                });
            }
            Reply::LaterChain(fut) => {
                tokio::spawn(async move {
                    let _ = otx.send(fut.await.map(Frame::Chain));
                });
            }
            Reply::Close(why) => break Err(why),
        }
    };
    drop(tx);
    // Responses already owed are still delivered (unless the client is gone).
    let _ = writer.await;
    result
}

async fn write_responses(wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Pending>) {
    use tokio::sync::mpsc::error::TryRecvError;
    use tokio::sync::oneshot::error::TryRecvError as OneshotTryRecv;
    let mut out = BufWriter::with_capacity(64 * 1024, wr);
    loop {
        // Flush only before waiting: responses that are ready together share one syscall,
        // and none sits in the buffer while a later one (a long poll) is awaited.
        let mut pending = match rx.try_recv() {
            Ok(p) => p,
            Err(TryRecvError::Empty) => {
                if out.flush().await.is_err() {
                    return;
                }
                match rx.recv().await {
                    Some(p) => p,
                    None => return,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let frame = match pending.try_recv() {
            Ok(b) => b,
            Err(OneshotTryRecv::Empty) => {
                if out.flush().await.is_err() {
                    return;
                }
                match pending.await {
                    Ok(b) => b,
                    Err(_) => return,
                }
            }
            Err(OneshotTryRecv::Closed) => return,
        };
        let written = match frame {
            None => Ok(()),
            Some(Frame::One(bytes)) => out.write_all(&bytes).await,
            // Vectored writes: parts larger than the buffer go to the socket from where they
            // are (BufWriter flushes what it holds first, so the order stays).
            Some(Frame::Chain(parts)) => out.write_all_buf(&mut ChainBuf::new(parts)).await,
        };
        if written.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, Bytes};

    use super::ChainBuf;

    #[test]
    fn a_chain_buffer_yields_its_parts_in_order_across_partial_writes() {
        let parts = vec![
            Bytes::from_static(b"head"),
            Bytes::new(),
            Bytes::from_static(b"records"),
            Bytes::from_static(b"tail"),
        ];
        let mut chain = ChainBuf::new(parts);
        assert_eq!(chain.remaining(), 15);
        let mut slices = [std::io::IoSlice::new(&[]); 8];
        assert_eq!(chain.chunks_vectored(&mut slices), 3, "empty parts are dropped");
        let mut out = Vec::new();
        // Writes that stop mid-part, at a part boundary, and across two parts.
        for step in [2, 2, 5, 4, 2] {
            out.extend_from_slice(&chain.copy_to_bytes(step));
        }
        assert_eq!(out, b"headrecordstail");
        assert_eq!(chain.remaining(), 0);
        assert!(chain.chunk().is_empty());
    }
}
