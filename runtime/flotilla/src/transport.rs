//! Connections and streams: tuned HTTP/2 channels and servers, bounded message sizes, and the
//! batching stream that turns many small messages into one frame.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// Largest message a peer may send; larger values travel as chunked streams.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Values up to this size travel inline through the head; larger ones stay in a worker's store.
pub const INLINE_MAX_BYTES: usize = 64 << 10;
/// Chunk size of object streams.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Most messages put in one batch.
const MAX_BATCH: usize = 4096;

const STREAM_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame we accept: big frames cut per-frame work on large objects.
const FRAME_BYTES: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Opens a channel to `address` (`host:port`).
pub async fn connect(address: &str) -> Result<Channel> {
    let uri = if address.starts_with("http://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::Config(format!("bad address {address:?}: {e}")))?;
    endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| Error::Connect {
            address: address.to_string(),
            message: error_chain(&e),
        })
}

/// A server builder with the same tuning.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// Accepted connections of a listener, with Nagle's algorithm off (small messages go at once).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Yields everything queued in a channel as one batch, so a burst of submissions costs one frame.
pub struct Batches<T> {
    rx: mpsc::UnboundedReceiver<T>,
}

impl<T> Batches<T> {
    /// Batches what `rx` receives.
    pub fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Batches { rx }
    }
}

impl<T> Stream for Batches<T> {
    type Item = Vec<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<T>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(first)) => {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                Poll::Ready(Some(batch))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
