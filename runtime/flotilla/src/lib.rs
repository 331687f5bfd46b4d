//! Flotilla: parallel Rust on a cluster, in the style of Ray.
//!
//! Mark a function `#[flotilla::remote]` and call it with `.remote(&rt, args…)` to run it on a
//! worker; mark a struct and its impl `#[flotilla::actor]` to keep state on a worker; pass
//! [`ObjectRef`]s between calls to build graphs. `#[flotilla::main]` makes a program act as a
//! driver, or as a worker or head when `FLOTILLA_ROLE` says so. A driver with no `FLOTILLA_HEAD`
//! starts a local cluster in its own process.
//!
//! ```no_run
//! #[flotilla::remote]
//! fn square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! #[flotilla::main]
//! async fn main(rt: flotilla::Runtime) -> flotilla::Result<()> {
//!     let r = square.remote(&rt, 5);
//!     assert_eq!(r.await?, 25);
//!     Ok(())
//! }
//! ```

extern crate self as flotilla;

pub mod actor;
pub mod bench;
pub mod builtins;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod error;
pub mod head;
pub mod http;
pub mod object_ref;
pub mod peer;
pub mod registry;
pub mod shm;
pub mod store;
pub mod transport;
pub mod worker;

pub use actor::{ActorHandle, ActorOptions};
pub use client::Runtime;
pub use codec::Blob;
pub use error::{Error, ErrorKind, Result};
pub use flotilla_macros::{actor, main, remote};
pub use object_ref::{IntoArg, ObjectRef};
pub use registry::TaskOptions;

/// Blocks the current thread on a future; for synchronous remote functions that call into the
/// runtime (`flotilla::block_on(rt.get(r))`).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(future))
        }
        // On a worker, plain functions run on blocking threads, where this is allowed.
        Ok(handle) => handle.block_on(future),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime can always be built")
            .block_on(future),
    }
}

/// Items the macros expand to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use inventory;

    pub use crate::{
        actor::ActorHandle,
        client::Runtime,
        cluster::run_main,
        codec::{decode_arg, encode},
        object_ref::{ArgList, IntoArg},
        registry::{
            ActorClass, ActorInstance, Invocation, RemoteFunction, TaskContext, TaskFailure,
        },
    };
}
