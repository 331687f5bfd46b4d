//! Tasks: the live task table, and each task's way from submission to the ready queue.

use crate::ErrorKind;
use std::{collections::HashMap, sync::Arc};

use super::{
    failure::Failure,
    objects::{Object, ObjectValue},
    task_def::{TaskDef, TaskKind},
    Output, Scheduler,
};
use crate::ids::{ObjectId, SessionId, WorkerId};

/// Where a live task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskState {
    /// Waiting for `missing` arguments.
    Waiting { missing: usize },
    /// Ready, in the queue (or an actor's queue).
    Pending,
    /// Dispatched to a worker.
    Running { worker: WorkerId },
    /// Cancelled while running; its result will be dropped.
    Cancelled { worker: WorkerId },
}

/// A live task.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) def: TaskDef,
    pub(super) owner: SessionId,
    pub(super) state: TaskState,
    /// Which run this is, from 0; each retry starts a new one, and reports of earlier runs are
    /// stale.
    pub(super) attempt: u32,
    /// Retries left after worker failures, from its resolved `max_retries`.
    pub(super) retries_left: u32,
    /// Times it was requeued because an argument vanished while being fetched.
    pub(super) refetches: u32,
    /// Distinct object arguments; each holds one reference while the task lives.
    pub(super) deps: Vec<ObjectId>,
    /// The name for errors and metrics.
    pub(super) name: String,
    /// Waiting in `get` inside its worker, its slots lent to other tasks.
    pub(super) blocked: bool,
    /// The job it counts for: its driver's, or that of the task that submitted it.
    pub(super) job: Option<Arc<str>>,
}

impl Task {
    pub(super) fn actor(&self) -> Option<ObjectId> {
        self.def.actor()
    }

    pub(super) fn is_actor_creation(&self) -> bool {
        self.def.is_actor_creation()
    }

    /// Slots it holds on its worker while it runs. Actor calls hold none: they queue on their
    /// actor, not on the worker's slots.
    pub(super) fn slots(&self) -> u32 {
        if self.actor().is_some() {
            0
        } else {
            self.def.options.slots
        }
    }

    /// Custom resources it holds on its worker while it runs.
    pub(super) fn custom(&self) -> &HashMap<String, u64> {
        &self.def.options.custom
    }
}

impl Scheduler {
    /// Checks a new task against the tables, then inserts it and schedules.
    pub(super) fn submit_task(&mut self, session: SessionId, def: TaskDef) {
        let id = def.id;
        if self.refuse_cancelled(session, id, &def.name()) || self.refuse_orphan(session, id, &def)
        {
            return;
        }
        if id.session() != session || self.tasks.contains_key(&id) || self.objects.contains_key(&id)
        {
            let failure = Failure::new(
                ErrorKind::Invalid,
                def.name(),
                "task id already in use, or minted by another session".into(),
            );
            self.emit(Output::Refused {
                session,
                object: id,
                failure,
            });
            return;
        }
        // Arguments that do not exist fail the task at once.
        if let Some(dep) = def
            .deps()
            .into_iter()
            .find(|d| !self.objects.contains_key(d))
        {
            let failure = Failure::new(
                ErrorKind::ObjectLost,
                def.name(),
                format!("argument object {dep} does not exist (freed, or never created)"),
            );
            self.emit(Output::Refused {
                session,
                object: id,
                failure,
            });
            return;
        }
        let admitted = match &def.kind {
            TaskKind::CreateActor(create) => self.add_actor(session, &def, create),
            TaskKind::ActorCall { actor, method } => self.check_callable(*actor, method),
            TaskKind::Function(_) => Ok(()),
        };
        if let Err(failure) = admitted {
            self.emit(Output::Refused {
                session,
                object: id,
                failure,
            });
            return;
        }
        self.insert_task(def, session, true);
        self.count_job_submit(id);
        self.place_tasks();
    }

    /// Creates the task and its output object (unless rebuilding), wires up its arguments.
    pub(super) fn insert_task(&mut self, def: TaskDef, owner: SessionId, new_object: bool) {
        let id = def.id;
        let job = self.job_for(owner, def.parent);
        let deps = def.deps();
        if let Some(dep) = deps.iter().find(|d| !self.objects.contains_key(d)) {
            let msg = format!("argument object {dep} of {} no longer exists", def.name());
            if !new_object && self.actors.contains_key(&id) {
                self.actor_dead(id, msg);
            } else {
                let failure = Failure::new(ErrorKind::ObjectLost, def.name(), msg);
                self.set_object(id, ObjectValue::Failed(failure));
            }
            return;
        }
        if new_object {
            let pins = def.pins_arguments();
            self.objects
                .insert(id, Object::new(owner, pins.then(|| def.clone())));
            // The lineage pins the arguments while the output lives.
            if pins {
                for dep in &deps {
                    if let Some(o) = self.objects.get_mut(dep) {
                        o.refs += 1;
                    }
                }
            }
        }
        let mut missing = 0;
        for dep in &deps {
            let obj = self.objects.get_mut(dep).expect("arguments checked above");
            obj.refs += 1;
            if matches!(obj.value, ObjectValue::Pending) {
                missing += 1;
                obj.dependents.push(id);
            }
        }
        let actor = def.actor();
        self.tasks.insert(
            id,
            Task {
                owner,
                state: if missing > 0 {
                    TaskState::Waiting { missing }
                } else {
                    TaskState::Pending
                },
                attempt: 0,
                retries_left: def.options.max_retries,
                refetches: 0,
                deps,
                name: def.display_name(),
                blocked: false,
                job,
                def,
            },
        );
        if let Some(actor) = actor {
            // Calls keep their order: every call joins the actor's queue, ready or not.
            self.actors
                .get_mut(&actor)
                .expect("submit refuses calls to actors not in the table, and actors stay there")
                .queue
                .push_back(id);
            self.pump_actor(actor);
        } else if missing == 0 {
            self.enqueue_ready(id);
        }
    }

    /// Queues a task whose arguments are all there: on the ready queue, or its actor's.
    pub(super) fn enqueue_ready(&mut self, id: ObjectId) {
        match self.tasks.get(&id).and_then(Task::actor) {
            Some(actor) => self.pump_actor(actor),
            None => self.queue.push_back(id),
        }
    }

    /// Puts a task back to waiting or pending, depending on its arguments.
    pub(super) fn requeue(&mut self, task_id: ObjectId) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let deps = task.deps.clone();
        let mut missing = 0;
        for dep in &deps {
            let obj = self
                .objects
                .get_mut(dep)
                .expect("a live task holds its arguments");
            if matches!(obj.value, ObjectValue::Pending) {
                missing += 1;
                if !obj.dependents.contains(&task_id) {
                    obj.dependents.push(task_id);
                }
            }
        }
        let task = self
            .tasks
            .get_mut(&task_id)
            .expect("found above; counting arguments keeps the task");
        if missing > 0 {
            task.state = TaskState::Waiting { missing };
        } else {
            task.state = TaskState::Pending;
            self.enqueue_ready(task_id);
        }
    }

    /// Lends a running task's slots to other tasks while it waits in `get`, or takes them back.
    pub(super) fn set_blocked(&mut self, id: ObjectId, blocked: bool) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let TaskState::Running { worker } = task.state else {
            return;
        };
        if task.blocked == blocked {
            return;
        }
        task.blocked = blocked;
        let slots = task.slots();
        if let Some(w) = self.workers.get_mut(&worker) {
            if blocked {
                w.lent_slots += slots;
            } else {
                w.lent_slots = w.lent_slots.saturating_sub(slots);
            }
        }
        self.place_tasks();
    }

    /// One of a waiting task's arguments got its value: the task is ready once all have.
    pub(super) fn argument_ready(&mut self, id: ObjectId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if let TaskState::Waiting { missing } = &mut task.state {
            *missing -= 1;
            if *missing == 0 {
                task.state = TaskState::Pending;
                self.enqueue_ready(id);
            }
        }
    }

    /// One of a task's arguments failed: so does the task.
    pub(super) fn argument_failed(&mut self, id: ObjectId, cause: &str) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let message = format!("an argument of {} failed: {cause}", task.name);
        self.fail_task(id, ErrorKind::DependencyFailed, message);
    }

    /// Drops a task and the references it held on its arguments.
    pub(super) fn remove_task(&mut self, id: ObjectId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        for dep in task.deps {
            if let Some(o) = self.objects.get_mut(&dep) {
                o.dependents.retain(|d| *d != id);
            }
            self.decref(dep);
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::v1::{self as pb, task_spec, worker_command::Command};

    use crate::{
        options::DEFAULT_MAX_RETRIES, Effect, ObjectId, Scheduler, SessionId, WorkerId, WorkerInfo,
    };

    /// A scheduler with one session and one worker of four slots and two GPUs that runs `f`.
    fn setup() -> (Scheduler, SessionId, WorkerId) {
        let mut s = Scheduler::new(0);
        let session = s.open_session(None);
        let worker = s
            .add_worker(WorkerInfo {
                name: "w1".into(),
                slots: 4,
                custom: [("gpu".to_string(), 2)].into_iter().collect(),
                functions: [("f".to_string(), String::new())].into_iter().collect(),
                ..WorkerInfo::default()
            })
            .expect("a named worker with slots registers");
        (s, session, worker)
    }

    fn spec(id: ObjectId, options: Option<pb::TaskOptions>) -> pb::TaskSpec {
        pb::TaskSpec {
            task: id.0,
            kind: Some(task_spec::Kind::Function("f".into())),
            args: Vec::new(),
            options,
            signature: String::new(),
            nested: Vec::new(),
        }
    }

    /// The options of the one task dispatched among `effects`.
    fn dispatched_options(effects: &[Effect]) -> pb::TaskOptions {
        let specs: Vec<&pb::TaskSpec> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::ToWorker(_, Command::Run(d)) => d.spec.as_ref(),
                _ => None,
            })
            .collect();
        assert_eq!(specs.len(), 1, "expected one dispatch in {effects:#?}");
        specs[0]
            .options
            .clone()
            .expect("dispatched specs carry options")
    }

    fn slots_of(options: &pb::TaskOptions) -> u32 {
        options.resources.as_ref().expect("resolved").slots
    }

    #[test]
    fn a_dispatch_without_options_carries_the_defaults() {
        let (mut s, session, _) = setup();
        s.submit(session, spec(ObjectId::new(session, 1), None));
        let options = dispatched_options(&s.drain_effects());
        assert_eq!(slots_of(&options), 1);
        assert_eq!(options.max_retries, DEFAULT_MAX_RETRIES as i32);
    }

    #[test]
    fn a_dispatch_carries_zero_slots_and_negative_retries_resolved() {
        let (mut s, session, _) = setup();
        let unsaid = pb::TaskOptions {
            max_retries: -1,
            resources: Some(pb::Resources {
                slots: 0,
                custom: Default::default(),
            }),
            name: String::new(),
        };
        s.submit(session, spec(ObjectId::new(session, 1), Some(unsaid)));
        let options = dispatched_options(&s.drain_effects());
        assert_eq!(slots_of(&options), 1);
        assert_eq!(options.max_retries, DEFAULT_MAX_RETRIES as i32);
    }

    #[test]
    fn a_dispatch_keeps_explicit_options() {
        let (mut s, session, _) = setup();
        let explicit = pb::TaskOptions {
            max_retries: 0,
            resources: Some(pb::Resources {
                slots: 2,
                custom: [("gpu".to_string(), 1)].into_iter().collect(),
            }),
            name: "load".into(),
        };
        s.submit(
            session,
            spec(ObjectId::new(session, 1), Some(explicit.clone())),
        );
        assert_eq!(dispatched_options(&s.drain_effects()), explicit);
    }

    #[test]
    fn a_task_without_options_gets_the_default_retries() {
        let mut s = Scheduler::new(0);
        let session = s.open_session(None);
        let task = ObjectId::new(session, 1);
        let worker = |n: u32| WorkerInfo {
            name: format!("w{n}"),
            slots: 1,
            functions: [("f".to_string(), String::new())].into_iter().collect(),
            ..WorkerInfo::default()
        };
        let mut on = s.add_worker(worker(0)).expect("registers");
        s.submit(session, spec(task, None));
        for n in 1..=DEFAULT_MAX_RETRIES {
            let next = s.add_worker(worker(n)).expect("registers");
            s.drain_effects();
            s.worker_lost(on);
            on = next;
            assert_eq!(s.snapshot().tasks_retried, u64::from(n));
            assert_eq!(s.snapshot().tasks_running, 1, "retry {n} runs on w{n}");
        }
        s.worker_lost(on);
        assert_eq!(s.snapshot().tasks_failed, 1, "no retries were left");
    }
}
