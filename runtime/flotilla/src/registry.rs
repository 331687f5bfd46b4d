//! Functions and actor classes compiled into this program, registered at link time under stable
//! names so that every process of one program agrees on what a name means.

use std::{collections::HashMap, future::Future, pin::Pin, sync::OnceLock};

use bytes::Bytes;

use crate::{client::Runtime, error::ErrorKind};

/// What a running task may use: the runtime, to submit and await more work.
pub struct TaskContext {
    /// The runtime, bound to the running task (so a `get` in it lends its slot back).
    pub rt: Runtime,
}

/// Why a task failed on the worker.
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
    /// The arguments did not match.
    pub fn type_mismatch(message: String) -> Self {
        TaskFailure {
            kind: ErrorKind::TypeMismatch,
            message,
        }
    }
    /// Something else.
    pub fn new(kind: ErrorKind, message: String) -> Self {
        TaskFailure { kind, message }
    }
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
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in entries.join("\n").bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
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

/// Per-call options of a remote function (`f.options().max_retries(5).remote(&rt, …)`).
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    pub(crate) max_retries: Option<u32>,
    pub(crate) slots: u32,
    pub(crate) custom: HashMap<String, u64>,
    pub(crate) name: String,
}

impl TaskOptions {
    /// Retries after worker failures (default 3).
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    /// Task slots the call takes (default 1).
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = n;
        self
    }
    /// A named custom resource the call needs (e.g. `("gpu", 1)`).
    pub fn resource(mut self, name: &str, amount: u64) -> Self {
        self.custom.insert(name.to_string(), amount);
        self
    }
    /// A name for logs and metrics.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub(crate) fn to_proto(&self) -> flotilla_proto::v1::TaskOptions {
        flotilla_proto::v1::TaskOptions {
            max_retries: self.max_retries.map_or(-1, |n| n as i32),
            resources: Some(flotilla_proto::v1::Resources {
                slots: self.slots,
                custom: self.custom.clone(),
            }),
            name: self.name.clone(),
        }
    }
}
