//! The client side of object transfers: fetch an object from the processes that hold it, upload
//! one into a worker's store, or hand a worker a shared-memory segment to map. Objects move over
//! plain HTTP/1.1 on the workers' HTTP ports, through one pool of kept-alive connections (no
//! handshake per transfer); a large object comes in parallel byte ranges from every holder.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1 as pb;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    error::{Error, ErrorKind, Result},
    net::error_chain,
};

/// Longest a transfer may go without progress before it counts as failed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Objects at least this large are fetched in [`MAX_RANGES`] parallel ranges, over as many
/// pooled connections, into a shared-memory segment (from the host's pool: pages already there).
const RANGED_FETCH_BYTES: usize = 8 << 20;
const MAX_RANGES: usize = 4;
/// How long an unused connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Connections to other processes' object routes, pooled per address, carrying the token.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    bearer: Option<HeaderValue>,
    idle: IdleConnections,
}

impl Peers {
    /// Peers reached with `token`.
    pub fn new(token: Option<&str>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(IDLE_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Peers {
            client,
            bearer: token.and_then(|t| HeaderValue::try_from(format!("Bearer {t}")).ok()),
            idle: IdleConnections::default(),
        }
    }

    async fn request(
        &self,
        method: Method,
        address: &str,
        path: &str,
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let failed = |message: String| Error::Transfer {
            peer: address.to_string(),
            message,
        };
        let body_len = body.len() as u64;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{address}{path}"));
        if let Some(bearer) = &self.bearer {
            request = request.header(header::AUTHORIZATION, bearer.clone());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        // The answer comes once the body is sent: allow for it at a slow 10 MB/s.
        let limit = IDLE_TIMEOUT + Duration::from_millis(body_len / 10_000);
        tokio::time::timeout(limit, self.client.request(request))
            .await
            .map_err(|_| failed(format!("no answer within {limit:?}")))?
            .map_err(|e| failed(error_chain(&e)))
    }

    /// Fetches an object from the locations that have it: a shared-memory segment on this host
    /// is mapped, not copied; otherwise it is read from the holders' HTTP ports, a large one in
    /// parallel ranges spread over every holder (each range tried at the others if its first
    /// holder fails), straight into the buffer it ends up in.
    pub async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        for loc in stored.locations.iter().filter(|l| !l.shm_path.is_empty()) {
            if let Ok(value) = super::shm::map(std::path::Path::new(&loc.shm_path)) {
                if value.len() as u64 == stored.size {
                    return Ok(value);
                }
            }
        }
        let holders: Vec<&str> = stored.locations.iter().map(http_address).collect();
        let lost = |message: String| Error::Task {
            kind: ErrorKind::ObjectLost,
            task: String::new(),
            message,
        };
        if holders.is_empty() {
            return Err(lost(format!("object {id} has no known location")));
        }
        let len = usize::try_from(stored.size)
            .map_err(|_| lost(format!("object {id} is too large for this host")))?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let mut landing = Landing::new(id, len);
        let piece_len = if len >= RANGED_FETCH_BYTES {
            len.div_ceil(MAX_RANGES)
        } else {
            len
        };
        let pieces = landing
            .bytes_mut()
            .chunks_mut(piece_len)
            .enumerate()
            .map(|(i, piece)| {
                let holders = &holders;
                async move {
                    let start = i * piece_len;
                    let mut last = String::new();
                    for k in 0..holders.len() {
                        let address = holders[(i + k) % holders.len()];
                        match self.fetch_range(id, address, start, piece).await {
                            Ok(()) => return Ok(()),
                            Err(e) => last = format!("fetching object {id} from {address}: {e}"),
                        }
                    }
                    Err(last)
                }
            });
        futures::future::try_join_all(pieces).await.map_err(lost)?;
        landing
            .freeze()
            .map_err(|e| Error::io(format!("mapping the copy of object {id}"), e))
    }

    /// Fetches bytes `start..start + piece.len()` of an object from `address` into `piece`, on
    /// a kept-alive connection when there is one (once more on a new one if the kept one turns
    /// out closed before answering).
    async fn fetch_range(
        &self,
        id: ObjectId,
        address: &str,
        start: usize,
        piece: &mut [u8],
    ) -> Result<()> {
        let failed = |message: String| Error::Transfer {
            peer: address.to_string(),
            message,
        };
        if let Some(stream) = self.idle.take(address) {
            match self.read_range(stream, id, address, start, piece).await {
                Ok(stream) => {
                    self.idle.keep(address, stream);
                    return Ok(());
                }
                Err(RangeError {
                    answered: true,
                    message,
                }) => return Err(failed(message)),
                Err(RangeError {
                    answered: false, ..
                }) => {}
            }
        }
        let stream = tokio::time::timeout(IDLE_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| failed(format!("no connection within {IDLE_TIMEOUT:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| failed(e.to_string()))?;
        let stream = self
            .read_range(stream, id, address, start, piece)
            .await
            .map_err(|e| failed(e.message))?;
        self.idle.keep(address, stream);
        Ok(())
    }

    /// One ranged `GET` on `stream`, written by hand rather than through the HTTP client so
    /// that the body goes from the socket straight into `piece`: the kernel's copy is the only
    /// one. Returns the connection for reuse.
    async fn read_range(
        &self,
        mut stream: TcpStream,
        id: ObjectId,
        address: &str,
        start: usize,
        piece: &mut [u8],
    ) -> std::result::Result<TcpStream, RangeError> {
        let mut request = format!(
            "GET /objects/{} HTTP/1.1\r\nhost: {address}\r\nrange: bytes={start}-{}\r\n",
            id.0,
            start + piece.len() - 1
        );
        if let Some(bearer) = self.bearer.as_ref().and_then(|b| b.to_str().ok()) {
            request.push_str(&format!("authorization: {bearer}\r\n"));
        }
        request.push_str("\r\n");
        within(stream.write_all(request.as_bytes()), false).await?;

        let mut head = vec![0u8; HEAD_MAX_BYTES];
        let mut filled = 0;
        let (status, length, head_len) = loop {
            let n = within(stream.read(&mut head[filled..]), filled > 0).await?;
            if n == 0 {
                return Err(RangeError::new(
                    filled > 0,
                    "the connection closed before the answer",
                ));
            }
            filled += n;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&head[..filled]) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok());
                    break (response.code.unwrap_or(0), length, head_len);
                }
                Ok(httparse::Status::Partial) if filled < head.len() => {}
                Ok(httparse::Status::Partial) => {
                    return Err(RangeError::new(true, "the answer's head is too long"))
                }
                Err(e) => return Err(RangeError::new(true, format!("a garbled answer: {e}"))),
            }
        };
        let early = &head[head_len..filled];
        if status != 206 {
            // A refusal: its words are short, and the connection is not reused.
            let mut words = early.to_vec();
            let want = length.unwrap_or(0).min(HEAD_MAX_BYTES);
            while words.len() < want {
                let mut more = vec![0u8; want - words.len()];
                match within(stream.read(&mut more), true).await? {
                    0 => break,
                    n => words.extend_from_slice(&more[..n]),
                }
            }
            let words = String::from_utf8_lossy(&words);
            return Err(RangeError::new(true, format!("{status}: {}", words.trim())));
        }
        if length != Some(piece.len()) || early.len() > piece.len() {
            return Err(RangeError::new(
                true,
                format!(
                    "object {id}: {length:?} bytes answered for a range of {}",
                    piece.len()
                ),
            ));
        }
        piece[..early.len()].copy_from_slice(early);
        let mut at = early.len();
        while at < piece.len() {
            match within(stream.read(&mut piece[at..]), true).await? {
                0 => {
                    return Err(RangeError::new(
                        true,
                        format!(
                            "object {id}: the range from byte {start} ended at {at} of {} bytes",
                            piece.len()
                        ),
                    ))
                }
                n => at += n,
            }
        }
        Ok(stream)
    }

    /// Hands a shared-memory segment to the worker at `http_address`, which maps it into its
    /// store; returns the segment's path from then on.
    pub async fn adopt(
        &self,
        id: ObjectId,
        http_address: &str,
        segment: &std::path::Path,
    ) -> Result<String> {
        let body = Bytes::from(segment.to_string_lossy().into_owned());
        let path = format!("/objects/{}/adopt", id.0);
        let response = self
            .request(Method::POST, http_address, &path, body)
            .await?;
        if !response.status().is_success() {
            return Err(Error::Transfer {
                peer: http_address.to_string(),
                message: format!("adopting object {id}: {}", refusal(response).await),
            });
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Transfer {
                peer: http_address.to_string(),
                message: error_chain(&e),
            })?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    /// Uploads a value into the store of the worker at `location`.
    pub async fn upload(
        &self,
        id: ObjectId,
        location: &pb::ObjectLocation,
        value: Bytes,
    ) -> Result<()> {
        let address = http_address(location);
        let path = format!("/objects/{}", id.0);
        let response = self.request(Method::PUT, address, &path, value).await?;
        expect_success(response, address, &format!("upload of object {id}")).await
    }
}

/// Where a fetched copy lands: a segment of the host's pool for a large object (so its pages are
/// warm, and stay shareable), else memory of this process.
enum Landing {
    Shared(super::shm::Landing),
    Heap(Vec<u8>),
}

impl Landing {
    fn new(id: ObjectId, len: usize) -> Landing {
        if len >= RANGED_FETCH_BYTES {
            let segment = super::shm::Writer::create_copy(id, len).and_then(|w| w.into_landing());
            match segment {
                Ok(segment) => return Landing::Shared(segment),
                Err(e) => {
                    tracing::debug!(object = %id, "fetching into memory, not shared memory: {e}")
                }
            }
        }
        Landing::Heap(vec![0; len])
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Landing::Shared(segment) => segment,
            Landing::Heap(buffer) => buffer,
        }
    }

    fn freeze(self) -> std::io::Result<Bytes> {
        match self {
            Landing::Shared(segment) => segment.freeze(),
            Landing::Heap(buffer) => Ok(Bytes::from(buffer)),
        }
    }
}

/// Longest response head a ranged read accepts.
const HEAD_MAX_BYTES: usize = 16 << 10;
/// How long a connection for ranged reads stays kept: well within the 10 s a worker's HTTP port
/// waits for the next request before closing it.
const RANGE_IDLE: Duration = Duration::from_secs(5);

/// A connection kept for ranged reads, and since when it is idle.
type Kept = (TcpStream, Instant);

/// Connections for ranged reads, kept alive per address.
#[derive(Clone, Default)]
struct IdleConnections(Arc<Mutex<HashMap<String, Vec<Kept>>>>);

impl IdleConnections {
    fn take(&self, address: &str) -> Option<TcpStream> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(address)?;
        while let Some((stream, since)) = kept.pop() {
            if since.elapsed() < RANGE_IDLE {
                return Some(stream);
            }
        }
        None
    }

    fn keep(&self, address: &str, stream: TcpStream) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.entry(address.to_string()).or_default();
        kept.retain(|(_, since)| since.elapsed() < RANGE_IDLE);
        kept.push((stream, Instant::now()));
    }
}

/// Why a ranged read failed, and whether the peer had begun to answer (if not, a kept
/// connection may just have been closed by the peer, and a new one is worth a try).
struct RangeError {
    answered: bool,
    message: String,
}

impl RangeError {
    fn new(answered: bool, message: impl Into<String>) -> Self {
        RangeError {
            answered,
            message: message.into(),
        }
    }
}

/// One read or write of a ranged read, failing after [`IDLE_TIMEOUT`] without progress.
async fn within<T>(
    io: impl std::future::Future<Output = std::io::Result<T>>,
    answered: bool,
) -> std::result::Result<T, RangeError> {
    match tokio::time::timeout(IDLE_TIMEOUT, io).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(RangeError::new(answered, e.to_string())),
        Err(_) => Err(RangeError::new(
            true,
            format!("no progress for {IDLE_TIMEOUT:?}"),
        )),
    }
}

/// Where a location serves objects: its HTTP address.
fn http_address(location: &pb::ObjectLocation) -> &str {
    if location.http_address.is_empty() {
        &location.address
    } else {
        &location.http_address
    }
}

async fn expect_success(response: Response<Incoming>, address: &str, what: &str) -> Result<()> {
    if response.status().is_success() {
        return Ok(());
    }
    Err(Error::Transfer {
        peer: address.to_string(),
        message: format!("{what}: {}", refusal(response).await),
    })
}

/// A refused request's status and the words the peer gave for it.
async fn refusal(response: Response<Incoming>) -> String {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    format!("{status}: {}", String::from_utf8_lossy(&body).trim())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::objects::{serve::object_router, ObjectStore};

    /// Serves a store's objects on a port of 127.0.0.1; returns its address.
    async fn serve(store: Arc<ObjectStore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let router = object_router(store, Some("secret"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        address
    }

    fn stored(size: usize, holders: &[&String]) -> pb::StoredObject {
        pb::StoredObject {
            size: size as u64,
            locations: holders
                .iter()
                .map(|a| pb::ObjectLocation {
                    http_address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn large_objects_come_in_ranges_from_every_holder_and_around_one_that_lost_it() {
        let dir = tempfile::tempdir().unwrap();
        let (large, small) = (ObjectId(1), ObjectId(2));
        // Not a multiple of the number of ranges, and no two ranges alike.
        let value: Bytes = (0..RANGED_FETCH_BYTES as u32 * 2 + 3)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        let little = Bytes::from(vec![9u8; 100_000]);
        let mut holders = Vec::new();
        for name in ["a", "b", "empty"] {
            let store = Arc::new(ObjectStore::new(u64::MAX, dir.path().join(name)));
            if name != "empty" {
                store.put(large, value.clone()).await.unwrap();
                store.put(small, little.clone()).await.unwrap();
            }
            holders.push(serve(store).await);
        }
        let [a, b, empty] = &holders[..] else {
            unreachable!()
        };
        let peers = Peers::new(Some("secret"));
        for from in [vec![a, b], vec![empty, a], vec![b, empty], vec![a]] {
            let got = peers.fetch(large, &stored(value.len(), &from)).await;
            assert!(got.unwrap() == value, "from {from:?}");
            let got = peers.fetch(small, &stored(little.len(), &from)).await;
            assert_eq!(got.unwrap(), little, "from {from:?}");
        }
        // Every copy was dropped, so none of their segments is left under its name.
        if let Some(dir) = super::super::shm::segment_dir() {
            let prefix = format!("{}-{large}-copy", std::process::id());
            let left: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
        // Nobody has it: lost, and the answer says so.
        let err = peers
            .fetch(large, &stored(value.len(), &[empty]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::ObjectLost));
        assert!(
            err.to_string().contains("not in this worker's store"),
            "{err}"
        );
        // A holder with a shorter object than the cluster knows of is not trusted for it.
        let err = peers
            .fetch(small, &stored(little.len() + 1, &[a]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::ObjectLost));
        // Without the token, nothing.
        let err = Peers::new(None)
            .fetch(small, &stored(little.len(), &[a]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
    }

    /// Answers each connection's one ranged request with the bytes of `value`, then closes it,
    /// as a server does with a connection it has kept idle too long.
    async fn answer_once_per_connection(value: Bytes) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let range = head.split("range: bytes=").nth(1).unwrap();
                let (first, last) = range.split("\r\n").next().unwrap().split_once('-').unwrap();
                let (first, last): (usize, usize) = (first.parse().unwrap(), last.parse().unwrap());
                let body = &value[first..=last];
                let answer = format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.write_all(body).await.unwrap();
                // Closed as soon as answered: whatever was kept of it is dead.
            }
        });
        address
    }

    #[tokio::test]
    async fn a_kept_connection_the_peer_closed_is_replaced_by_a_new_one() {
        let value = Bytes::from((0..200_000u32).map(|i| (i % 7) as u8).collect::<Vec<_>>());
        let address = answer_once_per_connection(value.clone()).await;
        let peers = Peers::new(None);
        for _ in 0..3 {
            let got = peers
                .fetch(ObjectId(5), &stored(value.len(), &[&address]))
                .await;
            assert!(got.unwrap() == value);
        }
    }
}
