//! What a `ComputeCluster`'s pods should become, decided from what exists (pure, no I/O).
//!
//! [`plan`] compares the pods the operator observed with the [`ValidatedCluster`] and says which
//! pods to create, which to delete now, and which workers to drain before deleting. The
//! controller carries the plan out; the next reconcile plans again from what then exists, so a
//! plan only has to move the cluster one safe step closer, never all the way at once.
//!
//! The rules:
//! - The head is created when missing, and replaced when it failed or its template changed.
//! - A worker that failed (its pod reached `Failed` or `Succeeded`) is deleted and replaced.
//! - A group with too few live workers gets new ones, all at once.
//! - A group with too many loses the least useful first: workers that never became ready, then
//!   stale ones, then idle ones (as the head reports them), newest first. A worker the head
//!   knows is drained first; one it does not know has nothing to drain and is deleted; a worker
//!   that started is never deleted while the head cannot be asked, since it may be busy.
//! - A group whose workers run an old template (image, command, pod settings) replaces them one
//!   at a time, only while every other worker of the group is ready, and only behind a current,
//!   ready head (a new image replaces the head first). Stale workers that are not ready go
//!   first, without waiting.
//! - Workers of a group the spec no longer has are drained and deleted.
//! - `suspend` deletes every pod at once.

use std::collections::{BTreeMap, HashMap};

use flotilla_proto::v1::WorkerState;
use k8s_openapi::api::core::v1::Pod;

use crate::{
    builders::{self, head_pod_name},
    contract::{LABEL_GROUP, LABEL_ROLE},
    validation::ValidatedCluster,
};

/// Annotation the operator puts on a worker pod when it starts draining it: the RFC 3339 time
/// the drain started. A draining worker no longer counts towards its group's size.
pub const ANNOTATION_DRAINING: &str = "flotilla.dev/draining-since";

/// What the head says about one of its workers (by pod name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadView {
    /// Registered, running no task.
    Idle,
    /// Registered, running tasks.
    Busy,
    /// Being drained.
    Draining,
}

impl From<WorkerState> for HeadView {
    /// A drained worker is still draining for the operator until its pod is gone; a state this
    /// operator does not know counts as busy, so it is never picked first for scale-down.
    fn from(state: WorkerState) -> Self {
        match state {
            WorkerState::Idle => Self::Idle,
            WorkerState::Draining | WorkerState::Drained => Self::Draining,
            WorkerState::Busy | WorkerState::Unspecified => Self::Busy,
        }
    }
}

/// Why the operator deletes a pod; the reason of the Event it records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// The pod stopped for good (`Failed` or `Succeeded`); a new one replaces it.
    Failed,
    /// The pod was built from an old template.
    Outdated,
    /// The group has more workers than it should, and this one has nothing to drain.
    ScaleDown,
    /// The pod belongs to a group the spec no longer has, and has nothing to drain.
    GroupRemoved,
    /// The cluster is suspended.
    Suspended,
}

impl DeleteReason {
    /// The Event reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "ReplacingFailedPod",
            Self::Outdated => "ReplacingOutdatedPod",
            Self::ScaleDown => "ScalingDown",
            Self::GroupRemoved => "GroupRemoved",
            Self::Suspended => "Suspended",
        }
    }
}

/// One step towards the desired pods.
#[derive(Debug, Default)]
pub struct Plan {
    /// Pods to create.
    pub create: Vec<Pod>,
    /// Pods to delete now, with the reason.
    pub delete: Vec<(String, DeleteReason)>,
    /// Workers to drain through the head, then delete (the reason says why they go).
    pub drain: Vec<(String, DeleteReason)>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty() && self.drain.is_empty()
    }
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
    const STUCK: &[&str] = &[
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .find(|w| w.reason.as_deref().is_some_and(|r| STUCK.contains(&r)));
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

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
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
            match label(pod, LABEL_ROLE) {
                Some("head") if name(pod) == head_name => sorted.head = Some(pod),
                Some("worker") => {
                    if let Some(group) = label(pod, LABEL_GROUP) {
                        sorted.groups.entry(group.to_owned()).or_default().push(pod);
                    }
                }
                _ => {}
            }
        }
        sorted
    }

    /// Workers of `group` that count towards its size: not terminating, not finished, not
    /// draining.
    pub fn live(&self, group: &str) -> Vec<&'a Pod> {
        self.groups
            .get(group)
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| !is_terminating(p) && !is_finished(p) && !is_draining(p))
            .collect()
    }
}

/// Decides the next step for `cluster`'s pods. `head_workers` is the head's view of its workers
/// by name, `None` when the head could not be asked. `suffix` makes a fresh worker name suffix
/// each time it is called.
pub fn plan(
    cluster: &ValidatedCluster,
    pods: &[Pod],
    head_workers: Option<&HashMap<String, HeadView>>,
    mut suffix: impl FnMut() -> String,
) -> Plan {
    let sorted = ClusterPods::sort(&cluster.name, pods);
    let mut plan = Plan::default();

    if cluster.suspend {
        let all = sorted
            .head
            .into_iter()
            .chain(sorted.groups.values().flatten().copied());
        plan.delete = all
            .filter(|p| !is_terminating(p))
            .map(|p| (name(p).to_owned(), DeleteReason::Suspended))
            .collect();
        return plan;
    }

    let head_settled = plan_head(cluster, sorted.head, &mut plan);

    for group in &cluster.groups {
        let all = sorted
            .groups
            .get(&group.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Finished workers are replaced: delete now, and the count below creates the new one.
        for pod in all.iter().filter(|p| is_finished(p) && !is_terminating(p)) {
            plan.delete
                .push((name(pod).to_owned(), DeleteReason::Failed));
        }
        let live = sorted.live(&group.name);
        let desired = group.replicas as usize;
        let fresh_hash = builders::worker_template_hash(cluster, group);
        let stale = |p: &Pod| label(p, crate::contract::LABEL_TEMPLATE_HASH) != Some(&fresh_hash);

        if live.len() < desired {
            for _ in live.len()..desired {
                plan.create
                    .push(builders::worker_pod(cluster, group, &suffix()));
            }
        } else if live.len() > desired {
            let mut victims = live.clone();
            // Least useful first: never ready, stale, idle, then newest.
            victims.sort_by_key(|p| {
                let idle = head_workers
                    .and_then(|w| w.get(name(p)))
                    .is_some_and(|v| *v == HeadView::Idle);
                let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                (is_ready(p), !stale(p), !idle, std::cmp::Reverse(created))
            });
            for pod in victims.into_iter().take(live.len() - desired) {
                remove_worker(pod, head_workers, DeleteReason::ScaleDown, &mut plan);
            }
        } else if let Some(old) = live.iter().find(|p| stale(p) && !is_ready(p)) {
            // A stale worker that is not ready serves nothing: replace it first, whatever the
            // rest of the group does (a rollout must not wait on the pods it replaces).
            remove_worker(old, head_workers, DeleteReason::Outdated, &mut plan);
        } else if !head_settled {
            // Replace workers only behind a current, ready head: it drains them.
        } else if let Some(old) = live
            .iter()
            .filter(|p| stale(p))
            .min_by_key(|p| head_workers.and_then(|w| w.get(name(p))) != Some(&HeadView::Idle))
        {
            // One at a time, and only while the rest of the group is whole.
            let group_busy = all.iter().any(|p| is_draining(p) || is_terminating(p));
            if !group_busy && live.iter().all(|p| is_ready(p)) {
                remove_worker(old, head_workers, DeleteReason::Outdated, &mut plan);
            }
        }
    }

    for (group, pods) in &sorted.groups {
        if cluster.group(group).is_none() {
            for pod in pods
                .iter()
                .filter(|p| !is_terminating(p) && !is_draining(p))
            {
                remove_worker(pod, head_workers, DeleteReason::GroupRemoved, &mut plan);
            }
        }
    }
    plan
}

/// Plans the head; returns whether it is settled: current, ready and staying.
fn plan_head(cluster: &ValidatedCluster, head: Option<&Pod>, plan: &mut Plan) -> bool {
    match head {
        None => plan.create.push(builders::head_pod(cluster)),
        Some(pod) if is_terminating(pod) => {}
        Some(pod) if is_finished(pod) => {
            plan.delete
                .push((name(pod).to_owned(), DeleteReason::Failed));
        }
        Some(pod)
            if builders::template_hash_of(pod).as_deref()
                != Some(builders::head_template_hash(cluster).as_str()) =>
        {
            plan.delete
                .push((name(pod).to_owned(), DeleteReason::Outdated));
        }
        Some(pod) => return is_ready(pod),
    }
    false
}

/// Whether the pod never ran its program: still pending, or unable to start.
fn never_started(pod: &Pod) -> bool {
    matches!(phase(pod), None | Some("Pending")) || start_problem(pod).is_some()
}

/// Drains a worker the head knows, and deletes one it does not know (nothing runs there). While
/// the head cannot be asked, a worker that started may be busy (even one failing its readiness
/// probe), so it stays until the head answers.
fn remove_worker(
    pod: &Pod,
    head_workers: Option<&HashMap<String, HeadView>>,
    reason: DeleteReason,
    plan: &mut Plan,
) {
    let target = (name(pod).to_owned(), reason);
    match head_workers {
        Some(workers) if workers.contains_key(name(pod)) => plan.drain.push(target),
        Some(_) => plan.delete.push(target),
        None if never_started(pod) => plan.delete.push(target),
        None => {}
    }
}
