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
//!
//! # The crate's rooms, and who may use whom
//!
//! Each module does one job; a module may import only those listed below it, never one above, so
//! the import graph has no cycles (`tests/layout.rs` checks both).
//!
//! | module     | job                                                       | may import                 |
//! |------------|-----------------------------------------------------------|----------------------------|
//! | `collections` | delayed graphs, dataframes, chunked arrays, bags       | driver, registry, codec, error |
//! | `process`  | entry points: head, worker or driver from the environment | local, head, worker, driver, net, error |
//! | `local`    | clusters on one machine: in-process, and of processes     | admin, driver, head, worker, objects, private_fs, error |
//! | `worker`   | registers, runs tasks, hosts actors, serves objects       | registry, driver, objects, net, metrics, codec, error |
//! | `head`     | the scheduler's loop, gRPC service, metrics, dashboard    | net, metrics, error        |
//! | `admin`    | status, drain, undrain and job-cancel calls to a head     | net, error                 |
//! | `builtins` | functions and actors every program carries                | driver, codec, error       |
//! | `registry` | functions and actor classes registered at link time       | driver, error              |
//! | `driver`   | `Runtime`, object refs, actor handles, options, puts      | objects, net, codec, error |
//! | `objects`  | store, shared memory, transfers between processes         | net, private_fs, error     |
//! | `metrics`  | Prometheus registries and the text exposition             | (none)                     |
//! | `net`      | channels, servers, the head client, listeners, batching   | error                      |
//! | `private_fs` | files and directories only this user may read           | (none)                     |
//! | `codec`    | how values are encoded                                    | error                      |
//! | `error`    | errors and their wire forms                               | (none)                     |
//!
//! The `flotilla` binary (`src/bin/flotilla/`) holds the command line and `flotilla bench`.

extern crate self as flotilla;

pub mod admin;
pub mod builtins;
pub mod codec;
pub mod collections;
pub mod driver;
pub mod error;
pub mod head;
pub mod local;
pub(crate) mod metrics;
pub mod net;
pub mod objects;
pub mod private_fs;
pub mod process;
pub mod registry;
pub mod worker;

pub use codec::Blob;
pub use collections::{Array, Bag, DataFrame, Delayed};
pub use driver::{
    actor::ActorHandle,
    host::cancelled,
    object_ref::{IntoArg, ObjectRef},
    options::{ActorOptions, TaskOptions},
    Runtime,
};
pub use error::{Error, ErrorKind, Result};
pub use flotilla_macros::{actor, main, remote};

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
        codec::{decode_arg, encode},
        collections::bag::{CannotSplit, FlatItems, ItemsOf, SplitItems},
        driver::{
            actor::ActorHandle,
            object_ref::{encode_result, ArgList, IntoArg},
            Runtime,
        },
        error::TaskFailure,
        process::run_main,
        registry::{ActorClass, ActorInstance, Invocation, RemoteFunction, TaskContext},
    };
}
