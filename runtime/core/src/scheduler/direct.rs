//! Actor calls a driver made straight to the actor's worker, and plain tasks it ran on a slot it
//! leased: the head learns of each once it ended, from the driver, and records it as if it had
//! dispatched it.

use flotilla_proto::v1 as pb;

use super::{
    failure::Failure,
    objects::{inline_len, Location, Object, ObjectValue},
    outcomes::{Completion, RunOutcome},
    task_def::{TaskDef, TaskKind},
    workers::WorkerState,
    Scheduler,
};
use crate::{
    ids::{SessionId, WorkerId},
    ErrorKind,
};

impl Scheduler {
    /// Records a direct call (or, with a `lease`, a leased task) that ran on `worker`: its
    /// result object (owned by `session`, not announced to it: it has the value), and its run
    /// and job counts.
    pub(super) fn record_direct_call(
        &mut self,
        session: SessionId,
        def: TaskDef,
        worker: WorkerId,
        lease: u64,
        result: pb::TaskResult,
    ) -> Result<(), Failure> {
        let id = def.id;
        let name = def.display_name();
        let invalid =
            |message: &str| Failure::new(ErrorKind::Invalid, name.clone(), message.into());
        match (&def.kind, lease) {
            (TaskKind::ActorCall { .. }, 0) => {}
            (TaskKind::Function(_), lease) if lease != 0 => {}
            _ => {
                return Err(invalid(
                    "only actor calls, and plain tasks on a lease, run straight on a worker",
                ))
            }
        }
        if id.session() != session
            || !self.sessions.contains_key(&session)
            || self.tasks.contains_key(&id)
            || self.objects.contains_key(&id)
        {
            return Err(invalid(
                "task id already in use, or minted by another session",
            ));
        }
        if !def.deps().is_empty() {
            return Err(invalid("a direct call carries its arguments inline"));
        }
        let done = Completion::from(result);
        if let TaskKind::Function(f) = &def.kind {
            self.run_times.record(f, done.run_micros);
        }
        // A leased task's output is rebuilt from its lineage when its last copy is lost, like a
        // dispatched task's (its arguments are inline, so the lineage pins nothing).
        let lineage = matches!(def.kind, TaskKind::Function(_)).then(|| def.clone());
        let mut lost_with_worker = false;
        let value = match done.outcome {
            RunOutcome::Inline(bytes) => ObjectValue::Inline(bytes),
            RunOutcome::Stored { size } if self.workers.contains_key(&worker) => {
                ObjectValue::Stored {
                    size,
                    locations: vec![Location::on(worker)],
                }
            }
            RunOutcome::Stored { .. } if lineage.is_some() => {
                // Kept on a worker gone before this report: run the task again.
                lost_with_worker = true;
                ObjectValue::Pending
            }
            RunOutcome::Stored { .. } => ObjectValue::Failed(Failure::new(
                ErrorKind::ObjectLost,
                name.clone(),
                format!("worker {} that kept the result went away", worker.0),
            )),
            RunOutcome::Failed(mut failure) => {
                if failure.task.is_empty() {
                    failure.task = name.clone();
                }
                ObjectValue::Failed(failure)
            }
        };
        let ok = !matches!(value, ObjectValue::Failed(_));
        self.counters.record(Some(&name), ok);
        // A direct call is a task of its session's job from submission to end.
        if let Some(job) = self.sessions.get(&session).and_then(|s| s.job.clone()) {
            self.count_job_call(&job, ok);
        }
        *self.inline_bytes.entry(session).or_default() += inline_len(&value);
        let mut object = Object::new(session, lineage);
        object.value = value;
        self.objects.insert(id, object);
        if lost_with_worker {
            self.object_lost(id, &format!("{}", worker.0));
            self.place_tasks();
            return Ok(());
        }
        let draining = matches!(
            self.workers.get(&worker).map(|w| w.state),
            Some(WorkerState::Draining { .. })
        );
        if ok && draining {
            // A result kept on a draining worker needs a copy elsewhere like the rest.
            self.copy_sole_objects(worker, Some(id));
        }
        Ok(())
    }
}
