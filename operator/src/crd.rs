//! The `ComputeCluster` and `ComputeJob` custom resources (`flotilla.dev/v1alpha1`; see `docs/architecture.md`).
//!
//! Every `///` comment on a field becomes that field's description in the generated CRD schema, so
//! they are written for someone reading `kubectl explain`. Static invariants the API server can
//! check (bounds, unique group names, one-of) are CEL rules or schema keywords here; what the
//! schema cannot express is checked by [`crate::cluster::validate`].

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, EnvVar, PodSecurityContext, ResourceRequirements, Toleration},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const API_GROUP: &str = "flotilla.dev";
/// The API version of both resources.
pub const API_VERSION: &str = "v1alpha1";

/// The most worker groups one cluster may have; bounds the cost of the uniqueness rule.
pub const MAX_WORKER_GROUPS: usize = 16;
/// Longest worker group name; leaves room in worker pod names for the cluster name.
pub const MAX_GROUP_NAME_LEN: usize = 40;

/// Joins the hard-wrapped lines of our `///` comments (schemars keeps every line break) in the
/// description of a type and of each of its fields, so `kubectl explain` shows paragraphs rather
/// than this file's line breaks. Types from k8s-openapi keep their own formatting.
fn unwrap_doc_lines(schema: &mut schemars::Schema) {
    fn unwrap(node: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(serde_json::Value::String(text)) = node.get_mut("description") {
            *text = text
                .split("\n\n")
                .map(|paragraph| {
                    paragraph
                        .split('\n')
                        .map(str::trim)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n\n");
        }
    }
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    unwrap(object);
    if let Some(properties) = object.get_mut("properties").and_then(|p| p.as_object_mut()) {
        properties
            .values_mut()
            .filter_map(serde_json::Value::as_object_mut)
            .for_each(unwrap);
    }
}

/// Desired state of a Flotilla cluster: one head pod, its Service, and groups of worker pods.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "ComputeCluster",
    namespaced,
    status = "ComputeClusterStatus",
    shortname = "fcc",
    category = "flotilla",
    // Kubernetes takes only a plain field path here, no list index: the first group's size is
    // mirrored at `spec.replicas`.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    derive = "PartialEq",
    doc = "A Flotilla compute cluster: a head pod, its Service and groups of worker pods, \
           optionally autoscaled from the head's task queue.",
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredWorkers",
        description = "Worker pods the cluster should have"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyWorkers",
        description = "Worker pods that are ready"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Overall state of the cluster"
    ),
    printcolumn(
        name = "Autoscaler",
        type_ = "string",
        json_path = ".status.autoscaler.lastDecision",
        description = "The autoscaler's last decision: scaleUp, scaleDown or hold"
    ),
    printcolumn(
        name = "Demand",
        type_ = "number",
        json_path = ".status.autoscaler.lastMetricValue",
        description = "Task slots the autoscaler last read as demand",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputeClusterSpec {
    /// Container image of every pod of the cluster: the stock `flotilla` image or a user's program
    /// built with the flotilla library. The same program runs as head and as worker
    /// (`FLOTILLA_ROLE` picks the role).
    #[schemars(length(min = 1))]
    pub image: String,

    /// When the kubelet pulls the image: `Always`, `IfNotPresent` or `Never`. Unset: Kubernetes'
    /// default (`Always` for `:latest` tags, `IfNotPresent` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Command run in every container instead of the image's entrypoint. Unset: the entrypoint.
    /// Its only argument is the role (`head` or `worker`), which is also in `FLOTILLA_ROLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// The head: membership, scheduling, objects directory and metrics of the cluster.
    #[serde(default)]
    pub head: HeadSpec,

    /// Groups of identical workers; each group has its own size, slots and pod settings.
    #[x_kube(
        validation = Rule::new("self.all(g, self.exists_one(h, h.name == g.name))")
            .message("worker group names must be unique"),
        merge_strategy = ListMerge::Map(vec!["name".into()])
    )]
    #[schemars(length(min = 1, max = MAX_WORKER_GROUPS))]
    pub worker_groups: Vec<WorkerGroupSpec>,

    /// Number of workers of the first worker group, for the scale subresource: `kubectl scale
    /// fcc NAME --replicas=N`, a HorizontalPodAutoscaler or KEDA write it. When set, it is the
    /// first group's size and that group's own `replicas` is not used (its `minReplicas` and
    /// `maxReplicas` still bound it); unset, the first group's `replicas` is. An autoscaler
    /// reading the scale subresource sees 0 replicas until it is set, so set it (or scale once)
    /// before pointing a HorizontalPodAutoscaler at the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Grow and shrink the worker groups from the head's task queue. Unset: no autoscaling; every
    /// group keeps `replicas` workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Stop every pod of the cluster but keep the resource, its Secret and its Service. Setting it
    /// back to false starts the cluster again.
    #[serde(default)]
    pub suspend: bool,
}

/// When the kubelet pulls a container image.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
pub enum ImagePullPolicy {
    /// Pull on every container start.
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects in `Container.imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Settings of the head pod and its Service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeadSpec {
    /// CPU and memory requests and limits of the head container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Type of the head Service: `ClusterIP` (default), `NodePort` or `LoadBalancer`.
    #[serde(default)]
    pub service_type: ServiceType,

    /// Overrides applied to the head pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

/// How the head Service is exposed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes expects in `ServiceSpec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A group of identical workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[x_kube(
    validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.replicas")
        .message("minReplicas must not be greater than replicas"),
    validation = Rule::new("!has(self.maxReplicas) || self.replicas <= self.maxReplicas")
        .message("replicas must not be greater than maxReplicas")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerGroupSpec {
    /// Name of the group, unique in the cluster; part of the worker pod names
    /// (`<cluster>-<group>-<suffix>`), so a DNS label.
    #[schemars(
        length(min = 1, max = MAX_GROUP_NAME_LEN),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Number of workers. With autoscaling it is the starting size, and the autoscaler's choice
    /// (in status) stays between `minReplicas` and `maxReplicas`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Fewest workers the autoscaler may leave in the group.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most workers the autoscaler may start in the group. Unset: `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<i32>,

    /// Task slots of each worker (tasks it runs at once). Unset: the CPU limit (or request) of
    /// the worker, rounded down, at least 1; with neither, the CPUs the worker process sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub slots: Option<i32>,

    /// Named custom resources each worker offers, by amount (e.g. `gpu: 1`); a task that asks for
    /// one runs only on workers offering enough of it, and the autoscaler grows the first group
    /// offering what such tasks ask. Names may not hold `,` or `=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_resources: Option<BTreeMap<String, i64>>,

    /// CPU and memory requests and limits of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Overrides applied to every worker pod of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,
}

fn default_replicas() -> i32 {
    1
}

/// The few pod settings a user may override; the operator sets everything else.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTemplateOverrides {
    /// Extra labels on the pod. Keys under `flotilla.dev/` and `app.kubernetes.io/` are the
    /// operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations on the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Extra environment variables of the container. The `FLOTILLA_*` variables the operator sets
    /// (role, head, token, cluster, namespace, group, worker name, slots, resources, bind) cannot be
    /// overridden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Node labels the pod must be scheduled on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the pod tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Node and pod affinity rules of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Service account the pod runs as. Unset: none is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Pod security context, merged over the operator's (non-root user 65532, RuntimeDefault
    /// seccomp). Running as root is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
}

/// How the autoscaler sizes the worker groups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingSpec {
    /// Whether the autoscaler acts; false keeps the settings but freezes every group at
    /// `replicas`.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Where the queue metrics come from. Unset: the operator's default Prometheus URL if it has
    /// one, otherwise the head's own `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,

    /// Fraction of task slots the autoscaler aims to keep busy: desired workers =
    /// ceil(demand / (slots per worker * targetSlotUtilization)).
    #[serde(default = "default_target_slot_utilization")]
    #[x_kube(validation = Rule::new("self > 0.0").message("targetSlotUtilization must be greater than 0"))]
    #[schemars(range(max = 10.0))]
    pub target_slot_utilization: f64,

    /// Seconds between two reads of the metrics.
    #[serde(default = "default_poll_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i32,

    /// Limits on growing.
    #[serde(default)]
    pub scale_up: ScaleUpPolicy,

    /// Limits on shrinking.
    #[serde(default)]
    pub scale_down: ScaleDownPolicy,

    /// What to do when the metrics cannot be read.
    #[serde(default)]
    pub fallback: FallbackPolicy,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            prometheus: None,
            target_slot_utilization: default_target_slot_utilization(),
            poll_interval_seconds: default_poll_interval_seconds(),
            scale_up: ScaleUpPolicy::default(),
            scale_down: ScaleDownPolicy::default(),
            fallback: FallbackPolicy::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_target_slot_utilization() -> f64 {
    1.0
}

fn default_poll_interval_seconds() -> i32 {
    15
}

/// A Prometheus server to read the queue metrics from.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrometheusSource {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring:9090`. Unset: the
    /// operator's default Prometheus URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: Option<String>,

    /// PromQL query whose value is the demand in task slots. Unset: pending plus running tasks of
    /// this cluster (`flotilla_tasks_pending + flotilla_tasks_running` with its `cluster` and
    /// `namespace` labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub query: Option<String>,
}

/// Limits on how fast the autoscaler grows a group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleUpPolicy {
    /// Seconds a higher demand must last before workers are added.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,

    /// Most workers added to a group in one step. Unset: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_step: Option<i32>,
}

/// Limits on how fast the autoscaler shrinks a group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleDownPolicy {
    /// Seconds a lower demand must last before workers are removed.
    #[serde(default = "default_scale_down_window_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,

    /// Most workers removed from a group in one step, in percent of its current size (at least
    /// one worker per step).
    #[serde(default = "default_max_step_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_step_percent: i32,

    /// Seconds a worker may take to drain (finish its tasks, hand over its objects) before its
    /// pod is deleted anyway.
    #[serde(default = "default_drain_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,
}

impl Default for ScaleDownPolicy {
    fn default() -> Self {
        Self {
            stabilization_window_seconds: default_scale_down_window_seconds(),
            max_step_percent: default_max_step_percent(),
            drain_timeout_seconds: default_drain_timeout_seconds(),
        }
    }
}

fn default_scale_down_window_seconds() -> i32 {
    120
}

fn default_max_step_percent() -> i32 {
    25
}

fn default_drain_timeout_seconds() -> i32 {
    300
}

/// What the autoscaler does while the metrics cannot be read.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackPolicy {
    /// Failed reads in a row before the fallback behavior applies.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,

    /// `hold` keeps every group at its current size, `minReplicas` shrinks each to its minimum,
    /// `maxReplicas` grows each to its maximum.
    #[serde(default)]
    pub behavior: FallbackBehavior,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            behavior: FallbackBehavior::default(),
        }
    }
}

fn default_failure_threshold() -> i32 {
    3
}

/// The group size the autoscaler falls back to without metrics.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub enum FallbackBehavior {
    /// Keep the current size.
    #[default]
    Hold,
    /// Shrink to `minReplicas`.
    MinReplicas,
    /// Grow to `maxReplicas`.
    MaxReplicas,
}

/// Observed state of a `ComputeCluster`, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct ComputeClusterStatus {
    /// Overall state: `Pending`, `Running`, `Degraded`, `Suspended` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,

    /// Detailed state (`HeadReady`, `WorkersReady`, `Progressing`, ...), each with a reason and
    /// a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Worker pods the cluster should have now, over all groups.
    #[serde(default)]
    pub desired_workers: i32,

    /// Worker pods that exist, over all groups.
    #[serde(default)]
    pub workers: i32,

    /// Worker pods that are ready, over all groups.
    #[serde(default)]
    pub ready_workers: i32,

    /// Worker pods of the first worker group that exist: the scale subresource's current size,
    /// the counterpart of `spec.replicas`.
    #[serde(default)]
    pub replicas: i32,

    /// Label selector of the first worker group's pods, for the scale subresource (a
    /// HorizontalPodAutoscaler reads their metrics through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Where the head runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadStatus>,

    /// Per-group sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub worker_groups: Vec<WorkerGroupStatus>,

    /// The autoscaler's last reading and decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// Overall state of a `ComputeCluster`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
pub enum ClusterPhase {
    /// The head is not ready yet.
    Pending,
    /// The head and every desired worker are ready.
    Running,
    /// The head is ready but some workers are missing or not ready.
    Degraded,
    /// `spec.suspend` is true and no pods run.
    Suspended,
    /// The spec cannot be honoured or the head cannot start; a condition says why.
    Failed,
}

/// Where the head of a cluster runs.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct HeadStatus {
    /// Name of the head pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// Name of the head Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// gRPC address (`host:port`) clients and workers connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Sizes of one worker group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroupStatus {
    /// Name of the group.
    pub name: String,

    /// Worker pods of the group that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Worker pods of the group that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Worker pods the group should have: `spec.replicas`, or the autoscaler's choice.
    #[serde(default)]
    pub desired_replicas: i32,

    /// When the group's desired size last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// The autoscaler's last reading and decision.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// Demand (in task slots) last read from the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_metric_value: Option<f64>,

    /// Workers the autoscaler wants over all groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_workers: Option<i32>,

    /// The last decision: `scaleUp`, `scaleDown` or `hold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<ScalingDecision>,

    /// When the last decision was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<Time>,

    /// When the autoscaler last changed a group's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Failed metric reads in a row.
    #[serde(default)]
    pub consecutive_failures: i32,

    /// Why the last decision was made, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A decision of the autoscaler.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub enum ScalingDecision {
    /// Workers were added.
    ScaleUp,
    /// Workers were removed.
    ScaleDown,
    /// The size was kept.
    Hold,
}

/// A program run to completion on a Flotilla cluster: a driver pod the operator owns, on an
/// existing cluster (`clusterRef`) or on one made for the job (`cluster`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "flotilla.dev",
    version = "v1alpha1",
    kind = "ComputeJob",
    namespaced,
    status = "ComputeJobStatus",
    shortname = "fjob",
    category = "flotilla",
    derive = "PartialEq",
    doc = "A program run to completion on a Flotilla cluster, existing or made for the job.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "State of the job"
    ),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".status.clusterName",
        description = "The ComputeCluster the job runs on"
    ),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attempts",
        description = "Driver pods started so far"
    ),
    printcolumn(
        name = "Start",
        type_ = "date",
        json_path = ".status.startTime",
        description = "When the driver started"
    ),
    printcolumn(
        name = "Completion",
        type_ = "date",
        json_path = ".status.completionTime",
        description = "When the job finished"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.clusterRef) != has(self.cluster)")
        .message("exactly one of clusterRef and cluster must be set")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComputeJobSpec {
    /// Run on this existing ComputeCluster (same namespace). Exactly one of `clusterRef` and
    /// `cluster` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ref: Option<ClusterReference>,

    /// Create a ComputeCluster with this spec for the job, and delete it when the job ends.
    /// Exactly one of `clusterRef` and `cluster` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ComputeClusterSpec>,

    /// Image of the driver. Unset: the cluster's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Command of the driver container. Unset: the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,

    /// Arguments of the driver command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Extra environment variables of the driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// CPU and memory requests and limits of the driver container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Overrides applied to the driver pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverrides>,

    /// Driver failures (non-zero exit) retried before the job is `Failed`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,

    /// Seconds the job may run, from its start, before it is stopped and `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Seconds the cluster and the driver may take to start before the job is `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub startup_deadline_seconds: Option<i64>,

    /// Seconds after the job finishes before the ComputeJob itself is deleted. Unset: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Do not start the job (or stop its driver) while true.
    #[serde(default)]
    pub suspend: bool,
}

/// A reference to a ComputeCluster in the job's namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterReference {
    /// Name of the ComputeCluster.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state of a `ComputeJob`, written by the operator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct ComputeJobStatus {
    /// `Pending`, `Starting`, `Running`, `Succeeded`, `Failed` or `Suspended`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,

    /// Detailed state, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Id of the job at the head (`FLOTILLA_JOB` of the driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,

    /// The ComputeCluster the job runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,

    /// Name of the current driver pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_pod: Option<String>,

    /// Driver pods started so far.
    #[serde(default)]
    pub attempts: i32,

    /// Drivers that exited with a non-zero status; the job fails when this passes
    /// `backoffLimit`.
    #[serde(default)]
    pub failed: i32,

    /// Drivers lost to the infrastructure (pod deleted or evicted, node or head gone); retried
    /// without using up `backoffLimit`, up to a bound.
    #[serde(default)]
    pub infrastructure_failures: i32,

    /// When the first driver started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Task counts of the job at the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,

    /// Why the job is in its phase, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of a `ComputeJob`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[schemars(transform = unwrap_doc_lines)]
pub enum JobPhase {
    /// Accepted; nothing started yet.
    Pending,
    /// The cluster or the driver is starting.
    Starting,
    /// The driver runs.
    Running,
    /// The driver exited with status 0.
    Succeeded,
    /// The driver failed beyond `backoffLimit`, a deadline passed, or the cluster could not start.
    Failed,
    /// `spec.suspend` is true.
    Suspended,
}

/// Task counts of a job, read from the head.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[schemars(transform = unwrap_doc_lines)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Tasks the driver submitted.
    #[serde(default)]
    pub tasks_submitted: i64,

    /// Tasks that finished.
    #[serde(default)]
    pub tasks_finished: i64,

    /// Tasks that failed for good.
    #[serde(default)]
    pub tasks_failed: i64,
}
