//! How a worker runs a function: take its slots, resolve its arguments (from this store or a
//! peer), run it inline, on a blocking thread or as a future, and report the result, keeping
//! large results in the store.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use flotilla_core::{options::resolve_slots, ObjectId};
use flotilla_proto::v1::{self as pb, resolved_arg, task_result, task_spec, worker_op};
use futures::FutureExt;
use prometheus::IntGauge;
use tokio::sync::{mpsc, watch};

use super::Shared;
use crate::{
    driver::{
        host::{self, TaskBinding},
        object_ref::decoding_with,
        Runtime,
    },
    error::{ErrorKind, TaskFailure},
    net::INLINE_MAX_BYTES,
    registry::{registry, Invocation, TaskContext, TaskOutput},
};

/// Plain functions (and actor methods) whose runs average less than this run on the worker's
/// I/O thread: handing them to a blocking thread would cost more than running them.
pub(super) const INLINE_RUN_MICROS: f64 = 20.0;

/// Counts a running task for the worker's metrics until dropped (also when the task is aborted).
pub(super) struct RunningGuard<'a>(&'a IntGauge);

impl<'a> RunningGuard<'a> {
    pub(super) fn new(running: &'a IntGauge) -> Self {
        running.inc();
        RunningGuard(running)
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a running task is stopped: the cancel flag a task on a thread may poll
/// ([`crate::cancelled`]), and whether a thread runs it now (aborting its future does not stop a
/// thread).
pub(super) struct Stop {
    cancelled: Arc<AtomicBool>,
    on_thread: watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            cancelled: Arc::default(),
            on_thread: watch::Sender::new(false),
        }
    }
}

impl Stop {
    /// Marks the task cancelled; whether a thread runs it now.
    pub(super) fn cancel(&self) -> bool {
        self.cancelled.store(true, Ordering::Relaxed);
        *self.on_thread.borrow()
    }

    /// Waits up to `grace` for the task's thread to return; whether it did.
    pub(super) async fn returned_within(&self, grace: Duration) -> bool {
        let mut on_thread = self.on_thread.subscribe();
        let returned = tokio::time::timeout(grace, on_thread.wait_for(|on| !on))
            .await
            .is_ok();
        returned
    }
}

/// While alive, this thread runs the task of `stop`.
struct OnThread<'a>(&'a Stop);

impl<'a> OnThread<'a> {
    fn enter(stop: &'a Stop) -> Self {
        host::set_cancel_flag(Some(stop.cancelled.clone()));
        OnThread(stop)
    }
}

impl Drop for OnThread<'_> {
    fn drop(&mut self) {
        host::set_cancel_flag(None);
        self.0.on_thread.send_replace(false);
    }
}

/// Average run time of each plain function on this worker, in microseconds.
#[derive(Default)]
pub(super) struct RunTimes(std::sync::Mutex<HashMap<&'static str, f64>>);

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

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

fn result(
    task: ObjectId,
    attempt: u32,
    outcome: task_result::Outcome,
    run: Duration,
) -> pb::WorkerOp {
    pb::WorkerOp {
        op: Some(worker_op::Op::Result(pb::TaskResult {
            task: task.0,
            attempt,
            outcome: Some(outcome),
            run_micros: run.as_micros() as u64,
            contained: Vec::new(),
        })),
    }
}

/// The report of a task that failed (or never ran).
pub(super) fn failure_op(
    shared: &Shared,
    task: ObjectId,
    attempt: u32,
    failure: TaskFailure,
) -> pb::WorkerOp {
    shared.metrics.ran(false);
    result(
        task,
        attempt,
        task_result::Outcome::Error(failure.into_proto()),
        Duration::ZERO,
    )
}

/// How a result travels: inline through the head when it is small, unless the head asked the
/// worker to keep it ([`pb::Dispatch::keep_result`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ResultRoute {
    /// Small values inline, larger ones in the store.
    BySize,
    /// Every value in the store.
    Keep,
}

impl ResultRoute {
    pub(super) fn of(keep_result: bool) -> Self {
        if keep_result {
            ResultRoute::Keep
        } else {
            ResultRoute::BySize
        }
    }
}

/// The report of a task's outcome: small values travel inline, larger ones (or all, when the
/// head asked) stay in the store.
pub(super) async fn result_op(
    shared: &Shared,
    task: ObjectId,
    attempt: u32,
    output: TaskOutput,
    run: Duration,
    route: ResultRoute,
) -> pb::WorkerOp {
    let outcome = match output {
        Ok(bytes) if bytes.len() <= INLINE_MAX_BYTES && route == ResultRoute::BySize => {
            task_result::Outcome::InlineValue(bytes)
        }
        Ok(bytes) => {
            let size = bytes.len() as u64;
            match shared.store.put(task, bytes).await {
                Ok(()) => task_result::Outcome::StoredSize(size),
                Err(e) => {
                    let failure = TaskFailure::new(
                        ErrorKind::ObjectLost,
                        format!("cannot store the result: {e}"),
                    );
                    return failure_op(shared, task, attempt, failure);
                }
            }
        }
        Err(f) => {
            shared.metrics.ran(false);
            shared.metrics.observe_run(run);
            return result(
                task,
                attempt,
                task_result::Outcome::Error(f.into_proto()),
                run,
            );
        }
    };
    shared.metrics.ran(true);
    shared.metrics.observe_run(run);
    result(task, attempt, outcome, run)
}

/// Reports an outcome from the I/O thread: at once when it needs no storing, otherwise from a
/// task once it is stored, without holding up the thread.
pub(super) fn report(
    shared: &Arc<Shared>,
    ops_tx: &mpsc::UnboundedSender<pb::WorkerOp>,
    task: ObjectId,
    attempt: u32,
    output: TaskOutput,
    (run, route): (Duration, ResultRoute),
) {
    let stored =
        matches!(&output, Ok(b) if b.len() > INLINE_MAX_BYTES || route == ResultRoute::Keep);
    if !stored {
        // Nothing to store, so nothing to wait for: no task, no allocation on the hot path.
        let op = result_op(shared, task, attempt, output, run, route)
            .now_or_never()
            .expect("result_op awaits only a store put, and this outcome stores nothing");
        let _ = ops_tx.send(op);
        return;
    }
    let shared = shared.clone();
    let ops_tx = ops_tx.clone();
    tokio::spawn(async move {
        let op = result_op(&shared, task, attempt, output, run, route).await;
        let _ = ops_tx.send(op);
    });
}

/// Resolves arguments: inline values as they are, stored ones from this store or a peer (and
/// keeps the copy, telling the head).
pub(super) async fn resolve_args(
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
                    .await
                    .map_err(|e| TaskFailure::new(ErrorKind::ObjectLost, e.to_string()))?;
                let bytes = match local {
                    Some(b) => b,
                    None => {
                        let stored = r.r#where.unwrap_or_default();
                        let b =
                            shared.peers.fetch(id, &stored).await.map_err(|e| {
                                TaskFailure::new(ErrorKind::ObjectLost, e.to_string())
                            })?;
                        if shared.store.put(id, b.clone()).await.is_ok() {
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

/// Slots a task takes: what the head resolved at submission, and never more than this worker has.
fn slots_of(spec: &pb::TaskSpec, worker_slots: u32) -> u32 {
    let requested = spec
        .options
        .as_ref()
        .and_then(|o| o.resources.as_ref())
        .map_or(0, |r| r.slots);
    resolve_slots(requested).min(worker_slots)
}

/// Runs one function task to its report.
pub(super) async fn run_task(
    shared: Arc<Shared>,
    rt: Runtime,
    d: pb::Dispatch,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
    done: impl FnOnce(ObjectId),
    stop: Arc<Stop>,
) {
    let Some(spec) = d.spec else { return };
    let task = ObjectId(spec.task);
    let permits = slots_of(&spec, shared.config.slots);
    let Ok(permit) = shared.slots.clone().acquire_many_owned(permits).await else {
        return;
    };
    let running = RunningGuard::new(&shared.metrics.running);
    let started = Instant::now();
    let contained: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let output = match resolve_args(&shared, d.args, &ops_tx).await {
        Err(f) => Err(f),
        Ok(args) => {
            let binding = TaskBinding {
                task,
                slots: shared.slots.clone(),
                permits,
                contained: contained.clone(),
            };
            let ctx = TaskContext {
                rt: rt.bound_to(binding),
            };
            let name = match &spec.kind {
                Some(task_spec::Kind::Function(f)) => f.as_str(),
                _ => "",
            };
            invoke(&shared, name, &spec.signature, args, ctx, stop).await
        }
    };
    drop(permit);
    drop(running);
    let route = ResultRoute::of(d.keep_result);
    let mut op = result_op(&shared, task, d.attempt, output, started.elapsed(), route).await;
    if let Some(worker_op::Op::Result(r)) = &mut op.op {
        r.contained = std::mem::take(&mut *contained.lock().unwrap_or_else(|e| e.into_inner()));
    }
    let _ = ops_tx.send(op);
    done(task);
}

async fn invoke(
    shared: &Arc<Shared>,
    name: &str,
    signature: &str,
    args: Vec<Bytes>,
    ctx: TaskContext,
    stop: Arc<Stop>,
) -> TaskOutput {
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
    // The head checked the signature against what this worker registered; this check is for a
    // cluster that mixes programs.
    if !signature.is_empty() && signature != f.signature {
        return Err(TaskFailure::type_mismatch(format!(
            "{name} has signature `{}` here but the caller compiled against `{signature}`",
            f.signature
        )));
    }
    // References inside argument values decode as borrowed references of this task's runtime.
    let rt = ctx.rt.clone();
    match decoding_with(&rt, || (f.invoke)(args, ctx)) {
        Invocation::Failed(e) => Err(e),
        Invocation::Blocking(call) if !f.takes_runtime && shared.run_times.is_tiny(f.name) => {
            let started = Instant::now();
            let out = std::panic::catch_unwind(AssertUnwindSafe(call));
            shared.run_times.record(f.name, started.elapsed());
            out.unwrap_or_else(|panic| {
                Err(TaskFailure::new(ErrorKind::Panic, panic_message(&*panic)))
            })
        }
        Invocation::Blocking(call) => {
            let name = f.name;
            let times = shared.clone();
            stop.on_thread.send_replace(true);
            match tokio::task::spawn_blocking(move || {
                let _on_thread = OnThread::enter(&stop);
                let started = Instant::now();
                let out = std::panic::catch_unwind(AssertUnwindSafe(call));
                times.run_times.record(name, started.elapsed());
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
