//! Why a task or an object failed, in the scheduler's own terms.

/// What kind of failure: the caller's error type is chosen by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// The function returned an error.
    Application,
    /// The function panicked.
    Panic,
    /// No worker registers the function or actor class.
    UnknownFunction,
    /// The caller and the workers disagree on the signature.
    TypeMismatch,
    /// The worker running it died and no retries were left.
    WorkerDied,
    /// Its caller cancelled it, or went away.
    Cancelled,
    /// An object was lost and cannot be rebuilt, or never existed.
    ObjectLost,
    /// The actor it calls, or the actor it creates, is dead.
    ActorDied,
    /// One of its arguments failed.
    DependencyFailed,
    /// The request itself was malformed (e.g. an id the session may not use).
    Invalid,
}

/// A failed task or object: the error its owner and subscribers receive.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    /// The task's name (function, `Class::new` or method); empty when no task is to blame.
    pub(super) task: String,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(kind: FailureKind, task: impl Into<String>, message: String) -> Self {
        Failure {
            kind,
            task: task.into(),
            message,
        }
    }

    /// A failure that names no task (a put, or an object that is gone).
    pub(super) fn without_task(kind: FailureKind, message: String) -> Self {
        Self::new(kind, String::new(), message)
    }
}
