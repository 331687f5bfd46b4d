//! `flotilla example …`: the seed examples (and two small jobs for trying out retries and
//! deadlines) run by the stock binary, so a `ComputeJob` on the stock image has programs to run.

use std::time::Instant;

use flotilla::{
    builtins::{estimate_pi, sleep_then, square, Counter},
    Runtime,
};

/// A seed example, or a job for trying out the operator.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Example {
    /// A remote function: prints 25.
    Square,
    /// An actor keeping state: prints 1, 2, 3, final value: 3.
    Counter,
    /// Monte Carlo π over TASKS tasks of SAMPLES samples each.
    Pi {
        #[arg(long, default_value_t = 4)]
        tasks: u64,
        #[arg(long, default_value_t = 1_000_000)]
        samples: u64,
    },
    /// TASKS tasks that each sleep MILLIS milliseconds; prints how many finished.
    Sleep {
        #[arg(long, default_value_t = 4)]
        tasks: u64,
        #[arg(long, default_value_t = 1_000)]
        millis: u64,
    },
    /// Runs TASKS squares, then fails with MESSAGE (exit status 1).
    Fail {
        #[arg(long, default_value_t = 1)]
        tasks: i64,
        #[arg(long, default_value = "the example failed on purpose")]
        message: String,
    },
}

/// Runs `example` as a driver.
pub async fn run(example: Example) -> flotilla::Result<()> {
    let rt = Runtime::init().await?;
    let result = run_on(&rt, example).await;
    rt.shutdown().await;
    result
}

async fn run_on(rt: &Runtime, example: Example) -> flotilla::Result<()> {
    match example {
        Example::Square => say!("{}", square.remote(rt, 5).await?),
        Example::Counter => {
            let counter = Counter::remote(rt, 0).await?;
            for _ in 0..3 {
                say!("{}", counter.increment().await?);
            }
            say!("final value: {}", counter.value().await?);
        }
        Example::Pi { tasks, samples } => {
            let start = Instant::now();
            let refs: Vec<_> = (0..tasks)
                .map(|_| estimate_pi.remote(rt, samples))
                .collect();
            let estimates = rt.get_all(&refs).await?;
            let pi = estimates.iter().sum::<f64>() / estimates.len().max(1) as f64;
            say!(
                "π ≈ {pi:.5} ({tasks} tasks × {samples} samples) in {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
        Example::Sleep { tasks, millis } => {
            let refs: Vec<_> = (0..tasks)
                .map(|n| sleep_then.remote(rt, millis, n))
                .collect();
            let done = rt.get_all(&refs).await?;
            say!("{} tasks finished", done.len());
        }
        Example::Fail { tasks, message } => {
            let refs: Vec<_> = (0..tasks).map(|n| square.remote(rt, n)).collect();
            rt.get_all(&refs).await?;
            return Err(flotilla::Error::Config(message));
        }
    }
    Ok(())
}
