//! Functions and actor classes compiled into this program, registered at link time under stable
//! names so that every process of one program agrees on what a name means.
//!
//! A worker looks names up here; the head checks callers' signatures against what workers
//! registered, and a worker checks again before running (a defence for clusters that mix
//! programs, where the head may place a call on a worker of another build).

use std::{collections::HashMap, future::Future, hash::Hasher, pin::Pin, sync::OnceLock};

use bytes::Bytes;

use crate::{driver::Runtime, error::TaskFailure};

/// What a running task may use: the runtime, to submit and await more work.
pub struct TaskContext {
    /// The runtime, bound to the running task (so a `get` in it lends its slot back).
    pub rt: Runtime,
}

/// The outcome of a task: its encoded value.
pub type TaskOutput = Result<Bytes, TaskFailure>;

/// How a function runs.
pub enum Invocation {
    /// A plain function: runs on a blocking thread.
    Blocking(Box<dyn FnOnce() -> TaskOutput + Send>),
    /// An `async fn`: runs on the worker's executor.
    Async(Pin<Box<dyn Future<Output = TaskOutput> + Send>>),
    /// The arguments could not be decoded.
    Failed(TaskFailure),
}

/// A remote function, registered by `#[flotilla::remote]`.
pub struct RemoteFunction {
    /// Stable name: `module::path::function`.
    pub name: &'static str,
    /// The Rust signature, checked against callers.
    pub signature: &'static str,
    /// Decodes arguments and prepares the call.
    pub invoke: fn(Vec<Bytes>, TaskContext) -> Invocation,
    /// Whether it takes the runtime (and so may block waiting on other work): such functions
    /// never run on a worker's I/O thread, however short they usually are.
    pub takes_runtime: bool,
}

/// The type `#[flotilla::remote]` makes of a function, seen from generic code: its name,
/// signature, argument types (a tuple, without a leading `&Runtime`) and result type. Collections
/// take remote functions through it (`map_partitions(f)`, `bag.map(f)`).
pub trait Remote: Copy + Send + Sync + 'static {
    /// The argument types, as a tuple.
    type Args;
    /// What a caller receives (the `Ok` type of a function returning `Result`).
    type Output;
    /// The name workers know the function by.
    const NAME: &'static str;
    /// The signature callers are checked against.
    const SIGNATURE: &'static str;
}

/// A live actor on a worker.
pub trait ActorInstance: Send + 'static {
    /// Calls `method` with encoded arguments; `signature` is what the caller compiled against.
    fn call(
        &mut self,
        method: &str,
        signature: &str,
        args: Vec<Bytes>,
        ctx: TaskContext,
    ) -> TaskOutput;

    /// Whether `method` takes the runtime (and so may block waiting on other work).
    fn takes_runtime(&self, method: &str) -> bool {
        let _ = method;
        false
    }
}

/// A freshly constructed actor, or why its constructor failed.
pub type Created = Result<Box<dyn ActorInstance>, TaskFailure>;

/// An actor class, registered by `#[flotilla::actor]`.
pub struct ActorClass {
    /// Stable name: `module::path::Type`.
    pub name: &'static str,
    /// The constructor's signature.
    pub signature: &'static str,
    /// Builds an instance from encoded constructor arguments.
    pub create: fn(Vec<Bytes>, TaskContext) -> Created,
}

inventory::collect!(RemoteFunction);
inventory::collect!(ActorClass);

/// Everything this program registered.
pub struct Registry {
    /// Functions by name.
    pub functions: HashMap<&'static str, &'static RemoteFunction>,
    /// Actor classes by name.
    pub classes: HashMap<&'static str, &'static ActorClass>,
    /// A fingerprint of names and signatures: equal registries, equal build ids.
    pub build_id: String,
    /// The program's name.
    pub program: String,
}

/// The registry of this program, built once.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let functions: HashMap<_, _> = inventory::iter::<RemoteFunction>
            .into_iter()
            .map(|f| (f.name, f))
            .collect();
        let classes: HashMap<_, _> = inventory::iter::<ActorClass>
            .into_iter()
            .map(|c| (c.name, c))
            .collect();
        let mut entries: Vec<String> = functions
            .values()
            .map(|f| format!("fn {} {}", f.name, f.signature))
            .chain(
                classes
                    .values()
                    .map(|c| format!("actor {} {}", c.name, c.signature)),
            )
            .collect();
        entries.sort();
        // FNV-1a: stable across runs and platforms, unlike the std hasher.
        let mut hasher = fnv::FnvHasher::default();
        hasher.write(entries.join("\n").as_bytes());
        let hash = hasher.finish();
        let program = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown".into());
        Registry {
            functions,
            classes,
            build_id: format!("{hash:016x}"),
            program,
        }
    })
}
