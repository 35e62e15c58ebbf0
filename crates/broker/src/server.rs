//! The Kafka listener: one task per connection reads frames, a writer task sends responses in
//! request order, as Kafka requires.
//!
//! Requests are handled in two parts. The ordered part (decoding, appending to logs, admin
//! calls) runs in the reader, in arrival order, so pipelined produce requests append in order.
//! The waiting part (fsync acknowledgement, fetch long-poll) runs in its own task, so a slow
//! request does not stop the connection from reading the next one.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
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
type Pending = oneshot::Receiver<Option<Bytes>>;

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
                let _ = otx.send(Some(bytes));
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
                let _ = otx.send(bytes);
            }
            Reply::Later(fut) => {
                tokio::spawn(async move {
                    let _ = otx.send(fut.await);
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
        let bytes = match pending.try_recv() {
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
        if let Some(bytes) = bytes {
            if out.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
    let _ = out.flush().await;
}
