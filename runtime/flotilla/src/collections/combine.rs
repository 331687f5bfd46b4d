//! Combining partial results in a tree of tasks, as Dask's `split_every`: the partials of many
//! partitions are merged `split_every` at a time by combine tasks on the workers, level by
//! level, so the driver receives one small value however many partitions there are. With no
//! more partials than the fan-in, the driver merges them itself: a task would cost more.
//!
//! A kind of partial says how it merges by implementing [`Combine`] and registers its combine
//! task with [`function`]; the same merge runs in the tasks and in the driver.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{blocking, call, invalid, plan, VARIADIC};
use crate::{
    codec::{self, Blob},
    driver::{object_ref::ObjectRef, Runtime},
    error::Result,
    registry::{Invocation, RemoteFunction, TaskContext},
};

/// How many partials one combine task merges, unless told otherwise (Dask's default too).
pub const SPLIT_EVERY: usize = 8;

/// How partials of one kind merge. The implementing value is the plan of the combine tasks:
/// what merging needs to know besides the partials (a fold's function, an array's blocks).
pub(crate) trait Combine:
    Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// What a partition's task returns.
    type Partial: DeserializeOwned + Send + 'static;
    /// Partials merged; `Default` is the merge of none.
    type Total: Serialize + DeserializeOwned + Default + Send + 'static;
    /// The name its combine task is registered under.
    const NAME: &'static str;

    /// Merges the partial of partition `index` (its place among all partitions) into `total`.
    fn add_partial(
        &self,
        rt: &Runtime,
        total: &mut Self::Total,
        index: usize,
        part: Self::Partial,
    ) -> Result<()>;

    /// Merges another total (of the partitions after those in `total`) into `total`.
    fn add_total(&self, rt: &Runtime, total: &mut Self::Total, other: Self::Total) -> Result<()>;
}

/// The plan of one combine task: the merge, and whether its inputs are partitions' partials
/// (the first tree level, starting at partition `first`) or totals of the level below.
#[derive(Clone, Serialize, Deserialize)]
struct Step<C> {
    how: C,
    first: Option<usize>,
}

/// The registration of `C`'s combine task: `inventory::submit! { combine::function::<C>() }`.
pub(crate) const fn function<C: Combine>() -> RemoteFunction {
    RemoteFunction {
        name: C::NAME,
        signature: VARIADIC,
        invoke: invoke::<C>,
        takes_runtime: true,
    }
}

fn invoke<C: Combine>(args: Vec<Bytes>, ctx: TaskContext) -> Invocation {
    blocking(move || run::<C>(&args, &ctx.rt))
}

/// Runs one combine task (on a worker): its inputs merged in order.
fn run<C: Combine>(args: &[Bytes], rt: &Runtime) -> Result<Bytes> {
    let step: Step<C> = plan(args)?;
    let inputs = &args[1..];
    if inputs.is_empty() {
        return Err(invalid(format!("{} was called without partials", C::NAME)));
    }
    let mut total = C::Total::default();
    for (k, bytes) in inputs.iter().enumerate() {
        match step.first {
            Some(first) => {
                step.how
                    .add_partial(rt, &mut total, first + k, codec::decode(bytes)?)?
            }
            None => step.how.add_total(rt, &mut total, codec::decode(bytes)?)?,
        }
    }
    codec::encode(&total)
}

/// Partials being combined: the root of a tree of combine tasks, or the partials themselves
/// when there are too few for a tree.
pub(crate) enum Combining<C: Combine> {
    Tree(ObjectRef<C::Total>),
    InDriver {
        how: C,
        parts: Vec<ObjectRef<C::Partial>>,
    },
}

/// Submits the tree combining `parts` (partition order is kept: every merge is of neighbours),
/// `SPLIT_EVERY` at a time; its tasks are named `stage`. Nothing is waited for.
pub(crate) fn tree<C: Combine>(
    rt: &Runtime,
    stage: &str,
    how: C,
    parts: &[ObjectRef<C::Partial>],
) -> Result<Combining<C>> {
    tree_every(rt, stage, how, parts, SPLIT_EVERY)
}

/// [`tree`] with a fan-in of `split_every` (at least 2).
pub(crate) fn tree_every<C: Combine>(
    rt: &Runtime,
    stage: &str,
    how: C,
    parts: &[ObjectRef<C::Partial>],
    split_every: usize,
) -> Result<Combining<C>> {
    let split_every = split_every.max(2);
    if parts.len() <= split_every {
        return Ok(Combining::InDriver {
            how,
            parts: parts.to_vec(),
        });
    }
    let mut level: Vec<ObjectRef<Blob>> = parts
        .chunks(split_every)
        .enumerate()
        .map(|(k, chunk)| {
            let inputs: Vec<ObjectRef<Blob>> = chunk.iter().map(ObjectRef::retyped).collect();
            let step = Step {
                how: how.clone(),
                first: Some(k * split_every),
            };
            call(rt, C::NAME, stage, &step, &inputs)
        })
        .collect::<Result<_>>()?;
    while level.len() > 1 {
        level = level
            .chunks(split_every)
            .map(|chunk| {
                let step = Step {
                    how: how.clone(),
                    first: None,
                };
                call(rt, C::NAME, stage, &step, chunk)
            })
            .collect::<Result<_>>()?;
    }
    Ok(Combining::Tree(level[0].retyped()))
}

impl<C: Combine> Combining<C> {
    /// The merge of every partial.
    pub(crate) async fn total(self, rt: &Runtime) -> Result<C::Total> {
        match self {
            Combining::Tree(root) => rt.get(&root).await,
            Combining::InDriver { how, parts } => {
                let mut total = C::Total::default();
                for (index, part) in rt.get_all(&parts).await?.into_iter().enumerate() {
                    how.add_partial(rt, &mut total, index, part)?;
                }
                Ok(total)
            }
        }
    }
}
