//! Names and numbers every Flotilla process and the operator agree on: environment variables and
//! ports (the contract in `docs/architecture.md`).

/// `head`, `worker` or `driver`: the role a `#[flotilla::main]` program plays.
pub const ENV_ROLE: &str = "FLOTILLA_ROLE";
/// Head gRPC address `host:port`.
pub const ENV_HEAD: &str = "FLOTILLA_HEAD";
/// Cluster token; every RPC and object route carries it.
pub const ENV_TOKEN: &str = "FLOTILLA_TOKEN";
/// Name of the cluster, a label on the head's metrics.
pub const ENV_CLUSTER: &str = "FLOTILLA_CLUSTER";
/// Namespace of the cluster, a label on the head's metrics.
pub const ENV_NAMESPACE: &str = "FLOTILLA_NAMESPACE";
/// Worker group of a worker.
pub const ENV_GROUP: &str = "FLOTILLA_GROUP";
/// Name of a worker; on Kubernetes its pod name, which the head and the operator agree on.
pub const ENV_WORKER_NAME: &str = "FLOTILLA_WORKER_NAME";
/// Task slots of a worker (default: the CPUs available).
pub const ENV_SLOTS: &str = "FLOTILLA_SLOTS";
/// Named custom resources a worker offers, `NAME=AMOUNT` pairs joined by commas (`gpu=1,tpu=4`);
/// the format of [`format_resources`].
pub const ENV_RESOURCES: &str = "FLOTILLA_RESOURCES";
/// Address to listen on (the pod IP, or 0.0.0.0).
pub const ENV_BIND: &str = "FLOTILLA_BIND";
/// Object store memory cap of a worker, in bytes.
pub const ENV_OBJECT_STORE_BYTES: &str = "FLOTILLA_OBJECT_STORE_BYTES";
/// Job id of a driver started for a ComputeJob.
pub const ENV_JOB: &str = "FLOTILLA_JOB";
/// How many workers a driver's in-process cluster starts.
pub const ENV_LOCAL_WORKERS: &str = "FLOTILLA_LOCAL_WORKERS";
/// Where `flotilla up` keeps its state.
pub const ENV_STATE_DIR: &str = "FLOTILLA_STATE_DIR";
/// How many tasks the head sends a worker ahead of its free slots.
pub const ENV_PREFETCH: &str = "FLOTILLA_PREFETCH";
/// The shared-memory file system same-host segments go to (default `/dev/shm`).
pub const ENV_SHM_DIR: &str = "FLOTILLA_SHM_DIR";
/// The directory a worker makes its spill directory in (default: the temp dir).
pub const ENV_SPILL_DIR: &str = "FLOTILLA_SPILL_DIR";

/// The exit status of a driver program that lost its cluster rather than failed on its own
/// (`EX_TEMPFAIL`): it could not reach the head, or the head went away and did not come back.
/// The job controller counts such an exit as the infrastructure's failure, not the program's.
pub const EXIT_CLUSTER_LOST: u8 = 75;

/// The exit status of a worker that ended itself to stop a cancelled task: the task ran on one of
/// its threads and did not return within [`CANCEL_GRACE_MILLIS`] of the cancel (a thread cannot be
/// stopped from outside), so the process exits as Ray's `cancel(force=True)` does. Whoever runs
/// the worker starts it again: the kubelet (worker pods restart `Always`), a process cluster.
/// The head retries the worker's other running tasks without using up their retries.
pub const EXIT_CANCEL_FORCED: u8 = 76;

/// How long a worker waits for a cancelled task that runs on a thread to return (it may poll
/// `flotilla::cancelled()`) before it exits with [`EXIT_CANCEL_FORCED`].
pub const CANCEL_GRACE_MILLIS: u64 = 1000;

/// Head gRPC port.
pub const HEAD_GRPC_PORT: u16 = 7400;
/// Head HTTP port (`/metrics`, `/healthz`, `/readyz`, the dashboard).
pub const HEAD_HTTP_PORT: u16 = 7401;
/// Worker HTTP port (`/metrics`, `/readyz`, object transfers).
pub const WORKER_HTTP_PORT: u16 = 7403;

/// Path answering 200 once a process can take work.
pub const READINESS_PATH: &str = "/readyz";

/// Custom resources as `NAME=AMOUNT` pairs joined by commas, in name order: the value of
/// [`ENV_RESOURCES`] and of the `resources` label of the head's pending-demand series.
pub fn format_resources<'a>(resources: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let mut pairs: Vec<(&str, u64)> = resources.into_iter().collect();
    pairs.sort_unstable();
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// Reads what [`format_resources`] writes (blanks around names and amounts are allowed; an empty
/// text is no resources). A resource named twice adds up.
pub fn parse_resources(text: &str) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let mut resources = std::collections::BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?}: expected NAME=AMOUNT"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{pair:?}: the resource has no name"));
        }
        let amount: u64 = amount
            .trim()
            .parse()
            .map_err(|_| format!("{pair:?}: {:?} is not a whole number", amount.trim()))?;
        *resources.entry(name.to_owned()).or_default() += amount;
    }
    Ok(resources)
}

/// Reads `FLOTILLA_TOKEN`; empty counts as unset.
pub fn token_from_env() -> Option<String> {
    std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty())
}

impl crate::v1::WorkerState {
    /// The lower-case word people and metric labels use: `idle`, `busy`, `draining`, `drained`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unspecified => "unknown",
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Draining => "draining",
            Self::Drained => "drained",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_read_back_what_is_written() {
        let text = format_resources([("tpu", 4), ("gpu", 1)]);
        assert_eq!(text, "gpu=1,tpu=4");
        let read = parse_resources(&text).unwrap();
        assert_eq!(read, [("gpu".into(), 1), ("tpu".into(), 4)].into());
        assert_eq!(parse_resources(" gpu = 2 , gpu=1,").unwrap()["gpu"], 3);
        assert!(parse_resources("").unwrap().is_empty());
        assert!(parse_resources("gpu").unwrap_err().contains("NAME=AMOUNT"));
        assert!(parse_resources("gpu=lots")
            .unwrap_err()
            .contains("\"lots\""));
        assert!(parse_resources("=1").unwrap_err().contains("no name"));
    }
}
