//! Objects between processes: the `flotilla.v1.ObjectStore` service of a worker, and the client
//! side that fetches (streamed in chunks) and uploads objects peer to peer.

use std::{collections::HashMap, pin::Pin, sync::{Arc, Mutex}};

use bytes::{Bytes, BytesMut};
use flotilla_core::ObjectId;
use flotilla_proto::v1::{
    self as pb,
    object_store_client::ObjectStoreClient,
    object_store_server::{ObjectStore as ObjectStoreRpc, ObjectStoreServer},
};
use futures::Stream;
use tonic::{service::interceptor::InterceptedService, transport::Channel, Request, Response, Status, Streaming};

use crate::{
    auth::{AddAuth, CheckAuth},
    error::{Error, Result},
    store::ObjectStore,
    transport::{self, CHUNK_BYTES, MAX_MESSAGE_BYTES},
};

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
        Peers { clients: Arc::default(), token }
    }

    async fn client(&self, address: &str) -> Result<Client> {
        if let Some(c) = self.clients.lock().unwrap_or_else(|e| e.into_inner()).get(address) {
            return Ok(c.clone());
        }
        let channel = transport::connect(address).await?;
        let client = ObjectStoreClient::with_interceptor(channel, AddAuth::new(self.token.as_deref()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Fetches an object from the first location that has it.
    pub async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        let mut last = format!("object {id} has no known location");
        for loc in &stored.locations {
            match self.fetch_from(id, &loc.address).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&loc.address);
                    last = format!("fetching object {id} from {}: {e}", loc.address);
                }
            }
        }
        Err(Error::Task { kind: crate::ErrorKind::ObjectLost, task: String::new(), message: last })
    }

    async fn fetch_from(&self, id: ObjectId, address: &str) -> Result<Bytes> {
        let mut client = self.client(address).await?;
        let mut stream = client.fetch(pb::FetchRequest { object: id.0 }).await?.into_inner();
        let mut buf = BytesMut::new();
        let mut first = true;
        while let Some(chunk) = stream.message().await? {
            if first {
                buf.reserve(chunk.total_size as usize);
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

    /// Uploads a value into a worker's store.
    pub async fn upload(&self, id: ObjectId, address: &str, value: Bytes) -> Result<()> {
        let mut client = self.client(address).await?;
        let total = value.len() as u64;
        let chunks: Vec<pb::Chunk> = chunk_bytes(&value)
            .into_iter()
            .enumerate()
            .map(|(i, data)| pb::Chunk { object: if i == 0 { id.0 } else { 0 }, total_size: total, data })
            .collect();
        client.upload(futures::stream::iter(chunks)).await?;
        Ok(())
    }
}

fn chunk_bytes(value: &Bytes) -> Vec<Bytes> {
    if value.is_empty() {
        return vec![Bytes::new()];
    }
    (0..value.len()).step_by(CHUNK_BYTES).map(|i| value.slice(i..(i + CHUNK_BYTES).min(value.len()))).collect()
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

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl ObjectStoreRpc for StoreService {
    type FetchStream = ChunkStream;

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<ChunkStream>, Status> {
        let id = ObjectId(request.into_inner().object);
        let value = self
            .store
            .get(id)
            .map_err(|e| Status::internal(format!("reading object {id}: {e}")))?
            .ok_or_else(|| Status::not_found(format!("object {id} is not in this worker's store")))?;
        let total = value.len() as u64;
        let chunks = chunk_bytes(&value)
            .into_iter()
            .enumerate()
            .map(move |(i, data)| Ok(pb::Chunk { object: if i == 0 { id.0 } else { 0 }, total_size: total, data }));
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn upload(&self, request: Request<Streaming<pb::Chunk>>) -> Result<Response<pb::UploadReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let id = ObjectId(first.object);
        if id.0 == 0 {
            return Err(Status::invalid_argument("the first chunk must name the object"));
        }
        let total = first.total_size;
        if total > (1 << 40) {
            return Err(Status::invalid_argument(format!("object of {total} bytes is too large")));
        }
        let mut buf = BytesMut::with_capacity(total as usize);
        buf.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if (buf.len() + chunk.data.len()) as u64 > total {
                return Err(Status::invalid_argument("upload is longer than its declared size"));
            }
            buf.extend_from_slice(&chunk.data);
        }
        if buf.len() as u64 != total {
            return Err(Status::invalid_argument(format!("upload ended at {} of {total} bytes", buf.len())));
        }
        self.store.put(id, buf.freeze()).map_err(|e| Status::internal(format!("storing object {id}: {e}")))?;
        Ok(Response::new(pb::UploadReply { size: total }))
    }
}
