//! Clusters of processes on this machine: `flotilla up` starts a head and workers that outlive
//! it and records them for `status`, drivers and `down`; [`ProcessCluster`] starts the same for
//! as long as it lives (benchmarks). Every process binds port 0 and reports what it got: the
//! head through an address file, workers through their registration.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use flotilla_proto::contract::{
    ENV_BIND, ENV_HEAD, ENV_ROLE, ENV_SLOTS, ENV_STATE_DIR, ENV_TOKEN, ENV_WORKER_NAME,
    EXIT_CANCEL_FORCED,
};
use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};

use crate::{
    admin::wait_for_workers,
    driver::Runtime,
    error::{Error, Result},
    private_fs,
};

/// Where a head listens, written by `flotilla head --address-file` once it is bound, so whoever
/// started it with port 0 learns the ports it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadAddresses {
    /// The gRPC address.
    pub address: String,
    /// The HTTP address.
    pub http: String,
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
    /// When each process started (clock ticks since boot, from `/proc`), so `down` signals only
    /// the processes `up` started, never a later one that reused a pid.
    #[serde(default)]
    pub starts: Vec<u64>,
    /// Worker names.
    pub workers: Vec<String>,
}

/// The directory `flotilla up` keeps its state in (`FLOTILLA_STATE_DIR`, default a per-user
/// directory under the temp dir).
pub fn state_dir() -> PathBuf {
    std::env::var_os(ENV_STATE_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("flotilla-{}", whoami())))
}

/// Where `flotilla up` writes its state.
pub fn state_path() -> PathBuf {
    state_dir().join("cluster.json")
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}

/// Reads the state `flotilla up` left.
pub fn read_state() -> Option<UpState> {
    serde_json::from_slice(&std::fs::read(state_path()).ok()?).ok()
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

/// How to start one process of a cluster.
struct Launch<'a> {
    exe: &'a Path,
    token: &'a str,
    /// Where its output goes: files named after it in this directory, or nowhere.
    log_dir: Option<&'a Path>,
}

impl Launch<'_> {
    fn output(&self, name: &str) -> Result<(Stdio, Stdio)> {
        let Some(dir) = self.log_dir else {
            return Ok((Stdio::null(), Stdio::null()));
        };
        let file = |n: String| -> Result<Stdio> {
            let path = dir.join(n);
            Ok(Stdio::from(std::fs::File::create(&path).map_err(|e| {
                Error::io(format!("creating {}", path.display()), e)
            })?))
        };
        Ok((
            file(format!("{name}.log"))?,
            file(format!("{name}.err.log"))?,
        ))
    }

    /// Starts `flotilla head` on 127.0.0.1:`port` and an ephemeral HTTP port, and waits for the
    /// addresses it got.
    async fn head(&self, port: u16, address_file: &Path) -> Result<(Child, HeadAddresses)> {
        let _ = std::fs::remove_file(address_file);
        let (stdout, stderr) = self.output("head")?;
        let mut child = Command::new(self.exe)
            .arg("head")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--http-bind", "127.0.0.1:0"])
            .arg("--address-file")
            .arg(address_file)
            .env(ENV_TOKEN, self.token)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                Error::Config(format!(
                    "cannot start the head ({}): {e}",
                    self.exe.display()
                ))
            })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(bytes) = std::fs::read(address_file) {
                if let Ok(addresses) = serde_json::from_slice::<HeadAddresses>(&bytes) {
                    return Ok((child, addresses));
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Config(format!(
                    "the head exited before it listened ({status}){}",
                    self.log_dir.map_or(String::new(), |d| format!(
                        "; see {}",
                        d.join("head.err.log").display()
                    ))
                )));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return Err(Error::Config(
                    "the head did not report its address within 30 s".into(),
                ));
            }
            // A head is up within milliseconds; every worker waits for this file.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts a worker process of the head at `head`, on an ephemeral port.
    fn worker(
        &self,
        head: &str,
        name: &str,
        slots: Option<u32>,
        program_is_flotilla: bool,
        extra: &[String],
    ) -> Result<Child> {
        let (stdout, stderr) = self.output(name)?;
        let mut cmd = Command::new(self.exe);
        if program_is_flotilla {
            cmd.arg("worker");
        }
        cmd.args(extra)
            .env(ENV_ROLE, "worker")
            .env(ENV_HEAD, head)
            .env(ENV_TOKEN, self.token)
            .env(ENV_WORKER_NAME, name)
            .env(ENV_BIND, "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(s) = slots {
            cmd.env(ENV_SLOTS, s.to_string());
        }
        cmd.spawn().map_err(|e| {
            Error::Config(format!(
                "cannot start worker {name} ({}): {e}",
                self.exe.display()
            ))
        })
    }
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Creates `dir` readable by this user only, or checks the one there.
fn private_dir(dir: &Path) -> Result<()> {
    private_fs::dir(dir).map_err(|e| Error::io(format!("preparing {}", dir.display()), e))
}

/// Starts a head and worker processes on this machine, waits until all are registered, and
/// records them for `status` and `down`.
pub async fn up(options: UpOptions) -> Result<UpState> {
    let exe = std::env::current_exe()?;
    let token = new_token();
    // Segments a killed cluster left in /dev/shm would keep it full.
    crate::objects::shm::remove_orphans();
    let dir = state_dir();
    private_dir(&dir)?;
    let log_dir = options.log_dir.clone().unwrap_or_else(|| dir.join("logs"));
    private_dir(&log_dir)?;
    let head_launch = Launch {
        exe: &exe,
        token: &token,
        log_dir: Some(&log_dir),
    };
    let (head, addresses) = head_launch
        .head(options.port, &dir.join("head.json"))
        .await?;
    let mut pids = vec![head.id()];
    let worker_bin = options.worker_bin.clone().unwrap_or_else(|| exe.clone());
    let worker_launch = Launch {
        exe: &worker_bin,
        ..head_launch
    };
    let mut workers = Vec::new();
    for i in 0..options.workers {
        let name = format!("worker-{i}");
        let child = worker_launch.worker(
            &addresses.address,
            &name,
            options.slots,
            options.worker_bin.is_none(),
            &[],
        )?;
        pids.push(child.id());
        workers.push(name);
    }
    let starts = pids
        .iter()
        .map(|pid| started_at(*pid).unwrap_or(0))
        .collect();
    let state = UpState {
        address: addresses.address.clone(),
        http: addresses.http,
        token: token.clone(),
        pids,
        starts,
        workers,
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Codec(e.to_string()))?;
    write_private(&state_path(), &json)?;
    wait_for_workers(
        &state.address,
        Some(&token),
        options.workers,
        Duration::from_secs(30),
    )
    .await?;
    Ok(state)
}

/// Stops what `flotilla up` started: each recorded process that is still the one `up` started.
pub fn down() -> Result<usize> {
    let Some(state) = read_state() else {
        return Ok(0);
    };
    let mut stopped = 0;
    for (i, pid) in state.pids.iter().enumerate().rev() {
        let recorded = state.starts.get(i).copied();
        if recorded.is_none() || started_at(*pid) != recorded {
            tracing::warn!(
                pid,
                "not signalled: it is not a process `flotilla up` started"
            );
            continue;
        }
        if terminate(*pid) {
            stopped += 1;
        }
    }
    let _ = std::fs::remove_file(state_path());
    Ok(stopped)
}

/// When process `pid` started, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
fn started_at(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Sends SIGTERM to `pid`; whether it was delivered.
fn terminate(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    kill_process(pid, Signal::TERM).is_ok()
}

/// A head and worker processes of one program, stopped when dropped. A worker that exits with
/// [`EXIT_CANCEL_FORCED`] (it ended itself to stop a cancelled task) is started again under its
/// name, as the kubelet restarts a worker pod.
pub struct ProcessCluster {
    /// The head's address.
    pub address: String,
    /// The token.
    pub token: String,
    head: Child,
    workers: Vec<Supervised>,
    _dir: tempfile::TempDir,
}

/// A worker process and the thread that waits on it and starts it again after a forced exit.
struct Supervised {
    state: std::sync::Arc<WorkerProcess>,
    waiter: Option<std::thread::JoinHandle<()>>,
}

/// What the waiting thread shares about its worker.
#[derive(Default)]
struct WorkerProcess {
    /// The process id of the worker running now.
    pid: AtomicU32,
    /// Whether it runs (false once it exited for good).
    running: AtomicBool,
    /// How many times it was started again.
    restarts: AtomicU32,
    /// Set when the cluster stops: an exit then is final.
    stopping: AtomicBool,
}

impl Supervised {
    /// Starts a worker and the thread that waits on it.
    fn start(launch: OwnedLaunch) -> Result<Supervised> {
        let mut child = launch.spawn()?;
        let state = std::sync::Arc::new(WorkerProcess::default());
        state.pid.store(child.id(), Ordering::SeqCst);
        state.running.store(true, Ordering::SeqCst);
        let shared = state.clone();
        let waiter = std::thread::spawn(move || loop {
            let status = child.wait();
            let forced =
                matches!(&status, Ok(s) if s.code() == Some(i32::from(EXIT_CANCEL_FORCED)));
            if !forced || shared.stopping.load(Ordering::SeqCst) {
                shared.running.store(false, Ordering::SeqCst);
                return;
            }
            tracing::warn!(worker = %launch.name, "the worker exited to stop a cancelled task; starting it again");
            match launch.spawn() {
                Ok(c) => {
                    child = c;
                    shared.pid.store(child.id(), Ordering::SeqCst);
                    shared.restarts.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    tracing::error!(worker = %launch.name, "cannot start the worker again: {e}");
                    shared.running.store(false, Ordering::SeqCst);
                    return;
                }
            }
        });
        Ok(Supervised {
            state,
            waiter: Some(waiter),
        })
    }

    fn signal(&self, signal: Signal) -> bool {
        if !self.state.running.load(Ordering::SeqCst) {
            return false;
        }
        let pid = self.state.pid.load(Ordering::SeqCst);
        i32::try_from(pid)
            .ok()
            .and_then(Pid::from_raw)
            .is_some_and(|pid| kill_process(pid, signal).is_ok())
    }
}

/// What starting one worker process of a [`ProcessCluster`] takes, owned by its waiting thread.
struct OwnedLaunch {
    exe: PathBuf,
    token: String,
    head: String,
    name: String,
    extra: Vec<String>,
}

impl OwnedLaunch {
    fn spawn(&self) -> Result<Child> {
        let launch = Launch {
            exe: &self.exe,
            token: &self.token,
            log_dir: None,
        };
        launch.worker(&self.head, &self.name, None, true, &self.extra)
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // SIGTERM first, so workers remove their shared-memory segments; SIGKILL what is left.
        for w in &self.workers {
            w.state.stopping.store(true, Ordering::SeqCst);
            w.signal(Signal::TERM);
        }
        terminate(self.head.id());
        let deadline = Instant::now() + Duration::from_secs(2);
        for w in &mut self.workers {
            while Instant::now() < deadline && w.state.running.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            w.signal(Signal::KILL);
            if let Some(waiter) = w.waiter.take() {
                let _ = waiter.join();
            }
        }
        while Instant::now() < deadline && matches!(self.head.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.head.kill();
        let _ = self.head.wait();
    }
}

impl ProcessCluster {
    /// Starts `flotilla head` and `workers` `flotilla worker` processes of the program `exe`
    /// with `slots` each (worker `i` also gets the custom resource `w{i}`) and waits until all
    /// are registered.
    pub async fn start(exe: &Path, workers: usize, slots: u32) -> Result<ProcessCluster> {
        let token = new_token();
        let dir = tempfile::tempdir()?;
        let launch = Launch {
            exe,
            token: &token,
            log_dir: None,
        };
        let (head, addresses) = launch.head(0, &dir.path().join("head.json")).await?;
        let mut cluster = ProcessCluster {
            address: addresses.address,
            token: token.clone(),
            head,
            workers: Vec::new(),
            _dir: dir,
        };
        for i in 0..workers {
            let extra = vec![
                "--slots".to_string(),
                slots.to_string(),
                "--resource".to_string(),
                format!("w{i}=1000000"),
            ];
            cluster.workers.push(Supervised::start(OwnedLaunch {
                exe: exe.to_path_buf(),
                token: token.clone(),
                head: cluster.address.clone(),
                name: format!("bench-{i}"),
                extra,
            })?);
        }
        wait_for_workers(
            &cluster.address,
            Some(&cluster.token),
            workers,
            Duration::from_secs(30),
        )
        .await?;
        Ok(cluster)
    }

    /// Kills worker `index` with SIGKILL, as a crash would (it is not started again); whether
    /// it was still running.
    pub fn kill_worker(&mut self, index: usize) -> bool {
        self.workers
            .get(index)
            .is_some_and(|w| w.signal(Signal::KILL))
    }

    /// The process id of worker `index` now, while it runs.
    pub fn worker_pid(&self, index: usize) -> Option<u32> {
        let w = self.workers.get(index)?;
        w.state
            .running
            .load(Ordering::SeqCst)
            .then(|| w.state.pid.load(Ordering::SeqCst))
    }

    /// How many times worker `index` was started again after a forced exit.
    pub fn worker_restarts(&self, index: usize) -> u32 {
        self.workers
            .get(index)
            .map_or(0, |w| w.state.restarts.load(Ordering::SeqCst))
    }

    /// A driver session.
    pub async fn connect(&self) -> Result<Runtime> {
        Runtime::connect(&self.address, Some(&self.token)).await
    }
}

/// Writes `bytes` to `path` readable by this user only, replacing it whole.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    private_fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
