//! Names and numbers the operator shares with the runtime and with tools: the environment
//! variables and ports of `flotilla_proto::contract`, and the labels and annotations the operator
//! puts on children.

pub use flotilla_proto::contract::{
    format_resources, parse_resources, ENV_BIND, ENV_CLUSTER, ENV_GROUP, ENV_HEAD, ENV_JOB,
    ENV_NAMESPACE, ENV_RESOURCES, ENV_ROLE, ENV_SLOTS, ENV_TOKEN, ENV_WORKER_NAME, READINESS_PATH,
};

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
    ENV_RESOURCES,
    ENV_BIND,
    ENV_JOB,
];

/// Head gRPC port, as Kubernetes types want it.
pub const HEAD_GRPC_PORT: i32 = flotilla_proto::contract::HEAD_GRPC_PORT as i32;
/// Head HTTP port.
pub const HEAD_HTTP_PORT: i32 = flotilla_proto::contract::HEAD_HTTP_PORT as i32;
/// Worker HTTP port: the worker's only port (object transfers, `/metrics`, `/readyz`).
pub const WORKER_HTTP_PORT: i32 = flotilla_proto::contract::WORKER_HTTP_PORT as i32;

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

/// Annotation the operator puts on a worker pod when it starts draining it: the RFC 3339 time
/// the drain started. A draining worker no longer counts towards its group's size, and the
/// annotation keeps the drain going across operator restarts.
pub const ANNOTATION_DRAINING: &str = "flotilla.dev/draining-since";

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
