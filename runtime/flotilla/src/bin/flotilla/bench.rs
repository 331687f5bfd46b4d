//! `flotilla bench`: Ray's microbenchmark workloads against a local cluster of one head and two
//! worker processes over loopback TCP. Prints one JSON line per workload.

use std::time::Instant;

use rand::{rngs::SmallRng, Rng, SeedableRng};

use anyhow::{bail, Result};
use flotilla::{
    builtins::{add, byte_sum, estimate_pi, make_bytes, noop, Counter},
    collections::{compute_all, dataframe::csv},
    local::processes::ProcessCluster,
    worker::available_slots,
    Array, Blob, DataFrame, Runtime, TaskOptions,
};

struct Figure {
    workload: &'static str,
    value: f64,
    unit: &'static str,
    target: f64,
    higher_is_better: bool,
}

impl Figure {
    fn print(&self) {
        let meets = if self.higher_is_better {
            self.value >= self.target
        } else {
            self.value <= self.target
        };
        say!(
            "{}",
            serde_json::json!({
                "workload": self.workload,
                "value": (self.value * 1000.0).round() / 1000.0,
                "unit": self.unit,
                "target": self.target,
                "meets_target": meets,
            })
        );
    }
}

/// A timed workload over repeats: the median, and the fastest and slowest run.
struct Timed {
    workload: &'static str,
    target_s: Option<f64>,
    runs: Vec<f64>,
    answer: f64,
}

impl Timed {
    fn print(&self) {
        let mut sorted = self.runs.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        let round = |x: f64| (x * 10_000.0).round() / 10_000.0;
        say!(
            "{}",
            serde_json::json!({
                "workload": self.workload,
                "value": round(median),
                "unit": "s",
                "min": round(sorted[0]),
                "max": round(sorted[sorted.len() - 1]),
                "runs": sorted.len(),
                "answer": self.answer,
                "target": self.target_s,
                "meets_target": self.target_s.map(|t| median <= t),
            })
        );
    }
}

/// Runs `f` `runs` times and checks each answer with `check`.
async fn timed<F, Fut>(
    workload: &'static str,
    target_s: Option<f64>,
    runs: usize,
    check: impl Fn(f64) -> bool,
    mut f: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut answer = f64::NAN;
    for _ in 0..runs {
        let t = Instant::now();
        answer = f().await?;
        times.push(t.elapsed().as_secs_f64());
        if !check(answer) {
            bail!("{workload} computed {answer}");
        }
    }
    Timed {
        workload,
        target_s,
        runs: times,
        answer,
    }
    .print();
    Ok(())
}

/// The seed article's CSV at 10,000,000 rows (about 163 MB), written once into a cache
/// directory.
fn large_csv() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("flotilla-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("large_data_10m.csv");
    if !path.exists() {
        csv::write_example(&path, 10_000_000)?;
    }
    Ok(path)
}

/// The collections' workloads: Dask's examples at the article's sizes.
async fn collections(rt: &Runtime, want: &dyn Fn(&str) -> bool) -> Result<()> {
    const RUNS: usize = 5;
    if want("array_mean") {
        timed(
            "array_mean",
            Some(0.1),
            RUNS,
            |m| (m - 0.5).abs() < 1e-3,
            || async {
                let x = Array::random(rt, (10_000, 10_000), (1_000, 1_000), 42)?;
                Ok(x.mean().await?)
            },
        )
        .await?;
    }
    if want("array_mean_from_ndarray") {
        let mut rng = SmallRng::seed_from_u64(7);
        let a = ndarray::Array2::from_shape_simple_fn((10_000, 10_000), || rng.random::<f64>());
        let a = &a;
        timed(
            "array_mean_from_ndarray",
            Some(0.3),
            RUNS,
            |m| (m - 0.5).abs() < 1e-3,
            || async move {
                let x = Array::from_ndarray(rt, a, (1_000, 1_000)).await?;
                Ok(x.mean().await?)
            },
        )
        .await?;
    }
    if want("dataframe_mean") {
        let n = 1_000_000i64;
        let x: arrow_array::Int64Array = (0..n).collect();
        let y: arrow_array::Float64Array = (0..n).map(|i| i as f64 * 2.0).collect();
        let df = DataFrame::from_columns(
            rt,
            vec![
                ("x", std::sync::Arc::new(x) as arrow_array::ArrayRef),
                ("y", std::sync::Arc::new(y) as arrow_array::ArrayRef),
            ],
            10,
        )
        .await?;
        let df = &df;
        timed(
            "dataframe_mean",
            Some(0.01),
            RUNS,
            |m| m == 499_999.5,
            || async move { Ok(df.mean("x").await?) },
        )
        .await?;
    }
    if want("csv_mean") || want("csv_read_one_thread") {
        let path = large_csv()?;
        let file = path.to_string_lossy().into_owned();
        let file = &file;
        let right = |m: f64| m == 9_999_999.0;
        if want("csv_mean") {
            timed("csv_mean", Some(0.15), RUNS, right, || async move {
                let df = DataFrame::read_csv(rt, file)?;
                Ok(df.mean("col2").await?)
            })
            .await?;
        }
        if want("csv_read_one_thread") {
            // arrow-csv alone on one thread of this process: the whole file as one range,
            // decoding only col2, then Arrow's sum.
            timed("csv_read_one_thread", None, 3, right, || async move {
                let columns = csv::infer(file, csv::DEFAULT_BLOCK, true, b',')?;
                let len = std::fs::metadata(file)?.len();
                let start = csv::split(file, u64::MAX / 2, true)?
                    .first()
                    .map_or(len, |r| r.0);
                let range = csv::CsvRange {
                    path: file.clone(),
                    start,
                    end: len,
                    columns,
                    delimiter: b',',
                };
                let batch = csv::read(&range, Some(&["col2".to_string()]))?;
                let m = flotilla::collections::dataframe::Moments::of(batch.column(0), false)?;
                Ok(m.sum / m.count as f64)
            })
            .await?;
        }
    }
    if want("delayed_overhead") {
        // 1000 independent calls and one more over two of them, as one graph: seconds per node.
        let nodes = 1000;
        timed(
            "delayed_overhead",
            None,
            RUNS,
            |s| s == 1000.0 * 1001.0 / 2.0,
            || async move {
                let graph: Vec<_> = (1..=nodes).map(|i| add.delayed(i, 0)).collect();
                let values = compute_all(rt, &graph).await?;
                Ok(values.iter().sum::<i64>() as f64)
            },
        )
        .await?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const MB100: u64 = 100 * 1000 * 1000;

/// Runs the named workloads (all when `only` is empty).
pub(crate) async fn run(only: &[String], tasks: usize) -> Result<()> {
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let exe = std::env::current_exe()?;
    let slots = available_slots();

    if want("cluster_start") {
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let c = ProcessCluster::start(&exe, 2, slots).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(c);
        }
        Figure {
            workload: "cluster_start",
            value: median(times),
            unit: "ms",
            target: 300.0,
            higher_is_better: false,
        }
        .print();
    }

    let cluster = ProcessCluster::start(&exe, 2, slots).await?;
    let rt = cluster.connect().await?;
    // Warm up connections and threads.
    rt.get_all(&(0..200).map(|_| noop.remote(&rt)).collect::<Vec<_>>())
        .await?;

    if want("single_client_tasks_sync") {
        let n = (tasks / 10).max(100);
        let t = Instant::now();
        for _ in 0..n {
            noop.remote(&rt).await?;
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        Figure {
            workload: "single_client_tasks_sync",
            value: us,
            unit: "us/task",
            target: 100.0,
            higher_is_better: false,
        }
        .print();
    }
    if want("single_client_tasks_async") {
        let t = Instant::now();
        let refs: Vec<_> = (0..tasks).map(|_| noop.remote(&rt)).collect();
        rt.get_all(&refs).await?;
        let rate = tasks as f64 / t.elapsed().as_secs_f64();
        Figure {
            workload: "single_client_tasks_async",
            value: rate,
            unit: "tasks/s",
            target: 100_000.0,
            higher_is_better: true,
        }
        .print();
    }
    if want("multi_client_tasks_async") {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(cluster.connect().await?);
        }
        let t = Instant::now();
        let mut joins = Vec::new();
        for c in clients {
            joins.push(tokio::spawn(async move {
                let refs: Vec<_> = (0..tasks).map(|_| noop.remote(&c)).collect();
                c.get_all(&refs).await.map(|_| ())
            }));
        }
        for j in joins {
            j.await??;
        }
        let rate = (4 * tasks) as f64 / t.elapsed().as_secs_f64();
        Figure {
            workload: "multi_client_tasks_async",
            value: rate,
            unit: "tasks/s",
            target: 100_000.0,
            higher_is_better: true,
        }
        .print();
    }
    if want("1_1_actor_calls_sync") || want("1_1_actor_calls_async") {
        let counter = Counter::remote(&rt, 0).await?;
        counter.increment().await?;
        if want("1_1_actor_calls_sync") {
            let n = (tasks / 10).max(100);
            let t = Instant::now();
            for _ in 0..n {
                counter.increment().await?;
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            Figure {
                workload: "1_1_actor_calls_sync",
                value: us,
                unit: "us/call",
                target: 100.0,
                higher_is_better: false,
            }
            .print();
        }
        if want("1_1_actor_calls_async") {
            let t = Instant::now();
            let refs: Vec<_> = (0..tasks).map(|_| counter.increment()).collect();
            rt.get_all(&refs).await?;
            let rate = tasks as f64 / t.elapsed().as_secs_f64();
            Figure {
                workload: "1_1_actor_calls_async",
                value: rate,
                unit: "calls/s",
                target: 100_000.0,
                higher_is_better: true,
            }
            .print();
        }
    }
    if want("n_n_actor_calls_async") {
        let n = 4;
        let mut pairs = Vec::new();
        for _ in 0..n {
            let c = cluster.connect().await?;
            let a = Counter::remote(&c, 0).await?;
            pairs.push((c, a));
        }
        let t = Instant::now();
        let mut joins = Vec::new();
        for (c, a) in pairs {
            joins.push(tokio::spawn(async move {
                let refs: Vec<_> = (0..tasks).map(|_| a.increment()).collect();
                c.get_all(&refs).await.map(|_| ())
            }));
        }
        for j in joins {
            j.await??;
        }
        let rate = (n * tasks) as f64 / t.elapsed().as_secs_f64();
        Figure {
            workload: "n_n_actor_calls_async",
            value: rate,
            unit: "calls/s",
            target: 100_000.0,
            higher_is_better: true,
        }
        .print();
    }
    if want("single_client_put_calls") || want("single_client_get_calls") {
        let t = Instant::now();
        let mut refs = Vec::with_capacity(tasks);
        for i in 0..tasks {
            refs.push(rt.put(&(i as u64)).await?);
        }
        let rate = tasks as f64 / t.elapsed().as_secs_f64();
        if want("single_client_put_calls") {
            Figure {
                workload: "single_client_put_calls",
                value: rate,
                unit: "puts/s",
                target: 100_000.0,
                higher_is_better: true,
            }
            .print();
        }
        if want("single_client_get_calls") {
            let t = Instant::now();
            for r in &refs {
                rt.get(r).await?;
            }
            let rate = tasks as f64 / t.elapsed().as_secs_f64();
            Figure {
                workload: "single_client_get_calls",
                value: rate,
                unit: "gets/s",
                target: 100_000.0,
                higher_is_better: true,
            }
            .print();
        }
    }
    if want("put_get_100mb") {
        let value = Blob::from(vec![7u8; MB100 as usize]);
        let mut rates = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r = rt.put(&value).await?;
            let back: Blob = rt.get(&r).await?;
            let secs = t.elapsed().as_secs_f64();
            if back.len() != value.len() {
                bail!("put_get_100mb returned the wrong size");
            }
            rates.push(MB100 as f64 / secs / 1e9);
        }
        Figure {
            workload: "put_get_100mb",
            value: median(rates),
            unit: "GB/s",
            target: 8.0,
            higher_is_better: true,
        }
        .print();
    }
    if want("fetch_100mb_between_workers") {
        let on = |w: &str| TaskOptions::default().resource(w, 1);
        let mut rates = Vec::new();
        for i in 0..3 {
            let produced = make_bytes.remote_with(&rt, &on("w0"), MB100, i as u8);
            rt.wait(vec![produced.clone()], 1, None).await?;
            let t = Instant::now();
            let (len, sum) = byte_sum.remote_with(&rt, &on("w1"), &produced).await?;
            let secs = t.elapsed().as_secs_f64();
            if len != MB100 || sum != MB100 * i as u64 {
                bail!("fetch_100mb_between_workers: wrong result {len} {sum}");
            }
            rates.push(MB100 as f64 / secs / 1e9);
        }
        Figure {
            workload: "fetch_100mb_between_workers",
            value: median(rates),
            unit: "GB/s",
            target: 1.5,
            higher_is_better: true,
        }
        .print();
    }
    if want("pi_4x1m") {
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let refs: Vec<_> = (0..4).map(|_| estimate_pi.remote(&rt, 1_000_000)).collect();
            let pi: f64 = rt.get_all(&refs).await?.iter().sum::<f64>() / 4.0;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if (pi - std::f64::consts::PI).abs() > 0.01 {
                bail!("pi_4x1m estimated {pi}");
            }
        }
        Figure {
            workload: "pi_4x1m",
            value: median(times),
            unit: "ms",
            target: 50.0,
            higher_is_better: false,
        }
        .print();
    }
    collections(&rt, &want).await?;
    rt.shutdown().await;
    Ok(())
}
