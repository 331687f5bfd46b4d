//! What a pod's metadata and status say about it (ready, failed, stale, draining, why it cannot
//! start), and a cluster's pods sorted by role; read by the plan and the status alike.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};

use crate::{
    contract::{Role, ANNOTATION_DRAINING, LABEL_GROUP, LABEL_ROLE, LABEL_TEMPLATE_HASH},
    names::head_pod_name,
};

/// Waiting reasons of the kubelet that mean a container will not start without a change: a bad
/// image, a crash loop, a broken container config.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The pod's name.
pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// The value of label `key`, if the pod has it.
pub fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The template hash label of a pod, if it has one.
pub fn template_hash(pod: &Pod) -> Option<&str> {
    label(pod, LABEL_TEMPLATE_HASH)
}

/// Whether the pod is being deleted.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Whether the pod stopped for good.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(phase(pod), Some("Failed" | "Succeeded"))
}

/// Whether the operator started draining the pod.
pub fn is_draining(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_DRAINING))
}

/// When the operator started draining the pod; `None` when it did not, or the annotation was
/// changed into something that is not a time.
pub fn draining_since(pod: &Pod) -> Option<Timestamp> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_DRAINING)?
        .parse()
        .ok()
}

/// The pod's phase.
pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Whether the pod's `Ready` condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Why a pod cannot start, in the kubelet's or the scheduler's own words: `(reason, message)`.
/// `None` while the pod starts normally or runs.
pub fn start_problem(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| {
            w.reason
                .as_deref()
                .is_some_and(|r| STUCK_REASONS.contains(&r))
        });
    if let Some(waiting) = waiting {
        let reason = waiting.reason.clone().unwrap_or_default();
        let message = waiting.message.clone().unwrap_or_else(|| reason.clone());
        return Some((reason, message));
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            let reason = c.reason.clone().unwrap_or_else(|| "Unschedulable".into());
            let message = c.message.clone().unwrap_or_else(|| reason.clone());
            (reason, message)
        })
}

/// Whether the pod never ran its program: still pending, or unable to start.
pub fn never_started(pod: &Pod) -> bool {
    matches!(phase(pod), None | Some("Pending")) || start_problem(pod).is_some()
}

/// The pods of one cluster, sorted by role.
#[derive(Debug, Default)]
pub struct ClusterPods<'a> {
    /// The head pod, if it exists.
    pub head: Option<&'a Pod>,
    /// Worker pods by group label, in the order they were observed.
    pub groups: BTreeMap<String, Vec<&'a Pod>>,
}

impl<'a> ClusterPods<'a> {
    /// Sorts `pods` (all of one cluster) into the head and worker groups; others are ignored.
    pub fn sort(cluster: &str, pods: &'a [Pod]) -> Self {
        let head_name = head_pod_name(cluster);
        let mut sorted = ClusterPods::default();
        for pod in pods {
            let role = label(pod, LABEL_ROLE);
            if role == Some(Role::Head.as_str()) && name(pod) == head_name {
                sorted.head = Some(pod);
            } else if role == Some(Role::Worker.as_str()) {
                if let Some(group) = label(pod, LABEL_GROUP) {
                    sorted.groups.entry(group.to_owned()).or_default().push(pod);
                }
            }
        }
        sorted
    }

    /// Every worker of `group`, whatever its state.
    pub fn group(&self, group: &str) -> &[&'a Pod] {
        self.groups
            .get(group)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Workers of `group` that count towards its size: not terminating, not finished, not
    /// draining.
    pub fn live(&self, group: &str) -> Vec<&'a Pod> {
        self.group(group)
            .iter()
            .copied()
            .filter(|p| !is_terminating(p) && !is_finished(p) && !is_draining(p))
            .collect()
    }
}
