//! A worker: registers with the head, runs tasks in parallel slots, hosts actors on their own
//! threads, keeps objects in its store and serves them to peers. When it loses the head it keeps
//! trying to reconnect, and tells a head that restarted which objects it holds. Its running tasks
//! and hosted actors end with the connection.
//!
//! `session` is one connection to the head; `executor` runs functions; `actors` hosts
//! actors; `direct` takes actor calls straight from drivers; `http` serves the worker's one
//! port: objects, metrics and health, and (over HTTP/2) the `Worker` gRPC service.

mod actors;
mod direct;
mod executor;
mod http;
mod session;

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::Duration,
};

use flotilla_proto::contract::{
    token_from_env, ENV_GROUP, ENV_HEAD, ENV_OBJECT_STORE_BYTES, ENV_RESOURCES, ENV_SLOTS,
    ENV_SPILL_DIR, ENV_WORKER_NAME,
};
use tokio::{net::TcpListener, sync::Semaphore};

use self::{executor::RunTimes, http::WorkerMetrics, session::SessionError};
use crate::{
    error::{Error, Result},
    net::{self, bind::hostname},
    objects::{serve::object_router, ObjectStore, Peers},
};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The head's gRPC address.
    pub head: String,
    /// A name unique in the cluster (the pod name on Kubernetes).
    pub name: String,
    /// Parallel task slots.
    pub slots: u32,
    /// Object store memory cap in bytes.
    pub store_bytes: u64,
    /// Where spilled objects go.
    pub spill_dir: PathBuf,
    /// The cluster token.
    pub token: Option<String>,
    /// Worker group.
    pub group: String,
    /// Node id (host name): processes on one node share objects through shared memory.
    pub node: String,
    /// The address peers use to reach this worker; defaults to the bound one.
    pub advertise: Option<String>,
    /// Named custom resources.
    pub custom: HashMap<String, u64>,
    /// Whether the process exits (status [`EXIT_CANCEL_FORCED`]) when a cancelled task runs on
    /// past the grace on its thread: a worker process does (from the environment); a worker
    /// inside another program (an in-process cluster) only warns, and the thread runs on.
    ///
    /// [`EXIT_CANCEL_FORCED`]: flotilla_proto::contract::EXIT_CANCEL_FORCED
    pub exit_to_stop_tasks: bool,
}

/// CPUs available to this process.
pub fn available_slots() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

impl WorkerConfig {
    /// A worker of `head` with defaults for the rest.
    pub fn new(head: &str, name: &str) -> Self {
        WorkerConfig {
            head: head.to_string(),
            name: name.to_string(),
            slots: available_slots(),
            store_bytes: 2 << 30,
            spill_dir: std::env::temp_dir()
                .join(format!("flotilla-spill-{}-{name}", std::process::id())),
            token: None,
            group: "default".into(),
            node: hostname(),
            advertise: None,
            custom: HashMap::new(),
            exit_to_stop_tasks: false,
        }
    }

    /// From the environment: `FLOTILLA_HEAD`, `FLOTILLA_WORKER_NAME`, `FLOTILLA_SLOTS`,
    /// `FLOTILLA_OBJECT_STORE_BYTES`, `FLOTILLA_TOKEN`, `FLOTILLA_GROUP`, `FLOTILLA_SPILL_DIR`,
    /// `FLOTILLA_RESOURCES`.
    pub fn from_env() -> Result<Self> {
        let head = std::env::var(ENV_HEAD)
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("a worker needs {ENV_HEAD} (or --head)")))?;
        Self::from_env_with_head(&head)
    }

    /// Like [`WorkerConfig::from_env`], for the head at `head`.
    pub fn from_env_with_head(head: &str) -> Result<Self> {
        let name = std::env::var(ENV_WORKER_NAME)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        let mut c = WorkerConfig::new(head, &name);
        c.exit_to_stop_tasks = true;
        if let Some(s) = env_number(ENV_SLOTS)? {
            c.slots = s as u32;
        }
        if let Some(b) = env_number(ENV_OBJECT_STORE_BYTES)? {
            c.store_bytes = b;
        }
        if let Some(parent) = std::env::var_os(ENV_SPILL_DIR).filter(|d| !d.is_empty()) {
            let own = c
                .spill_dir
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_default();
            c.spill_dir = PathBuf::from(parent).join(own);
        }
        c.token = token_from_env();
        if let Ok(g) = std::env::var(ENV_GROUP) {
            if !g.is_empty() {
                c.group = g;
            }
        }
        if let Ok(text) = std::env::var(ENV_RESOURCES) {
            let resources = flotilla_proto::contract::parse_resources(&text)
                .map_err(|e| Error::Config(format!("{ENV_RESOURCES}={text:?}: {e}")))?;
            c.custom.extend(resources);
        }
        Ok(c)
    }
}

fn env_number(key: &str) -> Result<Option<u64>> {
    match std::env::var(key) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Config(format!("{key}={v:?} is not a number"))),
        _ => Ok(None),
    }
}

/// What a worker's sessions, tasks, actors and routes share.
struct Shared {
    config: WorkerConfig,
    store: Arc<ObjectStore>,
    peers: Peers,
    slots: Arc<Semaphore>,
    registered: AtomicBool,
    /// The head process this worker last registered with.
    head_instance: std::sync::Mutex<Option<String>>,
    metrics: WorkerMetrics,
    /// Run-time averages of this worker's functions, deciding which run inline.
    run_times: RunTimes,
    /// Where peers reach this worker.
    address: String,
    /// The actors the current session with the head hosts, which direct calls reach too.
    hosting: std::sync::Mutex<Hosting>,
}

/// What a session with the head hosts: its actors, with the runtime their calls use and its
/// stream to the head.
#[derive(Default)]
struct Hosting {
    actors: HashMap<flotilla_core::ObjectId, actors::HostedActor>,
    /// Plain tasks drivers run here on slots they leased, while they run.
    leased: HashMap<flotilla_core::ObjectId, direct::LeasedRun>,
    /// Leases whose job was cancelled: no more tasks run on them.
    cancelled_leases: std::collections::HashSet<u64>,
    session: Option<(
        crate::driver::Runtime,
        tokio::sync::mpsc::UnboundedSender<flotilla_proto::v1::WorkerOp>,
    )>,
}

impl Shared {
    fn hosting(&self) -> std::sync::MutexGuard<'_, Hosting> {
        self.hosting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a worker until `shutdown` resolves: serves objects, metrics and health on `listener`,
/// and works for the head, reconnecting whenever the connection drops.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let bound = listener.local_addr()?;
    net::bind::require_token_off_loopback(bound, config.token.is_some())?;
    let orphans = crate::objects::shm::remove_orphans();
    if orphans > 0 {
        tracing::info!(
            orphans,
            "removed shared-memory segments of processes that are gone"
        );
    }
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let store = Arc::new(ObjectStore::new(
        config.store_bytes,
        config.spill_dir.clone(),
    ));
    let shared = Arc::new(Shared {
        store: store.clone(),
        peers: Peers::new(config.token.as_deref()),
        slots: Arc::new(Semaphore::new(config.slots as usize)),
        registered: AtomicBool::new(false),
        head_instance: std::sync::Mutex::new(None),
        metrics: WorkerMetrics::new(&config.name, &config.group),
        run_times: RunTimes::default(),
        address,
        config,
        hosting: std::sync::Mutex::new(Hosting::default()),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::worker_router(shared.clone())
        .merge(object_router(store, shared.config.token.as_deref()))
        .merge(direct::router(shared.clone(), stop_rx.clone()));
    net::spawn_http_and_grpc(listener, "worker HTTP", app, stop_rx)?;
    let work = {
        let shared = shared.clone();
        async move {
            let mut backoff = FIRST_RETRY;
            let mut duplicates = 0;
            loop {
                match session::run(shared.clone()).await {
                    Ok(()) => {
                        tracing::warn!("head closed the session; reconnecting");
                        backoff = FIRST_RETRY;
                    }
                    Err(SessionError::Refused(msg)) => return Err(Error::Config(msg)),
                    Err(SessionError::Duplicate(msg)) => {
                        duplicates += 1;
                        if duplicates >= DUPLICATE_RETRIES {
                            return Err(Error::Config(format!(
                                "the head refused this worker: {msg}"
                            )));
                        }
                    }
                    Err(SessionError::Lost(msg)) => {
                        // A head starting at the same time is normal; say it loudly once it lasts.
                        if backoff >= Duration::from_millis(800) {
                            tracing::warn!(
                                "no head at {}: {msg}; retrying in {backoff:?}",
                                shared.config.head
                            );
                        } else {
                            tracing::debug!(
                                "no head at {}: {msg}; retrying in {backoff:?}",
                                shared.config.head
                            );
                        }
                    }
                }
                shared.registered.store(false, Ordering::Relaxed);
                // The store is kept: a head that restarted learns of its objects when this
                // worker registers again (see `session::run`).
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let result = tokio::select! {
        r = work => r,
        _ = shutdown => Ok(()),
    };
    let _ = stop_tx.send(true);
    // The actors and the tasks' session with the head end with the worker.
    drop(std::mem::take(&mut *shared.hosting()));
    // Shared-memory segments outlive the process unless removed.
    shared.store.clear();
    result
}

/// First wait before reconnecting to the head; it doubles up to 2 s. Short, because a worker
/// started beside its head usually just beat it to the port.
const FIRST_RETRY: Duration = Duration::from_millis(5);

/// How often a worker retries a registration refused for a duplicate name before giving up:
/// long enough for the head to notice the worker's previous connection is gone.
const DUPLICATE_RETRIES: u32 = 5;
