//! Bags: unordered collections of any serde values in partitions, transformed by
//! `#[flotilla::remote]` functions applied item by item on the workers (by name, through the
//! registry), and reduced per partition before a tree of tasks combines the partials.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    marker::PhantomData,
    os::unix::fs::FileExt,
    path::Path,
    sync::OnceLock,
};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
    blocking, call,
    combine::{self, Combine, Combining},
    dataframe::csv,
    invalid, plan, progress,
};
use crate::{
    codec::{self, Blob},
    driver::{object_ref::ObjectRef, Runtime},
    error::Result,
    registry::{registry, Invocation, Remote, RemoteFunction, TaskContext},
};

/// Where a partition's items come from.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Part {
    /// Encoded items in the cluster (the task's second argument).
    Stored,
    /// The lines of a byte range of a text file.
    Lines { path: String, start: u64, end: u64 },
}

/// A function applied to each item.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Step {
    Map(String),
    Filter(String),
    /// A function `fn(T) -> Vec<U>`, its outputs split into items (see [`FlatItems`]).
    FlatMap(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Action {
    /// The items (`Vec<Blob>` of encoded items).
    Collect,
    /// How many (`u64`).
    Count,
    /// Each distinct item and how often (`Vec<(Blob, u64)>`).
    Frequencies,
    /// The first `n` items (`Vec<Blob>`).
    Take(usize),
    /// The items folded by a function `(T, T) -> T` (`Option<Blob>`).
    Fold(String),
}

#[derive(Serialize, Deserialize)]
struct BagTask {
    part: Part,
    steps: Vec<Step>,
    action: Action,
}

const BAG: &str = "flotilla::collections::bag::partition";

inventory::submit! {
    RemoteFunction {
        name: BAG,
        signature: super::VARIADIC,
        invoke: invoke_bag,
        takes_runtime: true,
    }
}

fn invoke_bag(args: Vec<Bytes>, ctx: TaskContext) -> Invocation {
    blocking(move || run_bag(&args, &ctx.rt))
}

/// Calls the registered function `name` here with encoded arguments.
fn invoke_here(rt: &Runtime, name: &str, args: Vec<Bytes>) -> Result<Bytes> {
    let f = registry()
        .functions
        .get(name)
        .ok_or_else(|| invalid(format!("no function {name} is registered in this program")))?;
    let ctx = TaskContext { rt: rt.clone() };
    let out = match (f.invoke)(args, ctx) {
        Invocation::Blocking(run) => run(),
        Invocation::Async(fut) => crate::block_on(fut),
        Invocation::Failed(e) => Err(e),
    };
    out.map_err(|e| invalid(format!("{name}: {}", e.message)))
}

fn run_bag(args: &[Bytes], rt: &Runtime) -> Result<Bytes> {
    let task: BagTask = plan(args)?;
    let mut items: Vec<Bytes> = match &task.part {
        Part::Stored => {
            let bytes = args
                .get(1)
                .ok_or_else(|| invalid("a bag task lost its partition"))?;
            codec::decode::<Vec<Blob>>(bytes)?
                .into_iter()
                .map(|b| b.0)
                .collect()
        }
        Part::Lines { path, start, end } => read_lines(path, *start, *end)?
            .into_iter()
            .map(|l| codec::encode(&l))
            .collect::<Result<_>>()?,
    };
    for step in &task.steps {
        items = match step {
            Step::Map(f) => items
                .into_iter()
                .map(|x| invoke_here(rt, f, vec![x]))
                .collect::<Result<_>>()?,
            Step::Filter(f) => {
                let mut kept = Vec::new();
                for x in items {
                    if codec::decode::<bool>(&invoke_here(rt, f, vec![x.clone()])?)? {
                        kept.push(x);
                    }
                }
                kept
            }
            Step::FlatMap(f) => {
                let split = splitter(f)?;
                let mut out = Vec::new();
                for x in items {
                    out.extend(split(&invoke_here(rt, f, vec![x])?).ok_or_else(|| {
                        invalid(format!(
                            "{f} cannot be flat-mapped: the items of its output do not \
                             implement Deserialize"
                        ))
                    })??);
                }
                out
            }
        };
    }
    let blobs = |v: Vec<Bytes>| v.into_iter().map(Blob).collect::<Vec<_>>();
    match task.action {
        Action::Collect => codec::encode(&blobs(items)),
        Action::Count => codec::encode(&(items.len() as u64)),
        Action::Take(n) => codec::encode(&blobs(items.into_iter().take(n).collect())),
        Action::Frequencies => {
            let mut counts: BTreeMap<Bytes, u64> = BTreeMap::new();
            for x in items {
                *counts.entry(x).or_default() += 1;
            }
            codec::encode(
                &counts
                    .into_iter()
                    .map(|(k, n)| (Blob(k), n))
                    .collect::<Vec<_>>(),
            )
        }
        Action::Fold(f) => {
            let mut acc: Option<Bytes> = None;
            for x in items {
                acc = Some(match acc {
                    None => x,
                    Some(a) => invoke_here(rt, &f, vec![a, x])?,
                });
            }
            codec::encode(&acc.map(Blob))
        }
    }
}

/// How the output of a remote function declared to return a `Vec<U>` splits into the
/// encodings of its items: `#[flotilla::remote]` registers one for each such function, since a
/// worker cannot split an encoded `Vec<U>` without knowing `U`. `split` gives `None` when `U`
/// cannot be decoded (it is not `Deserialize`).
#[doc(hidden)]
pub struct FlatItems {
    /// The function's registered name.
    pub function: &'static str,
    /// Splits an encoded output.
    pub split: Splitter,
}

inventory::collect!(FlatItems);

/// Splits an encoded `Vec<U>` into its items' encodings (`None`: `U` cannot be decoded).
type Splitter = fn(&Bytes) -> Option<Result<Vec<Bytes>>>;

/// The splitter registered for `function`.
fn splitter(function: &str) -> Result<Splitter> {
    static SPLITTERS: OnceLock<HashMap<&'static str, Splitter>> = OnceLock::new();
    SPLITTERS
        .get_or_init(|| {
            inventory::iter::<FlatItems>
                .into_iter()
                .map(|f| (f.function, f.split))
                .collect()
        })
        .get(function)
        .copied()
        .ok_or_else(|| {
            invalid(format!(
                "{function} cannot be flat-mapped: it is not a remote function of this program \
                 declared to return a Vec<…>"
            ))
        })
}

/// The items of a `Vec<U>`: the generated code calls `split_items` on a `&ItemsOf<U>`, which
/// is [`SplitItems`]' when `U` can be decoded and [`CannotSplit`]'s otherwise.
#[doc(hidden)]
pub struct ItemsOf<U>(PhantomData<fn() -> U>);

impl<U> Default for ItemsOf<U> {
    fn default() -> Self {
        ItemsOf(PhantomData)
    }
}

/// Splits an encoded `Vec<U>` into its items' encodings.
#[doc(hidden)]
pub trait SplitItems {
    /// The items, encoded one by one.
    fn split_items(&self, bytes: &Bytes) -> Option<Result<Vec<Bytes>>>;
}

impl<U: Serialize + DeserializeOwned + 'static> SplitItems for ItemsOf<U> {
    fn split_items(&self, bytes: &Bytes) -> Option<Result<Vec<Bytes>>> {
        Some(
            codec::decode::<Vec<U>>(bytes)
                .and_then(|items| items.iter().map(codec::encode).collect()),
        )
    }
}

/// The fallback, one reference further, when `U` is not `Deserialize`: functions returning
/// such `Vec`s still compile, and flat-mapping them is an error that says why.
#[doc(hidden)]
pub trait CannotSplit {
    /// Always `None`.
    fn split_items(&self, bytes: &Bytes) -> Option<Result<Vec<Bytes>>>;
}

impl<U> CannotSplit for &ItemsOf<U> {
    fn split_items(&self, _: &Bytes) -> Option<Result<Vec<Bytes>>> {
        None
    }
}

/// The lines of a byte range (which starts at a line), without their line endings.
fn read_lines(path: &str, start: u64, end: u64) -> Result<Vec<String>> {
    let p = Path::new(path);
    let file = File::open(p).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let mut bytes = vec![0; (end - start) as usize];
    file.read_exact_at(&mut bytes, start)
        .map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| invalid(format!("{}: not UTF-8 text: {e}", p.display())))?;
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect())
}

#[derive(Clone)]
enum Source {
    Stored(ObjectRef<Blob>),
    Lines { path: String, start: u64, end: u64 },
}

/// A bag of `T`s in partitions.
pub struct Bag<T> {
    rt: Runtime,
    parts: Vec<Source>,
    steps: Vec<Step>,
    _item: PhantomData<fn() -> T>,
}

impl<T> Clone for Bag<T> {
    fn clone(&self) -> Self {
        Bag {
            rt: self.rt.clone(),
            parts: self.parts.clone(),
            steps: self.steps.clone(),
            _item: PhantomData,
        }
    }
}

impl Bag<String> {
    /// The lines of text files (a path or a glob), in partitions of about `block` bytes.
    pub fn read_text(rt: &Runtime, pattern: &str, block: u64) -> Result<Bag<String>> {
        let mut parts = Vec::new();
        for f in csv::expand(pattern)? {
            for (start, end) in csv::split_records(&f, block, false, false)? {
                parts.push(Source::Lines {
                    path: f.clone(),
                    start,
                    end,
                });
            }
        }
        Ok(Bag {
            rt: rt.clone(),
            parts,
            steps: Vec::new(),
            _item: PhantomData,
        })
    }

    /// Parses each line as JSON into a `U` (JSON lines), in the driver as items arrive.
    pub async fn collect_json<U: DeserializeOwned>(&self) -> Result<Vec<U>> {
        self.collect()
            .await?
            .iter()
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| invalid(format!("JSON line {} of the bag: {e}", i + 1)))
            })
            .collect()
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Bag<T> {
    /// A bag of `items` in `npartitions` partitions of about equal size.
    pub async fn from_iter(
        rt: &Runtime,
        items: impl IntoIterator<Item = T>,
        npartitions: usize,
    ) -> Result<Bag<T>> {
        let encoded: Vec<Blob> = items
            .into_iter()
            .map(|x| codec::encode(&x).map(Blob))
            .collect::<Result<_>>()?;
        let n = npartitions.max(1);
        let len = encoded.len();
        let mut parts = Vec::with_capacity(n);
        for i in 0..n {
            let chunk = &encoded[len * i / n..len * (i + 1) / n];
            let bytes = codec::encode(&chunk.to_vec())?;
            parts.push(Source::Stored(rt.put(&Blob(bytes)).await?));
        }
        Ok(Bag {
            rt: rt.clone(),
            parts,
            steps: Vec::new(),
            _item: PhantomData,
        })
    }

    fn then<U>(&self, step: Step) -> Bag<U> {
        let mut steps = self.steps.clone();
        steps.push(step);
        Bag {
            rt: self.rt.clone(),
            parts: self.parts.clone(),
            steps,
            _item: PhantomData,
        }
    }

    /// Each item through a remote function `fn(T) -> U`.
    pub fn map<F, U>(&self, _f: F) -> Bag<U>
    where
        F: Remote<Args = (T,), Output = U>,
    {
        self.then(Step::Map(F::NAME.to_string()))
    }

    /// The items for which a remote function `fn(T) -> bool` says yes.
    pub fn filter<F>(&self, _f: F) -> Bag<T>
    where
        F: Remote<Args = (T,), Output = bool>,
    {
        self.then(Step::Filter(F::NAME.to_string()))
    }

    /// Each item through a remote function `fn(T) -> Vec<U>`, the outputs joined: the items of
    /// all the outputs, in order, as a bag like any other. The function must be declared to
    /// return a `Vec<…>` (its registration then says how the workers split its outputs).
    pub fn flat_map<F, U>(&self, _f: F) -> Bag<U>
    where
        F: Remote<Args = (T,), Output = Vec<U>>,
    {
        self.then(Step::FlatMap(F::NAME.to_string()))
    }

    fn run<R>(&self, action: Action) -> Result<Vec<ObjectRef<R>>> {
        self.parts
            .iter()
            .map(|p| {
                let (part, inputs) = match p {
                    Source::Stored(r) => (Part::Stored, vec![r.clone()]),
                    Source::Lines { path, start, end } => (
                        Part::Lines {
                            path: path.clone(),
                            start: *start,
                            end: *end,
                        },
                        Vec::new(),
                    ),
                };
                call(
                    &self.rt,
                    BAG,
                    "bag.partition",
                    &BagTask {
                        part,
                        steps: self.steps.clone(),
                        action: action.clone(),
                    },
                    &inputs,
                )
            })
            .collect()
    }

    async fn gather<R: DeserializeOwned + 'static>(&self, action: Action) -> Result<Vec<R>> {
        let refs = self.run::<R>(action)?;
        progress::watch(&self.rt, "bag", &refs).await?;
        self.rt.get_all(&refs).await
    }

    /// Runs `action` on every partition and merges the partials with `how`, in a tree.
    async fn reduce<C: Combine>(&self, action: Action, how: C) -> Result<C::Total> {
        let refs = self.run::<C::Partial>(action)?;
        let tree: Combining<C> = combine::tree(&self.rt, "bag.combine", how, &refs)?;
        progress::watch(&self.rt, "bag", &refs).await?;
        tree.total(&self.rt).await
    }

    /// Every item, in the driver.
    pub async fn collect(&self) -> Result<Vec<T>> {
        let parts: Vec<Vec<Blob>> = self.gather(Action::Collect).await?;
        parts
            .into_iter()
            .flatten()
            .map(|b| codec::decode(&b.0))
            .collect()
    }

    /// How many items.
    pub async fn count(&self) -> Result<u64> {
        self.reduce(Action::Count, SumCounts).await
    }

    /// The first `n` items (partitions in order).
    pub async fn take(&self, n: usize) -> Result<Vec<T>> {
        let parts: Vec<Vec<Blob>> = self.gather(Action::Take(n)).await?;
        parts
            .into_iter()
            .flatten()
            .take(n)
            .map(|b| codec::decode(&b.0))
            .collect()
    }

    /// Each distinct item (equal encodings are equal items) and how often it occurs, most
    /// frequent first.
    pub async fn frequencies(&self) -> Result<Vec<(T, u64)>> {
        let total = self.reduce(Action::Frequencies, MergeFrequencies).await?;
        let mut out: Vec<(Vec<u8>, u64)> = total.into_iter().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.into_iter()
            .map(|(k, n)| Ok((codec::decode(&Bytes::from(k))?, n)))
            .collect()
    }

    /// The distinct items (in the order of their encodings).
    pub async fn distinct(&self) -> Result<Vec<T>> {
        let total = self.reduce(Action::Frequencies, MergeFrequencies).await?;
        total
            .into_keys()
            .map(|k| codec::decode(&Bytes::from(k)))
            .collect()
    }

    /// The items folded with a remote function `fn(T, T) -> T` (associative): per partition
    /// on the workers, then the partials in a tree of tasks (or in the driver, when there are
    /// few). `None` for an empty bag.
    pub async fn fold<F>(&self, _f: F) -> Result<Option<T>>
    where
        F: Remote<Args = (T, T), Output = T>,
    {
        let name = F::NAME.to_string();
        let total = self
            .reduce(Action::Fold(name.clone()), FoldWith(name))
            .await?;
        total.map(|b| codec::decode(&b.0)).transpose()
    }
}

/// Counts of partitions, summed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct SumCounts;

inventory::submit! { combine::function::<SumCounts>() }

impl Combine for SumCounts {
    type Partial = u64;
    type Total = u64;
    const NAME: &'static str = "flotilla::collections::bag::sum_counts";

    fn add_partial(&self, _: &Runtime, total: &mut u64, _: usize, part: u64) -> Result<()> {
        *total += part;
        Ok(())
    }

    fn add_total(&self, _: &Runtime, total: &mut u64, other: u64) -> Result<()> {
        *total += other;
        Ok(())
    }
}

/// How often each item occurs (by its encoding), partitions' counts summed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct MergeFrequencies;

inventory::submit! { combine::function::<MergeFrequencies>() }

impl Combine for MergeFrequencies {
    type Partial = Vec<(Blob, u64)>;
    type Total = BTreeMap<Vec<u8>, u64>;
    const NAME: &'static str = "flotilla::collections::bag::merge_frequencies";

    fn add_partial(
        &self,
        _: &Runtime,
        total: &mut Self::Total,
        _: usize,
        part: Vec<(Blob, u64)>,
    ) -> Result<()> {
        for (k, n) in part {
            *total.entry(k.0.to_vec()).or_default() += n;
        }
        Ok(())
    }

    fn add_total(&self, _: &Runtime, total: &mut Self::Total, other: Self::Total) -> Result<()> {
        for (k, n) in other {
            *total.entry(k).or_default() += n;
        }
        Ok(())
    }
}

/// Partitions' folds folded with the same function, in partition order.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FoldWith(String);

inventory::submit! { combine::function::<FoldWith>() }

impl FoldWith {
    fn fold(&self, rt: &Runtime, total: &mut Option<Blob>, next: Option<Blob>) -> Result<()> {
        let Some(next) = next else { return Ok(()) };
        *total = Some(match total.take() {
            None => next,
            Some(acc) => Blob(invoke_here(rt, &self.0, vec![acc.0, next.0])?),
        });
        Ok(())
    }
}

impl Combine for FoldWith {
    type Partial = Option<Blob>;
    type Total = Option<Blob>;
    const NAME: &'static str = "flotilla::collections::bag::fold";

    fn add_partial(
        &self,
        rt: &Runtime,
        total: &mut Option<Blob>,
        _: usize,
        part: Option<Blob>,
    ) -> Result<()> {
        self.fold(rt, total, part)
    }

    fn add_total(&self, rt: &Runtime, total: &mut Option<Blob>, other: Option<Blob>) -> Result<()> {
        self.fold(rt, total, other)
    }
}

/// Adds two integers: [`Bag::sum`] of `i64`s folds with it.
#[crate::remote]
pub fn add_i64(a: i64, b: i64) -> i64 {
    a.wrapping_add(b)
}

/// Adds two floats: [`Bag::sum`] of `f64`s folds with it.
#[crate::remote]
pub fn add_f64(a: f64, b: f64) -> f64 {
    a + b
}

impl Bag<i64> {
    /// The sum (0 for an empty bag).
    pub async fn sum(&self) -> Result<i64> {
        Ok(self.fold(add_i64).await?.unwrap_or(0))
    }
}

impl Bag<f64> {
    /// The sum (0 for an empty bag).
    pub async fn sum(&self) -> Result<f64> {
        Ok(self.fold(add_f64).await?.unwrap_or(0.0))
    }
}
