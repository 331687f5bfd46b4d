//! The collections against plain single-process computations on the same data (Arrow kernels,
//! ndarray, iterators): on an in-process cluster and on a cluster of two `flotilla` worker
//! processes; CSV edge cases; bad input; a worker killed mid-query; data larger than the
//! workers' object stores.
//!
//! Every wait is bounded; nothing sleeps for a fixed time.

use std::{
    collections::BTreeMap,
    future::IntoFuture,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use arrow_array::{Array as _, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use flotilla::{
    builtins::{add, byte_sum, make_buffers, sleep_then},
    collections::{
        array::{decode_block, encode_block, Op},
        col, compute_all,
        dataframe::{csv, decode_batch, encode_batch, CsvOptions},
        lit, Agg,
    },
    local::{processes::ProcessCluster, LocalCluster, LocalOptions},
    Array, Bag, Blob, DataFrame, ObjectRef, Runtime,
};
use ndarray::{s, Array2, Axis};

const BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, f: impl IntoFuture<Output = T>) -> T {
    match tokio::time::timeout(BOUND, f.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {BOUND:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b) = ($a, $b);
        assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

// ------------------------------------------------------------------ functions of the tests

/// Squares an integer.
#[flotilla::remote]
fn square(x: i64) -> i64 {
    x * x
}

/// Whether an integer is even.
#[flotilla::remote]
fn even(x: i64) -> bool {
    x % 2 == 0
}

/// `x` copies of `x` (none for 0 and below): flat-mapped outputs of every size, empty included.
#[flotilla::remote]
fn copies(x: i64) -> Vec<i64> {
    vec![x; x.max(0) as usize]
}

/// The words of a line.
#[flotilla::remote]
fn words(line: String) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// The letters of a word, each a string.
#[flotilla::remote]
fn chars(word: String) -> Vec<String> {
    word.chars().map(String::from).collect()
}

/// A `Vec` of borrowed items: a remote function may still return one.
#[flotilla::remote]
fn names(n: i64) -> Vec<&'static str> {
    vec!["name"; n.max(0) as usize]
}

/// A value that serializes but cannot be decoded.
#[derive(serde::Serialize)]
struct Opaque(u8);

/// A `Vec` of items that cannot be decoded: a remote function may still return one.
#[flotilla::remote]
fn opaque(n: i64) -> Vec<Opaque> {
    (0..n.max(0)).map(|i| Opaque(i as u8)).collect()
}

/// Doubles every value of a block.
#[flotilla::remote]
fn double_block(b: Blob) -> Blob {
    let a = decode_block(&b.0).expect("a block");
    encode_block((a * 2.0).view())
}

/// Adds a column `w = x * 10` to a partition.
#[flotilla::remote]
fn add_w(b: Blob) -> Blob {
    let batch = decode_batch(&b.0).expect("a batch");
    let x = batch
        .column_by_name("x")
        .expect("x")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("i64")
        .clone();
    let w: Int64Array = x.iter().map(|v| v.map(|v| v * 10)).collect();
    let mut columns: Vec<(String, ArrayRef)> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect();
    columns.push(("w".into(), Arc::new(w)));
    encode_batch(&RecordBatch::try_from_iter(columns).expect("batch")).expect("encode")
}

/// Sums the values behind references handed over inside a `Vec`, read by the task itself.
#[flotilla::remote]
fn sum_refs(rt: &Runtime, refs: Vec<ObjectRef<u64>>) -> Result<u64, String> {
    let values = flotilla::block_on(rt.get_all(&refs)).map_err(|e| e.to_string())?;
    Ok(values.iter().sum())
}

/// Makes `n` objects from inside a task (puts, a large stored one among them, and a child
/// task's result) and returns only references to them.
#[flotilla::remote]
async fn make_refs(rt: &Runtime, n: u64) -> Result<Vec<ObjectRef<Vec<u8>>>, String> {
    let mut refs = Vec::new();
    for i in 0..n {
        // Every other one too large to travel inline: it stays in this worker's store.
        let len = if i % 2 == 0 { 8 } else { 100 << 10 };
        refs.push(
            rt.put(&vec![i as u8; len])
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    refs.push(filled.remote(rt, n, 3));
    Ok(refs)
}

/// `len` bytes of `byte`.
#[flotilla::remote]
fn filled(byte: u64, len: u64) -> Vec<u8> {
    vec![byte as u8; len as usize]
}

/// Hands back the references it was given, inside its result.
#[flotilla::remote]
fn pass_refs(refs: Vec<ObjectRef<u64>>) -> Vec<ObjectRef<u64>> {
    refs
}

/// Joins two strings: associative, not commutative, so a fold of it shows the order kept.
#[flotilla::remote]
fn join(a: String, b: String) -> String {
    a + &b
}

/// An actor whose method tries to return references (which an actor's result may not hold).
#[flotilla::actor]
pub struct Keeper {
    kept: u64,
}

#[flotilla::actor]
impl Keeper {
    /// Has kept `kept` values so far.
    pub fn new(kept: u64) -> Self {
        Keeper { kept }
    }
    /// Puts `x` and returns a reference to it.
    pub fn keep(&mut self, rt: &Runtime, x: u64) -> Result<Vec<ObjectRef<u64>>, String> {
        self.kept += 1;
        Ok(vec![
            flotilla::block_on(rt.put(&x)).map_err(|e| e.to_string())?
        ])
    }
}

// ------------------------------------------------------------------------ the checks

const ROWS: i64 = 10_000;

fn frame() -> RecordBatch {
    let x: Int64Array = (0..ROWS).collect();
    let y: Float64Array = (0..ROWS).map(|i| i as f64 * 0.5 + (i % 7) as f64).collect();
    let s: StringArray = (0..ROWS).map(|i| Some(format!("k{}", i % 3))).collect();
    RecordBatch::try_from_iter([
        ("x", Arc::new(x) as ArrayRef),
        ("y", Arc::new(y) as ArrayRef),
        ("s", Arc::new(s) as ArrayRef),
    ])
    .unwrap()
}

fn plain_std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Dataframe operations against the same computations over plain vectors.
async fn check_dataframe(rt: &Runtime) {
    let batch = frame();
    let xs: Vec<f64> = (0..ROWS).map(|i| i as f64).collect();
    let ys: Vec<f64> = (0..ROWS).map(|i| i as f64 * 0.5 + (i % 7) as f64).collect();
    let df = DataFrame::from_batches(rt, std::slice::from_ref(&batch), 4)
        .await
        .unwrap();
    assert_eq!(df.npartitions(), 4);

    assert_close!(df.mean("x").await.unwrap(), (ROWS - 1) as f64 / 2.0);
    assert_close!(df.sum("y").await.unwrap(), ys.iter().sum::<f64>());
    assert_close!(df.min("y").await.unwrap(), 0.0);
    assert_close!(df.max("x").await.unwrap(), (ROWS - 1) as f64);
    assert_eq!(df.count("s").await.unwrap(), ROWS as u64);
    assert_close!(df.std("y").await.unwrap(), plain_std(&ys));
    assert_eq!(df.len().await.unwrap(), ROWS as u64);

    // Filter and derived columns, fused into the partition tasks.
    let big = df
        .filter(col("x").gt(lit(100)).and(col("s").eq(lit("k1"))))
        .unwrap();
    let want: Vec<f64> = (0..ROWS as usize)
        .filter(|&i| i > 100 && i % 3 == 1)
        .map(|i| ys[i])
        .collect();
    assert_close!(
        big.mean("y").await.unwrap(),
        want.iter().sum::<f64>() / want.len() as f64
    );
    assert_eq!(big.len().await.unwrap(), want.len() as u64);
    let z = df.with_column("z", col("x") + col("y") * 2.0).unwrap();
    let want_z: f64 = xs.iter().zip(&ys).map(|(x, y)| x + y * 2.0).sum();
    assert_close!(z.sum("z").await.unwrap(), want_z);
    let all = z
        .agg(&[
            (col("x"), Agg::Mean),
            ((col("z") - col("x")) / 2i64, Agg::Max),
        ])
        .await
        .unwrap();
    assert_close!(all[0], (ROWS - 1) as f64 / 2.0);
    assert_close!(all[1], ys.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let means = df.agg_all(Agg::Mean).await.unwrap();
    assert_eq!(
        means.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["x", "y"]
    );

    // Selection, head, collect.
    let sel = df.select(&["y", "x"]).unwrap();
    assert_eq!(sel.columns(), ["y", "x"]);
    let head = sel.head(5).await.unwrap();
    assert_eq!(head.num_rows(), 5);
    assert_eq!(head.schema().field(0).name(), "y");
    let back = df.collect().await.unwrap();
    assert_eq!(back, batch);
    let filtered = big.collect().await.unwrap();
    assert_eq!(filtered.num_rows(), want.len());

    // describe: count, mean, std, min, max per numeric column.
    let d = df.describe().await.unwrap();
    let y_stats = d
        .column_by_name("y")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap()
        .clone();
    assert_close!(y_stats.value(0), ROWS as f64);
    assert_close!(y_stats.value(1), ys.iter().sum::<f64>() / ROWS as f64);
    assert_close!(y_stats.value(2), plain_std(&ys));

    // groupby, against a map of the same rows.
    let g = df
        .groupby(&["s"])
        .unwrap()
        .agg(&[
            (col("y"), Agg::Mean),
            (col("x"), Agg::Count),
            (col("y"), Agg::Std),
        ])
        .await
        .unwrap();
    let mut plain: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, y) in ys.iter().enumerate() {
        plain.entry(format!("k{}", i % 3)).or_default().push(*y);
    }
    assert_eq!(g.num_rows(), 3);
    let keys = g.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let f = |j: usize| {
        g.column(j)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone()
    };
    let (mean, count, std) = (f(1), f(2), f(3));
    for (row, (k, v)) in plain.iter().enumerate() {
        assert_eq!(keys.value(row), k);
        assert_close!(mean.value(row), v.iter().sum::<f64>() / v.len() as f64);
        assert_close!(count.value(row), v.len() as f64);
        assert_close!(std.value(row), plain_std(v));
    }
    assert_eq!(g.schema().field(1).name(), "mean(y)");

    // Partitions for plain tasks: decode each and add up.
    let parts = df.partitions().unwrap();
    let mut rows = 0;
    for p in &parts {
        rows += decode_batch(&rt.get(p).await.unwrap().0)
            .unwrap()
            .num_rows();
    }
    assert_eq!(rows, ROWS as usize);
    // A persisted plan starts later queries from its batches.
    let kept = big.persist().await.unwrap();
    assert_eq!(kept.len().await.unwrap(), want.len() as u64);
}

/// Chunked arrays against ndarray on the same values.
async fn check_array(rt: &Runtime) {
    let r = Array::random(rt, (100, 80), (30, 25), 7).unwrap();
    assert_eq!(r.nblocks(), 4 * 4);
    let a = r.compute().await.unwrap();
    assert_eq!(a, r.compute().await.unwrap(), "a seed gives the same array");
    assert_ne!(
        a,
        Array::random(rt, (100, 80), (30, 25), 8)
            .unwrap()
            .compute()
            .await
            .unwrap()
    );
    assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
    assert_close!(r.sum().await.unwrap(), a.sum());
    assert_close!(r.mean().await.unwrap(), a.mean().unwrap());
    assert_close!(
        r.min().await.unwrap(),
        a.iter().copied().fold(f64::INFINITY, f64::min)
    );
    assert_close!(
        r.max().await.unwrap(),
        a.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    assert_close!(r.std().await.unwrap(), a.std(0.0));
    let col_means = r.reduce_axis(Agg::Mean, 0).await.unwrap();
    for (got, want) in col_means.iter().zip(a.mean_axis(Axis(0)).unwrap().iter()) {
        assert_close!(*got, *want);
    }
    let row_sums = r.reduce_axis(Agg::Sum, 1).await.unwrap();
    for (got, want) in row_sums.iter().zip(a.sum_axis(Axis(1)).iter()) {
        assert_close!(*got, *want);
    }

    // Elementwise, with scalars and arrays of the same chunks; from an ndarray; slices.
    let plain = Array2::from_shape_fn((100, 80), |(i, j)| (i * 80 + j) as f64);
    let stored = Array::from_ndarray(rt, &plain, (30, 25)).await.unwrap();
    let range = Array::arange(rt, (100, 80), (30, 25)).unwrap();
    assert_eq!(range.compute().await.unwrap(), plain);
    let expr = stored
        .add(&r)
        .unwrap()
        .scalar(Op::Mul, 2.0)
        .sub(&range)
        .unwrap()
        .sqrt();
    let want = ((&plain + &a) * 2.0 - &plain).mapv(f64::sqrt);
    let got = expr.compute().await.unwrap();
    assert!(got.iter().zip(want.iter()).all(|(x, y)| close(*x, *y)));
    let sliced = expr.slice(10..75, 20..61).unwrap();
    assert_eq!(sliced.shape(), (65, 41));
    let got = sliced.compute().await.unwrap();
    let want_slice = want.slice(s![10..75, 20..61]);
    assert!(got
        .iter()
        .zip(want_slice.iter())
        .all(|(x, y)| close(*x, *y)));
    assert_close!(sliced.sum().await.unwrap(), want_slice.sum());
    assert_eq!(
        Array::ones(rt, (5, 5), (2, 2))
            .unwrap()
            .sum()
            .await
            .unwrap(),
        25.0
    );
    assert_eq!(
        Array::zeros(rt, (5, 5), (2, 2))
            .unwrap()
            .max()
            .await
            .unwrap(),
        0.0
    );
    assert_close!(
        Array::ones(rt, (4, 4), (3, 3))
            .unwrap()
            .exp()
            .mean()
            .await
            .unwrap(),
        1f64.exp()
    );
    let persisted = expr.persist().await.unwrap();
    assert!(persisted
        .compute()
        .await
        .unwrap()
        .iter()
        .zip(want.iter())
        .all(|(x, y)| close(*x, *y)));
}

/// Bags with built-in functions, against iterators.
async fn check_bag(rt: &Runtime) {
    let items: Vec<i64> = (0..1000).map(|i| i % 37).collect();
    let bag = Bag::from_iter(rt, items.clone(), 7).await.unwrap();
    assert_eq!(bag.count().await.unwrap(), 1000);
    assert_eq!(bag.sum().await.unwrap(), items.iter().sum::<i64>());
    assert_eq!(bag.collect().await.unwrap(), items);
    assert_eq!(bag.take(3).await.unwrap(), vec![0, 1, 2]);
    let mut distinct = bag.distinct().await.unwrap();
    distinct.sort();
    assert_eq!(distinct, (0..37).collect::<Vec<i64>>());
    let freq = bag.frequencies().await.unwrap();
    let mut plain: BTreeMap<i64, u64> = BTreeMap::new();
    for x in &items {
        *plain.entry(*x).or_default() += 1;
    }
    assert_eq!(freq.len(), plain.len());
    for (x, n) in &freq {
        assert_eq!(plain[x], *n, "frequency of {x}");
    }
    assert!(
        freq.windows(2).all(|w| w[0].1 >= w[1].1),
        "most frequent first"
    );
    let empty = Bag::<f64>::from_iter(rt, Vec::new(), 3).await.unwrap();
    assert_eq!(empty.sum().await.unwrap(), 0.0);
}

/// Delayed graphs with a built-in function.
async fn check_delayed(rt: &Runtime) {
    let a = add.delayed(1, 2);
    let b = add.delayed(&a, 10);
    let c = add.delayed(&a, &b);
    assert_eq!(c.task_count(), 3, "the shared node is one task");
    assert_eq!(c.compute(rt).await.unwrap(), 3 + 13);
    let r = rt.put(&100i64).await.unwrap();
    let d = add.delayed(&r, &c);
    assert_eq!(
        compute_all(rt, &[d.clone(), b]).await.unwrap(),
        vec![116, 13]
    );
    let kept = d.persist(rt).unwrap();
    assert_eq!(rt.get(&kept).await.unwrap(), 116);
    let dot = d.to_dot();
    assert!(dot.starts_with("digraph"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), 5, "{dot}");
}

// ------------------------------------------------------------------------ clusters

async fn local(workers: usize, store_bytes: u64) -> (LocalCluster, Runtime) {
    let cluster = LocalCluster::start(LocalOptions {
        workers,
        slots: 2,
        store_bytes,
    })
    .await
    .unwrap();
    let rt = Runtime::connect(&cluster.address, None).await.unwrap();
    (cluster, rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collections_on_an_in_process_cluster() {
    let (cluster, rt) = local(2, 1 << 30).await;
    bounded("dataframe", check_dataframe(&rt)).await;
    bounded("array", check_array(&rt)).await;
    bounded("bag", check_bag(&rt)).await;
    bounded("delayed", check_delayed(&rt)).await;

    // Remote functions of this program, by name, on the workers.
    let bag = Bag::from_iter(&rt, 0..100i64, 3).await.unwrap();
    let squares = bag.filter(even).map(square);
    let want: Vec<i64> = (0..100).filter(|x| x % 2 == 0).map(|x| x * x).collect();
    assert_eq!(bounded("map", squares.collect()).await.unwrap(), want);
    assert_eq!(squares.fold(add).await.unwrap(), Some(want.iter().sum()));
    let arr = Array::random(&rt, (20, 20), (7, 7), 1).unwrap();
    let doubled = arr.map_blocks(double_block).await.unwrap();
    assert_eq!(
        doubled.compute().await.unwrap(),
        arr.compute().await.unwrap() * 2.0
    );
    let df = DataFrame::from_batches(&rt, &[frame()], 3).await.unwrap();
    let with_w = df.map_partitions(add_w).await.unwrap();
    assert_eq!(with_w.columns(), ["x", "y", "s", "w"]);
    assert_close!(
        with_w.sum("w").await.unwrap(),
        10.0 * (0..ROWS).sum::<i64>() as f64
    );
    rt.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bag_flat_map_on_an_in_process_cluster() {
    let (cluster, rt) = local(2, 1 << 30).await;
    let copies_of = |xs: &[i64]| -> Vec<i64> {
        xs.iter()
            .flat_map(|&x| std::iter::repeat_n(x, x.max(0) as usize))
            .collect()
    };

    // Outputs of 0 to 199 items (the length varint takes two bytes past 127), after a filter.
    let items: Vec<i64> = (-3..200).collect();
    let bag = Bag::from_iter(&rt, items.clone(), 7).await.unwrap();
    let flat = bag.flat_map(copies);
    let want = copies_of(&items);
    assert_eq!(bounded("flat_map", flat.collect()).await.unwrap(), want);
    assert_eq!(flat.count().await.unwrap(), want.len() as u64);
    assert_eq!(flat.take(5).await.unwrap(), want[..5]);
    assert_eq!(flat.take(1_000_000).await.unwrap(), want);
    let evens: Vec<i64> = items.iter().copied().filter(|x| x % 2 == 0).collect();
    let flat = bag.filter(even).flat_map(copies);
    assert_eq!(flat.collect().await.unwrap(), copies_of(&evens));

    // More partitions than items: some partitions are empty; and outputs all empty.
    let small = Bag::from_iter(&rt, vec![2i64, 0, 3], 5).await.unwrap();
    assert_eq!(
        small.flat_map(copies).collect().await.unwrap(),
        vec![2, 2, 3, 3, 3]
    );
    let nothing = Bag::from_iter(&rt, vec![0i64, -1, 0], 2).await.unwrap();
    assert_eq!(
        nothing.flat_map(copies).collect().await.unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(nothing.flat_map(copies).count().await.unwrap(), 0);
    let empty = Bag::<i64>::from_iter(&rt, Vec::new(), 3).await.unwrap();
    assert_eq!(
        empty.flat_map(copies).collect().await.unwrap(),
        Vec::<i64>::new()
    );

    // Strings: the words of lines, items of unequal size.
    let lines: Vec<String> = (0..300)
        .map(|i| {
            (0..i % 5)
                .map(|j| format!("w{}", i * j))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let bag = Bag::from_iter(&rt, lines.clone(), 4).await.unwrap();
    let want: Vec<String> = lines
        .iter()
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect();
    assert_eq!(bag.flat_map(words).collect().await.unwrap(), want);

    // A flat-mapped bag is a bag: every operation after it, against iterators.
    let flat = Bag::from_iter(&rt, items.clone(), 6)
        .await
        .unwrap()
        .flat_map(copies);
    let plain = copies_of(&items);
    let squared: Vec<i64> = plain.iter().map(|x| x * x).collect();
    assert_eq!(flat.map(square).collect().await.unwrap(), squared);
    let kept: Vec<i64> = plain.iter().copied().filter(|x| x % 2 == 0).collect();
    assert_eq!(flat.filter(even).collect().await.unwrap(), kept);
    assert_eq!(flat.sum().await.unwrap(), plain.iter().sum::<i64>());
    assert_eq!(
        flat.map(square).fold(add).await.unwrap(),
        Some(squared.iter().sum())
    );
    let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
    for x in &plain {
        *counts.entry(*x).or_default() += 1;
    }
    let mut freq = flat.frequencies().await.unwrap();
    freq.sort();
    assert_eq!(freq, counts.clone().into_iter().collect::<Vec<_>>());
    let mut distinct = flat.distinct().await.unwrap();
    distinct.sort();
    assert_eq!(distinct, counts.keys().copied().collect::<Vec<_>>());
    // Flat-mapped twice, then mapped: the words of lines, each word's letters.
    let letters: Vec<String> = want
        .iter()
        .flat_map(|w| w.chars().map(String::from))
        .collect();
    let flat = bag.flat_map(words).flat_map(chars);
    assert_eq!(flat.count().await.unwrap(), letters.len() as u64);
    assert_eq!(flat.take(7).await.unwrap(), letters[..7].to_vec());
    assert_eq!(flat.collect().await.unwrap(), letters);
    // Functions returning a Vec of items a bag cannot hold still compile.
    assert_eq!(names.call(2), vec!["name"; 2]);
    assert_eq!(opaque.call(3).len(), 3);
    rt.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collections_on_two_worker_processes() {
    let cluster = ProcessCluster::start(Path::new(env!("CARGO_BIN_EXE_flotilla")), 2, 2)
        .await
        .unwrap();
    let rt = cluster.connect().await.unwrap();
    bounded("dataframe", check_dataframe(&rt)).await;
    bounded("array", check_array(&rt)).await;
    bounded("bag", check_bag(&rt)).await;
    bounded("delayed", check_delayed(&rt)).await;
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn references_inside_values_are_dependencies_and_held() {
    let (cluster, rt) = local(1, 1 << 30).await;
    let before = rt.status().await.unwrap().objects;
    // A result still being computed and a put value, both handed over only inside a Vec; the
    // driver keeps no handle to either.
    let slow = sleep_then.remote(&rt, 200, 5);
    let put = rt.put(&7u64).await.unwrap();
    let total = sum_refs.remote(&rt, vec![slow, put]);
    assert_eq!(bounded("sum_refs", total.clone()).await.unwrap(), 12);
    // Several tasks borrowing one object: each holds it while it runs.
    let shared = rt.put(&1u64).await.unwrap();
    let sums: Vec<_> = (0..4)
        .map(|_| sum_refs.remote(&rt, vec![shared.clone(), shared.clone()]))
        .collect();
    drop(shared);
    assert_eq!(
        bounded("sums", rt.get_all(&sums)).await.unwrap(),
        vec![2; 4]
    );
    // Nothing leaks once the results go: the nested objects were held, not kept.
    drop((total, sums));
    objects_settle_at(&rt, before).await;
    rt.shutdown().await;
    cluster.stop().await;
}

/// Waits until the head holds `want` objects.
async fn objects_settle_at(rt: &Runtime, want: u64) {
    let deadline = Instant::now() + BOUND;
    loop {
        let objects = rt.status().await.unwrap().objects;
        if objects == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{objects} objects at the head, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads every object a value refers to.
async fn values_behind<T: serde::de::DeserializeOwned + Send + 'static>(
    rt: &Runtime,
    refs: &[ObjectRef<T>],
) -> Vec<T> {
    bounded("the contained values", rt.get_all(refs))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn references_inside_results_and_puts_live_as_long_as_the_value() {
    let (cluster, rt) = local(2, 1 << 30).await;
    let before = rt.status().await.unwrap().objects;

    // A task returns references to objects it made; the worker dropped its own handles, and
    // the driver holds only the outer value.
    let outer = make_refs.remote(&rt, 4);
    let inner = bounded("make_refs", outer.clone()).await.unwrap();
    assert_eq!(inner.len(), 5);
    drop(inner);
    objects_settle_at(&rt, before + 6).await;
    let inner = bounded("make_refs again", outer.clone()).await.unwrap();
    let values = values_behind(&rt, &inner).await;
    for (i, v) in values[..4].iter().enumerate() {
        let len = if i % 2 == 0 { 8 } else { 100 << 10 };
        assert_eq!(v, &vec![i as u8; len]);
    }
    assert_eq!(values[4], vec![4u8; 3]);
    // A reference read out of the value keeps it readable after the outer handle goes.
    drop(outer);
    assert_eq!(values_behind(&rt, &inner[1..2]).await[0].len(), 100 << 10);
    drop(inner);
    objects_settle_at(&rt, before).await;

    // A value the driver puts holds the references inside it.
    let x = rt.put(&41u64).await.unwrap();
    let y = rt.put(&vec![x.clone(), x.clone()]).await.unwrap();
    drop(x);
    // A task hands references back inside its result; the driver keeps only that result.
    let z = rt.put(&1u64).await.unwrap();
    let passed = pass_refs.remote(&rt, vec![z]);
    let refs = bounded("pass_refs", passed.clone()).await.unwrap();
    drop(refs);
    objects_settle_at(&rt, before + 4).await;
    let xs = bounded("y", y.clone()).await.unwrap();
    assert_eq!(values_behind(&rt, &xs).await, vec![41, 41]);
    let zs = bounded("passed", passed.clone()).await.unwrap();
    assert_eq!(values_behind(&rt, &zs).await, vec![1]);
    drop((xs, zs, y, passed));
    objects_settle_at(&rt, before).await;

    // An actor method's result may not hold references: a clear error, and nothing leaks.
    let keeper = bounded("Keeper::new", Keeper::remote(&rt, 0))
        .await
        .unwrap();
    let e = bounded("keep", keeper.keep(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not of an actor method"), "{e}");
    drop(keeper);
    objects_settle_at(&rt, before).await;
    rt.shutdown().await;
    cluster.stop().await;
}

/// Runs `reduce` and checks, by the head's count of finished tasks, that it ran `tasks`.
async fn ran<T>(rt: &Runtime, tasks: u64, what: &str, reduce: impl IntoFuture<Output = T>) -> T {
    let before = rt.status().await.unwrap().tasks_finished;
    let out = bounded(what, reduce).await;
    let after = rt.status().await.unwrap().tasks_finished;
    assert_eq!(after - before, tasks, "{what}: tasks run");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_partials_combine_in_a_tree_to_the_plain_answer() {
    let (cluster, rt) = local(2, 1 << 30).await;
    // 50 partitions, merged 8 at a time: 7 combine tasks, then 1.
    let tree = 50 + 7 + 1;

    // Dataframe reductions and groupby.
    let n = 5000i64;
    let xs: Vec<f64> = (0..n)
        .map(|i| ((i * 37) % 1001) as f64 * 0.25 - 40.0)
        .collect();
    let keys: Vec<i64> = (0..n).map(|i| (i * 7) % 13).collect();
    let df = DataFrame::from_columns(
        &rt,
        vec![
            ("x", Arc::new(Float64Array::from(xs.clone())) as ArrayRef),
            ("k", Arc::new(Int64Array::from(keys.clone())) as ArrayRef),
        ],
        50,
    )
    .await
    .unwrap();
    assert_eq!(df.npartitions(), 50);
    let aggs = [
        Agg::Sum,
        Agg::Mean,
        Agg::Min,
        Agg::Max,
        Agg::Count,
        Agg::Std,
    ];
    let got = ran(
        &rt,
        tree,
        "dataframe.agg",
        df.agg(&aggs.map(|a| (col("x"), a))),
    )
    .await;
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
    let want = [
        xs.iter().sum::<f64>(),
        mean,
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n as f64,
        var.sqrt(),
    ];
    for (g, w) in got.unwrap().into_iter().zip(want) {
        assert_close!(g, w);
    }
    let groups = ran(
        &rt,
        tree,
        "groupby",
        df.groupby(&["k"])
            .unwrap()
            .agg(&[(col("x"), Agg::Sum), (col("x"), Agg::Count)]),
    )
    .await
    .unwrap();
    let mut plain: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    for (k, x) in keys.iter().zip(&xs) {
        let e = plain.entry(*k).or_default();
        e.0 += x;
        e.1 += 1.0;
    }
    let k = groups
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let sums = groups
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let counts = groups
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(
        k.values().to_vec(),
        plain.keys().copied().collect::<Vec<_>>()
    );
    for (i, (s, c)) in plain.values().enumerate() {
        assert_close!(sums.value(i), *s);
        assert_close!(counts.value(i), *c);
    }

    // Array reductions over everything and along each axis: a 10 × 5 grid of blocks.
    let a = Array2::from_shape_fn((100, 60), |(i, j)| ((i * 31 + j * 17) % 101) as f64 / 7.0);
    let arr = Array::from_ndarray(&rt, &a, (10, 12)).await.unwrap();
    assert_eq!(arr.nblocks(), 50);
    assert_close!(
        ran(&rt, tree, "array.sum", arr.sum()).await.unwrap(),
        a.sum()
    );
    assert_close!(
        ran(&rt, tree, "array.mean", arr.mean()).await.unwrap(),
        a.mean().unwrap()
    );
    assert_close!(
        arr.min().await.unwrap(),
        a.iter().copied().fold(f64::INFINITY, f64::min)
    );
    assert_close!(
        arr.max().await.unwrap(),
        a.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    assert_close!(arr.std().await.unwrap(), a.std(0.0));
    for axis in 0..2 {
        let got = ran(
            &rt,
            tree,
            "array.reduce_axis",
            arr.reduce_axis(Agg::Sum, axis),
        )
        .await;
        let want = a.sum_axis(Axis(axis));
        let got = got.unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want.iter()) {
            assert_close!(*g, *w);
        }
        let got = arr.reduce_axis(Agg::Max, axis).await.unwrap();
        let want = a.fold_axis(Axis(axis), f64::NEG_INFINITY, |m, x| m.max(*x));
        assert_eq!(got, want);
    }

    // Bag folds, counts, frequencies and distinct items.
    let items: Vec<i64> = (0..2000).map(|i| (i * 13) % 97).collect();
    let bag = Bag::from_iter(&rt, items.clone(), 50).await.unwrap();
    assert_eq!(
        ran(&rt, tree, "bag.count", bag.count()).await.unwrap(),
        2000
    );
    assert_eq!(
        ran(&rt, tree, "bag.sum", bag.sum()).await.unwrap(),
        items.iter().sum::<i64>()
    );
    let mut plain: BTreeMap<i64, u64> = BTreeMap::new();
    for x in &items {
        *plain.entry(*x).or_default() += 1;
    }
    let mut freq = ran(&rt, tree, "frequencies", bag.frequencies())
        .await
        .unwrap();
    assert!(
        freq.windows(2).all(|w| w[0].1 >= w[1].1),
        "most frequent first"
    );
    freq.sort();
    assert_eq!(freq, plain.clone().into_iter().collect::<Vec<_>>());
    let mut distinct = bag.distinct().await.unwrap();
    distinct.sort();
    assert_eq!(distinct, plain.keys().copied().collect::<Vec<_>>());
    // Order kept through the tree: a fold of a non-commutative function.
    let pieces: Vec<String> = (0..300).map(|i| format!("{i},")).collect();
    let text = Bag::from_iter(&rt, pieces.clone(), 50).await.unwrap();
    assert_eq!(
        ran(&rt, tree, "fold", text.fold(join)).await.unwrap(),
        Some(pieces.concat())
    );
    // Fewer partials than the fan-in: merged in the driver, no combine task.
    let few = Bag::from_iter(&rt, items.clone(), 8).await.unwrap();
    assert_eq!(ran(&rt, 8, "few", few.count()).await.unwrap(), 2000);
    rt.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn references_inside_results_live_as_long_as_the_value_across_processes() {
    let cluster = ProcessCluster::start(Path::new(env!("CARGO_BIN_EXE_flotilla")), 2, 2)
        .await
        .unwrap();
    let rt = cluster.connect().await.unwrap();
    let before = rt.status().await.unwrap().objects;
    // Small and large buffers (inline at the head, and in a worker's store), put by a task on
    // a worker process and made by its child tasks; the driver holds only the result.
    for len in [16u64, 200 << 10] {
        let outer = make_buffers.remote(&rt, len, vec![1, 2, 3]);
        drop(bounded("make_buffers", outer.clone()).await.unwrap());
        objects_settle_at(&rt, before + 7).await;
        let inner = bounded("make_buffers again", outer.clone()).await.unwrap();
        drop(outer);
        let sums = bounded("byte sums", async {
            let refs: Vec<_> = inner.iter().map(|r| byte_sum.remote(&rt, r)).collect();
            rt.get_all(&refs).await
        })
        .await
        .unwrap();
        let want: Vec<(u64, u64)> = [1, 1, 2, 2, 3, 3].iter().map(|f| (len, f * len)).collect();
        assert_eq!(sums, want);
        drop(inner);
        objects_settle_at(&rt, before).await;
    }
    rt.shutdown().await;
}

// ------------------------------------------------------------------------ CSV

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Every range of every block size reads to the same rows as one read of the whole file.
fn ranges_agree(path: &str, header: bool) -> RecordBatch {
    let columns = csv::infer(path, 1 << 20, header, b',').unwrap();
    let read_all = |block: u64| {
        let parts: Vec<RecordBatch> = csv::split(path, block, header)
            .unwrap()
            .into_iter()
            .map(|(start, end)| {
                let range = csv::CsvRange {
                    path: path.into(),
                    start,
                    end,
                    columns: columns.clone(),
                    delimiter: b',',
                };
                csv::read(&range, None).unwrap()
            })
            .collect();
        let schema = csv::schema_of(&columns);
        arrow_select::concat::concat_batches(&schema, &parts).unwrap()
    };
    let whole = read_all(1 << 30);
    for block in [1, 2, 3, 5, 8, 13, 64] {
        assert_eq!(read_all(block), whole, "{path} in blocks of {block} bytes");
    }
    whole
}

#[test]
fn csv_ranges_start_at_records() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Quoted newlines and quotes, CRLF line ends, no newline at the end.
    let quoted = write(
        d,
        "quoted.csv",
        "id,text,v\r\n1,\"a\nb\",1.5\r\n2,\"say \"\"hi\"\"\n,x\",2.5\r\n3,plain,3.5",
    );
    let b = ranges_agree(&quoted, true);
    assert_eq!(b.num_rows(), 3);
    let text = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(text.value(0), "a\nb");
    assert_eq!(text.value(1), "say \"hi\"\n,x");
    assert_eq!(text.value(2), "plain");
    let v = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(v.values().to_vec(), vec![1.5, 2.5, 3.5]);

    // A header only: no ranges, no rows.
    let header_only = write(d, "header.csv", "a,b\n");
    assert!(csv::split(&header_only, 4, true).unwrap().is_empty());
    // A file smaller than one block: one range.
    let small = write(d, "small.csv", "a,b\n1,2\n3,4\n");
    assert_eq!(csv::split(&small, 64 << 20, true).unwrap(), vec![(4, 12)]);
    assert_eq!(ranges_agree(&small, true).num_rows(), 2);
    // No header.
    let bare = write(d, "bare.csv", "1,2\n3,4\n5,6\n");
    assert_eq!(ranges_agree(&bare, false).num_rows(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_files_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Many files, one glob.
    let mut want = 0i64;
    for f in 0..6 {
        let mut text = String::from("col1,col2\n");
        for i in 0..500 {
            let v = f * 1000 + i;
            want += 2 * v;
            text.push_str(&format!("{v},{}\n", 2 * v));
        }
        write(d, &format!("part-{f}.csv"), &text);
    }
    let (cluster, rt) = local(1, 1 << 30).await;
    let pattern = format!("{}/part-*.csv", d.display());
    let options = CsvOptions {
        block: 1000,
        ..CsvOptions::default()
    };
    let df = DataFrame::read_csv_with(&rt, &pattern, &options).unwrap();
    assert!(df.npartitions() > 6, "{} partitions", df.npartitions());
    assert_eq!(df.len().await.unwrap(), 3000);
    assert_close!(df.sum("col2").await.unwrap(), want as f64);
    assert_close!(
        df.with_column("t", col("col1") + col("col2"))
            .unwrap()
            .mean("t")
            .await
            .unwrap(),
        1.5 * want as f64 / 3000.0
    );
    let head = df.head(3).await.unwrap();
    assert_eq!(head.num_rows(), 3);

    // A column that is not there names those that are, before anything runs.
    let e = df.select(&["col3"]).unwrap_err().to_string();
    assert!(
        e.contains("no column \"col3\"") && e.contains("col1, col2"),
        "{e}"
    );
    let e = df.filter(col("nope").gt(lit(1))).unwrap_err().to_string();
    assert!(e.contains("the columns are col1, col2"), "{e}");
    // A type mismatch: the mean of text.
    let text = write(d, "text.csv", "name,n\nann,1\nbob,2\n");
    let t = DataFrame::read_csv(&rt, &text).unwrap();
    let e = t.mean("name").await.unwrap_err().to_string();
    assert!(
        e.contains("cannot take the mean of name") && e.contains("Utf8"),
        "{e}"
    );
    let e = t.filter(col("name") + lit(1)).unwrap_err().to_string();
    assert!(e.contains("cannot apply `+`"), "{e}");
    // A missing file.
    let e = DataFrame::read_csv(&rt, &format!("{}/absent*.csv", d.display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no file matches"), "{e}");
    // A malformed row: the file, its line and the column.
    let bad = write(d, "bad.csv", "a,b\n1,2\n3,4\n5,x\n7,8\n");
    let schema = Arc::new(arrow_schema::Schema::new(vec![
        arrow_schema::Field::new("a", arrow_schema::DataType::Int64, true),
        arrow_schema::Field::new("b", arrow_schema::DataType::Int64, true),
    ]));
    let options = CsvOptions {
        block: 6,
        schema: Some(schema),
        ..CsvOptions::default()
    };
    let bdf = DataFrame::read_csv_with(&rt, &bad, &options).unwrap();
    let e = bdf.sum("b").await.unwrap_err().to_string();
    assert!(e.contains("bad.csv: line 4, column \"b\""), "{e}");
    // Chunks that do not line up.
    let x = Array::ones(&rt, (10, 10), (5, 5)).unwrap();
    let y = Array::ones(&rt, (10, 10), (4, 5)).unwrap();
    let e = x.add(&y).unwrap_err().to_string();
    assert!(e.contains("chunk shapes do not line up"), "{e}");
    let e = x.slice(0..11, 0..2).unwrap_err().to_string();
    assert!(e.contains("outside the array's shape"), "{e}");
    // Lines of text, and JSON lines.
    let lines = write(d, "lines.txt", "{\"k\":1}\r\n{\"k\":2}\n{\"k\":3}");
    let bag = Bag::read_text(&rt, &lines, 4).unwrap();
    assert_eq!(bag.count().await.unwrap(), 3);
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct K {
        k: i64,
    }
    assert_eq!(
        bag.collect_json::<K>().await.unwrap(),
        vec![K { k: 1 }, K { k: 2 }, K { k: 3 }]
    );
    rt.shutdown().await;
    cluster.stop().await;
}

// ------------------------------------------------------------------------ failures

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_larger_than_the_object_stores_completes() {
    // 16 partitions of 1 MB each (about 16 MB) through stores of 4 MB.
    let (cluster, rt) = local(2, 4 << 20).await;
    let n = 2_000_000i64;
    let x: Int64Array = (0..n).collect();
    let df = DataFrame::from_columns(&rt, vec![("x", Arc::new(x) as ArrayRef)], 16)
        .await
        .unwrap();
    let doubled = df.with_column("y", col("x") * 2i64).unwrap();
    let kept = bounded("persist", doubled.persist()).await.unwrap();
    assert_close!(
        bounded("mean", kept.mean("y")).await.unwrap(),
        (n - 1) as f64
    );
    // The workers report what they spilled with their next store statistics.
    let deadline = Instant::now() + BOUND;
    loop {
        let status = rt.status().await.unwrap();
        let spilled: u64 = status.workers.iter().map(|w| w.spilled_bytes).sum();
        if spilled > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing was spilled: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.shutdown().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_query_still_gives_the_right_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("col1,col2\n");
    let rows = 200_000i64;
    for i in 0..rows {
        text.push_str(&format!("{i},{}\n", 2 * i));
    }
    let path = write(dir.path(), "data.csv", &text);
    let mut cluster = ProcessCluster::start(Path::new(env!("CARGO_BIN_EXE_flotilla")), 2, 2)
        .await
        .unwrap();
    let rt = cluster.connect().await.unwrap();
    let options = CsvOptions {
        block: 40_000,
        ..CsvOptions::default()
    };
    let df = DataFrame::read_csv_with(&rt, &path, &options).unwrap();
    assert!(df.npartitions() > 40);
    let query = {
        let df = df.clone();
        tokio::spawn(async move { df.mean("col2").await })
    };
    // Kill the second worker once the query's tasks run.
    let deadline = Instant::now() + BOUND;
    loop {
        let s = rt.status().await.unwrap();
        if s.tasks_running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(cluster.kill_worker(1), "the worker was running");
    let mean = bounded("query", query).await.unwrap().unwrap();
    assert_close!(mean, (rows - 1) as f64);
    rt.shutdown().await;
}

/// Each range of `path` read by `csv::read` (the projected scanner where it applies) and by
/// arrow-csv alone gives the same batch, or both fail, for every projection of one or two
/// columns, all columns, and none (a row count); in blocks of several sizes.
fn scanner_agrees_with_arrow(path: &str, header: bool) {
    // A malformed file has no inferred schema: integers named by its header.
    let columns = csv::infer(path, 1 << 20, header, b',').unwrap_or_else(|_| {
        let text = std::fs::read_to_string(path).unwrap();
        let first = text.lines().next().unwrap_or_default();
        first
            .split(',')
            .map(|n| (n.to_string(), csv::ColType::Int))
            .collect()
    });
    let column_names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let mut projections: Vec<Option<Vec<String>>> = vec![None, Some(Vec::new())];
    for a in &column_names {
        projections.push(Some(vec![a.clone()]));
        for b in &column_names {
            if a != b {
                projections.push(Some(vec![b.clone(), a.clone()]));
            }
        }
    }
    for block in [1, 7, 64, 1 << 30] {
        for (start, end) in csv::split(path, block, header).unwrap() {
            let range = csv::CsvRange {
                path: path.into(),
                start,
                end,
                columns: columns.clone(),
                delimiter: b',',
            };
            for p in &projections {
                let ours = csv::read(&range, p.as_deref());
                let arrow = csv::read_arrow(&range, p.as_deref());
                match (ours, arrow) {
                    (Ok(a), Ok(b)) => assert_eq!(
                        a, b,
                        "{path} bytes {start}..{end}, columns {p:?}: the scanner and arrow-csv differ"
                    ),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!(
                        "{path} bytes {start}..{end}, columns {p:?}: scanner {a:?}, arrow-csv {b:?}"
                    ),
                }
            }
        }
    }
}

#[test]
fn the_projected_scanner_reads_as_arrow_csv_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        // The common case, with nulls, signs, and floats of every form lexical reads.
        (
            "plain.csv",
            "a,b,c\n1,2.5,x\n-3,,y\n+4,1e3,z\n,-0.25,w\n5,NaN,v\n6,inf,u\n",
        ),
        // Quoted newlines and quotes: left to arrow-csv.
        (
            "quoted.csv",
            "id,text,v\r\n1,\"a\nb\",1.5\r\n2,\"say \"\"hi\"\"\n,x\",2.5\r\n3,plain,3.5",
        ),
        // CRLF line ends, and no newline at the end.
        ("crlf.csv", "a,b\r\n1,2\r\n3,4\r\n5,6"),
        ("last.csv", "a,b\n1,2\n3,4"),
        // A header only; a file smaller than any block.
        ("header.csv", "a,b\n"),
        ("small.csv", "a,b\n1,2\n"),
        // Malformed: too few and too many fields, a blank line, a lone carriage return,
        // text in a number column, an integer that overflows, spaces.
        ("few.csv", "a,b\n1,2\n3\n5,6\n"),
        ("many.csv", "a,b\n1,2\n3,4,5\n5,6\n"),
        ("blank.csv", "a,b\n1,2\n\n5,6\n"),
        ("cr.csv", "a,b\n1,2\r3,4\n5,6\n"),
        ("text.csv", "a,b\n1,2\n3,4\n5,x\n"),
        ("overflow.csv", "a,b\n1,2\n99999999999999999999,4\n"),
        ("spaces.csv", "a,b\n1, 2\n3,4\n"),
        // Long integers (more than 8 digits) and a file of one short line.
        ("long.csv", "a,b\n123456789012,-987654321098\n1,2\n"),
        ("one.csv", "a\n7"),
    ];
    for (name, text) in cases {
        let path = write(d, name, text);
        scanner_agrees_with_arrow(&path, true);
    }
    // Many files (one glob): each file's ranges agree.
    for f in 0..4 {
        let mut text = String::from("x,y,z\n");
        for i in 0..300 {
            text.push_str(&format!("{i},{},{}.5\n", i * f, -i));
        }
        let path = write(d, &format!("many-{f}.csv"), &text);
        scanner_agrees_with_arrow(&path, true);
    }
    let bare = write(d, "bare.csv", "1,2\n3,4\n5,6\n");
    scanner_agrees_with_arrow(&bare, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fused_and_unfused_results_are_equal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Integers and floats that add up exactly in any order (multiples of 1/4), nulls too.
    let mut text = String::from("i,f,s\n");
    for k in 0..5000i64 {
        let f = if k % 7 == 0 {
            String::new()
        } else {
            format!("{}", (k - 2500) as f64 / 4.0)
        };
        text.push_str(&format!("{},{f},w{}\n", k * 3 - 7000, k % 5));
    }
    let path = write(d, "mixed.csv", &text);
    let (cluster, rt) = local(2, 1 << 30).await;
    let options = CsvOptions {
        block: 4096,
        ..CsvOptions::default()
    };
    let df = DataFrame::read_csv_with(&rt, &path, &options).unwrap();
    assert!(df.npartitions() > 4, "{} partitions", df.npartitions());
    // A select step keeps the partition from being reduced while it is scanned.
    let unfused = df.select(&["i", "f", "s"]).unwrap();
    let aggs = [
        (col("i"), Agg::Sum),
        (col("i"), Agg::Mean),
        (col("i"), Agg::Min),
        (col("i"), Agg::Max),
        (col("i"), Agg::Count),
        (col("f"), Agg::Sum),
        (col("f"), Agg::Min),
        (col("f"), Agg::Max),
        (col("f"), Agg::Count),
    ];
    for (e, a) in aggs {
        let fused = bounded("fused", df.agg(&[(e.clone(), a)])).await.unwrap();
        let plain = bounded("unfused", unfused.agg(&[(e.clone(), a)]))
            .await
            .unwrap();
        assert_eq!(fused, plain, "{a:?} of {e:?}");
    }
    assert_eq!(bounded("len", df.len()).await.unwrap(), 5000);
    // And both against the whole file read in one piece by arrow-csv.
    let whole = csv::read_arrow(
        &csv::CsvRange {
            path: path.clone(),
            start: 6,
            end: text.len() as u64,
            columns: csv::infer(&path, 1 << 20, true, b',').unwrap(),
            delimiter: b',',
        },
        None,
    )
    .unwrap();
    let f = whole
        .column(1)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let want: f64 = f.iter().flatten().sum();
    assert_eq!(bounded("sum", df.sum("f")).await.unwrap(), want);

    // Arrays: a random array's mean drawn and summed in one pass equals the mean of its
    // materialized blocks (to rounding: the fused sum is exact), and the blocks are the same
    // on every run of the same seed.
    let r = Array::random(&rt, (300, 200), (70, 60), 11).unwrap();
    let fused = bounded("random mean", r.mean()).await.unwrap();
    let values = bounded("random compute", r.compute()).await.unwrap();
    assert_close!(fused, values.mean().unwrap());
    assert!(values.iter().all(|&x| (0.0..1.0).contains(&x)));
    let again = Array::random(&rt, (300, 200), (70, 60), 11).unwrap();
    assert_eq!(bounded("again", again.compute()).await.unwrap(), values);
    // A driver's array put as raw values: read back exactly, and reduced in place.
    let src = Array2::from_shape_fn((257, 130), |(i, j)| (i * 1000 + j) as f64 / 8.0);
    let x = bounded("from_ndarray", Array::from_ndarray(&rt, &src, (64, 50)))
        .await
        .unwrap();
    assert_eq!(bounded("compute", x.compute()).await.unwrap(), src);
    assert_eq!(bounded("sum", x.sum()).await.unwrap(), src.sum());
    assert_close!(bounded("max", x.max()).await.unwrap(), 256_129.0 / 8.0);
    rt.shutdown().await;
    cluster.stop().await;
}
