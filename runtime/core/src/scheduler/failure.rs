//! Why a task or an object failed, in the scheduler's own terms.

use crate::ErrorKind;

/// A failed task or object: the error its owner and subscribers receive.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Failure {
    pub(super) kind: ErrorKind,
    /// The task's name (function, `Class::new` or method); empty when no task is to blame.
    pub(super) task: String,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn new(kind: ErrorKind, task: impl Into<String>, message: String) -> Self {
        Failure {
            kind,
            task: task.into(),
            message,
        }
    }

    /// A failure that names no task (a put, or an object that is gone).
    pub(super) fn without_task(kind: ErrorKind, message: String) -> Self {
        Self::new(kind, String::new(), message)
    }
}
