//! One connection of a worker to the head, from registration until it drops: the head's commands
//! come in on the `Work` stream and results, copies, store statistics and slot lending go out on
//! it. Each command kind has its own method; the loop only dispatches.

use std::{collections::HashMap, sync::Arc, time::Duration};

use flotilla_core::ObjectId;
use flotilla_proto::{
    contract::{CANCEL_GRACE_MILLIS, EXIT_CANCEL_FORCED},
    v1::{self as pb, task_spec, worker_command, worker_op},
    PROTOCOL_VERSION,
};
use futures::StreamExt;
use tokio::{sync::mpsc, task::AbortHandle};

use super::{actors, direct, executor, Shared};
use crate::{
    driver::{host::TaskHost, Runtime},
    error::{ErrorKind, TaskFailure},
    net::{self, Batches},
    registry::registry,
};

/// Why a session ended.
pub(super) enum SessionError {
    /// The head refused us for good (wrong token, other protocol).
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

/// What the head learns of this worker when it registers.
fn registration(shared: &Shared) -> pb::RegisterWorker {
    let config = &shared.config;
    let reg = registry();
    let infos = |items: Vec<(&str, &str)>| {
        items
            .into_iter()
            .map(|(name, signature)| pb::FunctionInfo {
                name: name.into(),
                signature: signature.into(),
            })
            .collect()
    };
    pb::RegisterWorker {
        protocol_version: PROTOCOL_VERSION,
        name: config.name.clone(),
        address: shared.address.clone(),
        http_address: shared.address.clone(),
        node: config.node.clone(),
        slots: config.slots,
        custom_resources: config.custom.clone(),
        functions: infos(
            reg.functions
                .values()
                .map(|f| (f.name, f.signature))
                .collect(),
        ),
        actor_classes: infos(
            reg.classes
                .values()
                .map(|c| (c.name, c.signature))
                .collect(),
        ),
        program: reg.program.clone(),
        build_id: reg.build_id.clone(),
        group: config.group.clone(),
    }
}

/// After a registration: tells a head that restarted (another instance than the one this worker
/// last registered with) which objects the store holds, so drivers' references to them resolve
/// again; a head that is the same one forgot this worker's objects when it lost it, so they go.
fn report_held(
    shared: &Shared,
    head_instance: String,
    ops_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
) {
    let previous = shared
        .head_instance
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(head_instance.clone());
    match previous {
        Some(previous) if previous != head_instance => {
            let objects = shared.store.held();
            tracing::info!(
                objects = objects.len(),
                head = %shared.config.head,
                "the head restarted; reporting the objects this worker holds"
            );
            let _ = ops_tx.send(pb::WorkerOp {
                op: Some(worker_op::Op::Held(pb::HeldObjects { objects })),
            });
        }
        Some(_) => shared.store.clear(),
        None => {}
    }
}

/// Registers, then works for the head until the connection drops.
pub(super) async fn run(shared: Arc<Shared>) -> Result<(), SessionError> {
    let config = &shared.config;
    let mut head = net::connect_head(&config.head, config.token.as_deref())
        .await
        .map_err(|e| SessionError::Lost(e.to_string()))?;
    let (ops_tx, ops_rx) = mpsc::unbounded_channel::<pb::WorkerOp>();
    let _ = ops_tx.send(pb::WorkerOp {
        op: Some(worker_op::Op::Register(registration(&shared))),
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
    let (worker_id, head_instance) = match first {
        Some(worker_command::Command::Registered(r)) => (r.worker, r.head_instance),
        _ => {
            return Err(SessionError::Lost(
                "the head did not confirm the registration".into(),
            ))
        }
    };
    report_held(&shared, head_instance, &ops_tx);
    shared
        .registered
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(name = %config.name, id = worker_id, head = %config.head, slots = config.slots, "registered");
    // The runtime tasks use to submit tasks of their own: its puts and gets go through this
    // worker's store, and a task waiting in it lends its slots back on this stream.
    let host = TaskHost {
        store: shared.store.clone(),
        location: pb::ObjectLocation {
            worker: worker_id,
            address: shared.address.clone(),
            node: config.node.clone(),
            shm_path: String::new(),
            http_address: shared.address.clone(),
        },
        ops_tx: ops_tx.clone(),
    };
    let rt = Runtime::open(
        &config.head,
        config.token.as_deref(),
        "",
        Some((host, config.name.clone())),
    )
    .await
    .map_err(|e| SessionError::Lost(e.to_string()))?;

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ObjectId>();
    shared.hosting().session = Some((rt.clone(), ops_tx.clone()));
    let mut session = WorkerSession {
        shared: shared.clone(),
        rt,
        ops_tx,
        done_tx,
        tasks: HashMap::new(),
    };
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
                    session.handle(command);
                }
            }
            Some(done) = done_rx.recv() => {
                session.tasks.remove(&done);
            }
            _ = stats_timer.tick() => {
                let stats = shared.store.stats();
                if stats != last_stats {
                    last_stats = stats;
                    session.send(worker_op::Op::Store(stats));
                }
            }
        }
    };
    session.close().await;
    outcome
}

/// The work of one session: running tasks and hosted actors.
struct WorkerSession {
    shared: Arc<Shared>,
    rt: Runtime,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
    done_tx: mpsc::UnboundedSender<ObjectId>,
    /// Running tasks: how to stop each, and the attempt it runs. (Hosted actors are in
    /// `Shared::hosting`, where direct calls find them too.)
    tasks: HashMap<ObjectId, (AbortHandle, Arc<executor::Stop>, u32)>,
}

impl WorkerSession {
    fn send(&self, op: worker_op::Op) {
        let _ = self.ops_tx.send(pb::WorkerOp { op: Some(op) });
    }

    fn handle(&mut self, command: worker_command::Command) {
        match command {
            worker_command::Command::Run(d) => self.run(d),
            worker_command::Command::Cancel(t) => self.cancel(ObjectId(t)),
            worker_command::Command::Free(o) => self.shared.store.remove(ObjectId(o)),
            worker_command::Command::Copy(c) => self.copy(c),
            worker_command::Command::KillActor(a) => self.kill_actor(ObjectId(a)),
            worker_command::Command::CancelLease(lease) => self.cancel_lease(lease),
            worker_command::Command::Registered(_) => {}
        }
    }

    fn run(&mut self, d: pb::Dispatch) {
        let Some(spec) = d.spec.as_ref() else { return };
        let task = ObjectId(spec.task);
        match &spec.kind {
            Some(task_spec::Kind::ActorCall(call)) => {
                let actor = ObjectId(call.actor);
                let call = actors::Call {
                    task,
                    attempt: d.attempt,
                    method: call.method.clone(),
                    signature: spec.signature.clone(),
                    args: d.args,
                    route: executor::ResultRoute::of(d.keep_result),
                    reply: None,
                };
                let delivered = self
                    .shared
                    .hosting()
                    .actors
                    .get(&actor)
                    .is_some_and(|hosted| {
                        hosted.deliver(call, &self.shared, &self.rt, &self.ops_tx)
                    });
                if !delivered {
                    let failure = TaskFailure::new(
                        ErrorKind::ActorDied,
                        format!("actor {actor} is not on worker {}", self.shared.config.name),
                    );
                    let op = executor::failure_op(&self.shared, task, d.attempt, failure);
                    let _ = self.ops_tx.send(op);
                }
            }
            Some(task_spec::Kind::CreateActor(create)) => {
                let class = create.class.clone();
                let hosted = actors::start(
                    self.shared.clone(),
                    self.rt.clone(),
                    class,
                    d,
                    self.ops_tx.clone(),
                );
                self.shared.hosting().actors.insert(task, hosted);
            }
            _ => {
                let attempt = d.attempt;
                let stop = Arc::new(executor::Stop::default());
                let done_tx = self.done_tx.clone();
                let handle = tokio::spawn(executor::run_task(
                    self.shared.clone(),
                    self.rt.clone(),
                    d,
                    self.ops_tx.clone(),
                    move |task| {
                        let _ = done_tx.send(task);
                    },
                    stop.clone(),
                ));
                self.tasks
                    .insert(task, (handle.abort_handle(), stop, attempt));
            }
        }
    }

    fn cancel(&mut self, task: ObjectId) {
        if let Some((h, stop, attempt)) = self.tasks.remove(&task) {
            stop_task(
                &self.shared,
                &self.ops_tx,
                task,
                attempt,
                (h, stop),
                &self.ops_tx,
            );
        }
    }

    /// A lease's job was cancelled: its running tasks stop as cancelled tasks do (their outcome
    /// goes to the driver that pushed them), and no more run on it.
    fn cancel_lease(&mut self, lease: u64) {
        self.shared.hosting().cancelled_leases.insert(lease);
        stop_leased(&self.shared, |r| r.lease == lease);
    }
}

/// Stops a running task: aborts it, reports it cancelled on `reports` (an aborted task never
/// reports, and whoever waits counts it running until it does), and stops its thread (telling
/// the head on `head_ops` if the worker must exit for it).
fn stop_task(
    shared: &Arc<Shared>,
    head_ops: &mpsc::UnboundedSender<pb::WorkerOp>,
    task: ObjectId,
    attempt: u32,
    (handle, stop): (AbortHandle, Arc<executor::Stop>),
    reports: &mpsc::UnboundedSender<pb::WorkerOp>,
) {
    handle.abort();
    let failure = TaskFailure::new(ErrorKind::Cancelled, "cancelled".into());
    let op = executor::failure_op(shared, task, attempt, failure);
    let _ = reports.send(op);
    if stop.cancel() {
        stop_thread(shared.clone(), head_ops.clone(), task, stop);
    }
}

/// Stops the leased tasks `which` picks (their lease's job was cancelled, or the driver that
/// pushed them went away), as the head's cancel stops a task.
pub(super) fn stop_leased(shared: &Arc<Shared>, which: impl Fn(&direct::LeasedRun) -> bool) {
    let (stopped, head_ops) = {
        let mut hosting = shared.hosting();
        let ids: Vec<ObjectId> = hosting
            .leased
            .iter()
            .filter(|(_, r)| which(r))
            .map(|(id, _)| *id)
            .collect();
        let stopped: Vec<(ObjectId, direct::LeasedRun)> = ids
            .into_iter()
            .filter_map(|id| hosting.leased.remove(&id).map(|r| (id, r)))
            .collect();
        (
            stopped,
            hosting.session.as_ref().map(|(_, ops)| ops.clone()),
        )
    };
    for (task, run) in stopped {
        let head_ops = head_ops.clone().unwrap_or_else(|| run.reply.clone());
        stop_task(
            shared,
            &head_ops,
            task,
            0,
            (run.handle, run.stop),
            &run.reply,
        );
    }
}

/// A cancelled task runs on a thread, which aborting its future does not stop: give it the grace
/// to return (it may poll `flotilla::cancelled()`), then exit the process, as nothing else stops
/// a thread. The head hears it first (on `ops_tx`), so the worker's other tasks are retried
/// without using up their retries; whoever runs the worker starts it again.
fn stop_thread(
    shared: Arc<Shared>,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
    task: ObjectId,
    stop: Arc<executor::Stop>,
) {
    {
        tokio::spawn(async move {
            if stop
                .returned_within(Duration::from_millis(CANCEL_GRACE_MILLIS))
                .await
            {
                return;
            }
            if !shared.config.exit_to_stop_tasks {
                tracing::warn!(%task, "a cancelled task runs on past the grace on its thread");
                return;
            }
            tracing::error!(
                %task,
                status = EXIT_CANCEL_FORCED,
                "a cancelled task did not return within {CANCEL_GRACE_MILLIS} ms; exiting to stop it"
            );
            let _ = ops_tx.send(pb::WorkerOp {
                op: Some(worker_op::Op::Exiting(task.0)),
            });
            // The op goes out on the session's stream; give it a moment to leave.
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Shared-memory segments outlive the process unless removed.
            shared.store.clear();
            std::process::exit(i32::from(EXIT_CANCEL_FORCED));
        });
    }
}

impl WorkerSession {
    /// Copies an object from another worker into this store (a drain moving objects here).
    fn copy(&self, c: pb::CopyObject) {
        let shared = self.shared.clone();
        let ops_tx = self.ops_tx.clone();
        tokio::spawn(async move {
            let id = ObjectId(c.object);
            let Some(from) = c.from else { return };
            match shared.peers.fetch(id, &from).await {
                Ok(bytes) => {
                    if shared.store.put(id, bytes).await.is_ok() {
                        let _ = ops_tx.send(pb::WorkerOp {
                            op: Some(worker_op::Op::StoredCopy(id.0)),
                        });
                    }
                }
                Err(e) => tracing::warn!(object = %id, "copy failed: {e}"),
            }
        });
    }

    fn kill_actor(&mut self, actor: ObjectId) {
        let hosted = self.shared.hosting().actors.remove(&actor);
        if let Some(hosted) = hosted {
            hosted.kill();
        }
    }

    /// Stops what still runs and ends the tasks' runtime session.
    async fn close(self) {
        for (h, stop, _) in self.tasks.into_values() {
            h.abort();
            stop.cancel();
        }
        // The actors end with the session; direct calls find them gone.
        let hosting = std::mem::take(&mut *self.shared.hosting());
        drop(hosting);
        self.rt.shutdown().await;
    }
}
