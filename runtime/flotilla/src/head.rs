//! The head: cluster membership, the scheduler, the object directory, the actor registry and
//! metrics, behind the `flotilla.v1.Head` gRPC service.
//!
//! One task owns the [`Scheduler`]; the gRPC handlers are thin adapters that turn streams into
//! events for it and deliver its effects, batched, to workers and drivers.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    time::{Duration, Instant},
};

use flotilla_core::{Effect, Scheduler, SessionId, Snapshot, WorkerId, WorkerInfo, WorkerView};
use flotilla_proto::{
    v1::{
        self as pb, driver_event, driver_op,
        head_server::{Head, HeadServer},
        worker_command, worker_op,
    },
    PROTOCOL_VERSION,
};
use futures::{Stream, StreamExt};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    error::{Error, Result},
    http,
    transport::{self, Batches, MAX_MESSAGE_BYTES},
};
use flotilla_proto::auth::CheckAuth;

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
            cluster: env("FLOTILLA_CLUSTER", "local"),
            namespace: env("FLOTILLA_NAMESPACE", "default"),
            prefetch: env("FLOTILLA_PREFETCH", "2").parse().unwrap_or(2),
        }
    }
}

/// A status snapshot with its workers.
pub type StatusView = (Snapshot, Vec<WorkerView>);

/// Finished and failed runs by task name.
pub type RunsByName = Vec<(String, u64, u64)>;

pub(crate) enum HeadEvent {
    RegisterWorker {
        info: Box<WorkerInfo>,
        commands_tx: mpsc::UnboundedSender<pb::WorkerCommand>,
        reply: oneshot::Sender<Result<WorkerId, String>>,
    },
    WorkerOps(WorkerId, Vec<pb::WorkerOp>),
    WorkerGone(WorkerId),
    OpenSession {
        worker: Option<String>,
        events_tx: mpsc::UnboundedSender<pb::DriverEvent>,
        reply: oneshot::Sender<SessionId>,
    },
    DriverOps(SessionId, Vec<pb::DriverOp>),
    SessionGone(SessionId),
    Status(oneshot::Sender<StatusView>),
    Runs(oneshot::Sender<RunsByName>),
    Drain {
        worker: String,
        timeout: Duration,
        reply: oneshot::Sender<pb::DrainReply>,
    },
    Tick,
}

/// A handle to a running head's core, for in-process status queries.
#[derive(Clone)]
pub struct HeadHandle {
    events_tx: mpsc::UnboundedSender<HeadEvent>,
    /// A random id of this head process, so workers notice a restarted head.
    pub instance: String,
}

impl HeadHandle {
    /// Finished and failed runs by task name, for metrics.
    pub async fn runs_by_name(&self) -> Result<RunsByName> {
        let (reply, rx) = oneshot::channel();
        self.events_tx
            .send(HeadEvent::Runs(reply))
            .map_err(|_| Error::Shutdown("head stopped".into()))?;
        rx.await.map_err(|_| Error::Shutdown("head stopped".into()))
    }

    /// The scheduler's counters and workers.
    pub async fn status(&self) -> Result<StatusView> {
        let (reply, rx) = oneshot::channel();
        self.events_tx
            .send(HeadEvent::Status(reply))
            .map_err(|_| Error::Shutdown("head stopped".into()))?;
        rx.await.map_err(|_| Error::Shutdown("head stopped".into()))
    }
}

struct Core {
    scheduler: Scheduler,
    workers: HashMap<WorkerId, mpsc::UnboundedSender<pb::WorkerCommand>>,
    sessions: HashMap<SessionId, mpsc::UnboundedSender<pb::DriverEvent>>,
    drains: HashMap<WorkerId, Vec<oneshot::Sender<pb::DrainReply>>>,
    instance: String,
    effects: Vec<Effect>,
}

impl Core {
    fn handle(&mut self, event: HeadEvent) {
        let s = &mut self.scheduler;
        match event {
            HeadEvent::RegisterWorker {
                info,
                commands_tx,
                reply,
            } => {
                let name = info.name.clone();
                match s.add_worker(*info) {
                    Ok(id) => {
                        let _ = commands_tx.send(pb::WorkerCommand {
                            command: Some(worker_command::Command::Registered(pb::Registered {
                                worker: id.0,
                                head_instance: self.instance.clone(),
                                token_hint: String::new(),
                            })),
                        });
                        self.workers.insert(id, commands_tx);
                        tracing::info!(worker = %name, id = %id, "worker registered");
                        let _ = reply.send(Ok(id));
                    }
                    Err(e) => {
                        tracing::warn!(worker = %name, "registration refused: {}", e.0);
                        let _ = reply.send(Err(e.0));
                    }
                }
            }
            HeadEvent::WorkerOps(worker, ops) => {
                for op in ops {
                    match op.op {
                        Some(worker_op::Op::Result(r)) => s.task_finished(worker, r),
                        Some(worker_op::Op::StoredCopy(o)) => {
                            s.stored_copy(worker, flotilla_core::ObjectId(o))
                        }
                        Some(worker_op::Op::Store(stats)) => s.store_stats(worker, stats),
                        Some(worker_op::Op::Heartbeat(_))
                        | Some(worker_op::Op::Register(_))
                        | None => {}
                    }
                }
            }
            HeadEvent::WorkerGone(worker) => {
                if self.workers.remove(&worker).is_some() {
                    tracing::info!(id = %worker, "worker connection lost");
                    s.worker_lost(worker);
                }
            }
            HeadEvent::OpenSession {
                worker,
                events_tx,
                reply,
            } => {
                let id = s.open_session(worker);
                let _ = events_tx.send(pb::DriverEvent {
                    event: Some(driver_event::Event::Session(pb::SessionInfo {
                        session: id.0,
                        head_instance: self.instance.clone(),
                        protocol_version: PROTOCOL_VERSION,
                    })),
                });
                self.sessions.insert(id, events_tx);
                let _ = reply.send(id);
            }
            HeadEvent::DriverOps(session, ops) => {
                for op in ops {
                    match op.op {
                        Some(driver_op::Op::Submit(spec)) => s.submit(session, spec),
                        Some(driver_op::Op::Put(p)) => {
                            if let Some(v) = p.value {
                                s.put(session, flotilla_core::ObjectId(p.object), v)
                            }
                        }
                        Some(driver_op::Op::Release(o)) => {
                            s.release(session, flotilla_core::ObjectId(o))
                        }
                        Some(driver_op::Op::Subscribe(o)) => {
                            s.subscribe(session, flotilla_core::ObjectId(o))
                        }
                        Some(driver_op::Op::Cancel(o)) => {
                            s.cancel(session, flotilla_core::ObjectId(o))
                        }
                        Some(driver_op::Op::LookupActor(l)) => {
                            s.lookup_actor(session, l.request, &l.name)
                        }
                        Some(driver_op::Op::Blocked(t)) => {
                            s.task_blocked(flotilla_core::ObjectId(t), true)
                        }
                        Some(driver_op::Op::Unblocked(t)) => {
                            s.task_blocked(flotilla_core::ObjectId(t), false)
                        }
                        Some(driver_op::Op::Hello(_)) | None => {}
                    }
                }
            }
            HeadEvent::SessionGone(session) => {
                if self.sessions.remove(&session).is_some() {
                    tracing::debug!(session = session.0, "session closed");
                    s.close_session(session);
                }
            }
            HeadEvent::Status(reply) => {
                let _ = reply.send((s.snapshot(), s.workers()));
            }
            HeadEvent::Runs(reply) => {
                let _ = reply.send(
                    s.runs_by_name()
                        .map(|(n, ok, failed)| (n.to_string(), ok, failed))
                        .collect(),
                );
            }
            HeadEvent::Drain {
                worker,
                timeout,
                reply,
            } => match s.worker_by_name(&worker) {
                Some(id) => {
                    tracing::info!(worker = %worker, ?timeout, "draining");
                    self.drains.entry(id).or_default().push(reply);
                    s.drain(id, Instant::now(), timeout);
                }
                None => {
                    let _ = reply.send(pb::DrainReply {
                        outcome: pb::DrainOutcome::NotRegistered as i32,
                        message: format!("no worker named {worker:?} is registered"),
                    });
                }
            },
            HeadEvent::Tick => s.tick(Instant::now()),
        }
    }

    fn deliver(&mut self) {
        self.scheduler.drain_effects_into(&mut self.effects);
        for effect in self.effects.drain(..) {
            match effect {
                Effect::ToWorker(w, command) => {
                    if let Some(tx) = self.workers.get(&w) {
                        let _ = tx.send(pb::WorkerCommand {
                            command: Some(command),
                        });
                    }
                }
                Effect::ToSession(s, state) => {
                    if let Some(tx) = self.sessions.get(&s) {
                        let _ = tx.send(pb::DriverEvent {
                            event: Some(driver_event::Event::Object(state)),
                        });
                    }
                }
                Effect::ActorFound(s, found) => {
                    if let Some(tx) = self.sessions.get(&s) {
                        let _ = tx.send(pb::DriverEvent {
                            event: Some(driver_event::Event::ActorFound(found)),
                        });
                    }
                }
                Effect::Drained {
                    worker,
                    outcome,
                    message,
                } => {
                    tracing::info!(id = %worker, %message, "drain finished");
                    for reply in self.drains.remove(&worker).unwrap_or_default() {
                        let _ = reply.send(pb::DrainReply {
                            outcome: outcome as i32,
                            message: message.clone(),
                        });
                    }
                }
            }
        }
    }
}

fn random_instance() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Starts the head's core task and returns a handle to it.
pub(crate) fn start_core(config: &HeadConfig) -> (HeadHandle, mpsc::UnboundedSender<HeadEvent>) {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<HeadEvent>();
    let instance = random_instance();
    let mut core = Core {
        scheduler: Scheduler::new(config.prefetch),
        workers: HashMap::new(),
        sessions: HashMap::new(),
        drains: HashMap::new(),
        instance: instance.clone(),
        effects: Vec::new(),
    };
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            core.handle(event);
            // Take what else is queued before delivering, so effects go out in batches.
            for _ in 0..1024 {
                match events_rx.try_recv() {
                    Ok(event) => core.handle(event),
                    Err(_) => break,
                }
            }
            core.deliver();
        }
    });
    let ticker = events_tx.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(250));
        loop {
            interval.tick().await;
            if ticker.send(HeadEvent::Tick).is_err() {
                break;
            }
        }
    });
    (
        HeadHandle {
            events_tx: events_tx.clone(),
            instance,
        },
        events_tx,
    )
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct HeadService {
    events_tx: mpsc::UnboundedSender<HeadEvent>,
}

impl HeadService {
    fn send(&self, event: HeadEvent) -> Result<(), Status> {
        self.events_tx
            .send(event)
            .map_err(|_| Status::unavailable("the head is shutting down"))
    }
}

/// Feeds a session's inbound batches to the core as events, then `gone` when the stream ends
/// (closed by the peer, or broken, as when its process is killed).
fn forward<B: Send + 'static>(
    mut inbound: Streaming<B>,
    events_tx: mpsc::UnboundedSender<HeadEvent>,
    event: impl Fn(B) -> HeadEvent + Send + 'static,
    gone: HeadEvent,
) {
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(batch)) => {
                    if events_tx.send(event(batch)).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!("session stream ended: {}", status.message());
                    break;
                }
            }
        }
        let _ = events_tx.send(gone);
    });
}

fn check_version(version: u32, who: &str) -> Result<(), Status> {
    if version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version mismatch: the head speaks flotilla protocol {PROTOCOL_VERSION}, this {who} speaks {version}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Head for HeadService {
    type DriveStream = BoxStream<pb::DriverEvents>;
    type WorkStream = BoxStream<pb::WorkerCommands>;

    async fn drive(
        &self,
        request: Request<Streaming<pb::DriverBatch>>,
    ) -> Result<Response<Self::DriveStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty driver stream"))?;
        let mut ops = first.ops.into_iter();
        let hello = match ops.next().and_then(|o| o.op) {
            Some(driver_op::Op::Hello(h)) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a driver session must begin with a hello",
                ))
            }
        };
        check_version(hello.protocol_version, "driver")?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let worker = (!hello.worker_name.is_empty()).then_some(hello.worker_name);
        self.send(HeadEvent::OpenSession {
            worker,
            events_tx,
            reply,
        })?;
        let session = reply_rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        let rest: Vec<pb::DriverOp> = ops.collect();
        if !rest.is_empty() {
            self.send(HeadEvent::DriverOps(session, rest))?;
        }
        forward(
            inbound,
            self.events_tx.clone(),
            move |batch: pb::DriverBatch| HeadEvent::DriverOps(session, batch.ops),
            HeadEvent::SessionGone(session),
        );
        let stream = Batches::new(events_rx).map(|events| Ok(pb::DriverEvents { events }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn work(
        &self,
        request: Request<Streaming<pb::WorkerBatch>>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty worker stream"))?;
        let mut ops = first.ops.into_iter();
        let register = match ops.next().and_then(|o| o.op) {
            Some(worker_op::Op::Register(r)) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "a worker session must begin with a registration",
                ))
            }
        };
        check_version(register.protocol_version, "worker")?;
        let info = WorkerInfo {
            name: register.name,
            address: register.address,
            http_address: register.http_address,
            node: register.node,
            slots: register.slots,
            custom: register.custom_resources,
            functions: register
                .functions
                .into_iter()
                .map(|f| (f.name, f.signature))
                .collect(),
            classes: register
                .actor_classes
                .into_iter()
                .map(|f| (f.name, f.signature))
                .collect(),
            program: register.program,
            build_id: register.build_id,
            group: register.group,
        };
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        self.send(HeadEvent::RegisterWorker {
            info: Box::new(info),
            commands_tx,
            reply,
        })?;
        let worker = reply_rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?
            .map_err(Status::already_exists)?;
        tracing::debug!(?remote, id = %worker, "worker stream open");
        let rest: Vec<pb::WorkerOp> = ops.collect();
        if !rest.is_empty() {
            self.send(HeadEvent::WorkerOps(worker, rest))?;
        }
        forward(
            inbound,
            self.events_tx.clone(),
            move |batch: pb::WorkerBatch| HeadEvent::WorkerOps(worker, batch.ops),
            HeadEvent::WorkerGone(worker),
        );
        let stream = Batches::new(commands_rx).map(|commands| Ok(pb::WorkerCommands { commands }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::Status(reply))?;
        let (snap, workers) = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        Ok(Response::new(status_reply(&snap, &workers)))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        let req = request.into_inner();
        if req.worker.is_empty() {
            return Err(Status::invalid_argument("name the worker to drain"));
        }
        let timeout = Duration::from_secs(u64::from(if req.timeout_seconds == 0 {
            60
        } else {
            req.timeout_seconds
        }));
        let (reply, rx) = oneshot::channel();
        self.send(HeadEvent::Drain {
            worker: req.worker,
            timeout,
            reply,
        })?;
        let answer = rx
            .await
            .map_err(|_| Status::unavailable("the head is shutting down"))?;
        Ok(Response::new(answer))
    }
}

/// The wire form of a status view.
pub fn status_reply(snap: &Snapshot, workers: &[WorkerView]) -> pb::StatusReply {
    pb::StatusReply {
        head_instance: String::new(),
        workers: workers
            .iter()
            .map(|w| pb::WorkerStatus {
                id: w.id.0,
                name: w.name.clone(),
                address: w.address.clone(),
                state: w.state as i32,
                slots: w.slots,
                busy_slots: w.busy_slots,
                objects: w.store.objects,
                memory_bytes: w.store.memory_bytes,
                spilled_bytes: w.store.spilled_bytes,
                program: w.program.clone(),
                group: w.group.clone(),
                http_address: w.http_address.clone(),
                node: w.node.clone(),
            })
            .collect(),
        tasks_pending: snap.tasks_pending,
        tasks_waiting: snap.tasks_waiting,
        tasks_running: snap.tasks_running,
        tasks_finished: snap.tasks_finished,
        tasks_failed: snap.tasks_failed,
        objects: snap.objects,
        actors_alive: snap.actors_alive,
        drivers: snap.sessions as u32,
        desired_workers: snap.desired_workers,
        tasks_retried: snap.tasks_retried,
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
    let addr: SocketAddr = grpc.local_addr()?;
    if !addr.ip().is_loopback() && config.token.is_none() {
        return Err(Error::Config(format!(
            "refusing to listen on {addr} without a cluster token: set FLOTILLA_TOKEN (only loopback addresses may run without one)"
        )));
    }
    let (handle, events_tx) = start_core(&config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(listener) = http_listener {
        let app = http::head_router(handle.clone(), config.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await;
        });
    }
    let service = tonic::service::interceptor::InterceptedService::new(
        HeadServer::new(HeadService { events_tx })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        CheckAuth::new(config.token.clone()),
    );
    tracing::info!(%addr, cluster = %config.cluster, "head listening");
    let incoming = transport::incoming(grpc);
    let result = transport::server()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = stop_tx.send(true);
    result.map_err(|e| Error::Io(format!("head server: {}", transport::error_chain(&e))))
}
