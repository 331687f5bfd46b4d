//! Network helpers every role uses: tuned HTTP/2 channels and servers, bounded message sizes, the
//! head client with the cluster's credentials, listeners that refuse to serve beyond loopback
//! without a token ([`bind`]), connection caps and timeouts ([`guard`]), and the batching stream that turns many small messages into one
//! frame ([`batch`]).

pub mod batch;
pub mod bind;
pub mod guard;

pub use batch::Batches;

use std::time::Duration;

use flotilla_proto::{auth::AddAuth, v1::head_client::HeadClient};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::error::{Error, Result};

/// Largest gRPC message a peer may send; objects travel over HTTP, not in messages.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
pub use flotilla_proto::INLINE_MAX_BYTES;

/// How often an idle connection to the head is pinged, and how long an answer may take: a head
/// that stops answering (stopped, or its node gone) is noticed within their sum.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEP_ALIVE_INTERVAL`].
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
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
        .http2_keepalive_interval(Some(KEEP_ALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEP_ALIVE_TIMEOUT))
}

/// Accepted connections of a listener, capped, with silent ones closed ([`guard`]).
pub fn incoming(
    listener: tokio::net::TcpListener,
    what: &'static str,
) -> Result<guard::GuardedListener> {
    Ok(guard::GuardedListener::new(listener, what)?)
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

/// A client of the head's gRPC service, carrying the cluster token and the protocol version.
pub type HeadRpc = HeadClient<InterceptedService<Channel, AddAuth>>;

/// Connects to the head at `address` with `token`, with the message size limits of the protocol.
pub async fn connect_head(address: &str, token: Option<&str>) -> Result<HeadRpc> {
    let channel = connect(address).await?;
    Ok(HeadClient::with_interceptor(channel, AddAuth::new(token))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Longest a client may take to send a request's headers on an HTTP port; a trickle is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` (HTTP/1.1) on `listener` in the background until `stop` changes; connections
/// are capped and silent ones closed ([`guard`]), and a request's headers must arrive within
/// [`HEADER_READ_TIMEOUT`].
pub fn spawn_http(
    listener: tokio::net::TcpListener,
    what: &'static str,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    serve_router(listener, what, app, stop, false)
}

/// Like [`spawn_http`], and a connection that opens with the HTTP/2 preface is served as HTTP/2
/// (gRPC services routed in `app`), with the same keep-alive pings as [`server`].
pub fn spawn_http_and_grpc(
    listener: tokio::net::TcpListener,
    what: &'static str,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    serve_router(listener, what, app, stop, true)
}

fn serve_router(
    listener: tokio::net::TcpListener,
    what: &'static str,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    http2: bool,
) -> Result<()> {
    use futures::StreamExt;
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::conn::auto,
        service::TowerToHyperService,
    };
    let mut connections = guard::GuardedListener::new(listener, what)?;
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    http.http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_BYTES)
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let http = if http2 { http } else { http.http1_only() };
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                conn = connections.next() => conn,
                _ = stop.changed() => break,
            };
            let Some(Ok(conn)) = conn else { break };
            let http = http.clone();
            let app = app.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let serving = http.serve_connection_with_upgrades(
                    TokioIo::new(conn),
                    TowerToHyperService::new(app),
                );
                let mut serving = std::pin::pin!(serving);
                tokio::select! {
                    _ = serving.as_mut() => {}
                    _ = stop.changed() => {
                        // Finish the request in flight, then close.
                        serving.as_mut().graceful_shutdown();
                        let _ = serving.await;
                    }
                }
            });
        }
    });
    Ok(())
}
