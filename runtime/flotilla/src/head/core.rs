//! The head's core loop: one task owns the [`Scheduler`], takes events from the gRPC handlers,
//! and delivers the scheduler's effects, batched, to workers and drivers.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla_core::{
    Effect, ObjectId, Scheduler, SessionId, Snapshot, UndrainError, WorkerId, WorkerInfo,
    WorkerView,
};
use flotilla_proto::{
    v1::{self as pb, driver_event, driver_op, worker_command, worker_op},
    PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, oneshot};

use super::{metrics::HeadMetrics, HeadConfig};
use crate::error::{Error, Result};

/// A status snapshot with its workers.
pub type StatusView = (Snapshot, Vec<WorkerView>);

/// Finished and failed runs by task name.
pub type RunsByName = Vec<(String, u64, u64)>;

/// What the core loop reacts to.
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
        /// A session to open again, with the stored objects it still references.
        resume: Option<(SessionId, Vec<ObjectId>)>,
        job: Option<String>,
        events_tx: mpsc::UnboundedSender<pb::DriverEvent>,
        reply: oneshot::Sender<Result<SessionId, String>>,
    },
    DriverOps(SessionId, Vec<pb::DriverOp>),
    SessionGone(SessionId),
    Status(oneshot::Sender<StatusView>),
    Runs(oneshot::Sender<RunsByName>),
    CancelJob {
        job: String,
        reply: oneshot::Sender<pb::CancelJobReply>,
    },
    Drain {
        worker: String,
        timeout: Duration,
        reply: oneshot::Sender<pb::DrainReply>,
    },
    Undrain {
        worker: String,
        reply: oneshot::Sender<Result<pb::UndrainReply, UndrainError>>,
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

/// The state the core loop owns.
struct Core {
    metrics: Arc<HeadMetrics>,
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
                        Some(worker_op::Op::Result(r)) => {
                            self.metrics.observe_run(r.run_micros);
                            s.task_finished(worker, r)
                        }
                        Some(worker_op::Op::StoredCopy(o)) => s.stored_copy(worker, ObjectId(o)),
                        Some(worker_op::Op::Store(stats)) => s.store_stats(worker, stats),
                        Some(worker_op::Op::Blocked(t)) => {
                            s.task_blocked_on(worker, ObjectId(t), true)
                        }
                        Some(worker_op::Op::Unblocked(t)) => {
                            s.task_blocked_on(worker, ObjectId(t), false)
                        }
                        Some(worker_op::Op::Exiting(t)) => {
                            tracing::warn!(id = %worker, task = %ObjectId(t), "the worker exits to stop a cancelled task");
                            s.worker_exiting(worker);
                        }
                        Some(worker_op::Op::Held(held)) => {
                            tracing::info!(
                                id = %worker,
                                objects = held.objects.len(),
                                "worker reports the objects it holds"
                            );
                            s.adopt_objects(worker, held, Instant::now())
                        }
                        Some(worker_op::Op::Register(_)) | None => {}
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
                resume,
                job,
                events_tx,
                reply,
            } => {
                let id = match resume {
                    None => s.open_job_session(worker, job),
                    Some((id, holds)) => {
                        match s.resume_session(id, worker, job, holds, Instant::now()) {
                            Ok(()) => {
                                tracing::info!(session = id.0, "session resumed");
                                id
                            }
                            Err(why) => {
                                let _ = reply.send(Err(why));
                                return;
                            }
                        }
                    }
                };
                let _ = events_tx.send(pb::DriverEvent {
                    event: Some(driver_event::Event::Session(pb::SessionInfo {
                        session: id.0,
                        head_instance: self.instance.clone(),
                        protocol_version: PROTOCOL_VERSION,
                    })),
                });
                self.sessions.insert(id, events_tx);
                let _ = reply.send(Ok(id));
            }
            HeadEvent::DriverOps(session, ops) => {
                for op in ops {
                    let parent = (op.parent != 0).then_some(ObjectId(op.parent));
                    match op.op {
                        Some(driver_op::Op::Submit(spec)) if !op.lost_on.is_empty() => {
                            s.submit_lost(session, spec, parent, &op.lost_on)
                        }
                        Some(driver_op::Op::Submit(spec)) => s.submit_for(session, spec, parent),
                        Some(driver_op::Op::Lease(request)) => s.request_lease(session, request),
                        Some(driver_op::Op::ReturnLease(lease)) => s.return_lease(session, lease),
                        Some(driver_op::Op::Put(p)) => {
                            if let Some(v) = p.value {
                                s.put(session, ObjectId(p.object), v)
                            }
                        }
                        Some(driver_op::Op::Release(o)) => s.release(session, ObjectId(o)),
                        Some(driver_op::Op::Contained(c)) => {
                            s.contained(ObjectId(c.object), c.refs.into_iter().map(ObjectId))
                        }
                        Some(driver_op::Op::Subscribe(o)) => s.subscribe(session, ObjectId(o)),
                        Some(driver_op::Op::Cancel(o)) => s.cancel(session, ObjectId(o)),
                        Some(driver_op::Op::LookupActor(l)) => s.locate_actor(session, &l),
                        Some(driver_op::Op::DirectDone(d)) => s.direct_call_done(session, d),
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
            HeadEvent::CancelJob { job, reply } => {
                let done = s.cancel_job(&job);
                tracing::info!(job = %job, tasks = done.tasks, actors = done.actors, "job cancelled");
                let _ = reply.send(pb::CancelJobReply {
                    sessions: u32::try_from(done.sessions).unwrap_or(u32::MAX),
                    tasks_cancelled: done.tasks,
                    actors_killed: done.actors,
                });
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
            HeadEvent::Undrain { worker, reply } => {
                let answer = s.undrain(&worker);
                if let Ok(r) = &answer {
                    tracing::info!(worker = %worker, message = %r.message, "undrain");
                }
                let _ = reply.send(answer);
            }
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
                    to_session(&self.sessions, s, driver_event::Event::Object(state))
                }
                Effect::ActorFound(s, found) => {
                    to_session(&self.sessions, s, driver_event::Event::ActorFound(found));
                }
                Effect::Lease(s, grant) => {
                    to_session(&self.sessions, s, driver_event::Event::Lease(grant))
                }
                Effect::LeaseRevoked(s, lease) => {
                    to_session(&self.sessions, s, driver_event::Event::LeaseRevoked(lease));
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

/// Sends an event to a session's stream, if the session is still connected.
fn to_session(
    sessions: &HashMap<SessionId, mpsc::UnboundedSender<pb::DriverEvent>>,
    session: SessionId,
    event: driver_event::Event,
) {
    if let Some(tx) = sessions.get(&session) {
        let _ = tx.send(pb::DriverEvent { event: Some(event) });
    }
}

/// New sessions start below this number, leaving room above for the sessions of a head's life
/// (ids keep 24 bits for the session).
const FIRST_SESSION_LIMIT: u32 = 1 << 23;

fn random_instance() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Starts the head's core task and returns a handle to it.
pub(crate) fn start_core(
    config: &HeadConfig,
    metrics: Arc<HeadMetrics>,
) -> (HeadHandle, mpsc::UnboundedSender<HeadEvent>) {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<HeadEvent>();
    let instance = random_instance();
    let mut core = Core {
        metrics,
        // Sessions a restarted head sees again keep their numbers; start new ones elsewhere.
        scheduler: Scheduler::new(config.prefetch)
            .with_first_session(rand::random_range(1..FIRST_SESSION_LIMIT)),
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
