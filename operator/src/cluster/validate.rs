//! Turns a raw `ComputeCluster` into a [`ValidatedCluster`]: checks what the CRD schema cannot
//! express, re-checks what an API server may have let through, resolves defaults, and reports
//! every problem at once.
//!
//! The builders ([`super::desired`]) take only a [`ValidatedCluster`], so they never fail.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::core::v1::{ObjectReference, PodSecurityContext, ResourceRequirements},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::Resource;

use crate::{
    contract::{RESERVED_ENV, RESERVED_LABEL_PREFIXES},
    crd::{
        AutoscalingSpec, ComputeCluster, ComputeClusterSpec, ImagePullPolicy, PodTemplateOverrides,
        ServiceType, WorkerGroupSpec, MAX_GROUP_NAME_LEN, MAX_WORKER_GROUPS,
    },
    names::{worker_pod_name, MAX_CLUSTER_NAME_LEN, MAX_POD_NAME_LEN, WORKER_SUFFIX_LEN},
};

/// A `ComputeCluster` whose spec was checked and whose defaults were resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedCluster {
    /// Name of the ComputeCluster.
    pub name: String,
    /// Namespace of the ComputeCluster and of all its children.
    pub namespace: String,
    /// Controller owner reference put on every child.
    pub owner: OwnerReference,
    /// Image of every pod.
    pub image: String,
    /// Pull policy of every container, if set.
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Command of every container, if it replaces the image's entrypoint.
    pub command: Option<Vec<String>>,
    /// The head pod and Service.
    pub head: ValidatedHead,
    /// Worker groups, in spec order, names unique.
    pub groups: Vec<ValidatedGroup>,
    /// Autoscaling settings, if autoscaling is configured.
    pub autoscaling: Option<AutoscalingSpec>,
    /// Whether every pod should be stopped.
    pub suspend: bool,
}

impl ValidatedCluster {
    /// The group called `name`, if there is one.
    pub fn group(&self, name: &str) -> Option<&ValidatedGroup> {
        self.groups.iter().find(|group| group.name == name)
    }

    /// The ComputeCluster itself, as the object the operator's Events are about.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.owner.api_version.clone()),
            kind: Some(self.owner.kind.clone()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            uid: Some(self.owner.uid.clone()),
            ..ObjectReference::default()
        }
    }
}

/// Checked settings of the head.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedHead {
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// Type of the head Service.
    pub service_type: ServiceType,
    /// Pod overrides (empty when the spec has none).
    pub template: PodTemplateOverrides,
}

/// Checked settings of one worker group.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedGroup {
    /// Group name, a DNS label.
    pub name: String,
    /// Workers the spec asks for.
    pub replicas: u32,
    /// Fewest workers the autoscaler may leave.
    pub min_replicas: u32,
    /// Most workers the autoscaler may start (`replicas` when the spec leaves it unset).
    pub max_replicas: u32,
    /// Task slots per worker: from the spec, else from the CPU resources; `None` lets the worker
    /// count its CPUs.
    pub slots: Option<u32>,
    /// Named custom resources each worker offers.
    pub custom: BTreeMap<String, u64>,
    /// Container resources.
    pub resources: Option<ResourceRequirements>,
    /// Pod overrides (empty when the spec has none).
    pub template: PodTemplateOverrides,
}

/// One thing wrong with a spec; the message names the field and says what would be right.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpecProblem {
    /// The object lacks metadata the API server always sets.
    #[error(
        "metadata.{field} is not set; the operator only handles objects read from the API server"
    )]
    MissingMetadata {
        /// `name`, `namespace` or `uid`.
        field: &'static str,
    },
    /// The cluster name cannot name the head Service and pods.
    #[error("cluster name {name:?} {reason}")]
    InvalidClusterName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `spec.image` is empty.
    #[error("spec.image must name a container image")]
    EmptyImage,
    /// `spec.command` has an empty first element.
    #[error("spec.command must start with a program name when it is set")]
    EmptyCommand,
    /// Too few or too many worker groups.
    #[error("spec.workerGroups must have between 1 and {max} groups, not {count}", max = MAX_WORKER_GROUPS)]
    WorkerGroupCount {
        /// Groups in the spec.
        count: usize,
    },
    /// A group name is not a DNS label.
    #[error("worker group name {name:?} {reason}")]
    InvalidGroupName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two groups share a name.
    #[error("worker group name {name:?} is used more than once; group names must be unique")]
    DuplicateGroup {
        /// The repeated name.
        name: String,
    },
    /// Worker pod names of a group would be too long.
    #[error(
        "worker pods of group {group:?} would be named like {example:?} ({len} characters); \
         cluster and group names together must leave room for the pod name within {max} characters",
        max = MAX_POD_NAME_LEN
    )]
    PodNameTooLong {
        /// The group.
        group: String,
        /// A pod name the group would get.
        example: String,
        /// Its length.
        len: usize,
    },
    /// A number is outside its allowed range.
    #[error("{field} is {value}, but must be {expected}")]
    OutOfRange {
        /// Path of the field, e.g. `spec.workerGroups[cpu].replicas`.
        field: String,
        /// The value found.
        value: String,
        /// The allowed range, in words.
        expected: String,
    },
    /// `minReplicas <= replicas <= maxReplicas` does not hold.
    #[error(
        "worker group {group:?}: replicas must be between minReplicas and maxReplicas, \
         but minReplicas={min}, replicas={replicas}, maxReplicas={max}"
    )]
    ReplicaBounds {
        /// The group.
        group: String,
        /// `minReplicas`.
        min: i32,
        /// `replicas`.
        replicas: i32,
        /// `maxReplicas` (or `replicas` when unset).
        max: i32,
    },
    /// A CPU quantity cannot be read.
    #[error(
        "{field} is {quantity:?}, which is not a CPU quantity (like \"2\", \"1.5\" or \"500m\")"
    )]
    InvalidCpuQuantity {
        /// Path of the field.
        field: String,
        /// The quantity as written.
        quantity: String,
    },
    /// A pod template sets a variable the operator owns.
    #[error("{scope}.env sets {name}, which the operator sets itself")]
    ReservedEnvVar {
        /// Which pod template, e.g. `spec.head.podTemplate`.
        scope: String,
        /// The variable.
        name: String,
    },
    /// A pod template sets a label the operator owns.
    #[error("{scope}.labels sets {key:?}; keys starting with {prefixes} belong to the operator", prefixes = RESERVED_LABEL_PREFIXES.join(" or "))]
    ReservedLabel {
        /// Which pod template.
        scope: String,
        /// The label key.
        key: String,
    },
    /// A label, annotation or node selector entry is malformed.
    #[error("{field} has {what} {value:?}, which {reason}")]
    InvalidMetadataEntry {
        /// Path of the map, e.g. `spec.head.podTemplate.labels`.
        field: String,
        /// `key` or `value`.
        what: &'static str,
        /// The offending key or value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A pod template asks to run as root.
    #[error("{scope}.securityContext sets {setting}; Flotilla pods run as a non-root user")]
    RunsAsRoot {
        /// Which pod template.
        scope: String,
        /// The offending setting.
        setting: &'static str,
    },
    /// A service account name is not a DNS subdomain.
    #[error("{scope}.serviceAccountName {name:?} {reason}")]
    InvalidServiceAccountName {
        /// Which pod template.
        scope: String,
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Prometheus URL is not an http(s) URL.
    #[error("spec.autoscaling.prometheus.url {url:?} must start with http:// or https://")]
    InvalidPrometheusUrl {
        /// The URL as written.
        url: String,
    },
    /// A custom resource name cannot be passed to the worker.
    #[error(
        "{field} has a resource named {name:?}; a name must be non-empty and hold no ',', '=' or blanks"
    )]
    InvalidResourceName {
        /// Path of the field.
        field: String,
        /// The name.
        name: String,
    },
}

impl SpecProblem {
    /// A short CamelCase label for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingMetadata { .. } => "MissingMetadata",
            Self::InvalidClusterName { .. } => "InvalidClusterName",
            Self::EmptyImage => "EmptyImage",
            Self::EmptyCommand => "EmptyCommand",
            Self::WorkerGroupCount { .. } => "WorkerGroupCount",
            Self::InvalidGroupName { .. } => "InvalidGroupName",
            Self::DuplicateGroup { .. } => "DuplicateGroup",
            Self::PodNameTooLong { .. } => "PodNameTooLong",
            Self::OutOfRange { .. } => "OutOfRange",
            Self::ReplicaBounds { .. } => "ReplicaBounds",
            Self::InvalidCpuQuantity { .. } => "InvalidCpuQuantity",
            Self::ReservedEnvVar { .. } => "ReservedEnvVar",
            Self::ReservedLabel { .. } => "ReservedLabel",
            Self::InvalidMetadataEntry { .. } => "InvalidMetadata",
            Self::RunsAsRoot { .. } => "RunsAsRoot",
            Self::InvalidServiceAccountName { .. } => "InvalidServiceAccountName",
            Self::InvalidPrometheusUrl { .. } => "InvalidPrometheusUrl",
            Self::InvalidResourceName { .. } => "InvalidResourceName",
        }
    }
}

/// Every problem found in one spec.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidSpec {
    problems: Vec<SpecProblem>,
}

impl InvalidSpec {
    /// The problems, in the order of the spec's fields; never empty.
    pub fn problems(&self) -> &[SpecProblem] {
        &self.problems
    }

    /// The reason label of the first problem, for a condition's `reason`.
    pub fn reason(&self) -> &'static str {
        self.problems
            .first()
            .map_or("InvalidSpec", SpecProblem::reason)
    }
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidSpec {}

impl InvalidSpec {
    /// The problems in at most `limit` bytes, for an Event note (the API server refuses longer
    /// ones): as many whole problems as fit, then how many more there are; the `SpecValid`
    /// condition keeps the whole list.
    pub fn summary(&self, limit: usize) -> String {
        let whole = self.to_string();
        if whole.len() <= limit {
            return whole;
        }
        let mut shown = String::new();
        for (index, problem) in self.problems.iter().enumerate() {
            let more = more_problems(self.problems.len() - index);
            let separator = if index > 0 { "; " } else { "" };
            let problem = problem.to_string();
            let rest = more_problems(self.problems.len() - index - 1);
            if shown.len() + separator.len() + problem.len() + rest.len() > limit {
                return shown + &more;
            }
            shown = shown + separator + &problem;
        }
        shown
    }
}

/// The tail of a shortened problem list: `count` problems left out.
fn more_problems(count: usize) -> String {
    match count {
        0 => String::new(),
        1 => "; and 1 more problem (the SpecValid condition lists them all)".to_owned(),
        n => format!("; and {n} more problems (the SpecValid condition lists them all)"),
    }
}

/// Checks a `ComputeCluster` read from the API server.
pub fn validate(cluster: &ComputeCluster) -> Result<ValidatedCluster, InvalidSpec> {
    let mut problems = Vec::new();
    let name = cluster.metadata.name.as_deref();
    let namespace = cluster.metadata.namespace.as_deref();
    if name.is_none() {
        problems.push(SpecProblem::MissingMetadata { field: "name" });
    }
    if namespace.is_none() {
        problems.push(SpecProblem::MissingMetadata { field: "namespace" });
    }
    if cluster.metadata.uid.is_none() {
        problems.push(SpecProblem::MissingMetadata { field: "uid" });
    }
    let owner = cluster.controller_owner_ref(&());
    match (name, namespace, owner) {
        (Some(name), Some(namespace), Some(owner)) if problems.is_empty() => {
            validate_spec(name, namespace, owner, &cluster.spec)
        }
        _ => Err(InvalidSpec { problems }),
    }
}

/// Checks a cluster spec given its identity; used for ComputeClusters and for the clusters
/// ComputeJobs create.
pub fn validate_spec(
    name: &str,
    namespace: &str,
    owner: OwnerReference,
    spec: &ComputeClusterSpec,
) -> Result<ValidatedCluster, InvalidSpec> {
    let mut problems = Vec::new();

    if let Err(reason) = check_dns1035_label(name, MAX_CLUSTER_NAME_LEN) {
        problems.push(SpecProblem::InvalidClusterName {
            name: name.to_owned(),
            reason,
        });
    }
    if spec.image.trim().is_empty() {
        problems.push(SpecProblem::EmptyImage);
    }
    let command = spec.command.clone().filter(|command| !command.is_empty());
    if command
        .as_ref()
        .is_some_and(|command| command[0].trim().is_empty())
    {
        problems.push(SpecProblem::EmptyCommand);
    }

    let head_template = spec.head.pod_template.clone().unwrap_or_default();
    check_template(&head_template, "spec.head.podTemplate", &mut problems);

    let count = spec.worker_groups.len();
    if count == 0 || count > MAX_WORKER_GROUPS {
        problems.push(SpecProblem::WorkerGroupCount { count });
    }
    let mut groups: Vec<ValidatedGroup> = Vec::with_capacity(count);
    let mut seen = std::collections::BTreeSet::new();
    for (index, group) in spec.worker_groups.iter().enumerate() {
        if !seen.insert(group.name.as_str()) {
            problems.push(SpecProblem::DuplicateGroup {
                name: group.name.clone(),
            });
        }
        // `spec.replicas`, the scale subresource's field, sizes the first group when set.
        let scaled;
        let group = match spec.replicas {
            Some(replicas) if index == 0 => {
                scaled = WorkerGroupSpec {
                    replicas,
                    ..group.clone()
                };
                &scaled
            }
            _ => group,
        };
        if let Some(group) = validate_group(name, group, &mut problems) {
            groups.push(group);
        }
    }

    if let Some(autoscaling) = &spec.autoscaling {
        check_autoscaling(autoscaling, &mut problems);
    }

    if !problems.is_empty() {
        return Err(InvalidSpec { problems });
    }
    Ok(ValidatedCluster {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        owner,
        image: spec.image.clone(),
        image_pull_policy: spec.image_pull_policy,
        command,
        head: ValidatedHead {
            resources: spec.head.resources.clone(),
            service_type: spec.head.service_type,
            template: head_template,
        },
        groups,
        autoscaling: spec.autoscaling.clone(),
        suspend: spec.suspend,
    })
}

/// Checks one group; returns it resolved when its own fields are fine.
fn validate_group(
    cluster: &str,
    group: &WorkerGroupSpec,
    problems: &mut Vec<SpecProblem>,
) -> Option<ValidatedGroup> {
    let before = problems.len();
    let field = |name: &str| format!("spec.workerGroups[{}].{name}", group.name);

    if let Err(reason) = check_dns1123_label(&group.name, MAX_GROUP_NAME_LEN) {
        problems.push(SpecProblem::InvalidGroupName {
            name: group.name.clone(),
            reason,
        });
    }
    let example = worker_pod_name(cluster, &group.name, &"x".repeat(WORKER_SUFFIX_LEN));
    if example.len() > MAX_POD_NAME_LEN {
        problems.push(SpecProblem::PodNameTooLong {
            group: group.name.clone(),
            len: example.len(),
            example,
        });
    }

    let max_replicas = group.max_replicas.unwrap_or(group.replicas);
    let counts_before = problems.len();
    let counts = [
        ("replicas", Some(group.replicas)),
        ("minReplicas", Some(group.min_replicas)),
        // Unset, it is `replicas`, already checked.
        ("maxReplicas", group.max_replicas),
    ];
    for (name, value) in counts {
        if let Some(value) = value {
            check_range(
                &field(name),
                i64::from(value),
                0,
                i64::from(i32::MAX),
                problems,
            );
        }
    }
    // Bounds between counts only mean something once each count is non-negative.
    let counts_valid = problems.len() == counts_before;
    if counts_valid && !(group.min_replicas <= group.replicas && group.replicas <= max_replicas) {
        problems.push(SpecProblem::ReplicaBounds {
            group: group.name.clone(),
            min: group.min_replicas,
            replicas: group.replicas,
            max: max_replicas,
        });
    }

    let slots = match group.slots {
        Some(slots) => {
            check_range(&field("slots"), i64::from(slots), 1, 4096, problems);
            u32::try_from(slots).ok()
        }
        None => slots_from_cpu(group.resources.as_ref(), &field("resources"), problems),
    };

    let mut custom = BTreeMap::new();
    for (name, amount) in group.custom_resources.iter().flatten() {
        let path = field("customResources");
        if name.is_empty() || name.contains([',', '=']) || name.contains(char::is_whitespace) {
            problems.push(SpecProblem::InvalidResourceName {
                field: path.clone(),
                name: name.clone(),
            });
        }
        check_range(
            &format!("{path}.{name}"),
            *amount,
            0,
            i64::from(i32::MAX),
            problems,
        );
        custom.insert(name.clone(), amount.max(&0).unsigned_abs());
    }

    let template = group.pod_template.clone().unwrap_or_default();
    check_template(&template, &field("podTemplate"), problems);

    if problems.len() > before {
        return None;
    }
    Some(ValidatedGroup {
        name: group.name.clone(),
        // The range checks above passed, so these are non-negative.
        replicas: group.replicas.unsigned_abs(),
        min_replicas: group.min_replicas.unsigned_abs(),
        max_replicas: max_replicas.unsigned_abs(),
        slots,
        custom,
        resources: group.resources.clone(),
        template,
    })
}

/// Slots implied by the CPU limit (or else request): whole CPUs, at least one.
fn slots_from_cpu(
    resources: Option<&ResourceRequirements>,
    field: &str,
    problems: &mut Vec<SpecProblem>,
) -> Option<u32> {
    let resources = resources?;
    let (kind, quantity) = [
        ("limits", &resources.limits),
        ("requests", &resources.requests),
    ]
    .into_iter()
    .find_map(|(kind, map)| map.as_ref()?.get("cpu").map(|quantity| (kind, quantity)))?;
    match parse_cpu_millis(&quantity.0) {
        Some(millis) => Some(u32::try_from((millis / 1000).max(1)).unwrap_or(u32::MAX)),
        None => {
            problems.push(SpecProblem::InvalidCpuQuantity {
                field: format!("{field}.{kind}.cpu"),
                quantity: quantity.0.clone(),
            });
            None
        }
    }
}

/// Reads a Kubernetes CPU quantity (`2`, `1.5`, `500m`, `2k`, `1e3`, ...) as millicores,
/// rounding fractions of a millicore up as Kubernetes does.
pub fn parse_cpu_millis(quantity: &str) -> Option<u64> {
    let quantity = quantity.trim();
    let quantity = quantity.strip_prefix('+').unwrap_or(quantity);
    let number_len = quantity
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(number_len);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let scale: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let digits = digits.strip_prefix('+').unwrap_or(digits);
            if digits.is_empty()
                || !digits
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                return None;
            }
            10f64.powi(digits.parse().ok()?)
        }
    };
    let millis = (number * scale * 1000.0).ceil();
    // Saturating cast on purpose: absurd quantities become "very many CPUs", not an error.
    (millis.is_finite() && millis >= 0.0).then_some(millis as u64)
}

/// Checks the user's pod overrides.
fn check_template(template: &PodTemplateOverrides, scope: &str, problems: &mut Vec<SpecProblem>) {
    for var in template.env.iter().flatten() {
        if RESERVED_ENV.contains(&var.name.as_str()) {
            problems.push(SpecProblem::ReservedEnvVar {
                scope: scope.to_owned(),
                name: var.name.clone(),
            });
        }
    }
    if let Some(labels) = &template.labels {
        for key in labels.keys() {
            if RESERVED_LABEL_PREFIXES
                .iter()
                .any(|prefix| key.starts_with(prefix))
            {
                problems.push(SpecProblem::ReservedLabel {
                    scope: scope.to_owned(),
                    key: key.clone(),
                });
            }
        }
        check_label_map(labels, &format!("{scope}.labels"), true, problems);
    }
    if let Some(selector) = &template.node_selector {
        check_label_map(selector, &format!("{scope}.nodeSelector"), true, problems);
    }
    if let Some(annotations) = &template.annotations {
        check_label_map(
            annotations,
            &format!("{scope}.annotations"),
            false,
            problems,
        );
    }
    if let Some(context) = &template.security_context {
        check_non_root(context, scope, problems);
    }
    if let Some(account) = &template.service_account_name {
        if let Err(reason) = check_dns1123_subdomain(account) {
            problems.push(SpecProblem::InvalidServiceAccountName {
                scope: scope.to_owned(),
                name: account.clone(),
                reason,
            });
        }
    }
}

fn check_non_root(context: &PodSecurityContext, scope: &str, problems: &mut Vec<SpecProblem>) {
    if context.run_as_user == Some(0) {
        problems.push(SpecProblem::RunsAsRoot {
            scope: scope.to_owned(),
            setting: "runAsUser: 0",
        });
    }
    if context.run_as_non_root == Some(false) {
        problems.push(SpecProblem::RunsAsRoot {
            scope: scope.to_owned(),
            setting: "runAsNonRoot: false",
        });
    }
}

/// Checks keys (and, for labels and node selectors, values) of a string map.
fn check_label_map(
    map: &std::collections::BTreeMap<String, String>,
    field: &str,
    check_values: bool,
    problems: &mut Vec<SpecProblem>,
) {
    for (key, value) in map {
        if let Err(reason) = check_qualified_name(key) {
            problems.push(SpecProblem::InvalidMetadataEntry {
                field: field.to_owned(),
                what: "key",
                value: key.clone(),
                reason,
            });
        }
        if check_values && !value.is_empty() {
            if let Err(reason) = check_name_part(value, "a label value") {
                problems.push(SpecProblem::InvalidMetadataEntry {
                    field: field.to_owned(),
                    what: "value",
                    value: value.clone(),
                    reason,
                });
            }
        }
    }
}

fn check_autoscaling(autoscaling: &AutoscalingSpec, problems: &mut Vec<SpecProblem>) {
    let target = autoscaling.target_slot_utilization;
    if !(target.is_finite() && target > 0.0 && target <= 10.0) {
        problems.push(SpecProblem::OutOfRange {
            field: "spec.autoscaling.targetSlotUtilization".to_owned(),
            value: target.to_string(),
            expected: "greater than 0 and at most 10".to_owned(),
        });
    }
    let fields = [
        (
            "pollIntervalSeconds",
            i64::from(autoscaling.poll_interval_seconds),
            1,
            3600,
        ),
        (
            "scaleUp.stabilizationWindowSeconds",
            i64::from(autoscaling.scale_up.stabilization_window_seconds),
            0,
            3600,
        ),
        (
            "scaleUp.maxStep",
            i64::from(autoscaling.scale_up.max_step.unwrap_or(1)),
            1,
            i64::from(i32::MAX),
        ),
        (
            "scaleDown.stabilizationWindowSeconds",
            i64::from(autoscaling.scale_down.stabilization_window_seconds),
            0,
            3600,
        ),
        (
            "scaleDown.maxStepPercent",
            i64::from(autoscaling.scale_down.max_step_percent),
            1,
            100,
        ),
        (
            "scaleDown.drainTimeoutSeconds",
            i64::from(autoscaling.scale_down.drain_timeout_seconds),
            0,
            86400,
        ),
        (
            "fallback.failureThreshold",
            i64::from(autoscaling.fallback.failure_threshold),
            1,
            100,
        ),
    ];
    for (name, value, min, max) in fields {
        check_range(
            &format!("spec.autoscaling.{name}"),
            value,
            min,
            max,
            problems,
        );
    }
    if let Some(url) = autoscaling.prometheus.as_ref().and_then(|p| p.url.as_ref()) {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|host| host.is_empty()) {
            problems.push(SpecProblem::InvalidPrometheusUrl { url: url.clone() });
        }
    }
}

fn check_range(field: &str, value: i64, min: i64, max: i64, problems: &mut Vec<SpecProblem>) {
    if value < min || value > max {
        let expected = if max == i64::from(i32::MAX) {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        problems.push(SpecProblem::OutOfRange {
            field: field.to_owned(),
            value: value.to_string(),
            expected,
        });
    }
}

/// A DNS-1035 label: lowercase letters, digits and `-`, starting with a letter, ending with a
/// letter or digit.
fn check_dns1035_label(name: &str, max_len: usize) -> Result<(), String> {
    check_dns1123_label(name, max_len)?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lowercase letter".to_owned());
    }
    Ok(())
}

/// A DNS-1123 label: lowercase letters, digits and `-`, starting and ending with a letter or
/// digit.
fn check_dns1123_label(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > max_len {
        return Err(format!(
            "is {} characters long; at most {max_len} are allowed",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lowercase letters, digits and '-'".to_owned());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated DNS-1123 labels, 253 characters at most.
fn check_dns1123_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "is {} characters long; at most 253 are allowed",
            name.len()
        ));
    }
    name.split('.')
        .try_for_each(|label| check_dns1123_label(label, 63))
        .map_err(|reason| format!("is not a DNS subdomain: each dot-separated part {reason}"))
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name part.
fn check_qualified_name(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_dns1123_subdomain(prefix)
                .map_err(|reason| format!("has a prefix that {reason}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("has an empty name part".to_owned());
    }
    check_name_part(name, "a key's name part")
}

/// A label value or the name part of a key: 63 characters at most, letters, digits, `-`, `_`,
/// `.`, starting and ending with a letter or digit.
fn check_name_part(value: &str, what: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err(format!(
            "is longer than 63 characters, the limit for {what}"
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let body_ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !body_ok || !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(format!(
            "is not valid as {what}: use letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: demo, namespace: science, uid: 6f1c2b9e-0000-4000-8000-000000000001}
spec:
  image: flotilla:dev
  workerGroups:
  - name: cpu
    replicas: 2
"#;

    fn parse(yaml: &str) -> ComputeCluster {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    /// The base fixture with its `workerGroups` replaced by `groups` (YAML flow list items).
    fn with_groups(groups: &str) -> ComputeCluster {
        let mut cluster = parse(BASE);
        cluster.spec.worker_groups = serde_yaml::from_str(groups).expect("groups parse");
        cluster
    }

    #[test]
    fn a_long_problem_list_is_summarised_within_the_limit() {
        let groups: Vec<String> = (0..16)
            .map(|i| {
                format!(
                    "{{name: group-with-a-rather-long-name-{i:02}, replicas: 5, maxReplicas: 4}}"
                )
            })
            .collect();
        let invalid = validate(&with_groups(&format!("[{}]", groups.join(", "))))
            .expect_err("every group's bounds are wrong");
        assert_eq!(invalid.problems().len(), 16);
        assert!(
            invalid.to_string().len() > 1024,
            "the fixture is long enough"
        );
        let summary = invalid.summary(1024);
        assert!(summary.len() <= 1024, "{} bytes: {summary}", summary.len());
        assert!(
            summary.starts_with(&invalid.problems()[0].to_string()),
            "{summary}"
        );
        let shown = summary.matches("replicas must be between").count();
        assert!(
            summary.ends_with(&format!(
                "; and {} more problems (the SpecValid condition lists them all)",
                16 - shown
            )),
            "{summary}"
        );
        let short = validate(&with_groups("[{name: cpu, replicas: 5, maxReplicas: 4}]"))
            .expect_err("bounds are wrong");
        assert_eq!(short.summary(1024), short.to_string());
    }

    fn problems(cluster: &ComputeCluster) -> Vec<SpecProblem> {
        validate(cluster)
            .expect_err("fixture is invalid")
            .problems()
            .to_vec()
    }

    #[test]
    fn minimal_spec_resolves_defaults() {
        let cluster = validate(&parse(BASE)).expect("valid");
        assert_eq!(cluster.name, "demo");
        assert_eq!(cluster.namespace, "science");
        assert_eq!(cluster.owner.kind, "ComputeCluster");
        assert_eq!(cluster.owner.controller, Some(true));
        assert_eq!(cluster.head.service_type, ServiceType::ClusterIP);
        let group = cluster.group("cpu").expect("group cpu");
        assert_eq!(
            (group.min_replicas, group.replicas, group.max_replicas),
            (0, 2, 2)
        );
        assert_eq!(group.slots, None);
        assert!(!cluster.suspend);
    }

    #[test]
    fn replica_bounds_are_enforced() {
        let cluster = with_groups("[{name: cpu, replicas: 1, minReplicas: 2, maxReplicas: 4}]");
        assert!(matches!(
            problems(&cluster)[..],
            [SpecProblem::ReplicaBounds {
                min: 2,
                replicas: 1,
                max: 4,
                ..
            }]
        ));
        let cluster = with_groups("[{name: cpu, replicas: 5, maxReplicas: 4}]");
        assert!(matches!(
            problems(&cluster)[..],
            [SpecProblem::ReplicaBounds {
                replicas: 5,
                max: 4,
                ..
            }]
        ));
        let cluster = with_groups("[{name: cpu, replicas: -1}]");
        let found = problems(&cluster);
        assert!(
            matches!(&found[..], [SpecProblem::OutOfRange { field, .. }] if field == "spec.workerGroups[cpu].replicas"),
            "{found:?}"
        );
    }

    #[test]
    fn duplicate_group_names_are_refused() {
        let cluster = with_groups("[{name: cpu}, {name: gpu}, {name: cpu}]");
        assert_eq!(
            problems(&cluster),
            vec![SpecProblem::DuplicateGroup { name: "cpu".into() }]
        );
    }

    #[test]
    fn custom_resources_are_checked() {
        let cluster = validate(&with_groups(
            "[{name: gpu, customResources: {gpu: 2, mem: 0}}]",
        ))
        .expect("valid");
        assert_eq!(
            cluster.groups[0].custom,
            [("gpu".to_owned(), 2), ("mem".to_owned(), 0)].into()
        );
        let cluster = with_groups("[{name: gpu, customResources: {\"a,b\": 1, gpu: -1}}]");
        let found = problems(&cluster);
        assert!(
            matches!(&found[..], [
                SpecProblem::InvalidResourceName { field, name },
                SpecProblem::OutOfRange { field: range, .. },
            ] if field == "spec.workerGroups[gpu].customResources" && name == "a,b"
                && range == "spec.workerGroups[gpu].customResources.gpu"),
            "{found:?}"
        );
    }

    #[test]
    fn no_groups_is_refused() {
        let cluster = with_groups("[]");
        assert_eq!(
            problems(&cluster),
            vec![SpecProblem::WorkerGroupCount { count: 0 }]
        );
    }

    #[test]
    fn slots_come_from_the_spec_or_the_cpu_resources() {
        let cluster = validate(&with_groups(
            r#"
- {name: fixed, slots: 3, resources: {limits: {cpu: "8"}}}
- {name: limit, resources: {limits: {cpu: 2500m}, requests: {cpu: "1"}}}
- {name: request, resources: {requests: {cpu: 500m}}}
- {name: memory-only, resources: {limits: {memory: 1Gi}}}
"#,
        ))
        .expect("valid");
        let slots: Vec<_> = cluster.groups.iter().map(|g| g.slots).collect();
        assert_eq!(slots, vec![Some(3), Some(2), Some(1), None]);
    }

    #[test]
    fn bad_slots_and_cpu_quantities_are_refused() {
        let found = problems(&with_groups(
            "[{name: zero, slots: 0}, {name: junk, resources: {limits: {cpu: lots}}}]",
        ));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            matches!(&found[0], SpecProblem::OutOfRange { field, .. } if field == "spec.workerGroups[zero].slots")
        );
        assert!(
            matches!(&found[1], SpecProblem::InvalidCpuQuantity { field, quantity } if field == "spec.workerGroups[junk].resources.limits.cpu" && quantity == "lots")
        );
    }

    #[test]
    fn cpu_quantities_parse_like_kubernetes() {
        for (quantity, millis) in [
            ("2", Some(2000)),
            ("1.5", Some(1500)),
            ("500m", Some(500)),
            ("0.0001", Some(1)),
            ("2k", Some(2_000_000)),
            ("1e3", Some(1_000_000)),
            ("2E-1", Some(200)),
            ("1e3m", None),
            ("+3", Some(3000)),
            ("", None),
            ("m", None),
            ("1.2.3", None),
            ("two", None),
            ("-1", None),
            ("5x", None),
        ] {
            assert_eq!(parse_cpu_millis(quantity), millis, "quantity {quantity:?}");
        }
    }

    #[test]
    fn names_must_fit_dns_and_pod_name_limits() {
        let mut cluster = parse(BASE);
        cluster.metadata.name = Some("1demo".into());
        assert!(matches!(
            problems(&cluster)[..],
            [SpecProblem::InvalidClusterName { .. }]
        ));

        let mut cluster = with_groups(&format!("[{{name: {}}}]", "g".repeat(40)));
        cluster.metadata.name = Some("c".repeat(30));
        let found = problems(&cluster);
        assert!(
            matches!(&found[..], [SpecProblem::PodNameTooLong { len: 77, .. }]),
            "{found:?}"
        );

        let found = problems(&with_groups("[{name: Bad_Name}]"));
        assert!(
            matches!(&found[..], [SpecProblem::InvalidGroupName { .. }]),
            "{found:?}"
        );
    }

    #[test]
    fn templates_cannot_take_over_operator_settings() {
        let cluster = parse(
            r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: demo, namespace: science, uid: u1}
spec:
  image: flotilla:dev
  head:
    podTemplate:
      env: [{name: FLOTILLA_TOKEN, value: guessable}, {name: RUST_LOG, value: debug}]
      labels: {flotilla.dev/role: worker, team: physics}
      securityContext: {runAsUser: 0}
  workerGroups:
  - name: cpu
    podTemplate:
      securityContext: {runAsNonRoot: false}
      nodeSelector: {"bad key!": "x"}
      serviceAccountName: Not_A_Name
"#,
        );
        let reasons: Vec<_> = problems(&cluster).iter().map(SpecProblem::reason).collect();
        assert_eq!(
            reasons,
            vec![
                "ReservedEnvVar",
                "ReservedLabel",
                "RunsAsRoot",
                "InvalidMetadata",
                "RunsAsRoot",
                "InvalidServiceAccountName"
            ]
        );
    }

    #[test]
    fn autoscaling_settings_are_checked() {
        let mut cluster = parse(BASE);
        cluster.spec.autoscaling = Some(
            serde_yaml::from_str(
                "{targetSlotUtilization: 0, prometheus: {url: prometheus:9090}, scaleDown: {maxStepPercent: 0}}",
            )
            .expect("autoscaling parses"),
        );
        let found = problems(&cluster);
        let fields: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(found.len(), 3, "{fields:?}");
        assert!(fields[0].starts_with("spec.autoscaling.targetSlotUtilization is 0"));
        assert!(fields[1].starts_with("spec.autoscaling.scaleDown.maxStepPercent is 0"));
        assert!(fields[2].contains("must start with http:// or https://"));
    }

    #[test]
    fn autoscaling_defaults_match_the_design() {
        let autoscaling: AutoscalingSpec = serde_yaml::from_str("{}").expect("parses");
        assert_eq!(autoscaling, AutoscalingSpec::default());
        assert!(autoscaling.enabled);
        assert_eq!(autoscaling.target_slot_utilization, 1.0);
        assert_eq!(autoscaling.poll_interval_seconds, 15);
        assert_eq!(autoscaling.scale_up.stabilization_window_seconds, 0);
        assert_eq!(autoscaling.scale_down.stabilization_window_seconds, 120);
        assert_eq!(autoscaling.scale_down.max_step_percent, 25);
        assert_eq!(autoscaling.fallback.failure_threshold, 3);
        assert_eq!(
            autoscaling.fallback.behavior,
            crate::crd::FallbackBehavior::Hold
        );
    }

    #[test]
    fn objects_not_from_the_api_server_are_refused() {
        let mut cluster = parse(BASE);
        cluster.metadata.uid = None;
        cluster.metadata.namespace = None;
        assert_eq!(
            problems(&cluster),
            vec![
                SpecProblem::MissingMetadata { field: "namespace" },
                SpecProblem::MissingMetadata { field: "uid" }
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut cluster = with_groups("[{name: cpu, replicas: 3, maxReplicas: 1}, {name: cpu}]");
        cluster.spec.image = " ".into();
        let error = validate(&cluster).expect_err("invalid");
        assert_eq!(error.reason(), "EmptyImage");
        assert_eq!(
            error.to_string(),
            "spec.image must name a container image; \
             worker group \"cpu\": replicas must be between minReplicas and maxReplicas, but minReplicas=0, replicas=3, maxReplicas=1; \
             worker group name \"cpu\" is used more than once; group names must be unique"
        );
    }

    #[test]
    fn unknown_fields_are_refused_when_parsing() {
        let yaml = BASE.replace("replicas: 2", "replicas: 2\n    replica: 3");
        let error = serde_yaml::from_str::<ComputeCluster>(&yaml).expect_err("unknown field");
        assert!(
            error.to_string().contains("unknown field `replica`"),
            "{error}"
        );
    }
}
