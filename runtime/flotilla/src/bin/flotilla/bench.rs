//! `flotilla bench`: Ray's microbenchmark workloads against a local cluster of one head and two
//! worker processes over loopback TCP. Prints one JSON line per workload: the median, min and max
//! over [`REPEATS`] repeats (so that one noisy run neither passes nor fails a target), next to the
//! target. Large-object workloads run cold (fresh pages: the host's segment pool emptied, and for
//! transfers fresh processes) and warm (pages reused), as Ray's own microbenchmark does.

use std::time::{Duration, Instant};

use rand::{rngs::SmallRng, Rng, SeedableRng};

use anyhow::{bail, Result};
use flotilla::{
    builtins::{add, byte_sum, estimate_pi, make_bytes, noop, Counter},
    collections::{compute_all, dataframe::csv},
    local::processes::ProcessCluster,
    objects::shm,
    worker::available_slots,
    Array, Blob, DataFrame, ObjectRef, Runtime, TaskOptions,
};

/// Times each workload is measured.
const REPEATS: usize = 5;

/// What a workload is measured in, and the figure it should reach (if it has one).
struct Target {
    unit: &'static str,
    value: Option<f64>,
    higher_is_better: bool,
}

const fn at_most(value: f64, unit: &'static str) -> Target {
    Target {
        unit,
        value: Some(value),
        higher_is_better: false,
    }
}

const fn at_least(value: f64, unit: &'static str) -> Target {
    Target {
        unit,
        value: Some(value),
        higher_is_better: true,
    }
}

/// A figure printed for comparison only.
const fn untargeted(unit: &'static str) -> Target {
    Target {
        unit,
        value: None,
        higher_is_better: false,
    }
}

/// Prints a workload's figures: median, min and max of the samples, and whether the median,
/// and the worst sample, meet the target.
fn report(workload: &str, mut samples: Vec<f64>, target: Target) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[samples.len() / 2];
    let (min, max) = (samples[0], samples[samples.len() - 1]);
    let meets = |v: f64| {
        target.value.map(|t| {
            if target.higher_is_better {
                v >= t
            } else {
                v <= t
            }
        })
    };
    let worst = if target.higher_is_better { min } else { max };
    // Four significant digits at least: collections' figures are in seconds, some in µs.
    let round = |v: f64| {
        let scale = 10f64.powi(4 - v.abs().log10().ceil().clamp(-12.0, 3.0) as i32);
        (v * scale).round() / scale
    };
    say!(
        "{}",
        serde_json::json!({
            "workload": workload,
            "value": round(median),
            "min": round(min),
            "max": round(max),
            "repeats": samples.len(),
            "unit": target.unit,
            "target": target.value,
            "meets_target": meets(median),
            "every_repeat_meets_target": meets(worst),
        })
    );
}

/// Measures `once` [`REPEATS`] times.
async fn repeat<F, Fut>(mut once: F) -> Result<Vec<f64>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut samples = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        samples.push(once().await?);
    }
    Ok(samples)
}

/// Submits `n` calls at once and waits for all of them: calls per second.
async fn throughput<T: serde::de::DeserializeOwned + 'static>(
    rt: &Runtime,
    n: usize,
    call: impl Fn() -> ObjectRef<T>,
) -> Result<f64> {
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| call()).collect();
    rt.get_all(&refs).await?;
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Runs a collections workload [`REPEATS`] times (seconds each), checking every answer.
async fn timed<F, Fut>(
    workload: &'static str,
    target: Target,
    check: impl Fn(f64) -> bool,
    mut f: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let samples = repeat(|| {
        let run = f();
        let check = &check;
        async move {
            let t = Instant::now();
            let answer = run.await?;
            let secs = t.elapsed().as_secs_f64();
            if !check(answer) {
                bail!("{workload} computed {answer}");
            }
            Ok(secs)
        }
    })
    .await?;
    report(workload, samples, target);
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
async fn collections(rt: &Runtime, want: &(dyn Fn(&str) -> bool + Sync)) -> Result<()> {
    if want("array_mean") {
        timed(
            "array_mean",
            at_most(0.1, "s"),
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
            at_most(0.3, "s"),
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
            at_most(0.01, "s"),
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
            timed("csv_mean", at_most(0.15, "s"), right, || async move {
                let df = DataFrame::read_csv(rt, file)?;
                Ok(df.mean("col2").await?)
            })
            .await?;
        }
        if want("csv_read_one_thread") {
            // arrow-csv alone on one thread of this process: the whole file as one range,
            // decoding only col2, then Arrow's sum.
            timed(
                "csv_read_one_thread",
                untargeted("s"),
                right,
                || async move {
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
                    let batch = csv::read_arrow(&range, Some(&["col2".to_string()]))?;
                    let m = flotilla::collections::dataframe::Moments::of(batch.column(0), false)?;
                    Ok(m.sum / m.count as f64)
                },
            )
            .await?;
        }
    }
    if want("polars_csv_mean") {
        polars_csv_mean(&large_csv()?)?;
    }
    if want("delayed_overhead") {
        // 1000 independent calls and one more over two of them, as one graph: seconds per node.
        let nodes = 1000;
        timed(
            "delayed_overhead",
            untargeted("s"),
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

/// Polars (Python's, when this machine has it) on the same file and query, in a process of its
/// own: `scripts/polars_csv_mean.py`, which prints its own line of figures.
fn polars_csv_mean(path: &std::path::Path) -> Result<()> {
    const SCRIPT: &str = include_str!("../../../../../scripts/polars_csv_mean.py");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output();
    match out {
        Ok(out) if out.status.success() => {
            say!("{}", String::from_utf8_lossy(&out.stdout).trim());
        }
        Ok(out) => say!(
            "polars_csv_mean: skipped (Polars did not run: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => say!("polars_csv_mean: skipped (no python3: {e})"),
    }
    Ok(())
}

const MB100: u64 = 100 * 1000 * 1000;

/// Waits (a few seconds at most) until the host's segment pool holds `bytes`: a freed large
/// object's segment has come back and the next put may reuse it. False when it did not.
async fn pooled(bytes: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while shm::pool_bytes() < bytes {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// One put and get of a 100 MB blob, in GB/s; the pooled segment is waited for afterwards.
async fn put_get_100mb(rt: &Runtime, value: &Blob) -> Result<f64> {
    let t = Instant::now();
    let r = rt.put(value).await?;
    let back: Blob = rt.get(&r).await?;
    let secs = t.elapsed().as_secs_f64();
    if back.len() != value.len() || back[back.len() - 1] != value[value.len() - 1] {
        bail!("put_get_100mb returned other bytes than were put");
    }
    drop((r, back));
    pooled(MB100).await;
    Ok(MB100 as f64 / secs / 1e9)
}

/// One 100 MB object made on worker w0 and summed on worker w1, in GB/s of the fetch.
async fn fetch_between_workers(rt: &Runtime, fill: u8) -> Result<f64> {
    let on = |w: &str| TaskOptions::default().resource(w, 1);
    let produced = make_bytes.remote_with(rt, &on("w0"), MB100, fill);
    rt.wait(vec![produced.clone()], 1, None).await?;
    let t = Instant::now();
    let (len, sum) = byte_sum.remote_with(rt, &on("w1"), &produced).await?;
    let secs = t.elapsed().as_secs_f64();
    if len != MB100 || sum != MB100 * u64::from(fill) {
        bail!("fetch_100mb_between_workers: wrong result {len} {sum}");
    }
    Ok(MB100 as f64 / secs / 1e9)
}

/// Runs the named workloads (all when `only` is empty).
pub(crate) async fn run(only: &[String], tasks: usize) -> Result<()> {
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let exe = std::env::current_exe()?;
    let slots = available_slots();

    if want("cluster_start") {
        let samples = repeat(|| async {
            let t = Instant::now();
            let c = ProcessCluster::start(&exe, 2, slots).await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            drop(c);
            Ok(ms)
        })
        .await?;
        report("cluster_start", samples, at_most(300.0, "ms"));
    }

    // Cold transfers: fresh processes each time, so no buffer of an earlier run is reused.
    if want("fetch_100mb_between_workers_cold") {
        let samples = repeat(|| async {
            shm::clear_pool();
            let cluster = ProcessCluster::start(&exe, 2, slots).await?;
            let rt = cluster.connect().await?;
            let rate = fetch_between_workers(&rt, 3).await;
            rt.shutdown().await;
            rate
        })
        .await?;
        report(
            "fetch_100mb_between_workers_cold",
            samples,
            at_least(1.5, "GB/s"),
        );
    }

    let cluster = ProcessCluster::start(&exe, 2, slots).await?;
    let rt = cluster.connect().await?;
    // Warm up connections and threads.
    rt.get_all(&(0..200).map(|_| noop.remote(&rt)).collect::<Vec<_>>())
        .await?;

    if want("single_client_tasks_sync") {
        let n = (tasks / 10).max(100);
        let samples = repeat(|| async {
            let t = Instant::now();
            for _ in 0..n {
                noop.remote(&rt).await?;
            }
            Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
        })
        .await?;
        report(
            "single_client_tasks_sync",
            samples,
            at_most(60.0, "us/task"),
        );
    }
    if want("single_client_tasks_async") {
        let samples = repeat(|| throughput(&rt, tasks, || noop.remote(&rt))).await?;
        report(
            "single_client_tasks_async",
            samples,
            at_least(150_000.0, "tasks/s"),
        );
    }
    if want("multi_client_tasks_async") {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(cluster.connect().await?);
        }
        let samples = repeat(|| async {
            let t = Instant::now();
            let mut joins = Vec::new();
            for c in &clients {
                let c = c.clone();
                joins.push(tokio::spawn(async move {
                    let refs: Vec<_> = (0..tasks).map(|_| noop.remote(&c)).collect();
                    c.get_all(&refs).await.map(|_| ())
                }));
            }
            for j in joins {
                j.await??;
            }
            Ok((4 * tasks) as f64 / t.elapsed().as_secs_f64())
        })
        .await?;
        report(
            "multi_client_tasks_async",
            samples,
            at_least(100_000.0, "tasks/s"),
        );
    }
    if want("1_1_actor_calls_sync") || want("1_1_actor_calls_async") {
        let counter = Counter::remote(&rt, 0).await?;
        counter.increment().await?;
        if want("1_1_actor_calls_sync") {
            let n = (tasks / 10).max(100);
            let samples = repeat(|| async {
                let t = Instant::now();
                for _ in 0..n {
                    counter.increment().await?;
                }
                Ok(t.elapsed().as_secs_f64() * 1e6 / n as f64)
            })
            .await?;
            report("1_1_actor_calls_sync", samples, at_most(50.0, "us/call"));
        }
        if want("1_1_actor_calls_async") {
            let samples = repeat(|| throughput(&rt, tasks, || counter.increment())).await?;
            report(
                "1_1_actor_calls_async",
                samples,
                at_least(100_000.0, "calls/s"),
            );
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
        let samples = repeat(|| async {
            let t = Instant::now();
            let mut joins = Vec::new();
            for (c, a) in &pairs {
                let (c, a) = (c.clone(), a.clone());
                joins.push(tokio::spawn(async move {
                    let refs: Vec<_> = (0..tasks).map(|_| a.increment()).collect();
                    c.get_all(&refs).await.map(|_| ())
                }));
            }
            for j in joins {
                j.await??;
            }
            Ok((n * tasks) as f64 / t.elapsed().as_secs_f64())
        })
        .await?;
        report(
            "n_n_actor_calls_async",
            samples,
            at_least(100_000.0, "calls/s"),
        );
    }
    if want("single_client_put_calls") || want("single_client_get_calls") {
        let mut puts = Vec::new();
        let mut gets = Vec::new();
        for _ in 0..REPEATS {
            let t = Instant::now();
            let mut refs = Vec::with_capacity(tasks);
            for i in 0..tasks {
                refs.push(rt.put(&(i as u64)).await?);
            }
            puts.push(tasks as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for r in &refs {
                rt.get(r).await?;
            }
            gets.push(tasks as f64 / t.elapsed().as_secs_f64());
        }
        if want("single_client_put_calls") {
            report(
                "single_client_put_calls",
                puts,
                at_least(100_000.0, "puts/s"),
            );
        }
        if want("single_client_get_calls") {
            report(
                "single_client_get_calls",
                gets,
                at_least(100_000.0, "gets/s"),
            );
        }
    }
    if want("put_get_100mb_cold") || want("put_get_100mb") {
        let value = Blob::from(vec![7u8; MB100 as usize]);
        if want("put_get_100mb_cold") {
            let samples = repeat(|| {
                // Every segment of the pool gone: the put writes to pages never used before.
                shm::clear_pool();
                put_get_100mb(&rt, &value)
            })
            .await?;
            report("put_get_100mb_cold", samples, at_least(2.0, "GB/s"));
        }
        if want("put_get_100mb") {
            // Once untimed, so a segment of the size is in the pool.
            put_get_100mb(&rt, &value).await?;
            let samples = repeat(|| put_get_100mb(&rt, &value)).await?;
            report("put_get_100mb", samples, at_least(8.0, "GB/s"));
        }
    }
    if want("fetch_100mb_between_workers") {
        // Once untimed, so buffers of the size have been used before.
        fetch_between_workers(&rt, 1).await?;
        let mut fill = 0;
        let samples = repeat(|| {
            fill += 1;
            fetch_between_workers(&rt, fill)
        })
        .await?;
        report(
            "fetch_100mb_between_workers",
            samples,
            at_least(1.5, "GB/s"),
        );
    }
    if want("pi_4x1m") {
        let samples = repeat(|| async {
            let t = Instant::now();
            let refs: Vec<_> = (0..4).map(|_| estimate_pi.remote(&rt, 1_000_000)).collect();
            let pi: f64 = rt.get_all(&refs).await?.iter().sum::<f64>() / 4.0;
            if (pi - std::f64::consts::PI).abs() > 0.01 {
                bail!("pi_4x1m estimated {pi}");
            }
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        })
        .await?;
        report("pi_4x1m", samples, at_most(50.0, "ms"));
    }
    collections(&rt, &want).await?;
    rt.shutdown().await;
    Ok(())
}
