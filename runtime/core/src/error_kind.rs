//! Why a task failed: one kind shared by the scheduler, the workers and callers' errors, with its
//! wire form.

use flotilla_proto::v1::task_error;

/// Why a task failed; a caller's error carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
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

impl From<task_error::Kind> for ErrorKind {
    fn from(kind: task_error::Kind) -> Self {
        match kind {
            task_error::Kind::Application => ErrorKind::Application,
            task_error::Kind::Panic => ErrorKind::Panic,
            task_error::Kind::UnknownFunction => ErrorKind::UnknownFunction,
            task_error::Kind::TypeMismatch => ErrorKind::TypeMismatch,
            task_error::Kind::WorkerDied => ErrorKind::WorkerDied,
            task_error::Kind::Cancelled => ErrorKind::Cancelled,
            task_error::Kind::ObjectLost => ErrorKind::ObjectLost,
            task_error::Kind::ActorDied => ErrorKind::ActorDied,
            task_error::Kind::DependencyFailed => ErrorKind::DependencyFailed,
            task_error::Kind::Invalid => ErrorKind::Invalid,
        }
    }
}

impl From<ErrorKind> for task_error::Kind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Application => task_error::Kind::Application,
            ErrorKind::Panic => task_error::Kind::Panic,
            ErrorKind::UnknownFunction => task_error::Kind::UnknownFunction,
            ErrorKind::TypeMismatch => task_error::Kind::TypeMismatch,
            ErrorKind::WorkerDied => task_error::Kind::WorkerDied,
            ErrorKind::Cancelled => task_error::Kind::Cancelled,
            ErrorKind::ObjectLost => task_error::Kind::ObjectLost,
            ErrorKind::ActorDied => task_error::Kind::ActorDied,
            ErrorKind::DependencyFailed => task_error::Kind::DependencyFailed,
            ErrorKind::Invalid => task_error::Kind::Invalid,
        }
    }
}

impl ErrorKind {
    /// The wire form.
    pub fn to_proto(self) -> task_error::Kind {
        self.into()
    }

    /// From the wire form; a kind this build does not know reads as `Invalid`.
    pub fn from_proto(kind: i32) -> Self {
        task_error::Kind::try_from(kind).map_or(ErrorKind::Invalid, Into::into)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Application => "error",
            ErrorKind::Panic => "panic",
            ErrorKind::UnknownFunction => "unknown function",
            ErrorKind::TypeMismatch => "type mismatch",
            ErrorKind::WorkerDied => "worker died",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::ObjectLost => "object lost",
            ErrorKind::ActorDied => "actor died",
            ErrorKind::DependencyFailed => "dependency failed",
            ErrorKind::Invalid => "invalid request",
        })
    }
}
