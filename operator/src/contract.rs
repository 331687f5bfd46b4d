//! Names and numbers the operator shares with the runtime and with tools: environment variables,
//! ports, probe paths and labels (DESIGN.md §3).

/// `head`, `worker` or `driver`.
pub const ENV_ROLE: &str = "FLOTILLA_ROLE";
/// Head gRPC address `host:port`.
pub const ENV_HEAD: &str = "FLOTILLA_HEAD";
/// Cluster token, from the cluster's Secret.
pub const ENV_TOKEN: &str = "FLOTILLA_TOKEN";
/// Name of the ComputeCluster.
pub const ENV_CLUSTER: &str = "FLOTILLA_CLUSTER";
/// Namespace of the ComputeCluster.
pub const ENV_NAMESPACE: &str = "FLOTILLA_NAMESPACE";
/// Worker group of a worker.
pub const ENV_GROUP: &str = "FLOTILLA_GROUP";
/// Name of a worker: its pod name.
pub const ENV_WORKER_NAME: &str = "FLOTILLA_WORKER_NAME";
/// Task slots of a worker.
pub const ENV_SLOTS: &str = "FLOTILLA_SLOTS";
/// Address to listen on.
pub const ENV_BIND: &str = "FLOTILLA_BIND";
/// Job id of a driver started for a ComputeJob.
pub const ENV_JOB: &str = "FLOTILLA_JOB";

/// Variables only the operator sets; a pod template may not override them.
pub const RESERVED_ENV: &[&str] = &[
    ENV_ROLE,
    ENV_HEAD,
    ENV_TOKEN,
    ENV_CLUSTER,
    ENV_NAMESPACE,
    ENV_GROUP,
    ENV_WORKER_NAME,
    ENV_SLOTS,
    ENV_BIND,
    ENV_JOB,
];

/// Head gRPC port.
pub const HEAD_GRPC_PORT: i32 = 7400;
/// Head HTTP port (`/metrics`, `/healthz`, `/readyz`, the dashboard).
pub const HEAD_HTTP_PORT: i32 = 7401;
/// Worker gRPC port.
pub const WORKER_GRPC_PORT: i32 = 7402;
/// Worker HTTP port.
pub const WORKER_HTTP_PORT: i32 = 7403;

/// Path answering 200 once a process can take work.
pub const READINESS_PATH: &str = "/readyz";

/// Key of the token in the cluster's Secret.
pub const TOKEN_SECRET_KEY: &str = "token";

/// `app.kubernetes.io/name`; `flotilla` on everything the operator creates.
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the cluster name.
pub const LABEL_APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the role.
pub const LABEL_APP_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: `flotilla-operator`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The ComputeCluster a child belongs to.
pub const LABEL_CLUSTER: &str = "flotilla.dev/cluster";
/// `head` or `worker`.
pub const LABEL_ROLE: &str = "flotilla.dev/role";
/// The worker group of a worker pod.
pub const LABEL_GROUP: &str = "flotilla.dev/group";
/// Hash of the settings a pod was built from; a pod whose hash differs from the spec's is stale.
pub const LABEL_TEMPLATE_HASH: &str = "flotilla.dev/template-hash";

/// Value of [`LABEL_APP_NAME`].
pub const APP_NAME: &str = "flotilla";
/// Value of [`LABEL_MANAGED_BY`], and the operator's field manager.
pub const MANAGER_NAME: &str = "flotilla-operator";

/// Label key prefixes that belong to the operator; pod templates may not set them.
pub const RESERVED_LABEL_PREFIXES: &[&str] = &["flotilla.dev/", "app.kubernetes.io/"];

/// The role a pod plays in a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The head pod.
    Head,
    /// A worker pod.
    Worker,
    /// The driver pod of a ComputeJob.
    Driver,
}

impl Role {
    /// The value of [`ENV_ROLE`] and [`LABEL_ROLE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Worker => "worker",
            Self::Driver => "driver",
        }
    }
}
