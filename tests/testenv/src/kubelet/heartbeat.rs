//! The kubelet's Node: registered with its capacity and addresses, and kept alive as a real
//! kubelet keeps it, by renewing its Lease in `kube-node-lease` and the Ready condition's
//! `lastHeartbeatTime`.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Node,
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    core::ObjectMeta,
};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::Shared;

/// How often the Lease and the Node's status are renewed (a real kubelet: every 10 s).
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The namespace of the nodes' Leases.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How long a Lease holds without renewal, as the real kubelet sets it.
const LEASE_DURATION_SECONDS: i32 = 40;

/// Pods a node takes, the real kubelet's default `maxPods`.
const MAX_PODS: &str = "110";

/// Keeps the Node and its Lease alive until `shutdown` turns true. Failures are logged and the
/// next beat tries again, so an API server that is briefly away does not stop the heartbeat.
pub(super) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut node_uid = None;
    loop {
        tokio::select! {
            _ = beat.tick() => {}
            () = super::pod::became_true(&mut shutdown) => return,
        }
        if node_uid.is_none() {
            match register(&shared).await {
                Ok(uid) => node_uid = uid,
                Err(err) => {
                    tracing::warn!(%err, "registering the node");
                    continue;
                }
            }
        }
        if let Err(err) = post_status(&shared).await {
            tracing::warn!(%err, "updating the node's status");
            if matches!(&err, kube::Error::Api(status) if status.code == 404) {
                node_uid = None;
            }
        }
        if let Err(err) = renew_lease(&shared, node_uid.as_deref()).await {
            tracing::warn!(%err, "renewing the node lease");
        }
    }
}

/// Creates the Node unless it exists; returns its uid.
async fn register(shared: &Shared) -> Result<Option<String>, kube::Error> {
    let nodes = Api::<Node>::all(shared.client.clone());
    let name = &shared.config.node_name;
    let labels = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", architecture()),
    ];
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let node = match nodes.create(&PostParams::default(), &node).await {
        Ok(node) => node,
        Err(kube::Error::Api(status)) if status.code == 409 => nodes.get(name).await?,
        Err(err) => return Err(err),
    };
    tracing::info!(node = %name, "node registered");
    Ok(node.metadata.uid)
}

/// `amd64` or `arm64`, as Kubernetes names architectures.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The machine's memory as a quantity, from `/proc/meminfo`.
fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .map(|kib| format!("{}Ki", kib.trim()))
        })
        .unwrap_or_else(|| "0".to_owned())
}

/// The Node's status: capacity, addresses and the Ready condition with a fresh heartbeat.
fn status(node_name: &str, log_port: u16, now: &Value, ready_since: &Value) -> Value {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let resources = json!({"cpu": cpus.to_string(), "memory": memory(), "pods": MAX_PODS});
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": ready_since,
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": node_name},
        ],
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": log_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": "",
            "osImage": "flotilla process kubelet",
            "containerRuntimeVersion": "process://",
            "kubeletVersion": concat!("v", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": architecture(),
        },
    })
}

/// Writes the Node's status with a new `lastHeartbeatTime`, keeping the conditions'
/// `lastTransitionTime` while they hold.
async fn post_status(shared: &Shared) -> Result<(), kube::Error> {
    let nodes = Api::<Node>::all(shared.client.clone());
    let name = &shared.config.node_name;
    let now = json!(Time(Timestamp::now()));
    let current = nodes.get_status(name).await?;
    let ready_since = current
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .and_then(|c| c.last_transition_time)
        .map_or_else(|| now.clone(), |t| json!(t));
    let patch = json!({"status": status(name, shared.log_port, &now, &ready_since)});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Renews the node's Lease, creating it (owned by the Node) if missing.
async fn renew_lease(shared: &Shared, node_uid: Option<&str>) -> Result<(), kube::Error> {
    let leases = Api::<Lease>::namespaced(shared.client.clone(), LEASE_NAMESPACE);
    let name = &shared.config.node_name;
    let now = MicroTime(Timestamp::now());
    match leases.get_opt(name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            spec.renew_time = Some(now);
            leases
                .replace(name, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
        None => {
            let owner = node_uid.map(|uid| OwnerReference {
                api_version: "v1".to_owned(),
                kind: "Node".to_owned(),
                name: name.clone(),
                uid: uid.to_owned(),
                ..OwnerReference::default()
            });
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.to_owned()),
                    owner_references: owner.map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
    }
}
