//! The one place where protobuf messages meet the scheduler's own types: inputs are read into
//! them at the facade, and effects are rendered from them when emitted.

use bytes::Bytes;
use flotilla_proto::v1::{
    self as pb, arg, object_state, put_object, resolved_arg, task_error, task_result, task_spec,
    worker_command::Command, ObjectState,
};

use super::{
    drain::DrainOutcome,
    failure::Failure,
    objects::{Location, ObjectValue, PutValue},
    outcomes::{Completion, RunOutcome},
    resume::HeldObject,
    task_def::{ActorCreation, Arg, TaskDef, TaskKind},
    workers::{Activity, StoreStats},
    Effect, Output, Scheduler,
};
use crate::{
    ids::{ObjectId, WorkerId},
    options::{resolve_max_retries, resolve_slots, ResolvedOptions},
    ErrorKind,
};

/// A readable name for a task: the function, `Class::new` for creation, the method for calls.
pub fn spec_name(spec: &pb::TaskSpec) -> String {
    match &spec.kind {
        Some(kind) => TaskKind::from(kind.clone()).name(),
        None => "<empty task>".into(),
    }
}

// ---------------------------------------------------------------------- inputs

impl From<pb::HeldObject> for HeldObject {
    fn from(h: pb::HeldObject) -> Self {
        HeldObject {
            id: ObjectId(h.object),
            size: h.size,
            shm_path: (!h.shm_path.is_empty()).then_some(h.shm_path),
        }
    }
}

impl TryFrom<pb::TaskSpec> for TaskDef {
    type Error = Failure;

    /// Reads a submitted task, resolving its options; a task that runs nothing is refused.
    fn try_from(mut spec: pb::TaskSpec) -> Result<Self, Failure> {
        let Some(kind) = spec.kind.take() else {
            return Err(Failure::new(
                ErrorKind::Invalid,
                spec_name(&spec),
                "the task names no function, actor class or method to run".into(),
            ));
        };
        Ok(TaskDef {
            id: ObjectId(spec.task),
            kind: kind.into(),
            args: spec.args.into_iter().map(Arg::from).collect(),
            options: ResolvedOptions::from(spec.options.as_ref()),
            signature: spec.signature,
            nested: spec.nested.into_iter().map(ObjectId).collect(),
            parent: None,
        })
    }
}

impl From<task_spec::Kind> for TaskKind {
    fn from(kind: task_spec::Kind) -> Self {
        match kind {
            task_spec::Kind::Function(f) => TaskKind::Function(f),
            task_spec::Kind::CreateActor(c) => TaskKind::CreateActor(ActorCreation {
                class: c.class,
                max_restarts: c.max_restarts,
                name: c.name,
                detached: c.detached,
            }),
            task_spec::Kind::ActorCall(c) => TaskKind::ActorCall {
                actor: ObjectId(c.actor),
                method: c.method,
            },
        }
    }
}

impl From<pb::Arg> for Arg {
    fn from(a: pb::Arg) -> Self {
        match a.kind {
            Some(arg::Kind::Object(o)) => Arg::Object(ObjectId(o)),
            Some(arg::Kind::Value(v)) => Arg::Value(v),
            // An argument the caller left unset is an empty value.
            None => Arg::Value(Bytes::new()),
        }
    }
}

impl From<Option<&pb::TaskOptions>> for ResolvedOptions {
    /// No options at all (a plain `.remote()`) means every default, retries included: the
    /// proto's zero value of `max_retries` would otherwise mean "never retry".
    fn from(options: Option<&pb::TaskOptions>) -> Self {
        let Some(o) = options else {
            return ResolvedOptions::default();
        };
        let resources = o.resources.as_ref();
        ResolvedOptions {
            slots: resolve_slots(resources.map_or(0, |r| r.slots)),
            max_retries: resolve_max_retries(o.max_retries),
            custom: resources.map(|r| r.custom.clone()).unwrap_or_default(),
            name: o.name.clone(),
        }
    }
}

impl From<pb::TaskError> for Failure {
    fn from(e: pb::TaskError) -> Self {
        // `kind()` reads a kind this build does not know (a newer worker's) as Application.
        Failure::new(e.kind().into(), e.task, e.message)
    }
}

impl From<pb::TaskResult> for Completion {
    fn from(r: pb::TaskResult) -> Self {
        let outcome = match r.outcome {
            Some(task_result::Outcome::InlineValue(b)) => RunOutcome::Inline(b),
            Some(task_result::Outcome::StoredSize(size)) => RunOutcome::Stored { size },
            Some(task_result::Outcome::Error(e)) => RunOutcome::Failed(e.into()),
            // A result without an outcome is an empty value.
            None => RunOutcome::Inline(Bytes::new()),
        };
        Completion {
            task: ObjectId(r.task),
            attempt: r.attempt,
            outcome,
            run_micros: r.run_micros,
        }
    }
}

impl From<put_object::Value> for PutValue {
    fn from(value: put_object::Value) -> Self {
        match value {
            put_object::Value::InlineValue(b) => PutValue::Inline(b),
            put_object::Value::Stored(s) => PutValue::Stored {
                size: s.size,
                locations: s
                    .locations
                    .into_iter()
                    .map(|l| Location {
                        worker: WorkerId(l.worker),
                        shm_path: (!l.shm_path.is_empty()).then_some(l.shm_path),
                    })
                    .collect(),
            },
        }
    }
}

impl From<pb::StoreStats> for StoreStats {
    fn from(s: pb::StoreStats) -> Self {
        StoreStats {
            memory_bytes: s.memory_bytes,
            spilled_bytes: s.spilled_bytes,
            objects: s.objects,
        }
    }
}

// ---------------------------------------------------------------------- outputs

impl From<&TaskDef> for pb::TaskSpec {
    /// The spec a worker runs, with the options as resolved at submission.
    fn from(def: &TaskDef) -> Self {
        let kind = match &def.kind {
            TaskKind::Function(f) => task_spec::Kind::Function(f.clone()),
            TaskKind::CreateActor(c) => task_spec::Kind::CreateActor(pb::ActorCreate {
                class: c.class.clone(),
                max_restarts: c.max_restarts,
                name: c.name.clone(),
                detached: c.detached,
            }),
            TaskKind::ActorCall { actor, method } => task_spec::Kind::ActorCall(pb::ActorCall {
                actor: actor.0,
                method: method.clone(),
            }),
        };
        let args = def
            .args
            .iter()
            .map(|a| pb::Arg {
                kind: Some(match a {
                    Arg::Object(o) => arg::Kind::Object(o.0),
                    Arg::Value(v) => arg::Kind::Value(v.clone()),
                }),
            })
            .collect();
        pb::TaskSpec {
            task: def.id.0,
            kind: Some(kind),
            args,
            options: Some((&def.options).into()),
            signature: def.signature.clone(),
            nested: def.nested.iter().map(|o| o.0).collect(),
        }
    }
}

impl From<&ResolvedOptions> for pb::TaskOptions {
    fn from(o: &ResolvedOptions) -> Self {
        pb::TaskOptions {
            // Resolved from an i32, so it fits unless built by hand past i32::MAX.
            max_retries: i32::try_from(o.max_retries).unwrap_or(i32::MAX),
            resources: Some(pb::Resources {
                slots: o.slots,
                custom: o.custom.clone(),
            }),
            name: o.name.clone(),
        }
    }
}

impl From<&Failure> for pb::TaskError {
    fn from(f: &Failure) -> Self {
        pb::TaskError {
            kind: task_error::Kind::from(f.kind) as i32,
            task: f.task.clone(),
            message: f.message.clone(),
        }
    }
}

impl From<StoreStats> for pb::StoreStats {
    fn from(s: StoreStats) -> Self {
        pb::StoreStats {
            memory_bytes: s.memory_bytes,
            spilled_bytes: s.spilled_bytes,
            objects: s.objects,
        }
    }
}

impl From<Activity> for pb::WorkerState {
    fn from(a: Activity) -> Self {
        match a {
            Activity::Idle => pb::WorkerState::Idle,
            Activity::Busy => pb::WorkerState::Busy,
            Activity::Draining => pb::WorkerState::Draining,
            Activity::Drained => pb::WorkerState::Drained,
        }
    }
}

impl From<DrainOutcome> for pb::DrainOutcome {
    fn from(o: DrainOutcome) -> Self {
        match o {
            DrainOutcome::Drained => pb::DrainOutcome::Drained,
            DrainOutcome::TimedOut => pb::DrainOutcome::TimedOut,
            DrainOutcome::WorkerLost => pb::DrainOutcome::WorkerLost,
            DrainOutcome::Cancelled => pb::DrainOutcome::Cancelled,
        }
    }
}

impl Scheduler {
    /// Renders an output as the effect the I/O layer delivers, and queues it.
    pub(super) fn emit(&mut self, output: Output) {
        let effect = match output {
            Output::Run {
                worker,
                task,
                restarts,
            } => Effect::ToWorker(worker, Command::Run(self.dispatch_of(task, restarts))),
            Output::Cancel { worker, task } => Effect::ToWorker(worker, Command::Cancel(task.0)),
            Output::Free { worker, object } => Effect::ToWorker(worker, Command::Free(object.0)),
            Output::KillActor { worker, actor } => {
                Effect::ToWorker(worker, Command::KillActor(actor.0))
            }
            Output::Copy { to, object } => {
                let from = match self.objects.get(&object).map(|o| &o.value) {
                    Some(ObjectValue::Stored { size, locations }) => {
                        Some(self.stored(*size, locations))
                    }
                    _ => None,
                };
                Effect::ToWorker(
                    to,
                    Command::Copy(pb::CopyObject {
                        object: object.0,
                        from,
                    }),
                )
            }
            Output::State { session, object } => {
                Effect::ToSession(session, self.object_state(object))
            }
            Output::Refused {
                session,
                object,
                failure,
            } => Effect::ToSession(
                session,
                ObjectState {
                    object: object.0,
                    state: Some(object_state::State::Error((&failure).into())),
                },
            ),
            Output::ActorFound {
                session,
                request,
                found,
            } => {
                let reply = match found {
                    Ok(found) => pb::ActorFound {
                        request,
                        actor: found.id.0,
                        class: found.class,
                        error: String::new(),
                        location: found.at.and_then(|(worker, incarnation)| {
                            let w = self.workers.get(&worker)?;
                            Some(pb::ActorLocation {
                                worker: worker.0,
                                address: w.info.address.clone(),
                                node: w.info.node.clone(),
                                incarnation,
                            })
                        }),
                    },
                    Err(error) => pb::ActorFound {
                        request,
                        actor: 0,
                        class: String::new(),
                        error,
                        location: None,
                    },
                };
                Effect::ActorFound(session, reply)
            }
            Output::Lease { session, grant } => Effect::Lease(session, grant),
            Output::LeaseRevoked { session, lease } => Effect::LeaseRevoked(session, lease),
            Output::CancelLease { worker, lease } => {
                Effect::ToWorker(worker, Command::CancelLease(lease))
            }
            Output::Drained {
                worker,
                outcome,
                message,
            } => Effect::Drained {
                worker,
                outcome: outcome.into(),
                message,
            },
        };
        self.outbox.push(effect);
    }

    /// The command that runs a dispatched task: its spec, and its object arguments resolved to
    /// their values or locations as they are now.
    fn dispatch_of(&self, id: ObjectId, restarts: u32) -> pb::Dispatch {
        let task = &self.tasks[&id];
        let args = task
            .def
            .args
            .iter()
            .map(|a| pb::ResolvedArg {
                kind: Some(match a {
                    Arg::Object(o) => match &self.objects[o].value {
                        ObjectValue::Inline(b) => resolved_arg::Kind::Value(b.clone()),
                        ObjectValue::Stored { size, locations } => {
                            resolved_arg::Kind::Stored(pb::StoredRef {
                                object: o.0,
                                r#where: Some(self.stored(*size, locations)),
                            })
                        }
                        other => unreachable!("a ready task's argument is {other:?}"),
                    },
                    Arg::Value(v) => resolved_arg::Kind::Value(v.clone()),
                }),
            })
            .collect();
        let held = self.inline_bytes.get(&task.owner).copied().unwrap_or(0);
        pb::Dispatch {
            spec: Some((&task.def).into()),
            attempt: task.attempt,
            args,
            restarts,
            keep_result: held >= flotilla_proto::SESSION_INLINE_BUDGET,
        }
    }

    /// An object's value for its owner and subscribers; no state while it is pending.
    fn object_state(&self, id: ObjectId) -> ObjectState {
        let state = self.objects.get(&id).and_then(|obj| match &obj.value {
            ObjectValue::Pending => None,
            ObjectValue::Inline(b) => Some(object_state::State::InlineValue(b.clone())),
            ObjectValue::Stored { size, locations } => {
                Some(object_state::State::Stored(self.stored(*size, locations)))
            }
            ObjectValue::Failed(f) => Some(object_state::State::Error(f.into())),
        });
        ObjectState {
            object: id.0,
            state,
        }
    }

    /// Where a stored object is: each live worker holding it, with its addresses and the
    /// shared-memory segment it keeps the object in, if any.
    fn stored(&self, size: u64, locations: &[Location]) -> pb::StoredObject {
        pb::StoredObject {
            size,
            locations: locations
                .iter()
                .filter_map(|l| {
                    let worker = self.workers.get(&l.worker)?;
                    Some(pb::ObjectLocation {
                        worker: l.worker.0,
                        address: worker.info.address.clone(),
                        node: worker.info.node.clone(),
                        shm_path: l.shm_path.clone().unwrap_or_default(),
                        http_address: worker.info.http_address.clone(),
                    })
                })
                .collect(),
        }
    }
}
