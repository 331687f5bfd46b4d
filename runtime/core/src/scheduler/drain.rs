//! Draining a worker: no new work goes there, its actors move, its sole objects are copied away,
//! and the drain ends when it is empty or its deadline passed.

use std::time::Instant;

use flotilla_proto::v1 as pb;

use super::{
    workers::{Activity, WorkerState},
    Output, Scheduler,
};
use crate::ids::{ObjectId, WorkerId};

/// Why a worker could not be taken back from a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndrainError(pub String);

impl std::fmt::Display for UndrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UndrainError {}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainOutcome {
    /// The worker emptied in time: its tasks finished and its objects have copies elsewhere.
    Drained,
    /// The deadline passed first: its running tasks were moved to other workers.
    TimedOut,
    /// The worker went away while it was being drained.
    WorkerLost,
    /// The drain was called off: the worker takes work again.
    Cancelled,
}

impl Scheduler {
    /// Starts draining a worker until `deadline`; a drained worker is reported at once.
    pub(super) fn start_drain(&mut self, worker: WorkerId, deadline: Instant) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match w.state {
            WorkerState::Draining { .. } => return,
            WorkerState::Drained => {
                let message = format!("worker {} is already drained", w.info.name);
                self.emit(Output::Drained {
                    worker,
                    outcome: DrainOutcome::Drained,
                    message,
                });
                return;
            }
            WorkerState::Active => {}
        }
        w.state = WorkerState::Draining { deadline };
        // Prefetched tasks that have not started cannot be told apart here; they finish there.
        let mut actors: Vec<ObjectId> = w.actors.drain().collect();
        actors.sort();
        for actor in actors {
            self.emit(Output::KillActor { worker, actor });
            self.actor_worker_died(actor, "its worker was drained");
        }
        self.copy_sole_objects(worker, None);
        // Leases there go back once their tasks ended, as running tasks are waited for.
        self.revoke_leases(|l| l.worker == worker);
        self.check_drains();
        self.place_tasks();
    }

    /// Takes a draining or drained worker back: it takes work again, a pending drain ends as
    /// cancelled. Its objects stay where they are (the copies made elsewhere are extra copies).
    pub(super) fn take_back(&mut self, name: &str) -> Result<pb::UndrainReply, UndrainError> {
        let Some(&id) = self.worker_names.get(name) else {
            return Err(UndrainError(format!(
                "no worker named {name:?} is registered; only a connected worker can be taken back"
            )));
        };
        let Some(w) = self.workers.get_mut(&id) else {
            return Err(UndrainError(format!("worker {name:?} is not registered")));
        };
        let previous = match (w.state, w.activity()) {
            (WorkerState::Draining { .. }, _) => pb::WorkerState::Draining,
            (WorkerState::Drained, _) => pb::WorkerState::Drained,
            (WorkerState::Active, activity) => {
                let previous = if activity == Activity::Idle {
                    pb::WorkerState::Idle
                } else {
                    pb::WorkerState::Busy
                };
                return Ok(pb::UndrainReply {
                    previous: previous as i32,
                    message: format!("worker {name} was not draining; nothing changed"),
                });
            }
        };
        w.state = WorkerState::Active;
        if previous == pb::WorkerState::Draining {
            self.emit(Output::Drained {
                worker: id,
                outcome: DrainOutcome::Cancelled,
                message: format!("the drain of worker {name} was cancelled: it takes work again"),
            });
        }
        self.place_tasks();
        let was = if previous == pb::WorkerState::Draining {
            "draining"
        } else {
            "drained"
        };
        Ok(pb::UndrainReply {
            previous: previous as i32,
            message: format!("worker {name} was {was} and takes work again"),
        })
    }

    /// Copies the objects only `worker` holds (or just `only`, if it is one) to another worker.
    pub(super) fn copy_sole_objects(&mut self, worker: WorkerId, only: Option<ObjectId>) {
        let target = self
            .workers
            .iter()
            .filter(|(id, w)| **id != worker && w.state == WorkerState::Active)
            .min_by_key(|(id, w)| (w.store.memory_bytes, **id))
            .map(|(id, _)| *id);
        let Some(target) = target else { return };
        let mut copies: Vec<ObjectId> = self
            .objects
            .iter()
            .filter(|(id, obj)| only.is_none_or(|o| o == **id) && obj.only_on(worker))
            .map(|(id, _)| *id)
            .collect();
        copies.sort();
        for object in copies {
            self.emit(Output::Copy { to: target, object });
        }
    }

    /// Objects whose only copy is on `worker`.
    fn sole_objects(&self, worker: WorkerId) -> usize {
        self.objects.values().filter(|o| o.only_on(worker)).count()
    }

    /// Ends the drains whose workers are empty.
    pub(super) fn check_drains(&mut self) {
        let mut draining: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, WorkerState::Draining { .. }))
            .map(|(id, _)| *id)
            .collect();
        draining.sort();
        for id in draining {
            let w = &self.workers[&id];
            if w.running.is_empty() && w.leases == 0 && self.sole_objects(id) == 0 {
                self.finish_drain(
                    id,
                    DrainOutcome::Drained,
                    "drained: no running tasks, every object it held has a copy elsewhere".into(),
                );
            }
        }
    }

    fn finish_drain(&mut self, worker: WorkerId, outcome: DrainOutcome, message: String) {
        // The worker stays registered (so it takes no work) until its process goes away.
        if let Some(w) = self.workers.get_mut(&worker) {
            w.state = WorkerState::Drained;
        }
        self.emit(Output::Drained {
            worker,
            outcome,
            message,
        });
    }

    /// A draining worker went away before its drain ended.
    pub(super) fn drain_lost(&mut self, worker: WorkerId, name: &str) {
        self.emit(Output::Drained {
            worker,
            outcome: DrainOutcome::WorkerLost,
            message: format!("worker {name} went away while draining"),
        });
    }

    /// Ends the drains whose deadline passed: their running tasks move elsewhere.
    pub(super) fn end_overdue_drains(&mut self, now: Instant) {
        // (Also those with nothing running: objects that found no copy must not hold them up.)
        let mut overdue: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(
                |(_, w)| matches!(w.state, WorkerState::Draining { deadline } if deadline <= now),
            )
            .map(|(id, _)| *id)
            .collect();
        overdue.sort();
        for id in overdue {
            let name = self.workers[&id].info.name.clone();
            let mut running: Vec<ObjectId> = self.workers[&id].running.iter().copied().collect();
            let n = running.len();
            // Leases not given back by now end; their holders retry what ran on them.
            self.end_leases(|l| l.worker == id);
            for t in &running {
                self.release_slots(id, *t);
            }
            running.sort();
            for t in running {
                self.emit(Output::Cancel {
                    worker: id,
                    task: t,
                });
                self.task_lost(t, &name, false);
            }
            let lost = self.sole_objects(id);
            self.finish_drain(
                id,
                DrainOutcome::TimedOut,
                format!("drain deadline passed: {n} running tasks were moved elsewhere, {lost} objects had no copy"),
            );
            self.place_tasks();
        }
    }
}
