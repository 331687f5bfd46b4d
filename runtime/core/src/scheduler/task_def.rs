//! What a task is, as the scheduler understands it: what it runs, its arguments, and its options
//! resolved at submission.

use bytes::Bytes;

use crate::{ids::ObjectId, options::ResolvedOptions};

/// A task as submitted, with its options resolved.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TaskDef {
    /// The task, and the object it returns.
    pub(super) id: ObjectId,
    pub(super) kind: TaskKind,
    pub(super) args: Vec<Arg>,
    pub(super) options: ResolvedOptions,
    /// The signature the caller compiled against; empty when it did not say.
    pub(super) signature: String,
    /// Objects referenced inside argument values: dependencies like object arguments.
    pub(super) nested: Vec<ObjectId>,
    /// The running task that submitted it through its worker, if one did.
    pub(super) parent: Option<ObjectId>,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TaskKind {
    /// A remote function, by registered name.
    Function(String),
    /// The creation of an actor; the task's id is the actor's id.
    CreateActor(ActorCreation),
    /// A method call on an actor.
    ActorCall { actor: ObjectId, method: String },
}

/// How to create an actor.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ActorCreation {
    /// The registered class.
    pub(super) class: String,
    /// Restarts after its worker died; negative means without limit.
    pub(super) max_restarts: i32,
    /// The name other sessions look it up by; empty for none.
    pub(super) name: String,
    /// Whether it outlives its owner's session and handles.
    pub(super) detached: bool,
}

/// An argument of a task.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    /// An object from the directory, resolved when the task is dispatched.
    Object(ObjectId),
    /// A value passed by the caller.
    Value(Bytes),
}

impl TaskDef {
    /// A readable name: the function, `Class::new` for a creation, the method for a call.
    pub(super) fn name(&self) -> String {
        self.kind.name()
    }

    /// The name for errors, logs and metrics: the caller's, else the task's own.
    pub(super) fn display_name(&self) -> String {
        if self.options.name.is_empty() {
            self.name()
        } else {
            self.options.name.clone()
        }
    }

    /// The distinct object arguments, in first-use order, then the objects referenced inside
    /// argument values: the task waits for all of them and holds them until it ends.
    pub(super) fn deps(&self) -> Vec<ObjectId> {
        let mut deps = Vec::new();
        let objects = self.args.iter().filter_map(|a| match a {
            Arg::Object(id) => Some(id),
            Arg::Value(_) => None,
        });
        for id in objects.chain(&self.nested) {
            if !deps.contains(id) {
                deps.push(*id);
            }
        }
        deps
    }

    /// The actor a call goes to.
    pub(super) fn actor(&self) -> Option<ObjectId> {
        match &self.kind {
            TaskKind::ActorCall { actor, .. } => Some(*actor),
            _ => None,
        }
    }

    pub(super) fn is_actor_creation(&self) -> bool {
        matches!(self.kind, TaskKind::CreateActor(_))
    }

    /// The function it runs, if it is a function call.
    pub(super) fn function(&self) -> Option<&str> {
        match &self.kind {
            TaskKind::Function(f) => Some(f),
            _ => None,
        }
    }

    /// Whether its output keeps its arguments alive: a function's output may be rebuilt from
    /// them, an actor may be restarted with them. An actor call's result can be neither.
    pub(super) fn pins_arguments(&self) -> bool {
        !matches!(self.kind, TaskKind::ActorCall { .. })
    }
}

impl TaskKind {
    pub(super) fn name(&self) -> String {
        match self {
            TaskKind::Function(f) => f.clone(),
            TaskKind::CreateActor(c) => format!("{}::new", c.class),
            TaskKind::ActorCall { method, .. } => method.clone(),
        }
    }
}
