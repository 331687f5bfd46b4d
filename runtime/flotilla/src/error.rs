//! Errors of the runtime, and their wire forms. A failed task is a value: [`Error::Task`] carries
//! the kind, the task's name and the remote message; [`TaskFailure`] is the same before the head
//! names the task.

use std::sync::Arc;

pub use flotilla_core::ErrorKind;
use flotilla_proto::v1::TaskError;

/// An error of the runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A task failed; `message` is the remote message.
    #[error("task {task} failed ({kind}): {message}")]
    Task {
        /// Why.
        kind: ErrorKind,
        /// The function, `Class::new` or method name.
        task: String,
        /// The remote message.
        message: String,
    },
    /// The head could not be reached.
    #[error("cannot reach the head at {address}: {message}")]
    Connect {
        /// The address tried.
        address: String,
        /// Why, with its causes.
        message: String,
    },
    /// A call to the head failed; `code` is the gRPC status code it answered with.
    #[error("{}: {message}", code.description())]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The head's message.
        message: String,
    },
    /// Moving an object's bytes to or from another process failed.
    #[error("{peer}: {message}")]
    Transfer {
        /// The address of the other process.
        peer: String,
        /// What went wrong, with its causes.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error("{0}")]
    Codec(String),
    /// `wait` or `get` ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The runtime was shut down or lost its head.
    #[error("the runtime is shut down: {0}")]
    Shutdown(String),
    /// No worker could take the request (none registered, or all draining).
    #[error("{0}")]
    Unavailable(String),
    /// Bad input to a collection, found while building or running its graph: a column that
    /// does not exist, a type that does not fit, a file that is missing or malformed, chunks
    /// that do not line up.
    #[error("{0}")]
    Invalid(String),
    /// A file or socket operation failed.
    #[error("{}{source}", context_prefix(context))]
    Io {
        /// What was being done, if known.
        context: String,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },
}

fn context_prefix(context: &str) -> String {
    if context.is_empty() {
        String::new()
    } else {
        format!("{context}: ")
    }
}

impl Error {
    /// The task error kind, when this is a task failure.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Task { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// From the wire form of a task's failure.
    pub fn from_proto(e: &TaskError) -> Self {
        Error::Task {
            kind: ErrorKind::from_proto(e.kind),
            task: e.task.clone(),
            message: e.message.clone(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Rpc {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(String::new(), e)
    }
}

/// The result of runtime calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a task failed on the worker: what a remote function's wrapper, the executor and the
/// codec report, before the head adds the task's name.
#[derive(Debug, Clone)]
pub struct TaskFailure {
    /// The kind.
    pub kind: ErrorKind,
    /// The message.
    pub message: String,
}

impl TaskFailure {
    /// The function returned an error.
    pub fn application(message: impl std::fmt::Display) -> Self {
        TaskFailure {
            kind: ErrorKind::Application,
            message: message.to_string(),
        }
    }

    /// The arguments or the signature did not match.
    pub fn type_mismatch(message: String) -> Self {
        TaskFailure {
            kind: ErrorKind::TypeMismatch,
            message,
        }
    }

    /// A failure of another kind.
    pub fn new(kind: ErrorKind, message: String) -> Self {
        TaskFailure { kind, message }
    }

    /// The wire form; the head fills in the task's name.
    pub fn into_proto(self) -> TaskError {
        TaskError {
            kind: self.kind.to_proto() as i32,
            task: String::new(),
            message: self.message,
        }
    }
}
