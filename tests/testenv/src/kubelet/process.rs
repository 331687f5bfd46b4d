//! Container processes: each runs in its own process group, so stopping a container stops
//! everything it started, as tearing down a container's PID namespace would.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::{Child, Command};

/// Everything needed to start one container process.
#[derive(Debug)]
pub struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    /// The complete environment; nothing is inherited from the kubelet.
    pub env: &'a [(String, String)],
    pub workdir: &'a Path,
    /// stdout and stderr are appended here.
    pub log: &'a Path,
}

/// Starts a process in a new process group.
pub fn spawn(launch: &Launch<'_>) -> io::Result<Child> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log)?;
    Command::new(launch.program)
        .args(launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(key, value)| (key, value)))
        .current_dir(launch.workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Sends `signal` to the process group led by `pid`. Never signals group 0 or 1.
pub fn signal_group(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|pid| *pid > 1)
        .and_then(Pid::from_raw)
    else {
        return;
    };
    if let Err(err) = kill_process_group(pid, signal) {
        if err != rustix::io::Errno::SRCH {
            tracing::warn!(pid = pid.as_raw_nonzero().get(), %err, "signalling a process group");
        }
    }
}

/// Exit code and signal of a finished process, as a container runtime reports them (a process
/// killed by a signal exits with `128 + signal`).
pub fn exit_code(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (-1, None),
    }
}

/// Whether a process has exited (it no longer exists or is a zombie waiting to be reaped).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// The live container processes of a kubelet, for [`super::ProcessKubelet::pid_of`] and for
/// stopping everything when the kubelet goes away.
#[derive(Debug, Default)]
pub struct ProcessTable {
    entries: Mutex<HashMap<u32, ProcessEntry>>,
}

#[derive(Debug, Clone)]
struct ProcessEntry {
    namespace: String,
    pod: String,
    /// Position of the container in the pod: init containers first, then containers.
    position: usize,
    container: String,
}

impl ProcessTable {
    pub fn insert(&self, pid: u32, namespace: &str, pod: &str, position: usize, container: &str) {
        self.lock().insert(
            pid,
            ProcessEntry {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                position,
                container: container.to_owned(),
            },
        );
    }

    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// The pid of a container of a pod: the named one, or the first running one.
    pub fn pid_of(&self, namespace: &str, pod: &str, container: Option<&str>) -> Option<u32> {
        self.lock()
            .iter()
            .filter(|(_, entry)| entry.namespace == namespace && entry.pod == pod)
            .filter(|(_, entry)| container.is_none_or(|name| entry.container == name))
            .min_by_key(|(_, entry)| entry.position)
            .map(|(pid, _)| *pid)
    }

    /// Stops every process still in the table: SIGTERM to each group, up to `grace` for the
    /// leaders to exit, then SIGKILL to each group (which also ends anything they left behind).
    /// Blocking; for use when the kubelet is dropped without [`super::ProcessKubelet::shutdown`].
    pub fn stop_all_blocking(&self, grace: Duration) {
        let pids: Vec<u32> = self.lock().drain().map(|(pid, _)| pid).collect();
        for &pid in &pids {
            signal_group(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !pids.iter().all(|&pid| has_exited(pid)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for &pid in &pids {
            signal_group(pid, Signal::KILL);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, ProcessEntry>> {
        // The table stays consistent even if a holder panicked: every operation is one call.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The log file of a container: `<log_dir>/<namespace>_<pod>_<container>.log`.
pub fn log_path(log_dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    log_dir.join(format!("{namespace}_{pod}_{container}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_container_runtimes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), (0, None));
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), (3, None));
        assert_eq!(exit_code(ExitStatus::from_raw(9)), (137, Some(9)));
        assert_eq!(exit_code(ExitStatus::from_raw(15)), (143, Some(15)));
    }

    #[test]
    fn pid_of_prefers_the_first_container() {
        let table = ProcessTable::default();
        table.insert(40, "ns", "p", 1, "sidecar");
        table.insert(41, "ns", "p", 0, "main");
        table.insert(42, "ns", "q", 0, "main");
        assert_eq!(table.pid_of("ns", "p", None), Some(41));
        assert_eq!(table.pid_of("ns", "p", Some("sidecar")), Some(40));
        assert_eq!(table.pid_of("other", "p", None), None);
        table.remove(41);
        assert_eq!(table.pid_of("ns", "p", None), Some(40));
    }
}
