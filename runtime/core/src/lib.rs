//! Flotilla's core: ids, the task and actor model, and the scheduler as a state machine with no
//! I/O, so that scheduling, retries, lineage rebuilds, actor restarts and drains are tested
//! deterministically.

pub mod error_kind;
pub mod ids;
pub mod options;
pub mod scheduler;

pub use error_kind::ErrorKind;
pub use ids::{ObjectId, SessionId, WorkerId};
pub use scheduler::{
    Effect, JobCancelled, JobView, RegisterError, Scheduler, Snapshot, UndrainError, WorkerInfo,
    WorkerView,
};
