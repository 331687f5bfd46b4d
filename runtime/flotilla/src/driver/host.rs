//! What a runtime inside a worker uses of its worker: the store that serves its tasks' puts and
//! gets, where that store is, and the worker's own stream to the head, on which a task waiting in
//! `get` or `wait` lends its slots back.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use flotilla_core::ObjectId;
use flotilla_proto::v1::{self as pb, worker_op};
use tokio::sync::{mpsc, Semaphore};

use crate::objects::ObjectStore;

/// A worker's side of the runtime its tasks share; built by the worker for each head session.
pub(crate) struct TaskHost {
    /// The worker's store.
    pub(crate) store: Arc<ObjectStore>,
    /// The worker as an object location (no segment path).
    pub(crate) location: pb::ObjectLocation,
    /// The worker's stream to the head.
    pub(crate) ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
}

impl TaskHost {
    fn send(&self, op: worker_op::Op) {
        let _ = self.ops_tx.send(pb::WorkerOp { op: Some(op) });
    }
}

/// The task a runtime handle is bound to, so a blocking `get` lends the task's slots back.
#[derive(Clone)]
pub(crate) struct TaskBinding {
    pub(crate) task: ObjectId,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) permits: u32,
    /// The objects referenced inside the task's result, which the result reports to the head.
    pub(crate) contained: Arc<Mutex<Vec<u64>>>,
}

/// Slots a blocked task lent back to its worker; taken back when the wait ends, also when the
/// waiting future is dropped (a cancelled task, or `wait` returning early).
pub(crate) struct Lending {
    binding: Option<TaskBinding>,
    ops_tx: mpsc::UnboundedSender<pb::WorkerOp>,
}

impl Lending {
    /// Tells the head the task is blocked and frees its slots on the worker.
    pub(crate) fn start(binding: &TaskBinding, host: &TaskHost) -> Lending {
        host.send(worker_op::Op::Blocked(binding.task.0));
        binding.slots.add_permits(binding.permits as usize);
        Lending {
            binding: Some(binding.clone()),
            ops_tx: host.ops_tx.clone(),
        }
    }

    fn unblocked(&self, task: ObjectId) {
        let _ = self.ops_tx.send(pb::WorkerOp {
            op: Some(worker_op::Op::Unblocked(task.0)),
        });
    }

    /// Takes the slots back (waiting for them if other work holds them) and tells the head.
    pub(crate) async fn finish(mut self) {
        if let Some(b) = self.binding.take() {
            if let Ok(permit) = b.slots.acquire_many(b.permits).await {
                permit.forget();
            }
            self.unblocked(b.task);
        }
    }
}

impl Drop for Lending {
    fn drop(&mut self) {
        let Some(b) = self.binding.take() else { return };
        self.unblocked(b.task);
        let taken = b.slots.forget_permits(b.permits as usize);
        let owed = b.permits as usize - taken;
        if owed > 0 {
            // Busy now: take the rest back as soon as they are released.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(permit) = b.slots.acquire_many(owed as u32).await {
                        permit.forget();
                    }
                });
            }
        }
    }
}

thread_local! {
    /// The cancel flag of the task this thread runs, if it runs one.
    static CANCELLED: std::cell::RefCell<Option<Arc<AtomicBool>>> = const { std::cell::RefCell::new(None) };
}

/// Whether the task running on this thread was cancelled: a long synchronous task may poll it
/// and return early (cheap: a thread-local read). A task that does not return within
/// [`CANCEL_GRACE_MILLIS`] of its cancel is stopped by its worker process exiting.
/// Always `false` outside a worker's task threads.
///
/// [`CANCEL_GRACE_MILLIS`]: flotilla_proto::contract::CANCEL_GRACE_MILLIS
pub fn cancelled() -> bool {
    CANCELLED.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    })
}

/// Sets the cancel flag [`cancelled`] reads on this thread (a worker, around a task's run).
pub(crate) fn set_cancel_flag(flag: Option<Arc<AtomicBool>>) {
    CANCELLED.with(|c| *c.borrow_mut() = flag);
}
