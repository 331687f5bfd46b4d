//! The object layer: a worker's store (memory with spill to disk), shared-memory segments for
//! same-host transfers, and the HTTP routes and client that move objects between processes.

pub mod serve;
pub mod shm;
pub mod store;
pub mod transfer;

pub use store::ObjectStore;
pub use transfer::Peers;
