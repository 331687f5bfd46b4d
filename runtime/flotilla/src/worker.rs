//! A worker: registers with the head, runs tasks in parallel slots, hosts actors on their own
//! threads, keeps objects in its store and serves them to peers. When it loses the head it keeps
//! trying to reconnect.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::{
    v1::{
        self as pb, head_client::HeadClient, resolved_arg, task_result, task_spec, worker_command,
        worker_op,
    },
    PROTOCOL_VERSION,
};
use futures::{FutureExt, StreamExt};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Semaphore},
    task::AbortHandle,
};

use crate::{
    client::{LocalStore, Runtime, TaskBinding},
    codec,
    error::{Error, ErrorKind, Result},
    http::{self, WorkerMetrics},
    peer::{Peers, StoreService},
    registry::{registry, ActorInstance, Invocation, TaskContext, TaskFailure, TaskOutput},
    store::ObjectStore,
    transport::{self, Batches, INLINE_MAX_BYTES, MAX_MESSAGE_BYTES},
};
use flotilla_proto::auth::AddAuth;

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
    /// Node id (host name).
    pub node: String,
    /// The address peers use to reach this worker's object service; defaults to the bound one.
    pub advertise: Option<String>,
    /// Named custom resources.
    pub custom: HashMap<String, u64>,
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
        }
    }

    /// From the DESIGN.md §3 environment: `FLOTILLA_HEAD`, `FLOTILLA_WORKER_NAME`,
    /// `FLOTILLA_SLOTS`, `FLOTILLA_OBJECT_STORE_BYTES`, `FLOTILLA_TOKEN`, `FLOTILLA_GROUP`.
    pub fn from_env() -> Result<Self> {
        let head = std::env::var("FLOTILLA_HEAD")
            .ok()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config("a worker needs FLOTILLA_HEAD (or --head)".into()))?;
        let name = std::env::var("FLOTILLA_WORKER_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
        let mut c = WorkerConfig::new(&head, &name);
        if let Some(s) = env_number("FLOTILLA_SLOTS")? {
            c.slots = s as u32;
        }
        if let Some(b) = env_number("FLOTILLA_OBJECT_STORE_BYTES")? {
            c.store_bytes = b;
        }
        c.token = flotilla_proto::contract::token_from_env();
        if let Ok(g) = std::env::var("FLOTILLA_GROUP") {
            if !g.is_empty() {
                c.group = g;
            }
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

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

enum ActorMsg {
    Call {
        task: ObjectId,
        attempt: u32,
        method: String,
        signature: String,
        args: Vec<pb::ResolvedArg>,
    },
}

/// Counts a running task for the worker's metrics until dropped (also when the task is aborted).
struct RunningGuard<'a>(&'a AtomicU64);

impl<'a> RunningGuard<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        RunningGuard(counter)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// State shared by a worker's tasks.
struct Shared {
    config: WorkerConfig,
    store: Arc<ObjectStore>,
    peers: Peers,
    slots: Arc<Semaphore>,
    registered: AtomicBool,
    tasks_run: AtomicU64,
    tasks_failed: AtomicU64,
    running: AtomicU64,
    address: String,
    http_address: String,
}

impl WorkerMetrics for Shared {
    fn render(&self) -> String {
        let s = self.store.stats();
        let l = format!(
            "worker=\"{}\",group=\"{}\"",
            self.config.name, self.config.group
        );
        format!(
            "# TYPE flotilla_worker_tasks_total counter\nflotilla_worker_tasks_total{{{l}}} {}\n\
             # TYPE flotilla_worker_tasks_failed_total counter\nflotilla_worker_tasks_failed_total{{{l}}} {}\n\
             # TYPE flotilla_worker_tasks_running gauge\nflotilla_worker_tasks_running{{{l}}} {}\n\
             # TYPE flotilla_worker_slots gauge\nflotilla_worker_slots{{{l}}} {}\n\
             # TYPE flotilla_worker_object_store_bytes gauge\n\
             flotilla_worker_object_store_bytes{{{l},location=\"memory\"}} {}\n\
             flotilla_worker_object_store_bytes{{{l},location=\"spilled\"}} {}\n\
             # TYPE flotilla_worker_objects gauge\nflotilla_worker_objects{{{l}}} {}\n",
            self.tasks_run.load(Ordering::Relaxed),
            self.tasks_failed.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
            self.config.slots,
            s.memory_bytes,
            s.spilled_bytes,
            s.objects,
        )
    }
    fn ready(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }
}

/// Runs a worker until `shutdown` resolves: serves objects on `listener`, metrics on `http`,
/// and works for the head, reconnecting whenever the connection drops.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let bound: SocketAddr = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let http_address = match &http_listener {
        Some(l) => {
            let http = l.local_addr()?;
            if http.ip().is_unspecified() {
                // Bound to every interface: peers reach it where they reach the object service.
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h);
                format!("{host}:{}", http.port())
            } else {
                http.to_string()
            }
        }
        None => String::new(),
    };
    let store = Arc::new(ObjectStore::new(
        config.store_bytes,
        config.spill_dir.clone(),
    ));
    let shared = Arc::new(Shared {
        store: store.clone(),
        peers: Peers::new(config.token.clone()),
        slots: Arc::new(Semaphore::new(config.slots as usize)),
        registered: AtomicBool::new(false),
        tasks_run: AtomicU64::new(0),
        tasks_failed: AtomicU64::new(0),
        running: AtomicU64::new(0),
        address,
        http_address,
        config,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let service = StoreService::server(store.clone(), shared.config.token.clone());
    let mut stop = stop_rx.clone();
    let server = tokio::spawn(
        transport::server()
            .add_service(service)
            .serve_with_incoming_shutdown(transport::incoming(listener), async move {
                let _ = stop.changed().await;
            }),
    );
    if let Some(l) = http_listener {
        let app = http::worker_router(shared.clone()).merge(crate::peer::object_router(
            store,
            shared.config.token.clone(),
        ));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(l, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
    }
    let work = {
        let shared = shared.clone();
        async move {
            let mut backoff = FIRST_RETRY;
            let mut duplicates = 0;
            loop {
                match session(shared.clone()).await {
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
                // The head that knew our objects is gone or has forgotten us.
                shared.store.clear();
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
    let _ = server.await;
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

enum SessionError {
    /// The head refused us for good (duplicate name, wrong token, other protocol).
    Refused(String),
    /// The connection failed or dropped.
    Lost(String),
    /// Another connection holds this worker's name.
    Duplicate(String),
}

fn classify(status: tonic::Status) -> SessionError {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::FailedPrecondition | Code::InvalidArgument => {
            SessionError::Refused(format!(
                "the head refused this worker: {}",
                status.message()
            ))
        }
        // The head may not have noticed yet that this worker's previous connection dropped.
        Code::AlreadyExists => SessionError::Duplicate(status.message().to_string()),
        _ => SessionError::Lost(status.message().to_string()),
    }
}

/// One connection to the head, from registration until it drops.
async fn session(shared: Arc<Shared>) -> Result<(), SessionError> {
    let config = &shared.config;
    let channel = transport::connect(&config.head)
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    let mut head = HeadClient::with_interceptor(channel, AddAuth::new(config.token.as_deref()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let reg = registry();
    let register = pb::RegisterWorker {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        address: shared.address.clone(),
        http_address: shared.http_address.clone(),
        node: config.node.clone(),
        slots: config.slots,
        custom_resources: config.custom.clone(),
        functions: reg
            .functions
            .values()
            .map(|f| pb::FunctionInfo {
                name: f.name.into(),
                signature: f.signature.into(),
            })
            .collect(),
        actor_classes: reg
            .classes
            .values()
            .map(|c| pb::FunctionInfo {
                name: c.name.into(),
                signature: c.signature.into(),
            })
            .collect(),
        program: reg.program.clone(),
        build_id: reg.build_id.clone(),
        group: config.group.clone(),
    };
    let (ops_tx, ops_rx) = mpsc::unbounded_channel::<pb::WorkerOp>();
    let _ = ops_tx.send(pb::WorkerOp {
        op: Some(worker_op::Op::Register(register)),
    });
    let outbound = Batches::new(ops_rx).map(|ops| pb::WorkerBatch { ops });
    let mut inbound = head.work(outbound).await.map_err(classify)?.into_inner();
    let mut commands = inbound
        .message()
        .await
        .map_err(classify)?
        .unwrap_or_default()
        .commands
        .into_iter();
    let first = commands.next().and_then(|c| c.command);
    // Work that waited for a worker can come in the same batch as the confirmation: run it
    // before what follows, rather than dropping it (its task would never finish).
    let early = pb::WorkerCommands {
        commands: commands.collect(),
    };
    let mut inbound = futures::stream::iter([Ok(early)]).chain(inbound);
    let worker_id = match first {
        Some(worker_command::Command::Registered(r)) => r.worker,
        _ => {
            return Err(SessionError::Lost(
                "the head did not confirm the registration".into(),
            ))
        }
    };
    shared.registered.store(true, Ordering::Relaxed);
    tracing::info!(name = %config.name, id = worker_id, head = %config.head, slots = config.slots, "registered");
    // The runtime tasks use to submit tasks of their own.
    let local = LocalStore {
        store: shared.store.clone(),
        worker: worker_id,
        address: shared.address.clone(),
        http_address: shared.http_address.clone(),
        node: config.node.clone(),
    };
    let rt = Runtime::open(
        &config.head,
        config.token.as_deref(),
        Some(local),
        Some(config.name.clone()),
    )
    .await
    .map_err(|e| SessionError::Lost(e.to_string()))?;

    // Running tasks and the attempt each runs.
    let mut tasks: HashMap<ObjectId, (AbortHandle, u32)> = HashMap::new();
    let mut actors: HashMap<ObjectId, ActorSlot> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ObjectId>();
    let mut stats_timer = tokio::time::interval(Duration::from_millis(500));
    let mut last_stats = pb::StoreStats::default();
    let outcome = loop {
        tokio::select! {
            message = inbound.next() => {
                let batch = match message {
                    Some(Ok(batch)) => batch,
                    None => break Ok(()),
                    Some(Err(status)) => break Err(SessionError::Lost(status.message().to_string())),
                };
                for command in batch.commands.into_iter().filter_map(|c| c.command) {
                    match command {
                        worker_command::Command::Run(d) => {
                            let Some(spec) = d.spec.as_ref() else { continue };
                            let task = ObjectId(spec.task);
                            match &spec.kind {
                                Some(task_spec::Kind::ActorCall(call)) => {
                                    let actor = ObjectId(call.actor);
                                    let msg = ActorMsg::Call {
                                        task,
                                        attempt: d.attempt,
                                        method: call.method.clone(),
                                        signature: spec.signature.clone(),
                                        args: d.args,
                                    };
                                    let delivered = actors
                                        .get(&actor)
                                        .is_some_and(|slot| slot.deliver(msg, &shared, &rt, &ops_tx));
                                    if !delivered {
                                        let failure = TaskFailure::new(ErrorKind::ActorDied, format!("actor {actor} is not on worker {}", config.name));
                                        let _ = ops_tx.send(result_op(&shared, task, d.attempt, Err(failure), Duration::ZERO));
                                    }
                                }
                                Some(task_spec::Kind::CreateActor(create)) => {
                                    let slot = start_actor(shared.clone(), rt.clone(), create.class.clone(), d, ops_tx.clone());
                                    actors.insert(task, slot);
                                }
                                _ => {
                                    let attempt = d.attempt;
                                    let handle = tokio::spawn(run_task(shared.clone(), rt.clone(), d, ops_tx.clone(), done_tx.clone()));
                                    tasks.insert(task, (handle.abort_handle(), attempt));
                                }
                            }
                        }
                        worker_command::Command::Cancel(t) => {
                            if let Some((h, attempt)) = tasks.remove(&ObjectId(t)) {
                                h.abort();
                                // An aborted task never reports, and the head counts it running
                                // (its slot busy) until it does: report it cancelled.
                                let error = pb::TaskError {
                                    kind: ErrorKind::Cancelled.to_proto() as i32,
                                    task: String::new(),
                                    message: "cancelled".into(),
                                };
                                let result = pb::TaskResult { task: t, attempt, outcome: Some(task_result::Outcome::Error(error)), run_micros: 0 };
                                let _ = ops_tx.send(pb::WorkerOp { op: Some(worker_op::Op::Result(result)) });
                            }
                        }
                        worker_command::Command::Free(o) => shared.store.remove(ObjectId(o)),
                        worker_command::Command::Copy(c) => {
                            let shared = shared.clone();
                            let ops_tx = ops_tx.clone();
                            tokio::spawn(async move {
                                let id = ObjectId(c.object);
                                let Some(from) = c.from else { return };
                                match shared.peers.fetch(id, &from).await {
                                    Ok(bytes) => {
                                        if shared.store.put(id, bytes).is_ok() {
                                            let _ = ops_tx.send(pb::WorkerOp { op: Some(worker_op::Op::StoredCopy(id.0)) });
                                        }
                                    }
                                    Err(e) => tracing::warn!(object = %id, "copy failed: {e}"),
                                }
                            });
                        }
                        worker_command::Command::KillActor(a) => {
                            if let Some(slot) = actors.remove(&ObjectId(a)) {
                                slot.state.killed.store(true, Ordering::Release);
                            }
                        }
                        worker_command::Command::Registered(_) => {}
                    }
                }
            }
            Some(done) = done_rx.recv() => {
                tasks.remove(&done);
            }
            _ = stats_timer.tick() => {
                let stats = shared.store.stats();
                if stats != last_stats {
                    last_stats = stats;
                    let _ = ops_tx.send(pb::WorkerOp { op: Some(worker_op::Op::Store(stats)) });
                }
            }
        }
    };
    for (h, _) in tasks.into_values() {
        h.abort();
    }
    rt.shutdown().await;
    outcome
}

fn result_op(
    shared: &Shared,
    task: ObjectId,
    attempt: u32,
    output: TaskOutput,
    run: Duration,
) -> pb::WorkerOp {
    let outcome = match output {
        Ok(bytes) if bytes.len() <= INLINE_MAX_BYTES => task_result::Outcome::InlineValue(bytes),
        Ok(bytes) => {
            let size = bytes.len() as u64;
            match shared.store.put(task, bytes) {
                Ok(()) => task_result::Outcome::StoredSize(size),
                Err(e) => task_result::Outcome::Error(pb::TaskError {
                    kind: ErrorKind::ObjectLost.to_proto() as i32,
                    task: String::new(),
                    message: format!("cannot store the result: {e}"),
                }),
            }
        }
        Err(f) => {
            shared.tasks_failed.fetch_add(1, Ordering::Relaxed);
            task_result::Outcome::Error(pb::TaskError {
                kind: f.kind.to_proto() as i32,
                task: String::new(),
                message: f.message,
            })
        }
    };
    shared.tasks_run.fetch_add(1, Ordering::Relaxed);
    pb::WorkerOp {
        op: Some(worker_op::Op::Result(pb::TaskResult {
            task: task.0,
            attempt,
            outcome: Some(outcome),
            run_micros: run.as_micros() as u64,
        })),
    }
}

/// Resolves arguments: inline values as they are, stored ones from this store or a peer (and
/// keeps the copy, telling the head).
async fn resolve_args(
    shared: &Shared,
    args: Vec<pb::ResolvedArg>,
    ops_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
) -> Result<Vec<Bytes>, TaskFailure> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.kind {
            Some(resolved_arg::Kind::Value(b)) => out.push(b),
            Some(resolved_arg::Kind::Stored(r)) => {
                let id = ObjectId(r.object);
                let local = shared
                    .store
                    .get(id)
                    .map_err(|e| TaskFailure::new(ErrorKind::ObjectLost, e.to_string()))?;
                let bytes = match local {
                    Some(b) => b,
                    None => {
                        let stored = r.r#where.unwrap_or_default();
                        let b =
                            shared.peers.fetch(id, &stored).await.map_err(|e| {
                                TaskFailure::new(ErrorKind::ObjectLost, e.to_string())
                            })?;
                        if shared.store.put(id, b.clone()).is_ok() {
                            let _ = ops_tx.send(pb::WorkerOp {
                                op: Some(worker_op::Op::StoredCopy(id.0)),
                            });
                        }
                        b
                    }
                };
                out.push(bytes);
            }
            None => out.push(Bytes::new()),
        }
    }
    Ok(out)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

fn slots_of(spec: &pb::TaskSpec) -> u32 {
    spec.options
        .as_ref()
        .and_then(|o| o.resources.as_ref())
        .map_or(1, |r| r.slots.max(1))
}

async fn run_task(
    shared: Arc<Shared>,
    rt: Runtime,
    d: pb::Dispatch,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
    done_tx: mpsc::UnboundedSender<ObjectId>,
) {
    let Some(spec) = d.spec else { return };
    let task = ObjectId(spec.task);
    let permits = slots_of(&spec).min(shared.config.slots);
    let Ok(permit) = shared.slots.clone().acquire_many_owned(permits).await else {
        return;
    };
    let running = RunningGuard::new(&shared.running);
    let started = std::time::Instant::now();
    let output = match resolve_args(&shared, d.args, &ops_tx).await {
        Err(f) => Err(f),
        Ok(args) => {
            let binding = TaskBinding {
                task,
                slots: shared.slots.clone(),
                permits,
            };
            let ctx = TaskContext {
                rt: rt.bound_to(binding),
            };
            let name = match &spec.kind {
                Some(task_spec::Kind::Function(f)) => f.as_str(),
                _ => "",
            };
            invoke(name, &spec.signature, args, ctx).await
        }
    };
    drop(permit);
    drop(running);
    let _ = ops_tx.send(result_op(
        &shared,
        task,
        d.attempt,
        output,
        started.elapsed(),
    ));
    let _ = done_tx.send(task);
}

/// Plain functions whose runs average less than this run on the worker's I/O thread: handing
/// them to a blocking thread would cost more than running them.
const INLINE_RUN_MICROS: f64 = 20.0;

/// Average run time of each plain function on this worker, in microseconds.
#[derive(Default)]
struct RunTimes(std::sync::Mutex<HashMap<&'static str, f64>>);

impl RunTimes {
    fn is_tiny(&self, name: &'static str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|avg| *avg < INLINE_RUN_MICROS)
    }

    fn record(&self, name: &'static str, took: Duration) {
        let sample = took.as_secs_f64() * 1e6;
        let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let avg = times.entry(name).or_insert(sample);
        *avg = 0.8 * *avg + 0.2 * sample;
    }
}

fn run_times() -> &'static RunTimes {
    static TIMES: std::sync::OnceLock<RunTimes> = std::sync::OnceLock::new();
    TIMES.get_or_init(RunTimes::default)
}

async fn invoke(name: &str, signature: &str, args: Vec<Bytes>, ctx: TaskContext) -> TaskOutput {
    let reg = registry();
    let Some(f) = reg.functions.get(name) else {
        return Err(TaskFailure::new(
            ErrorKind::UnknownFunction,
            format!(
                "function {name} is not registered in program {} (build {})",
                reg.program, reg.build_id
            ),
        ));
    };
    if !signature.is_empty() && signature != f.signature {
        return Err(TaskFailure::type_mismatch(format!(
            "{name} has signature `{}` here but the caller compiled against `{signature}`",
            f.signature
        )));
    }
    let times = run_times();
    match (f.invoke)(args, ctx) {
        Invocation::Failed(e) => Err(e),
        Invocation::Blocking(call) if !f.takes_runtime && times.is_tiny(f.name) => {
            let started = std::time::Instant::now();
            let out = std::panic::catch_unwind(AssertUnwindSafe(call));
            times.record(f.name, started.elapsed());
            out.unwrap_or_else(|panic| {
                Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*panic)))
            })
        }
        Invocation::Blocking(call) => {
            let name = f.name;
            match tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let out = std::panic::catch_unwind(AssertUnwindSafe(call));
                times.record(name, started.elapsed());
                out
            })
            .await
            {
                Ok(Ok(out)) => out,
                Ok(Err(panic)) => Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*panic))),
                Err(e) => Err(TaskFailure::new(
                    ErrorKind::Panic,
                    format!("task thread failed: {e}"),
                )),
            }
        }
        Invocation::Async(fut) => match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(out) => out,
            Err(panic) => Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*panic))),
        },
    }
}

/// Starts an actor on its own thread: the constructor first (its outcome is the creation
/// task's result), then calls one at a time in arrival order.
/// An actor on this worker: its instance, shared by its thread and the I/O thread, and the
/// calls queued for its thread.
struct ActorSlot {
    tx: std::sync::mpsc::Sender<ActorMsg>,
    state: Arc<ActorState>,
}

#[derive(Default)]
struct ActorState {
    /// Set once the constructor ran.
    instance: std::sync::Mutex<Option<Box<dyn ActorInstance>>>,
    /// Calls sent to the actor's thread and not finished.
    queued: AtomicU64,
    /// Average call time, microseconds (as f64 bits).
    avg_micros: AtomicU64,
    /// Killed (or drained away): queued calls are refused, not run.
    killed: AtomicBool,
}

impl ActorState {
    fn record(&self, took: Duration) {
        let sample = took.as_secs_f64() * 1e6;
        let old = f64::from_bits(self.avg_micros.load(Ordering::Relaxed));
        let avg = if old == 0.0 {
            sample
        } else {
            0.8 * old + 0.2 * sample
        };
        self.avg_micros
            .store(avg.max(f64::MIN_POSITIVE).to_bits(), Ordering::Relaxed);
    }

    /// Runs one call on the calling thread, catching panics.
    fn call(
        &self,
        instance: &mut dyn ActorInstance,
        method: &str,
        signature: &str,
        args: Vec<Bytes>,
        rt: &Runtime,
    ) -> TaskOutput {
        let started = std::time::Instant::now();
        let ctx = TaskContext { rt: rt.clone() };
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
            instance.call(method, signature, args, ctx)
        }))
        .unwrap_or_else(|p| Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*p))));
        self.record(started.elapsed());
        out
    }
}

impl ActorSlot {
    /// Runs a call at once on this (I/O) thread when the actor is idle, its calls are tiny and
    /// the arguments are at hand (a thread hand-off would cost more than the call); otherwise
    /// queues it for the actor's thread. Either way calls run in arrival order.
    fn deliver(
        &self,
        msg: ActorMsg,
        shared: &Shared,
        rt: &Runtime,
        ops_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
    ) -> bool {
        let ActorMsg::Call {
            task,
            attempt,
            method,
            signature,
            args,
        } = msg;
        let avg = f64::from_bits(self.state.avg_micros.load(Ordering::Relaxed));
        let inline_args = args
            .iter()
            .all(|a| !matches!(a.kind, Some(resolved_arg::Kind::Stored(_))));
        if avg > 0.0
            && avg < INLINE_RUN_MICROS
            && inline_args
            && self.state.queued.load(Ordering::Acquire) == 0
        {
            if let Ok(mut guard) = self.state.instance.try_lock() {
                if let Some(instance) = guard.as_mut().filter(|i| !i.takes_runtime(&method)) {
                    let values = args
                        .into_iter()
                        .map(|a| match a.kind {
                            Some(resolved_arg::Kind::Value(b)) => b,
                            _ => Bytes::new(),
                        })
                        .collect();
                    let started = std::time::Instant::now();
                    let output =
                        self.state
                            .call(instance.as_mut(), &method, &signature, values, rt);
                    let _ =
                        ops_tx.send(result_op(shared, task, attempt, output, started.elapsed()));
                    return true;
                }
            }
        }
        self.state.queued.fetch_add(1, Ordering::AcqRel);
        let msg = ActorMsg::Call {
            task,
            attempt,
            method,
            signature,
            args,
        };
        if self.tx.send(msg).is_err() {
            self.state.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

fn start_actor(
    shared: Arc<Shared>,
    rt: Runtime,
    class: String,
    d: pb::Dispatch,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
) -> ActorSlot {
    let (tx, rx) = std::sync::mpsc::channel::<ActorMsg>();
    let state = Arc::new(ActorState::default());
    let actor_state = state.clone();
    let handle = tokio::runtime::Handle::current();
    let spec = d.spec.unwrap_or_default();
    let id = ObjectId(spec.task);
    let signature = spec.signature.clone();
    let (failure_shared, failure_ops, attempt) = (shared.clone(), ops_tx.clone(), d.attempt);
    let spawned = std::thread::Builder::new().name(format!("actor-{id}")).spawn(move || {
        let resolve = |args: Vec<pb::ResolvedArg>| handle.block_on(resolve_args(&shared, args, &ops_tx));
        let created: Result<Box<dyn ActorInstance>, TaskFailure> = (|| {
            let reg = registry();
            let c = reg.classes.get(class.as_str()).ok_or_else(|| {
                TaskFailure::new(
                    ErrorKind::UnknownFunction,
                    format!("actor class {class} is not registered in program {} (build {})", reg.program, reg.build_id),
                )
            })?;
            if !signature.is_empty() && signature != c.signature {
                return Err(TaskFailure::type_mismatch(format!(
                    "{class}::new has signature `{}` here but the caller compiled against `{signature}`",
                    c.signature
                )));
            }
            let args = resolve(d.args)?;
            let ctx = TaskContext { rt: rt.clone() };
            std::panic::catch_unwind(AssertUnwindSafe(|| (c.create)(args, ctx)))
                .unwrap_or_else(|p| Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*p))))
        })();
        let state = actor_state;
        match created {
            Ok(i) => {
                // Stored before the creation is reported, so no call can find it missing.
                *state.instance.lock().unwrap_or_else(|e| e.into_inner()) = Some(i);
                let _ = ops_tx.send(result_op(&shared, id, d.attempt, codec::encode(&()).map_err(TaskFailure::application), Duration::ZERO));
            }
            Err(f) => {
                let _ = ops_tx.send(result_op(&shared, id, d.attempt, Err(f), Duration::ZERO));
                return;
            }
        }
        while let Ok(ActorMsg::Call { task, attempt, method, signature, args }) = rx.recv() {
            if state.killed.load(Ordering::Acquire) {
                let failure = TaskFailure::new(ErrorKind::ActorDied, format!("actor {id} was killed before this call ran"));
                let _ = ops_tx.send(result_op(&shared, task, attempt, Err(failure), Duration::ZERO));
                state.queued.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let running = RunningGuard::new(&shared.running);
            let started = std::time::Instant::now();
            let output = resolve(args).and_then(|args| {
                let mut guard = state.instance.lock().unwrap_or_else(|e| e.into_inner());
                let instance = guard.as_mut().expect("calls arrive only after the constructor stored the instance");
                state.call(instance.as_mut(), &method, &signature, args, &rt)
            });
            drop(running);
            let _ = ops_tx.send(result_op(&shared, task, attempt, output, started.elapsed()));
            state.queued.fetch_sub(1, Ordering::AcqRel);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start an actor thread: {e}");
        let failure = TaskFailure::new(
            ErrorKind::ActorDied,
            format!("the worker cannot start a thread for the actor: {e}"),
        );
        let _ = failure_ops.send(result_op(
            &failure_shared,
            id,
            attempt,
            Err(failure),
            Duration::ZERO,
        ));
    }
    ActorSlot { tx, state }
}

/// Keeps an in-process worker's pieces together for local clusters.
pub(crate) struct Running {
    pub(crate) handle: tokio::task::JoinHandle<Result<()>>,
    pub(crate) stop: oneshot::Sender<()>,
}

/// Starts a worker in this process on 127.0.0.1 with an ephemeral port.
pub(crate) async fn spawn_local(config: WorkerConfig) -> Result<Running> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(run(config, listener, Some(http), async move {
        let _ = stop_rx.await;
    }));
    Ok(Running { handle, stop })
}
