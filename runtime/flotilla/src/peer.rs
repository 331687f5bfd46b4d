//! Objects between processes: a worker serves its store over plain HTTP/1.1 on its HTTP port
//! (`GET`/`PUT /objects/{id}`, bearer token) for bulk transfer with few copies, and over the
//! `flotilla.v1.ObjectStore` gRPC service (chunked streams) for peers without an HTTP address.
//! [`Peers`] is the client side of both.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
};

use bytes::{Bytes, BytesMut};
use flotilla_core::ObjectId;
use flotilla_proto::v1::{
    self as pb,
    object_store_client::ObjectStoreClient,
    object_store_server::{ObjectStore as ObjectStoreRpc, ObjectStoreServer},
};
use futures::Stream;
use tonic::{
    service::interceptor::InterceptedService, transport::Channel, Request, Response, Status,
    Streaming,
};

use crate::{
    error::{Error, Result},
    store::ObjectStore,
    transport::{self, CHUNK_BYTES, MAX_MESSAGE_BYTES},
};
use flotilla_proto::auth::{AddAuth, CheckAuth};

/// Longest a transfer may go without progress before it counts as failed.
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most memory reserved up front on a peer's word about a size; beyond it buffers grow with data.
const MAX_RESERVE_BYTES: usize = 256 << 20;

type Client = ObjectStoreClient<InterceptedService<Channel, AddAuth>>;

/// Connections to other processes' object stores, opened once per address.
#[derive(Clone)]
pub struct Peers {
    clients: Arc<Mutex<HashMap<String, Client>>>,
    token: Option<String>,
}

impl Peers {
    /// Peers reached with `token`.
    pub fn new(token: Option<String>) -> Self {
        Peers {
            clients: Arc::default(),
            token,
        }
    }

    async fn client(&self, address: &str) -> Result<Client> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(address)
        {
            return Ok(c.clone());
        }
        let channel = transport::connect(address).await?;
        let client =
            ObjectStoreClient::with_interceptor(channel, AddAuth::new(self.token.as_deref()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Fetches an object from the first location that has it.
    pub async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        let mut last = format!("object {id} has no known location");
        // A segment on this host is mapped, not copied.
        for loc in stored.locations.iter().filter(|l| !l.shm_path.is_empty()) {
            if let Ok(value) = crate::shm::map(std::path::Path::new(&loc.shm_path)) {
                if value.len() as u64 == stored.size {
                    return Ok(value);
                }
            }
        }
        for loc in &stored.locations {
            let fetched = if loc.http_address.is_empty() {
                self.fetch_from(id, &loc.address).await
            } else {
                self.fetch_http(id, &loc.http_address).await
            };
            match fetched {
                Ok(b) => return Ok(b),
                Err(e) => {
                    self.clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&loc.address);
                    last = format!("fetching object {id} from {}: {e}", loc.address);
                }
            }
        }
        Err(Error::Task {
            kind: crate::ErrorKind::ObjectLost,
            task: String::new(),
            message: last,
        })
    }

    async fn fetch_from(&self, id: ObjectId, address: &str) -> Result<Bytes> {
        let mut client = self.client(address).await?;
        let mut stream = client
            .fetch(pb::FetchRequest { object: id.0 })
            .await?
            .into_inner();
        let mut buf = BytesMut::new();
        let mut first = true;
        while let Some(chunk) = stream.message().await? {
            if first {
                // The peer's claim is only a hint: reserve what one message can carry at most.
                buf.reserve((chunk.total_size as usize).min(MAX_MESSAGE_BYTES));
                first = false;
                if chunk.data.len() as u64 == chunk.total_size {
                    // One chunk: keep the received buffer as it is.
                    return Ok(chunk.data);
                }
            }
            buf.extend_from_slice(&chunk.data);
        }
        if first {
            return Err(Error::Rpc(format!("object {id}: empty stream")));
        }
        Ok(buf.freeze())
    }

    async fn http_request(
        &self,
        address: &str,
        request: http::request::Builder,
        body: Bytes,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let stream = tokio::time::timeout(IDLE_TIMEOUT, tokio::net::TcpStream::connect(address))
            .await
            .map_err(|_| Error::Connect {
                address: address.to_string(),
                message: "connect timed out".into(),
            })?
            .map_err(|e| Error::Connect {
                address: address.to_string(),
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| Error::Rpc(format!("{address}: {e}")))?;
        tokio::spawn(connection);
        let body_len = body.len() as u64;
        let mut request = request.header(http::header::HOST, address);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Full::new(body))
            .map_err(|e| Error::Rpc(format!("{address}: {e}")))?;
        // The answer comes once the body is sent: allow for it at a slow 10 MB/s.
        let limit = IDLE_TIMEOUT + std::time::Duration::from_millis(body_len / 10_000);
        tokio::time::timeout(limit, sender.send_request(request))
            .await
            .map_err(|_| Error::Rpc(format!("{address}: no answer within {limit:?}")))?
            .map_err(|e| Error::Rpc(format!("{address}: {e}")))
    }

    async fn fetch_http(&self, id: ObjectId, address: &str) -> Result<Bytes> {
        use http_body_util::BodyExt;
        let request = http::Request::get(format!("/objects/{}", id.0));
        let response = self.http_request(address, request, Bytes::new()).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(Error::Rpc(format!(
                "{address}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let len = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = response.into_body();
        let mut buf = BytesMut::with_capacity(len.min(MAX_RESERVE_BYTES));
        // A peer that stops sending (its node gone) must not hold the fetch forever.
        while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                Error::Rpc(format!(
                    "{address}: object {id}: no data for {IDLE_TIMEOUT:?}"
                ))
            })?
        {
            let frame = frame.map_err(|e| Error::Rpc(format!("{address}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
        }
        if buf.len() != len {
            return Err(Error::Rpc(format!(
                "{address}: object {id} ended at {} of {len} bytes",
                buf.len()
            )));
        }
        Ok(buf.freeze())
    }

    /// Hands a shared-memory segment to the worker at `http_address`, which maps it into its
    /// store.
    pub async fn adopt(
        &self,
        id: ObjectId,
        http_address: &str,
        segment: &std::path::Path,
    ) -> Result<()> {
        let request = http::Request::post(format!("/objects/{}/adopt", id.0));
        let body = Bytes::from(segment.to_string_lossy().into_owned());
        let response = self.http_request(http_address, request, body).await?;
        if !response.status().is_success() {
            return Err(Error::Rpc(format!(
                "{http_address}: adopting object {id}: {}",
                response.status()
            )));
        }
        Ok(())
    }

    /// Uploads a value into the store of the worker at `location`.
    pub async fn upload(
        &self,
        id: ObjectId,
        location: &pb::ObjectLocation,
        value: Bytes,
    ) -> Result<()> {
        if !location.http_address.is_empty() {
            let address = &location.http_address;
            let request = http::Request::put(format!("/objects/{}", id.0));
            let response = self.http_request(address, request, value).await?;
            if !response.status().is_success() {
                return Err(Error::Rpc(format!(
                    "{address}: upload of object {id}: {}",
                    response.status()
                )));
            }
            return Ok(());
        }
        let mut client = self.client(&location.address).await?;
        let total = value.len() as u64;
        let chunks: Vec<pb::Chunk> = chunk_bytes(&value)
            .into_iter()
            .enumerate()
            .map(|(i, data)| pb::Chunk {
                object: if i == 0 { id.0 } else { 0 },
                total_size: total,
                data,
            })
            .collect();
        client.upload(futures::stream::iter(chunks)).await?;
        Ok(())
    }
}

fn chunk_bytes(value: &Bytes) -> Vec<Bytes> {
    if value.is_empty() {
        return vec![Bytes::new()];
    }
    (0..value.len())
        .step_by(CHUNK_BYTES)
        .map(|i| value.slice(i..(i + CHUNK_BYTES).min(value.len())))
        .collect()
}

/// The object service of a worker, serving its store.
pub struct StoreService {
    store: Arc<ObjectStore>,
}

impl StoreService {
    /// Serves `store`; `token` guards it.
    pub fn server(
        store: Arc<ObjectStore>,
        token: Option<String>,
    ) -> InterceptedService<ObjectStoreServer<StoreService>, CheckAuth> {
        InterceptedService::new(
            ObjectStoreServer::new(StoreService { store })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            CheckAuth::new(token),
        )
    }
}

/// `GET`/`PUT /objects/{id}` on a worker's HTTP port, guarded by the cluster token.
pub fn object_router(store: Arc<ObjectStore>, token: Option<String>) -> axum::Router {
    use axum::routing::get;
    let state = Arc::new((store, token.map(|t| format!("Bearer {t}"))));
    axum::Router::new()
        .route("/objects/{id}", get(get_object).put(put_object))
        .route("/objects/{id}/adopt", axum::routing::post(adopt_object))
        // The token is checked before any body is read.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        // Objects are as large as the store allows; the cap applies there.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn require_token(
    axum::extract::State(state): ObjectState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if authorized(&state.1, request.headers()) {
        next.run(request).await
    } else {
        (
            http::StatusCode::UNAUTHORIZED,
            "missing or wrong cluster token\n",
        )
            .into_response()
    }
}

type ObjectState = axum::extract::State<Arc<(Arc<ObjectStore>, Option<String>)>>;

fn authorized(expected: &Option<String>, headers: &http::HeaderMap) -> bool {
    match expected {
        None => true,
        Some(e) => headers
            .get(http::header::AUTHORIZATION)
            .is_some_and(|v| flotilla_proto::auth::same(v.as_bytes(), e.as_bytes())),
    }
}

async fn get_object(
    axum::extract::State(state): ObjectState,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let id = ObjectId(id);
    match state.0.get(id) {
        Ok(Some(value)) => value.into_response(),
        Ok(None) => (
            http::StatusCode::NOT_FOUND,
            format!("object {id} is not in this worker's store\n"),
        )
            .into_response(),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading object {id}: {e}\n"),
        )
            .into_response(),
    }
}

async fn adopt_object(
    axum::extract::State(state): ObjectState,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: String,
) -> (http::StatusCode, String) {
    let id = ObjectId(id);
    let segment = std::path::PathBuf::from(body.trim());
    if !crate::shm::is_segment(&segment) {
        return (
            http::StatusCode::BAD_REQUEST,
            format!(
                "{} is not a flotilla shared-memory segment\n",
                segment.display()
            ),
        );
    }
    match state.0.adopt_segment(id, segment) {
        Ok(size) => (http::StatusCode::OK, size.to_string()),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("mapping object {id}: {e}\n"),
        ),
    }
}

async fn put_object(
    axum::extract::State(state): ObjectState,
    axum::extract::Path(id): axum::extract::Path<u64>,
    body: Bytes,
) -> (http::StatusCode, String) {
    let id = ObjectId(id);
    match state.0.put(id, body) {
        Ok(()) => (http::StatusCode::OK, String::new()),
        Err(e) => (
            http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing object {id}: {e}\n"),
        ),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectStoreRpc for StoreService {
    type FetchStream = ChunkStream;

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let id = ObjectId(request.into_inner().object);
        let value = self
            .store
            .get(id)
            .map_err(|e| Status::internal(format!("reading object {id}: {e}")))?
            .ok_or_else(|| {
                Status::not_found(format!("object {id} is not in this worker's store"))
            })?;
        let total = value.len() as u64;
        let chunks = chunk_bytes(&value)
            .into_iter()
            .enumerate()
            .map(move |(i, data)| {
                Ok(pb::Chunk {
                    object: if i == 0 { id.0 } else { 0 },
                    total_size: total,
                    data,
                })
            });
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let id = ObjectId(first.object);
        if id.0 == 0 {
            return Err(Status::invalid_argument(
                "the first chunk must name the object",
            ));
        }
        let total = first.total_size;
        if total > (1 << 40) {
            return Err(Status::invalid_argument(format!(
                "object of {total} bytes is too large"
            )));
        }
        let mut buf = BytesMut::with_capacity((total as usize).min(MAX_RESERVE_BYTES));
        buf.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if (buf.len() + chunk.data.len()) as u64 > total {
                return Err(Status::invalid_argument(
                    "upload is longer than its declared size",
                ));
            }
            buf.extend_from_slice(&chunk.data);
        }
        if buf.len() as u64 != total {
            return Err(Status::invalid_argument(format!(
                "upload ended at {} of {total} bytes",
                buf.len()
            )));
        }
        self.store
            .put(id, buf.freeze())
            .map_err(|e| Status::internal(format!("storing object {id}: {e}")))?;
        Ok(Response::new(pb::UploadReply { size: total }))
    }
}
