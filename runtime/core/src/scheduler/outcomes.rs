//! How tasks end: results reported by workers, failures, retries after a worker died, and
//! cancellation.

use crate::ErrorKind;
use bytes::Bytes;

use super::{
    failure::Failure,
    objects::{Location, ObjectValue},
    task_def::TaskKind,
    tasks::TaskState,
    view::UNREGISTERED,
    workers::WorkerState,
    Output, Scheduler,
};
use crate::ids::{ObjectId, WorkerId};

/// How often a task may be requeued because an argument vanished while it was being fetched.
const MAX_REFETCHES: u32 = 8;

/// A worker's report that a run of a task ended.
#[derive(Debug)]
pub(super) struct Completion {
    pub(super) task: ObjectId,
    /// The attempt that ran; reports of earlier attempts are stale.
    pub(super) attempt: u32,
    pub(super) outcome: RunOutcome,
    /// How long it ran, in microseconds.
    pub(super) run_micros: u64,
}

/// What a run produced.
#[derive(Debug)]
pub(super) enum RunOutcome {
    /// A small value, sent along.
    Inline(Bytes),
    /// A value the worker keeps in its store.
    Stored { size: u64 },
    /// The task failed; workers name only the kind and message.
    Failed(Failure),
}

impl Scheduler {
    /// Records a worker's report: the task's value, its failure, or a rerun.
    pub(super) fn finish_task(&mut self, worker: WorkerId, done: Completion) {
        let id = done.task;
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let on_worker = match task.state {
            TaskState::Running { worker: w } | TaskState::Cancelled { worker: w } => w == worker,
            _ => false,
        };
        if !on_worker || task.attempt != done.attempt {
            return; // a stale report from an earlier attempt
        }
        let cancelled = matches!(task.state, TaskState::Cancelled { .. });
        if let TaskKind::Function(f) = &task.def.kind {
            self.run_times.record(f, done.run_micros);
        }
        self.release_slots(worker, id);
        if cancelled {
            if let RunOutcome::Stored { .. } = done.outcome {
                self.emit(Output::Free { worker, object: id });
            }
            // An actor killed while its constructor ran came up anyway: stop it there.
            let created = !matches!(done.outcome, RunOutcome::Failed(_));
            if created && self.tasks.get(&id).is_some_and(|t| t.is_actor_creation()) {
                self.emit(Output::KillActor { worker, actor: id });
            }
            self.remove_task(id);
            self.place_tasks();
            return;
        }
        let task = self
            .tasks
            .get_mut(&id)
            .expect("found above; releasing slots keeps the task");
        let actor = task.actor();
        if let Some(actor) = actor {
            if let Some(a) = self.actors.get_mut(&actor) {
                a.inflight.remove(&id);
            }
        }
        match done.outcome {
            RunOutcome::Failed(failure)
                if failure.kind == ErrorKind::ObjectLost
                    && task.refetches < MAX_REFETCHES
                    && actor.is_none() =>
            {
                // An argument vanished while the worker fetched it: run again once it is back.
                // (Not actor calls: later calls may have run already, and order is promised.)
                task.refetches += 1;
                self.requeue(id);
            }
            RunOutcome::Failed(mut failure) => {
                // Workers report only kind and message; the caller's error names the task.
                if failure.task.is_empty() {
                    failure.task = task.name.clone();
                }
                if task.is_actor_creation() {
                    self.actor_creation_failed(id, failure);
                } else {
                    self.count_outcome(id, false);
                    self.remove_task(id);
                    self.set_object(id, ObjectValue::Failed(failure));
                }
            }
            RunOutcome::Inline(value) => {
                self.task_succeeded(id, worker, ObjectValue::Inline(value));
            }
            RunOutcome::Stored { size } => {
                let locations = vec![Location::on(worker)];
                self.task_succeeded(id, worker, ObjectValue::Stored { size, locations });
            }
        }
        if let Some(actor) = actor {
            self.pump_actor(actor);
        }
        self.place_tasks();
        self.check_drains();
    }

    /// A task produced its value on `worker`.
    fn task_succeeded(&mut self, id: ObjectId, worker: WorkerId, value: ObjectValue) {
        if self.tasks.get(&id).is_some_and(|t| t.is_actor_creation()) {
            self.actor_created(id, worker);
        }
        self.count_outcome(id, true);
        self.remove_task(id);
        self.set_object(id, value);
        if matches!(
            self.workers.get(&worker).map(|w| w.state),
            Some(WorkerState::Draining { .. })
        ) {
            // A result made on a draining worker needs a copy elsewhere like the rest.
            self.copy_sole_objects(worker, Some(id));
        }
    }

    /// Counts a task's final outcome, in total and under its name.
    pub(super) fn count_outcome(&mut self, id: ObjectId, finished: bool) {
        let name = self.tasks.get(&id).map(|t| t.name.as_str());
        self.counters.record(name, finished);
        if let Some(job) = self.tasks.get(&id).and_then(|t| t.job.clone()) {
            self.count_job_outcome(&job, finished);
        }
    }

    /// Fails a task that has not finished: its object takes the failure.
    pub(super) fn fail_task(&mut self, id: ObjectId, kind: ErrorKind, message: String) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let failure = Failure::new(kind, task.name.clone(), message);
        let job = task.job.clone();
        let (state, creation, actor) = (task.state, task.is_actor_creation(), task.actor());
        if let TaskState::Running { worker } = state {
            self.release_slots(worker, id);
        }
        if creation {
            self.actor_creation_failed(id, failure);
            return;
        }
        if let Some(actor) = actor {
            if let Some(a) = self.actors.get_mut(&actor) {
                a.queue.retain(|c| *c != id);
                a.inflight.remove(&id);
            }
        }
        self.queue.retain(|t| *t != id);
        if matches!(kind, ErrorKind::UnknownFunction | ErrorKind::TypeMismatch) {
            // A name no worker registers is the caller's to choose: it gets no series of its own.
            self.counters.record(Some(UNREGISTERED), false);
            if let Some(job) = job {
                self.count_job_outcome(&job, false);
            }
        } else {
            self.count_outcome(id, false);
        }
        self.remove_task(id);
        self.set_object(id, ObjectValue::Failed(failure));
    }

    /// Cancels a task: a queued one fails at once, a running one is told to stop and its
    /// object fails now, while the task waits for its worker's last word.
    pub(super) fn cancel_task(&mut self, id: ObjectId, why: &str) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        match task.state {
            TaskState::Running { worker } => {
                task.state = TaskState::Cancelled { worker };
                let failure = Failure::new(
                    ErrorKind::Cancelled,
                    task.name.clone(),
                    format!("{} was {why}", task.name),
                );
                if let Some(actor) = task.actor() {
                    if let Some(a) = self.actors.get_mut(&actor) {
                        a.inflight.remove(&id);
                    }
                }
                self.emit(Output::Cancel { worker, task: id });
                self.count_outcome(id, false);
                self.set_object(id, ObjectValue::Failed(failure));
            }
            TaskState::Cancelled { .. } => {}
            TaskState::Waiting { .. } | TaskState::Pending => {
                let name = task.name.clone();
                self.fail_task(id, ErrorKind::Cancelled, format!("{name} was {why}"));
            }
        }
    }

    /// A task's worker died while running it: retry it, or fail it when no retries are left.
    ///
    /// `spared`: the worker went to stop another task (a forced cancel), so the retry does not
    /// use up the task's own retries.
    pub(super) fn task_lost(&mut self, task_id: ObjectId, worker_name: &str, spared: bool) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        if let TaskState::Cancelled { .. } = task.state {
            self.remove_task(task_id);
            return;
        }
        if let Some(actor) = task.actor() {
            let method = task.name.clone();
            if let Some(a) = self.actors.get_mut(&actor) {
                a.inflight.remove(&task_id);
            }
            self.fail_task(
                task_id,
                ErrorKind::ActorDied,
                format!("the actor's worker {worker_name} died while running {method}"),
            );
            return;
        }
        if spared || task.retries_left > 0 {
            if !spared {
                task.retries_left -= 1;
            }
            task.attempt += 1;
            self.counters.retried += 1;
            self.requeue(task_id);
        } else {
            let name = task.name.clone();
            self.fail_task(
                task_id,
                ErrorKind::WorkerDied,
                format!("worker {worker_name} died while running {name} and no retries were left"),
            );
        }
    }
}
