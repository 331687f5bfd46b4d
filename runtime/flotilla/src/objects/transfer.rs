//! The client side of object transfers: fetch an object from the processes that hold it, upload
//! one into a worker's store, or hand a worker a shared-memory segment to map. Objects move over
//! plain HTTP/1.1 on the workers' HTTP ports, through one pool of kept-alive connections.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flotilla_core::ObjectId;
use flotilla_proto::v1 as pb;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use crate::{
    error::{Error, ErrorKind, Result},
    net::error_chain,
};

/// Longest a transfer may go without progress before it counts as failed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most memory reserved up front on a peer's word about a size; beyond it buffers grow with data.
const MAX_RESERVE_BYTES: usize = 256 << 20;
/// How long an unused connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// Connections to other processes' object routes, pooled per address, carrying the token.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    bearer: Option<HeaderValue>,
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

    /// Fetches an object from the first location that has it: a shared-memory segment on this
    /// host is mapped, not copied; otherwise it is read from a holder's HTTP port.
    pub async fn fetch(&self, id: ObjectId, stored: &pb::StoredObject) -> Result<Bytes> {
        let mut last = format!("object {id} has no known location");
        for loc in stored.locations.iter().filter(|l| !l.shm_path.is_empty()) {
            if let Ok(value) = super::shm::map(std::path::Path::new(&loc.shm_path)) {
                if value.len() as u64 == stored.size {
                    return Ok(value);
                }
            }
        }
        for loc in &stored.locations {
            let address = http_address(loc);
            match self.fetch_from(id, address).await {
                Ok(b) => return Ok(b),
                Err(e) => last = format!("fetching object {id} from {address}: {e}"),
            }
        }
        Err(Error::Task {
            kind: ErrorKind::ObjectLost,
            task: String::new(),
            message: last,
        })
    }

    async fn fetch_from(&self, id: ObjectId, address: &str) -> Result<Bytes> {
        let failed = |message: String| Error::Transfer {
            peer: address.to_string(),
            message,
        };
        let response = self
            .request(
                Method::GET,
                address,
                &format!("/objects/{}", id.0),
                Bytes::new(),
            )
            .await?;
        if !response.status().is_success() {
            return Err(failed(refusal(response).await));
        }
        let len = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = response.into_body();
        let mut buf = BytesMut::with_capacity(len.min(MAX_RESERVE_BYTES));
        // A peer that stops sending (its node gone) must not hold the fetch forever.
        while let Some(frame) = tokio::time::timeout(IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| failed(format!("object {id}: no data for {IDLE_TIMEOUT:?}")))?
        {
            let frame = frame.map_err(|e| failed(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if buf.is_empty() && data.len() == len {
                    // The whole body in one frame: keep the received buffer as it is.
                    return Ok(data);
                }
                buf.extend_from_slice(&data);
            }
        }
        if buf.len() != len {
            return Err(failed(format!(
                "object {id} ended at {} of {len} bytes",
                buf.len()
            )));
        }
        Ok(buf.freeze())
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
