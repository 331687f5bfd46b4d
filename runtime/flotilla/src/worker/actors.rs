//! Actors a worker hosts: each lives on its own thread, runs its constructor first (its outcome is
//! the creation task's result), then its calls one at a time in arrival order. Tiny calls to an
//! idle actor run on the I/O thread instead, still in order.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flotilla_core::ObjectId;
use flotilla_proto::v1::{self as pb, resolved_arg};
use tokio::sync::mpsc;

use super::{
    executor::{self, panic_message, resolve_args, ResultRoute, RunningGuard, INLINE_RUN_MICROS},
    Shared,
};
use crate::{
    codec,
    driver::Runtime,
    error::{ErrorKind, TaskFailure},
    registry::{registry, ActorInstance, TaskContext, TaskOutput},
};

/// A method call for an actor.
pub(super) struct Call {
    pub(super) task: ObjectId,
    pub(super) attempt: u32,
    pub(super) method: String,
    pub(super) signature: String,
    pub(super) args: Vec<pb::ResolvedArg>,
    /// How its result travels.
    pub(super) route: ResultRoute,
    /// Where its outcome goes instead of the head's stream: the stream of the driver that
    /// called it directly.
    pub(super) reply: Option<mpsc::UnboundedSender<pb::WorkerOp>>,
}

impl Call {
    /// Where its outcome goes: the caller's direct stream, or else `head`.
    fn sink<'a>(
        reply: &'a Option<mpsc::UnboundedSender<pb::WorkerOp>>,
        head: &'a mpsc::UnboundedSender<pb::WorkerOp>,
    ) -> &'a mpsc::UnboundedSender<pb::WorkerOp> {
        reply.as_ref().unwrap_or(head)
    }
}

/// An actor on this worker: its instance, shared by its thread and the I/O thread, and the
/// calls queued for its thread.
pub(super) struct HostedActor {
    calls_tx: std::sync::mpsc::Sender<Call>,
    instance: Arc<Instance>,
    /// Which life of the actor this is (its restarts before it).
    pub(super) incarnation: u32,
}

#[derive(Default)]
struct Instance {
    /// Set once the constructor ran.
    actor: std::sync::Mutex<Option<Box<dyn ActorInstance>>>,
    /// Calls sent to the actor's thread and not finished.
    queued: AtomicU64,
    /// Average call time, microseconds (as f64 bits).
    avg_micros: AtomicU64,
    /// Killed (or drained away): queued calls are refused, not run.
    killed: AtomicBool,
}

impl Instance {
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
        actor: &mut dyn ActorInstance,
        method: &str,
        signature: &str,
        args: Vec<Bytes>,
        rt: &Runtime,
    ) -> TaskOutput {
        let started = Instant::now();
        let ctx = TaskContext { rt: rt.clone() };
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
            actor.call(method, signature, args, ctx)
        }))
        .unwrap_or_else(|p| Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*p))));
        self.record(started.elapsed());
        out
    }
}

impl HostedActor {
    /// Runs a call at once on this (I/O) thread when the actor is idle, its calls are tiny and
    /// the arguments are at hand (a thread hand-off would cost more than the call); otherwise
    /// queues it for the actor's thread. Either way calls run in arrival order. False when the
    /// actor's thread is gone.
    pub(super) fn deliver(
        &self,
        call: Call,
        shared: &Arc<Shared>,
        rt: &Runtime,
        ops_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
    ) -> bool {
        let avg = f64::from_bits(self.instance.avg_micros.load(Ordering::Relaxed));
        let inline_args = call
            .args
            .iter()
            .all(|a| !matches!(a.kind, Some(resolved_arg::Kind::Stored(_))));
        if avg > 0.0
            && avg < INLINE_RUN_MICROS
            && inline_args
            && self.instance.queued.load(Ordering::Acquire) == 0
        {
            if let Ok(mut guard) = self.instance.actor.try_lock() {
                if let Some(actor) = guard.as_mut().filter(|a| !a.takes_runtime(&call.method)) {
                    let values = call
                        .args
                        .into_iter()
                        .map(|a| match a.kind {
                            Some(resolved_arg::Kind::Value(b)) => b,
                            _ => Bytes::new(),
                        })
                        .collect();
                    let started = Instant::now();
                    let output = self.instance.call(
                        actor.as_mut(),
                        &call.method,
                        &call.signature,
                        values,
                        rt,
                    );
                    executor::report(
                        shared,
                        Call::sink(&call.reply, ops_tx),
                        call.task,
                        call.attempt,
                        output,
                        (started.elapsed(), call.route),
                    );
                    return true;
                }
            }
        }
        self.instance.queued.fetch_add(1, Ordering::AcqRel);
        if self.calls_tx.send(call).is_err() {
            self.instance.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Refuses the calls still queued; the thread ends when the last handle goes.
    pub(super) fn kill(self) {
        self.instance.killed.store(true, Ordering::Release);
    }
}

/// Starts an actor of `class` on its own thread.
pub(super) fn start(
    shared: Arc<Shared>,
    rt: Runtime,
    class: String,
    d: pb::Dispatch,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
) -> HostedActor {
    let (calls_tx, calls_rx) = std::sync::mpsc::channel::<Call>();
    let instance = Arc::new(Instance::default());
    let thread_instance = instance.clone();
    let handle = tokio::runtime::Handle::current();
    let spec = d.spec.unwrap_or_default();
    let id = ObjectId(spec.task);
    let incarnation = d.restarts;
    let signature = spec.signature.clone();
    let (failure_shared, failure_ops, attempt) = (shared.clone(), ops_tx.clone(), d.attempt);
    let spawned = std::thread::Builder::new()
        .name(format!("actor-{id}"))
        .spawn(move || {
            let instance = thread_instance;
            let resolve =
                |args: Vec<pb::ResolvedArg>| handle.block_on(resolve_args(&shared, args, &ops_tx));
            let report = |task: ObjectId,
                          attempt: u32,
                          output: TaskOutput,
                          (run, route): (Duration, ResultRoute),
                          sink: &mpsc::UnboundedSender<pb::WorkerOp>| {
                let op = handle.block_on(executor::result_op(
                    &shared, task, attempt, output, run, route,
                ));
                let _ = sink.send(op);
            };
            let created = construct(&class, &signature, d.args, &rt, &resolve);
            match created {
                Ok(actor) => {
                    // Stored before the creation is reported, so no call can find it missing.
                    *instance.actor.lock().unwrap_or_else(|e| e.into_inner()) = Some(actor);
                    let unit = codec::encode(&()).map_err(TaskFailure::application);
                    report(
                        id,
                        d.attempt,
                        unit,
                        (Duration::ZERO, ResultRoute::BySize),
                        &ops_tx,
                    );
                }
                Err(f) => {
                    report(
                        id,
                        d.attempt,
                        Err(f),
                        (Duration::ZERO, ResultRoute::BySize),
                        &ops_tx,
                    );
                    return;
                }
            }
            while let Ok(call) = calls_rx.recv() {
                if instance.killed.load(Ordering::Acquire) {
                    let failure = TaskFailure::new(
                        ErrorKind::ActorDied,
                        format!("actor {id} was killed before this call ran"),
                    );
                    report(
                        call.task,
                        call.attempt,
                        Err(failure),
                        (Duration::ZERO, call.route),
                        Call::sink(&call.reply, &ops_tx),
                    );
                    instance.queued.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let running = RunningGuard::new(&shared.metrics.running);
                let started = Instant::now();
                let output = resolve(call.args).and_then(|args| {
                    let mut guard = instance.actor.lock().unwrap_or_else(|e| e.into_inner());
                    let actor = guard
                        .as_mut()
                        .expect("calls arrive only after the constructor stored the instance");
                    instance.call(actor.as_mut(), &call.method, &call.signature, args, &rt)
                });
                drop(running);
                report(
                    call.task,
                    call.attempt,
                    output,
                    (started.elapsed(), call.route),
                    Call::sink(&call.reply, &ops_tx),
                );
                instance.queued.fetch_sub(1, Ordering::AcqRel);
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start an actor thread: {e}");
        let failure = TaskFailure::new(
            ErrorKind::ActorDied,
            format!("the worker cannot start a thread for the actor: {e}"),
        );
        let _ = failure_ops.send(executor::failure_op(&failure_shared, id, attempt, failure));
    }
    HostedActor {
        calls_tx,
        instance,
        incarnation,
    }
}

/// Runs the constructor of `class` with the creation's arguments.
fn construct(
    class: &str,
    signature: &str,
    args: Vec<pb::ResolvedArg>,
    rt: &Runtime,
    resolve: &dyn Fn(Vec<pb::ResolvedArg>) -> Result<Vec<Bytes>, TaskFailure>,
) -> Result<Box<dyn ActorInstance>, TaskFailure> {
    let reg = registry();
    let c = reg.classes.get(class).ok_or_else(|| {
        TaskFailure::new(
            ErrorKind::UnknownFunction,
            format!(
                "actor class {class} is not registered in program {} (build {})",
                reg.program, reg.build_id
            ),
        )
    })?;
    // The head checked it; this is for a cluster that mixes programs.
    if !signature.is_empty() && signature != c.signature {
        return Err(TaskFailure::type_mismatch(format!(
            "{class}::new has signature `{}` here but the caller compiled against `{signature}`",
            c.signature
        )));
    }
    let args = resolve(args)?;
    let ctx = TaskContext { rt: rt.clone() };
    std::panic::catch_unwind(AssertUnwindSafe(|| (c.create)(args, ctx)))
        .unwrap_or_else(|p| Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*p))))
}
