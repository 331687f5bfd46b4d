//! The cluster token and the protocol version, sent and checked on every RPC by both sides.
//!
//! Clients send `authorization: Bearer <token>` and `flotilla-protocol: 2`; the server refuses a
//! missing or wrong token with UNAUTHENTICATED and another protocol version with
//! FAILED_PRECONDITION, before any handler runs.

use crate::{PROTOCOL_HEADER, PROTOCOL_VERSION};
use tonic::{metadata::MetadataValue, service::Interceptor, Request, Status};

/// Server side: checks the token (when one is set) and the protocol version.
#[derive(Clone)]
pub struct CheckAuth {
    expected: Option<String>,
}

impl CheckAuth {
    /// Accepts requests bearing `token`; with `None` any token is accepted (loopback only).
    pub fn new(token: Option<String>) -> Self {
        CheckAuth {
            expected: token.map(|t| format!("Bearer {t}")),
        }
    }
}

/// Compares in time independent of where the first difference is.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Interceptor for CheckAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let version = request
            .metadata()
            .get(PROTOCOL_HEADER)
            .and_then(|v| v.to_str().ok());
        match version {
            Some(v) if v == PROTOCOL_VERSION.to_string() => {}
            other => {
                return Err(Status::failed_precondition(format!(
                    "protocol version mismatch: this peer speaks flotilla protocol {PROTOCOL_VERSION}, \
                     the request carried {}",
                    other.map_or("none".to_string(), |v| format!("{v:?}"))
                )))
            }
        }
        if let Some(expected) = &self.expected {
            let given = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or(b"");
            if !same(given, expected.as_bytes()) {
                return Err(Status::unauthenticated(
                    "missing or wrong cluster token: set FLOTILLA_TOKEN to the cluster's token",
                ));
            }
        }
        Ok(request)
    }
}

/// Client side: adds the token and the protocol version to every request.
#[derive(Clone)]
pub struct AddAuth {
    bearer: Option<MetadataValue<tonic::metadata::Ascii>>,
    version: MetadataValue<tonic::metadata::Ascii>,
}

impl AddAuth {
    /// Sends `token` (if any) with every request.
    pub fn new(token: Option<&str>) -> Self {
        AddAuth {
            bearer: token.and_then(|t| format!("Bearer {t}").parse().ok()),
            version: PROTOCOL_VERSION
                .to_string()
                .parse()
                .expect("a number is valid metadata"),
        }
    }
}

impl Interceptor for AddAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let md = request.metadata_mut();
        md.insert(PROTOCOL_HEADER, self.version.clone());
        if let Some(b) = &self.bearer {
            md.insert("authorization", b.clone());
        }
        Ok(request)
    }
}
