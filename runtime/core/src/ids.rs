//! Identifiers of workers, sessions, tasks, objects and actors.
//!
//! A task's id is also the id of the object it returns, and an actor's id is the id of its
//! creation task. Ids are minted by sessions without a round trip: the high 24 bits carry the
//! session number the head assigned, the low 40 bits a counter of that session.

use std::fmt;

/// A worker, numbered by the head in order of registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

/// A driver session (a driver program, or a worker's own session for nested tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

/// An object, and the task that produces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u64);

/// Bits of an [`ObjectId`] that count within one session.
pub const SESSION_SHIFT: u32 = 40;

impl ObjectId {
    /// The id minted by `session` as its `seq`-th id.
    pub fn new(session: SessionId, seq: u64) -> Self {
        ObjectId((u64::from(session.0) << SESSION_SHIFT) | (seq & ((1 << SESSION_SHIFT) - 1)))
    }

    /// The session that minted this id.
    pub fn session(self) -> SessionId {
        SessionId((self.0 >> SESSION_SHIFT) as u32)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}
