//! Clusters on one machine: the in-process local cluster a driver starts when it has no head
//! address, the processes `flotilla up` starts, and the role switch behind `#[flotilla::main]`.

use std::{
    future::Future,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::oneshot};

use crate::{
    client::Runtime,
    error::{Error, Result},
    head::{self, HeadConfig},
    worker::{self, available_slots, WorkerConfig},
};

/// What a local in-process cluster looks like.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Worker count (`FLOTILLA_LOCAL_WORKERS`, default 1).
    pub workers: usize,
    /// Slots per worker (`FLOTILLA_SLOTS`, default: the CPUs available).
    pub slots: u32,
    /// Object store cap per worker (`FLOTILLA_OBJECT_STORE_BYTES`, default 2 GiB).
    pub store_bytes: u64,
}

impl LocalOptions {
    /// From the environment.
    pub fn from_env() -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        LocalOptions {
            workers: num("FLOTILLA_LOCAL_WORKERS").unwrap_or(1).max(1) as usize,
            slots: num("FLOTILLA_SLOTS").map_or_else(available_slots, |s| s.max(1) as u32),
            store_bytes: num("FLOTILLA_OBJECT_STORE_BYTES").unwrap_or(2 << 30),
        }
    }
}

/// A head and workers running inside this process, on 127.0.0.1.
pub struct LocalCluster {
    /// The head's address.
    pub address: String,
    /// The token (none: loopback only).
    pub token: Option<String>,
    head_stop: oneshot::Sender<()>,
    head: tokio::task::JoinHandle<Result<()>>,
    workers: Vec<worker::Running>,
}

impl LocalCluster {
    /// Starts a head and `options.workers` workers and waits until they are registered.
    pub async fn start(options: LocalOptions) -> Result<LocalCluster> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (head_stop, stop_rx) = oneshot::channel::<()>();
        let head = tokio::spawn(head::serve(
            listener,
            None,
            HeadConfig::default(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let mut workers = Vec::new();
        for i in 0..options.workers {
            let mut config = WorkerConfig::new(&address, &format!("local-{i}"));
            config.slots = options.slots;
            config.store_bytes = options.store_bytes;
            workers.push(worker::spawn_local(config).await?);
        }
        let cluster = LocalCluster {
            address,
            token: None,
            head_stop,
            head,
            workers,
        };
        wait_for_workers(
            &cluster.address,
            None,
            options.workers,
            Duration::from_secs(10),
        )
        .await?;
        Ok(cluster)
    }

    /// Stops the workers and the head.
    pub async fn stop(self) {
        for w in self.workers {
            let _ = w.stop.send(());
            let _ = w.handle.await;
        }
        let _ = self.head_stop.send(());
        let _ = self.head.await;
    }
}

/// Waits until `n` workers are registered at the head at `address`.
pub async fn wait_for_workers(
    address: &str,
    token: Option<&str>,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match status(address, token).await {
            Ok(s) if s.workers.len() >= n => return Ok(()),
            Ok(s) => format!("{} of {n} workers registered", s.workers.len()),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Connect {
                address: address.into(),
                message: format!("cluster not ready after {timeout:?}: {last}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The head's status over gRPC.
pub async fn status(address: &str, token: Option<&str>) -> Result<flotilla_proto::v1::StatusReply> {
    let channel = crate::transport::connect(address).await?;
    let mut client = flotilla_proto::v1::head_client::HeadClient::with_interceptor(
        channel,
        flotilla_proto::auth::AddAuth::new(token),
    );
    Ok(client
        .status(flotilla_proto::v1::StatusRequest {})
        .await?
        .into_inner())
}

/// Asks the head to drain a worker; answers when it is drained.
pub async fn drain(
    address: &str,
    token: Option<&str>,
    worker: &str,
    timeout: Duration,
) -> Result<flotilla_proto::v1::DrainReply> {
    let channel = crate::transport::connect(address).await?;
    let mut client = flotilla_proto::v1::head_client::HeadClient::with_interceptor(
        channel,
        flotilla_proto::auth::AddAuth::new(token),
    );
    let req = flotilla_proto::v1::DrainRequest {
        worker: worker.to_string(),
        timeout_seconds: timeout.as_secs().max(1) as u32,
    };
    Ok(client.drain(req).await?.into_inner())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn parse_bind(var: &str, default: &str) -> Result<String> {
    Ok(std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string()))
}

/// Binds a process's gRPC and HTTP listeners. Without a token only loopback addresses are
/// allowed, and that is checked before binding, so no other socket is opened even for a moment
/// (`head::serve` and the worker check again, for binds that are names rather than addresses).
async fn bind_pair(
    grpc_bind: &str,
    http_bind: &str,
    has_token: bool,
) -> Result<(TcpListener, TcpListener)> {
    // Both ports: the HTTP one serves objects too.
    for bind in [grpc_bind, http_bind] {
        if let Ok(addr) = bind.parse::<std::net::SocketAddr>() {
            if !addr.ip().is_loopback() && !has_token {
                return Err(Error::Config(format!(
                    "refusing to listen on {addr} without a cluster token: set FLOTILLA_TOKEN (only loopback addresses may run without one)"
                )));
            }
        }
    }
    let bind = |addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))
    };
    Ok((
        bind(grpc_bind.to_string()).await?,
        bind(http_bind.to_string()).await?,
    ))
}

/// Runs a head from the environment (`FLOTILLA_BIND`, ports 7400/7401 unless the bind names one).
pub async fn run_head_from_env(grpc_bind: Option<String>, http_bind: Option<String>) -> Result<()> {
    let host = parse_bind("FLOTILLA_BIND", "127.0.0.1")?;
    let grpc_bind = grpc_bind.unwrap_or_else(|| with_port(&host, 7400));
    let http_bind = http_bind.unwrap_or_else(|| format!("{}:7401", host_of(&host)));
    let config = HeadConfig::from_env();
    let (grpc, http) = bind_pair(&grpc_bind, &http_bind, config.token.is_some()).await?;
    println!(
        "flotilla head listening on {} (http {})",
        grpc.local_addr()?,
        http.local_addr()?
    );
    head::serve(grpc, Some(http), config, shutdown_signal()).await
}

/// The host part of `host` or `host:port` (IPv6 in brackets).
fn host_of(bind: &str) -> &str {
    match bind.rsplit_once(':') {
        Some((h, port))
            if port.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) =>
        {
            h
        }
        _ => bind,
    }
}

/// `host` with `port`, unless it names a port already.
fn with_port(host: &str, port: u16) -> String {
    if host_of(host) != host {
        host.to_string()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Runs a worker from the environment (`FLOTILLA_BIND`, ports 7402/7403 unless the bind names one).
pub async fn run_worker_from_env(
    config: WorkerConfig,
    grpc_bind: Option<String>,
    http_bind: Option<String>,
) -> Result<()> {
    let host = parse_bind("FLOTILLA_BIND", "127.0.0.1")?;
    let grpc_bind = grpc_bind.unwrap_or_else(|| with_port(&host, 7402));
    let http_bind = http_bind
        .or_else(|| {
            std::env::var("FLOTILLA_WORKER_HTTP_BIND")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| format!("{}:7403", host_of(&host)));
    let (grpc, http) = bind_pair(&grpc_bind, &http_bind, config.token.is_some()).await?;
    if !grpc.local_addr()?.ip().is_loopback() && config.token.is_none() {
        return Err(Error::Config(format!(
            "refusing to listen on {} without a cluster token: set FLOTILLA_TOKEN",
            grpc.local_addr()?
        )));
    }
    worker::run(config, grpc, Some(http), shutdown_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_take_default_ports_and_keep_given_ones() {
        assert_eq!(with_port("10.0.0.7", 7402), "10.0.0.7:7402");
        assert_eq!(with_port("127.0.0.1:9000", 7402), "127.0.0.1:9000");
        assert_eq!(host_of("127.0.0.1:9000"), "127.0.0.1");
        assert_eq!(host_of("10.0.0.7"), "10.0.0.7");
        assert_eq!(host_of("[::1]:7400"), "[::1]");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(with_port("::1", 7400), "[::1]:7400");
        assert_eq!(with_port("[::1]:7400", 7402), "[::1]:7400");
    }
}

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

fn build_tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts (it only fails when the OS refuses threads)")
}

/// The body of `#[flotilla::main]`: a worker when `FLOTILLA_ROLE=worker`, a head when
/// `FLOTILLA_ROLE=head`, otherwise a driver that runs `body` with a connected [`Runtime`].
pub fn run_main<F, Fut>(body: F) -> std::process::ExitCode
where
    F: FnOnce(Runtime) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    init_logging();
    let role = std::env::var("FLOTILLA_ROLE").unwrap_or_default();
    let tokio = if role == "worker" || role == "head" {
        service_runtime()
    } else {
        build_tokio()
    };
    let result = tokio.block_on(async move {
        match role.as_str() {
            "worker" => run_worker_from_env(WorkerConfig::from_env()?, None, None).await,
            "head" => run_head_from_env(None, None).await,
            "" | "driver" => {
                let rt = Runtime::init().await?;
                let result = body(rt.clone()).await;
                rt.shutdown().await;
                result
            }
            other => Err(Error::Config(format!(
                "FLOTILLA_ROLE={other:?}: expected head, worker or driver"
            ))),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `flotilla up` leaves behind for `status`, `down` and drivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    /// The head's gRPC address.
    pub address: String,
    /// The head's HTTP address.
    pub http: String,
    /// The cluster token.
    pub token: String,
    /// Process ids: the head first.
    pub pids: Vec<u32>,
    /// Worker names.
    pub workers: Vec<String>,
}

/// Where `flotilla up` writes its state (`FLOTILLA_STATE_DIR`, default a per-user temp dir).
pub fn state_path() -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("flotilla-{}", whoami())));
    dir.join("cluster.json")
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}

/// Reads the state `flotilla up` left.
pub fn read_state() -> Option<UpState> {
    serde_json::from_slice(&std::fs::read(state_path()).ok()?).ok()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Options of `flotilla up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Worker processes.
    pub workers: usize,
    /// Slots per worker.
    pub slots: Option<u32>,
    /// The program workers run (default: this `flotilla` binary).
    pub worker_bin: Option<PathBuf>,
    /// Head gRPC port (default 7400; 0 picks a free one).
    pub port: u16,
    /// Where process logs go.
    pub log_dir: Option<PathBuf>,
}

/// Starts a head and worker processes on this machine, waits until all are registered, and
/// records them for `status` and `down`.
pub async fn up(options: UpOptions) -> Result<UpState> {
    let exe = std::env::current_exe()?;
    let port = if options.port == 0 {
        free_port()?
    } else {
        options.port
    };
    let http_port = free_port()?;
    let address = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{http_port}");
    let token = format!("{:032x}", rand::random::<u128>());
    let log_dir = options
        .log_dir
        .clone()
        .unwrap_or_else(|| state_path().with_file_name("logs"));
    std::fs::create_dir_all(&log_dir)?;
    let log = |name: &str| -> Result<Stdio> {
        Ok(Stdio::from(std::fs::File::create(
            log_dir.join(format!("{name}.log")),
        )?))
    };
    let mut pids = Vec::new();
    let head = std::process::Command::new(&exe)
        .args(["head", "--bind", &address, "--http-bind", &http])
        .env("FLOTILLA_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(log("head")?)
        .stderr(log("head.err")?)
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start the head ({}): {e}", exe.display())))?;
    pids.push(head.id());
    let worker_bin = options.worker_bin.clone().unwrap_or_else(|| exe.clone());
    let mut workers = Vec::new();
    for i in 0..options.workers {
        let name = format!("worker-{i}");
        let mut cmd = std::process::Command::new(&worker_bin);
        if options.worker_bin.is_none() {
            cmd.arg("worker");
        }
        cmd.env("FLOTILLA_ROLE", "worker")
            .env("FLOTILLA_HEAD", &address)
            .env("FLOTILLA_TOKEN", &token)
            .env("FLOTILLA_WORKER_NAME", &name)
            .env("FLOTILLA_BIND", format!("127.0.0.1:{}", free_port()?))
            .env(
                "FLOTILLA_WORKER_HTTP_BIND",
                format!("127.0.0.1:{}", free_port()?),
            )
            .stdin(Stdio::null())
            .stdout(log(&name)?)
            .stderr(log(&format!("{name}.err"))?);
        if let Some(s) = options.slots {
            cmd.env("FLOTILLA_SLOTS", s.to_string());
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Config(format!(
                "cannot start worker {} ({}): {e}",
                name,
                worker_bin.display()
            ))
        })?;
        pids.push(child.id());
        workers.push(name);
    }
    let state = UpState {
        address: address.clone(),
        http,
        token: token.clone(),
        pids,
        workers,
    };
    std::fs::write(
        state_path(),
        serde_json::to_vec_pretty(&state).map_err(|e| Error::Io(e.to_string()))?,
    )?;
    wait_for_workers(
        &address,
        Some(&token),
        options.workers,
        Duration::from_secs(30),
    )
    .await?;
    Ok(state)
}

/// Stops what `flotilla up` started.
pub fn down() -> Result<usize> {
    let Some(state) = read_state() else {
        return Ok(0);
    };
    let mut stopped = 0;
    for pid in state.pids.iter().rev() {
        if kill(*pid, "-TERM") {
            stopped += 1;
        }
    }
    let _ = std::fs::remove_file(state_path());
    Ok(stopped)
}

fn kill(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
