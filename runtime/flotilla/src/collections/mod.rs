//! Collections on the task runtime, in the style of Dask: lazy task graphs ([`Delayed`]),
//! dataframes of Arrow record batches ([`DataFrame`]), chunked `ndarray` arrays ([`Array`]) and
//! bags of items ([`Bag`]).
//!
//! Each collection is a description of work, built in the driver and checked there (columns,
//! types, chunk shapes); nothing runs until a result is asked for. Then one task per partition
//! (or block) does all the per-partition work at once, on whichever worker the head picks, and
//! a tree of tasks combines the small partial results ([`combine`]). Partitions stay in the
//! cluster as objects; [`DataFrame::partitions`] hands their references to plain tasks.
//!
//! The tasks are functions every Flotilla program carries (registered at link time like
//! `#[flotilla::remote]` ones), so a stock `flotilla` cluster runs them, and so does a worker of a
//! user's own program. Plans travel as data (expressions are an enum, not closures); user code
//! enters only as `#[flotilla::remote]` functions, by name.

pub mod array;
pub mod bag;
pub mod combine;
pub mod dataframe;
pub mod delayed;
pub mod progress;

use bytes::Bytes;

pub use self::{
    array::Array,
    bag::Bag,
    dataframe::{col, lit, Agg, DataFrame, Expr},
    delayed::{compute_all, Delayed, IntoDelayed},
};
use crate::{
    codec::{self, Blob},
    driver::{
        object_ref::{ArgList, IntoArg, ObjectRef},
        options::TaskOptions,
        Runtime,
    },
    error::{Error, Result, TaskFailure},
    registry::Invocation,
};

/// Calls one of the collections' own functions: `head` is the plan (encoded), `inputs` the
/// partitions or blocks it reads, passed as references so the head resolves them first. The
/// task is named after its `stage` (`dataframe.aggregate`), which is how the head's metrics
/// (`flotilla_task_runs_total{task=…}`) and errors name it.
pub(crate) fn call<T>(
    rt: &Runtime,
    name: &'static str,
    stage: &str,
    head: &(impl serde::Serialize + 'static),
    inputs: &[ObjectRef<Blob>],
) -> Result<ObjectRef<T>> {
    let mut list = ArgList::new();
    IntoArg::<Blob>::push_to(Blob(codec::encode(head)?), &mut list);
    for r in inputs {
        IntoArg::<Blob>::push_to(r, &mut list);
    }
    let options = TaskOptions::default().name(stage);
    Ok(rt.call_function(name, VARIADIC, list, Some(&options)))
}

/// The signature of the collections' functions: a plan and any number of blobs.
pub(crate) const VARIADIC: &str = "fn(plan, Blob...) -> bytes";

/// Runs `f` on a blocking thread of the worker; its error becomes the task's error.
pub(crate) fn blocking(f: impl FnOnce() -> Result<Bytes> + Send + 'static) -> Invocation {
    Invocation::Blocking(Box::new(move || f().map_err(TaskFailure::application)))
}

/// Decodes the plan (the first argument) of one of the collections' functions.
pub(crate) fn plan<T: serde::de::DeserializeOwned + 'static>(args: &[Bytes]) -> Result<T> {
    let first = args
        .first()
        .ok_or_else(|| Error::Invalid("a collection task was called without its plan".into()))?;
    codec::decode(first)
}

/// An error of bad input.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}
