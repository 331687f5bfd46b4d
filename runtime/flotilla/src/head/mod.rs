//! The head: cluster membership, the scheduler, the object directory, the actor registry and
//! metrics, behind the `flotilla.v1.Head` gRPC service.
//!
//! `core` owns the scheduler in one task; `service` adapts the gRPC streams to it; `http`
//! serves metrics, health and the dashboard.

pub(crate) mod core;
mod http;
mod metrics;
mod service;

use std::{future::Future, sync::Arc};

use flotilla_proto::{
    auth::CheckAuth,
    contract::{ENV_CLUSTER, ENV_NAMESPACE, ENV_PREFETCH},
    v1::head_server::HeadServer,
};
use tokio::net::TcpListener;

pub use self::{
    core::{HeadHandle, RunsByName, StatusView},
    service::status_reply,
};
use self::{metrics::HeadMetrics, service::HeadService};
use crate::{
    error::{Error, Result},
    net::{self, bind::require_token_off_loopback, MAX_MESSAGE_BYTES},
};

/// How the head runs.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    /// The cluster token; required when listening beyond loopback.
    pub token: Option<String>,
    /// Cluster name, a metric label.
    pub cluster: String,
    /// Namespace, a metric label.
    pub namespace: String,
    /// Tasks a worker may hold beyond its slots.
    pub prefetch: u32,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            token: None,
            cluster: "local".into(),
            namespace: "default".into(),
            prefetch: 2,
        }
    }
}

impl HeadConfig {
    /// From `FLOTILLA_TOKEN`, `FLOTILLA_CLUSTER`, `FLOTILLA_NAMESPACE`, `FLOTILLA_PREFETCH`.
    pub fn from_env() -> Self {
        let env = |k: &str, d: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| d.into())
        };
        HeadConfig {
            token: flotilla_proto::contract::token_from_env(),
            cluster: env(ENV_CLUSTER, "local"),
            namespace: env(ENV_NAMESPACE, "default"),
            prefetch: env(ENV_PREFETCH, "2").parse().unwrap_or(2),
        }
    }
}

/// Runs a head on `grpc` (and its HTTP endpoints on `http`) until `shutdown` resolves.
///
/// A head listening beyond loopback refuses to start without a token.
pub async fn serve(
    grpc: TcpListener,
    http_listener: Option<TcpListener>,
    config: HeadConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = grpc.local_addr()?;
    require_token_off_loopback(addr, config.token.is_some())?;
    if let Some(listener) = &http_listener {
        require_token_off_loopback(listener.local_addr()?, config.token.is_some())?;
    }
    let metrics = Arc::new(HeadMetrics::new(&config.cluster, &config.namespace));
    let (handle, events_tx) = core::start_core(&config, metrics.clone());
    let instance = handle.instance.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = http_listener {
        let app = http::head_router(handle, config.clone(), metrics);
        net::spawn_http(listener, "head HTTP", app, stop_rx)?;
    }
    let service = tonic::service::interceptor::InterceptedService::new(
        HeadServer::new(HeadService {
            events_tx,
            instance,
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
        CheckAuth::new(config.token.clone()),
    );
    tracing::info!(%addr, cluster = %config.cluster, "head listening");
    let result = net::server()
        .add_service(service)
        .serve_with_incoming_shutdown(net::incoming(grpc, "head gRPC")?, shutdown)
        .await;
    let _ = stop_tx.send(true);
    result.map_err(|e| Error::io("the head's gRPC server", std::io::Error::other(e)))
}
