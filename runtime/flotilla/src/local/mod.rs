//! Clusters on one machine: the in-process cluster a driver starts when it has no head address
//! ([`Runtime::init`]), and clusters of processes ([`processes`]: `flotilla up`, benchmarks).

pub mod processes;

use std::time::Duration;

use flotilla_proto::contract::{
    token_from_env, ENV_HEAD, ENV_LOCAL_WORKERS, ENV_OBJECT_STORE_BYTES, ENV_SLOTS,
};
use futures::future::BoxFuture;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::{
    admin::wait_for_workers,
    driver::{OwnedCluster, Runtime},
    error::Result,
    head::{self, HeadConfig},
    worker::{self, available_slots, WorkerConfig},
};

/// What a local in-process cluster looks like.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Worker count (`FLOTILLA_LOCAL_WORKERS`, default 1).
    pub workers: usize,
    /// Slots per worker (`FLOTILLA_SLOTS`, default: the CPUs available).
    pub slots: u32,
    /// Object store cap per worker (`FLOTILLA_OBJECT_STORE_BYTES`, default 2 GiB).
    pub store_bytes: u64,
}

impl LocalOptions {
    /// From the environment.
    pub fn from_env() -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        LocalOptions {
            workers: num(ENV_LOCAL_WORKERS).unwrap_or(1).max(1) as usize,
            slots: num(ENV_SLOTS).map_or_else(available_slots, |s| s.max(1) as u32),
            store_bytes: num(ENV_OBJECT_STORE_BYTES).unwrap_or(2 << 30),
        }
    }
}

/// A task of this process (head or worker) and the signal that stops it.
struct InProcess {
    handle: JoinHandle<Result<()>>,
    stop: oneshot::Sender<()>,
}

impl InProcess {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

/// A head and workers running inside this process, on 127.0.0.1.
pub struct LocalCluster {
    /// The head's address.
    pub address: String,
    /// The token (none: loopback only).
    pub token: Option<String>,
    head: InProcess,
    workers: Vec<InProcess>,
}

impl LocalCluster {
    /// Starts a head and `options.workers` workers and waits until they are registered.
    pub async fn start(options: LocalOptions) -> Result<LocalCluster> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(head::serve(
            listener,
            None,
            HeadConfig::default(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let head = InProcess { handle, stop };
        let mut workers = Vec::new();
        for i in 0..options.workers {
            let mut config = WorkerConfig::new(&address, &format!("local-{i}"));
            config.slots = options.slots;
            config.store_bytes = options.store_bytes;
            // Each cluster of this process spills apart: another one stopping removes its own.
            let port = address.rsplit(':').next().unwrap_or("0");
            config.spill_dir = std::env::temp_dir().join(format!(
                "flotilla-spill-{}-{port}-local-{i}",
                std::process::id()
            ));
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let (stop, stop_rx) = oneshot::channel::<()>();
            let handle = tokio::spawn(worker::run(config, listener, async move {
                let _ = stop_rx.await;
            }));
            workers.push(InProcess { handle, stop });
        }
        let cluster = LocalCluster {
            address,
            token: None,
            head,
            workers,
        };
        wait_for_workers(
            &cluster.address,
            None,
            options.workers,
            Duration::from_secs(10),
        )
        .await?;
        Ok(cluster)
    }

    /// Stops the workers and the head.
    pub async fn stop(self) {
        for w in self.workers {
            w.stop().await;
        }
        self.head.stop().await;
    }
}

impl OwnedCluster for LocalCluster {
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(LocalCluster::stop(*self))
    }
}

impl Runtime {
    /// Connects to `FLOTILLA_HEAD`, or, when it is unset, starts a local cluster in this process
    /// (one worker with `FLOTILLA_SLOTS` slots, default: the CPUs available), which stops when
    /// the runtime shuts down.
    pub async fn init() -> Result<Runtime> {
        match std::env::var(ENV_HEAD).ok().filter(|a| !a.is_empty()) {
            Some(address) => Runtime::connect(&address, token_from_env().as_deref()).await,
            None => {
                let cluster = LocalCluster::start(LocalOptions::from_env()).await?;
                let rt = Runtime::connect(&cluster.address, cluster.token.as_deref()).await?;
                rt.own_cluster(Box::new(cluster));
                Ok(rt)
            }
        }
    }
}
