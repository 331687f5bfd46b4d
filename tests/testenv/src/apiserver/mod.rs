//! A fake Kubernetes API server for tests (see `docs/architecture.md`, "Testing without a Kubernetes cluster").
//!
//! It speaks real Kubernetes HTTP on 127.0.0.1 (plain http, no authentication) and keeps
//! everything in memory, well enough for the real `kubectl` and for kube-rs clients (`Api`,
//! watchers, controllers, event recorders):
//!
//! - discovery (`/api`, `/apis`, resource lists with short names, categories and subresources)
//!   and the OpenAPI v3 documents kubectl reads to use server-side field validation;
//! - built-in namespaces, pods (with `status` and `binding`), services, secrets, configmaps,
//!   service accounts, resource quotas, nodes, events, leases and CRDs; Events are one stored
//!   kind served as core `v1` and as `events.k8s.io/v1`, converted between the two as Kubernetes
//!   does;
//! - the ServiceAccount and ResourceQuota admission of pods, with the real server's 403 messages:
//!   every namespace gets a `default` ServiceAccount, a pod naming a missing one is refused, and
//!   quotas on `pods`, CPU and memory refuse pods beyond them and report `status.used`;
//! - custom resources of the CRDs created in it, pruned, defaulted and validated against their
//!   OpenAPI v3 schema and CEL rules, with the `status` and `scale` subresources;
//! - get, list and watch with label and field selectors, create, update with optimistic
//!   concurrency, JSON/merge/strategic-merge patches, server-side apply, delete with finalizers,
//!   graceful pod deletion and owner-reference garbage collection;
//! - `meta.k8s.io/v1 Table` output for `kubectl get`.
//!
//! Pods bound to a node are deleted gracefully, as by the real server: a delete marks them with
//! `deletionTimestamp`, and they go when the kubelet deletes them again with a zero grace period.

mod builtin;
mod discovery;
mod error;
mod events;
mod handlers;
mod logs;
mod patch;
mod protobuf;
mod quantity;
mod resources;
mod schema;
mod selector;
mod store;
mod table;
mod watch;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use store::Store;

/// State shared by the handlers.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The newest resourceVersion, for waking watches.
    changes: tokio::sync::watch::Sender<u64>,
    address: SocketAddr,
}

impl Shared {
    /// The store, for reading.
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write on the store and wakes the watches.
    fn write<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (result, resource_version) = {
            let mut store = self.lock();
            let result = f(&mut store);
            (result, store.resource_version())
        };
        self.changes.send_if_modified(|current| {
            let changed = *current != resource_version;
            *current = resource_version;
            changed
        });
        result
    }
}

/// A fake Kubernetes API server on 127.0.0.1, serving until dropped or shut down.
pub struct FakeApiServer {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr`, which must be a loopback address.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the fake API server binds only loopback addresses, not {addr}"
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let address = listener.local_addr()?;
        let (changes, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changes,
            address,
        });
        let router = axum::Router::new()
            .fallback(handlers::handle)
            .with_state(shared);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                // Either a shutdown() or the server being dropped ends serving.
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "the fake API server stopped");
            }
        });
        tracing::info!(%address, "fake API server listening");
        Ok(Self {
            address,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kubeconfig for the server: cluster, user and context `fake`, namespace `default`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
users:
- name: fake
  user: {{}}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
preferences: {{}}
",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// A kube client for the server, configured from [`Self::kubeconfig`].
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = Kubeconfig::from_yaml(&self.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops serving and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The server may already have stopped on its own.
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            // Open watches end with the task; a panic in it has already been reported.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
