//! The `flotilla` command: run a head or a worker, start a local cluster of processes, show its
//! status, drain a worker (or take it back), and measure the runtime.

/// Prints a line on standard output; when the reader has gone (`flotilla status | head -1`),
/// exits quietly as Unix tools do, rather than panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say(format_args!($($arg)*))
    };
}

mod bench;
mod examples;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use flotilla::{
    admin,
    local::processes::{self, UpOptions},
    process,
    worker::WorkerConfig,
};
use flotilla_proto::{contract::token_from_env, v1::DrainOutcome};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Parallel Rust on a cluster: remote functions, actors and objects"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a head (scheduler, object directory, actor registry, metrics).
    Head {
        /// gRPC address to listen on (default FLOTILLA_BIND:7400, or 127.0.0.1:7400).
        #[arg(long)]
        bind: Option<String>,
        /// HTTP address for /metrics, /healthz, /readyz and the dashboard (default port 7401).
        #[arg(long)]
        http_bind: Option<String>,
        /// Once listening, write the addresses it got here (JSON), for whoever bound port 0.
        #[arg(long)]
        address_file: Option<PathBuf>,
    },
    /// Run a worker of the head at ADDR (or FLOTILLA_HEAD).
    Worker {
        /// The head's gRPC address.
        #[arg(long, env = "FLOTILLA_HEAD")]
        head: String,
        /// Task slots (default: FLOTILLA_SLOTS, or the CPUs available).
        #[arg(long)]
        slots: Option<u32>,
        /// Unique worker name (default: FLOTILLA_WORKER_NAME, or host-pid).
        #[arg(long)]
        name: Option<String>,
        /// Address to serve objects, /metrics and health on (default: FLOTILLA_BIND, port 7403
        /// unless it names one).
        #[arg(long)]
        bind: Option<String>,
        /// Named custom resources, NAME=AMOUNT, repeatable.
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// Start a head and N worker processes on this machine and print the address.
    Up {
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Slots per worker.
        #[arg(long)]
        slots: Option<u32>,
        /// A program built with the flotilla library to run as the workers (its own functions).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Head gRPC port (0 picks a free one).
        #[arg(long, default_value_t = 7400)]
        port: u16,
    },
    /// Stop the processes `flotilla up` started.
    Down,
    /// Print workers, slots, queue and objects.
    Status {
        /// The head's address (default: FLOTILLA_HEAD, or the cluster `flotilla up` started).
        #[arg(long, env = "FLOTILLA_HEAD")]
        head: Option<String>,
    },
    /// Drain a worker: no new work, running tasks finish, its objects are copied elsewhere.
    /// Exits non-zero when the timeout passed first (its running tasks were moved elsewhere).
    Drain {
        /// The worker's name.
        worker: String,
        /// The head's address.
        #[arg(long, env = "FLOTILLA_HEAD")]
        head: Option<String>,
        /// Seconds running tasks get to finish.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Take a draining or drained worker back: it takes work again and its drain is cancelled.
    Undrain {
        /// The worker's name.
        worker: String,
        /// The head's address.
        #[arg(long, env = "FLOTILLA_HEAD")]
        head: Option<String>,
    },
    /// Run a seed example as a driver of FLOTILLA_HEAD (or of a local cluster without it), on
    /// the functions and actors every `flotilla` worker carries.
    Example {
        #[command(subcommand)]
        example: examples::Example,
    },
    /// Measure the runtime against a local cluster of a head and 2 worker processes.
    Bench {
        /// Only this workload (repeatable).
        #[arg(long)]
        workload: Vec<String>,
        /// Tasks per task workload.
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
    },
}

// Large objects are allocated and freed over and over; mimalloc keeps freed memory mapped for
// reuse, where the system allocator returns it and pays page faults to get it back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn head_and_token(head: Option<String>) -> Result<(String, Option<String>), String> {
    let state = processes::read_state();
    match head {
        Some(h) => {
            let token =
                token_from_env().or_else(|| state.filter(|s| s.address == h).map(|s| s.token));
            Ok((h, token))
        }
        None => state.map(|s| (s.address, Some(s.token))).ok_or_else(|| {
            "no head address: pass --head, set FLOTILLA_HEAD, or start one with `flotilla up`"
                .to_string()
        }),
    }
}

fn main() -> ExitCode {
    process::init_logging();
    let cli = Cli::parse();
    // Heads and workers do their I/O on one thread (tasks run on blocking threads): no
    // cross-thread wake-ups on the hot path, and the other cores stay free for tasks.
    let service = matches!(cli.command, Command::Head { .. } | Command::Worker { .. });
    let tokio = if service {
        process::service_runtime()
    } else {
        process::driver_runtime()
    };
    let driver_status = std::sync::Arc::new(std::sync::OnceLock::new());
    let status_of_failure = driver_status.clone();
    let work = async move {
        match cli.command {
            Command::Head {
                bind,
                http_bind,
                address_file,
            } => process::run_head_from_env(bind, http_bind, address_file.as_deref())
                .await
                .map_err(|e| e.to_string()),
            Command::Worker {
                head,
                slots,
                name,
                bind,
                resources,
            } => {
                let mut config =
                    WorkerConfig::from_env_with_head(&head).map_err(|e| e.to_string())?;
                if let Some(s) = slots {
                    config.slots = s;
                }
                if let Some(n) = name {
                    config.name = n;
                }
                for r in resources {
                    let (k, v) = r
                        .split_once('=')
                        .ok_or_else(|| format!("--resource {r:?}: expected NAME=AMOUNT"))?;
                    let v: u64 = v
                        .parse()
                        .map_err(|_| format!("--resource {r:?}: {v:?} is not a number"))?;
                    config.custom.insert(k.to_string(), v);
                }
                process::run_worker_from_env(config, bind)
                    .await
                    .map_err(|e| e.to_string())
            }
            Command::Up {
                workers,
                slots,
                worker_bin,
                port,
            } => {
                let state = processes::up(UpOptions {
                    workers,
                    slots,
                    worker_bin,
                    port,
                    log_dir: None,
                })
                .await
                .map_err(|e| e.to_string())?;
                say!(
                    "flotilla cluster up: head {} with {} workers (dashboard http://{})",
                    state.address,
                    workers,
                    state.http
                );
                say!(
                    "connect a driver with:\n  export FLOTILLA_HEAD={} FLOTILLA_TOKEN={}",
                    state.address,
                    state.token
                );
                Ok(())
            }
            Command::Down => {
                let n = processes::down().map_err(|e| e.to_string())?;
                say!("stopped {n} processes");
                Ok(())
            }
            Command::Status { head } => {
                let (head, token) = head_and_token(head)?;
                let s = admin::status(&head, token.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
                say!("head {head}");
                say!(
                    "tasks: {} pending, {} waiting, {} running, {} finished, {} failed, {} retried",
                    s.tasks_pending,
                    s.tasks_waiting,
                    s.tasks_running,
                    s.tasks_finished,
                    s.tasks_failed,
                    s.tasks_retried
                );
                say!(
                    "objects: {}   actors alive: {}   drivers: {}   desired workers: {}",
                    s.objects,
                    s.actors_alive,
                    s.drivers,
                    s.desired_workers
                );
                say!(
                    "{:<20} {:<22} {:<9} {:>10} {:>8} {:>12} {:>12}",
                    "WORKER",
                    "ADDRESS",
                    "STATE",
                    "BUSY/SLOTS",
                    "OBJECTS",
                    "MEMORY",
                    "SPILLED"
                );
                for w in s.workers {
                    say!(
                        "{:<20} {:<22} {:<9} {:>10} {:>8} {:>12} {:>12}",
                        w.name,
                        w.address,
                        w.state().label(),
                        format!("{}/{}", w.busy_slots, w.slots),
                        w.objects,
                        w.memory_bytes,
                        w.spilled_bytes
                    );
                }
                if !s.jobs.is_empty() {
                    say!(
                        "{:<40} {:>9} {:>9} {:>9} {:>8} {:>7}",
                        "JOB",
                        "SUBMITTED",
                        "FINISHED",
                        "FAILED",
                        "RUNNING",
                        "DRIVERS"
                    );
                    for j in s.jobs {
                        say!(
                            "{:<40} {:>9} {:>9} {:>9} {:>8} {:>7}",
                            j.job,
                            j.tasks_submitted,
                            j.tasks_finished,
                            j.tasks_failed,
                            j.tasks_live,
                            j.drivers
                        );
                    }
                }
                Ok(())
            }
            Command::Drain {
                worker,
                head,
                timeout,
            } => {
                let (head, token) = head_and_token(head)?;
                let reply = admin::drain(
                    &head,
                    token.as_deref(),
                    &worker,
                    Duration::from_secs(timeout),
                )
                .await
                .map_err(|e| e.to_string())?;
                say!("{}", reply.message);
                match reply.outcome() {
                    DrainOutcome::Drained => Ok(()),
                    DrainOutcome::NotRegistered => {
                        Err(format!("no worker named {worker} is registered"))
                    }
                    DrainOutcome::Cancelled => Err(format!("the drain of {worker} was cancelled")),
                    _ => Err(format!("{worker} did not empty in time")),
                }
            }
            Command::Undrain { worker, head } => {
                let (head, token) = head_and_token(head)?;
                let reply = admin::undrain(&head, token.as_deref(), &worker)
                    .await
                    .map_err(|e| e.to_string())?;
                say!("{}", reply.message);
                Ok(())
            }
            Command::Example { example } => examples::run(example).await.map_err(|e| {
                // A job's driver: whether it lost its cluster decides the exit status.
                let _ = driver_status.set(process::exit_status(&e));
                e.to_string()
            }),
            Command::Bench { workload, tasks } => bench::run(&workload, tasks)
                .await
                .map_err(|e| format!("{e:#}")),
        }
    };
    let result: Result<(), String> = if service {
        tokio.block_on(work)
    } else {
        // A driver's work runs on a runtime thread beside the connection tasks that wake it, so
        // a reply reaches it through that thread's own queue instead of waking the main thread.
        tokio
            .block_on(tokio.spawn(work))
            .unwrap_or_else(|e| Err(format!("the command failed: {e}")))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            status_of_failure
                .get()
                .copied()
                .unwrap_or(ExitCode::FAILURE)
        }
    }
}

fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
