//! Listeners that do not let idle connections pile up: at most [`MAX_CONNECTIONS`] open at once
//! (beyond that a new one is closed, with a log line), and a connection that sends nothing
//! within [`FIRST_BYTE_TIMEOUT`] is closed. Served connections are answered by tonic (the head's
//! gRPC, which also closes HTTP/2 connections that stop answering keep-alive pings) and by axum
//! (the HTTP ports).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
};

/// Most connections one listener keeps open.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a new connection may stay silent before it is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection, counted against its listener's cap until it closes.
pub struct Guarded {
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Guarded {
    type ConnectInfo = <TcpStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of a listener that passed the cap and sent their first bytes in time.
pub struct GuardedListener {
    local: SocketAddr,
    accepted_rx: mpsc::Receiver<Guarded>,
}

impl GuardedListener {
    /// Accepts on `listener` in the background, for `what` (named in log lines).
    pub fn new(listener: TcpListener, what: &'static str) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (accepted_tx, accepted_rx) = mpsc::channel(256);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("{what}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if accepted_tx.is_closed() {
                    return;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        %peer,
                        "{what}: {MAX_CONNECTIONS} connections are open; closing a new one"
                    );
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let accepted_tx = accepted_tx.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {
                            let _ = accepted_tx
                                .send(Guarded {
                                    stream,
                                    peer,
                                    _slot: slot,
                                })
                                .await;
                        }
                        // Closed before it said anything.
                        Ok(_) => {}
                        Err(_) => tracing::info!(
                            %peer,
                            "{what}: closing a connection that sent nothing for {FIRST_BYTE_TIMEOUT:?}"
                        ),
                    }
                });
            }
        });
        Ok(GuardedListener { local, accepted_rx })
    }
}

impl Stream for GuardedListener {
    type Item = io::Result<Guarded>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted_rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted_rx.recv().await {
            Some(conn) => {
                let peer = conn.peer;
                (conn, peer)
            }
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
