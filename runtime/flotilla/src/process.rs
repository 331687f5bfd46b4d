//! Entry points of a Flotilla process: a head or a worker from the environment, and the role
//! switch behind `#[flotilla::main]`; with the logging and the tokio runtimes they run on.

use std::{future::Future, path::Path};

use flotilla_proto::contract::{
    ENV_BIND, ENV_ROLE, HEAD_GRPC_PORT, HEAD_HTTP_PORT, WORKER_HTTP_PORT,
};

use crate::{
    driver::Runtime,
    error::{Error, Result},
    head::{self, HeadConfig},
    local::processes::{write_private, HeadAddresses},
    net::bind::{host_of, listen, with_port},
    worker::{self, WorkerConfig},
};

/// Initialises logging from `RUST_LOG` (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The runtime a head or worker process runs on: I/O on one thread, tasks on blocking threads,
/// so the hot path has no cross-thread wake-ups.
pub fn service_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts (it only fails when the OS refuses threads)")
}

/// The runtime of a driver and of the command line.
pub fn driver_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts (it only fails when the OS refuses threads)")
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn bind_host() -> String {
    std::env::var(ENV_BIND)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// Runs a head from the environment (`FLOTILLA_BIND`, ports 7400/7401 unless the bind names
/// one), writing where it listens to `address_file` if given.
pub async fn run_head_from_env(
    grpc_bind: Option<String>,
    http_bind: Option<String>,
    address_file: Option<&Path>,
) -> Result<()> {
    let host = bind_host();
    let grpc_bind = grpc_bind.unwrap_or_else(|| with_port(&host, HEAD_GRPC_PORT));
    let http_bind = http_bind.unwrap_or_else(|| format!("{}:{HEAD_HTTP_PORT}", host_of(&host)));
    let config = HeadConfig::from_env();
    let has_token = config.token.is_some();
    let grpc = listen(&grpc_bind, has_token).await?;
    let http = listen(&http_bind, has_token).await?;
    let addresses = HeadAddresses {
        address: grpc.local_addr()?.to_string(),
        http: http.local_addr()?.to_string(),
    };
    println!(
        "flotilla head listening on {} (http {})",
        addresses.address, addresses.http
    );
    if let Some(path) = address_file {
        write_private(path, &serde_json::to_vec(&addresses).unwrap_or_default())?;
    }
    head::serve(grpc, Some(http), config, shutdown_signal()).await
}

/// Runs a worker from the environment on `bind` (default: `FLOTILLA_BIND`, port 7403 unless it
/// names one).
pub async fn run_worker_from_env(config: WorkerConfig, bind: Option<String>) -> Result<()> {
    let bind = bind.unwrap_or_else(|| with_port(&bind_host(), WORKER_HTTP_PORT));
    let listener = listen(&bind, config.token.is_some()).await?;
    worker::run(config, listener, shutdown_signal()).await
}

/// The body of `#[flotilla::main]`: a worker when `FLOTILLA_ROLE=worker`, a head when
/// `FLOTILLA_ROLE=head`, otherwise a driver that runs `body` with a connected [`Runtime`].
pub fn run_main<F, Fut>(body: F) -> std::process::ExitCode
where
    F: FnOnce(Runtime) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    init_logging();
    let role = std::env::var(ENV_ROLE).unwrap_or_default();
    let tokio = if role == "worker" || role == "head" {
        service_runtime()
    } else {
        driver_runtime()
    };
    let result = tokio.block_on(async move {
        match role.as_str() {
            "worker" => run_worker_from_env(WorkerConfig::from_env()?, None).await,
            "head" => run_head_from_env(None, None, None).await,
            "" | "driver" => {
                let rt = Runtime::init().await?;
                let result = body(rt.clone()).await;
                rt.shutdown().await;
                result
            }
            other => Err(Error::Config(format!(
                "{ENV_ROLE}={other:?}: expected head, worker or driver"
            ))),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            exit_status(&e)
        }
    }
}

/// The exit status of a driver that failed with `e`: [`EXIT_CLUSTER_LOST`] when it lost its
/// cluster (the head unreachable, or gone and not back), so that whoever runs it (the job
/// controller) can tell the cluster's failure from the program's; 1 otherwise.
///
/// [`EXIT_CLUSTER_LOST`]: flotilla_proto::contract::EXIT_CLUSTER_LOST
pub fn exit_status(e: &Error) -> std::process::ExitCode {
    match e {
        Error::Connect { .. } | Error::Shutdown(_) => {
            std::process::ExitCode::from(flotilla_proto::contract::EXIT_CLUSTER_LOST)
        }
        _ => std::process::ExitCode::FAILURE,
    }
}
