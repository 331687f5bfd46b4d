//! What a `ComputeCluster`'s children should become: a pure diff of what exists
//! ([`Observed`]) against what the spec asks for ([`Desired`]), giving one safe step.
//!
//! [`plan`] says whether the token Secret and the head Service must be created, which pods to
//! create, which to delete now, which workers to mark for draining, and which marked workers
//! have drains to run. The apply step carries the plan out; the next reconcile plans again from
//! what then exists, so a plan only has to move the cluster one safe step closer, never all the
//! way at once.
//!
//! The rules:
//! - The head is created when missing, and replaced when it failed or its template changed.
//! - A worker that failed (its pod reached `Failed` or `Succeeded`) is deleted and replaced.
//! - A group with too few live workers gets new ones, all at once; draining workers the head
//!   still knows, on the current template, are taken back first (newest drain first).
//! - A group with too many loses the least useful first: workers that never became ready, then
//!   stale ones, then idle ones (as the head reports them), newest first. A worker the head
//!   knows is drained first; one it does not know has nothing to drain and is deleted; a worker
//!   that started is never deleted while the head cannot be asked, since it may be busy.
//! - A group whose workers run an old template (image, command, pod settings) replaces them one
//!   at a time, only while every other worker of the group is ready, and only behind a current,
//!   ready head (a new image replaces the head first). Stale workers that are not ready go
//!   first, without waiting.
//! - Workers of a group the spec no longer has are drained and deleted.
//! - A worker marked draining keeps its drain running until its pod is gone, across reconciles
//!   and operator restarts.
//! - `suspend` deletes every pod at once.

use std::collections::HashMap;

use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};

use super::{
    desired::Desired,
    observe::{Observed, TokenSecret},
    pods::{self, ClusterPods},
};
use crate::head::HeadView;

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

/// A worker marked draining whose pod is still there: its drain runs until the pod is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarkedDrain {
    /// The worker's pod.
    pub pod: String,
    /// When the drain started; the deadline counts from here across retries and restarts.
    /// `None` when the annotation no longer holds a time.
    pub since: Option<Timestamp>,
}

/// One step towards the desired children.
#[derive(Debug, Default)]
pub struct Plan {
    /// Create the token Secret, with a fresh token (there is none).
    pub create_secret: bool,
    /// The head Service does not exist yet.
    pub create_service: bool,
    /// Apply the head Service: it is missing, or lacks or differs in a field the operator sets
    /// (server-side apply puts back what someone changed). A Service that already holds every
    /// field is left alone, so a settled cluster's pass writes nothing.
    pub apply_service: bool,
    /// Pods to create.
    pub create: Vec<Pod>,
    /// Pods to delete now, with the reason.
    pub delete: Vec<(String, DeleteReason)>,
    /// Workers to mark draining, to be drained through the head and then deleted (the reason
    /// says why they go).
    pub drain: Vec<(String, DeleteReason)>,
    /// Workers marked draining earlier whose drains must run (again, when none is in flight).
    /// Workers marked by this step are not among them yet: the next reconcile sees their marks.
    pub run_drains: Vec<MarkedDrain>,
    /// Draining workers to take back at the head (their drains are cancelled, their marks
    /// removed) instead of creating new pods.
    pub undrain: Vec<String>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        !self.create_secret
            && !self.create_service
            && self.create.is_empty()
            && self.delete.is_empty()
            && self.drain.is_empty()
            && self.run_drains.is_empty()
            && self.undrain.is_empty()
    }
}

/// Whether `current` holds every field `wanted` sets, with the same value (lists item by item;
/// fields the API server adds, such as defaults, do not matter).
pub fn holds<T: serde::Serialize>(current: &T, wanted: &T) -> bool {
    fn covers(current: &serde_json::Value, wanted: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (current, wanted) {
            (Value::Object(c), Value::Object(w)) => w
                .iter()
                .all(|(k, v)| c.get(k).is_some_and(|have| covers(have, v))),
            (Value::Array(c), Value::Array(w)) => {
                c.len() == w.len() && c.iter().zip(w).all(|(have, v)| covers(have, v))
            }
            (c, w) => c == w,
        }
    }
    match (serde_json::to_value(current), serde_json::to_value(wanted)) {
        (Ok(current), Ok(wanted)) => covers(&current, &wanted),
        _ => false,
    }
}

/// Decides the next step from what exists towards what is desired. `suffix` makes a fresh worker
/// name suffix each time it is called.
pub fn plan(desired: &Desired, observed: &Observed, mut suffix: impl FnMut() -> String) -> Plan {
    let sorted = ClusterPods::sort(&desired.cluster, &observed.pods);
    let head_workers = observed.head_workers.as_ref();
    let mut plan = Plan {
        create_secret: observed.secret == TokenSecret::Missing,
        create_service: !observed.service_exists,
        apply_service: !observed
            .service
            .as_ref()
            .is_some_and(|current| holds(current, &desired.service)),
        run_drains: observed
            .pods
            .iter()
            .filter(|p| pods::is_draining(p) && !pods::is_terminating(p))
            .map(|p| MarkedDrain {
                pod: pods::name(p).to_owned(),
                since: pods::draining_since(p),
            })
            .collect(),
        ..Plan::default()
    };

    if desired.suspend {
        let all = sorted
            .head
            .into_iter()
            .chain(sorted.groups.values().flatten().copied());
        plan.delete = all
            .filter(|p| !pods::is_terminating(p))
            .map(|p| (pods::name(p).to_owned(), DeleteReason::Suspended))
            .collect();
        return plan;
    }

    let head_settled = plan_head(desired, sorted.head, &mut plan);

    for template in &desired.workers {
        let all = sorted.group(&template.group);
        // Finished workers are replaced: delete now, and the count below creates the new one.
        for pod in all
            .iter()
            .filter(|p| pods::is_finished(p) && !pods::is_terminating(p))
        {
            plan.delete
                .push((pods::name(pod).to_owned(), DeleteReason::Failed));
        }
        let live = sorted.live(&template.group);
        let desired_count = template.replicas;
        let stale = |p: &Pod| pods::template_hash(p) != Some(template.hash.as_str());
        let idle =
            |p: &Pod| head_workers.and_then(|w| w.get(pods::name(p))) == Some(&HeadView::Idle);

        if live.len() < desired_count {
            let mut back: Vec<&Pod> = all
                .iter()
                .copied()
                .filter(|p| {
                    pods::is_draining(p)
                        && !pods::is_terminating(p)
                        && !pods::is_finished(p)
                        && !stale(p)
                        && head_workers.is_some_and(|w| w.contains_key(pods::name(p)))
                })
                .collect();
            // Newest drain first: it has moved the least away.
            back.sort_by_key(|p| std::cmp::Reverse(pods::draining_since(p)));
            back.truncate(desired_count - live.len());
            for pod in &back {
                plan.undrain.push(pods::name(pod).to_owned());
            }
            plan.run_drains.retain(|m| !plan.undrain.contains(&m.pod));
            for _ in live.len() + back.len()..desired_count {
                plan.create.push(template.pod(&suffix()));
            }
        } else if live.len() > desired_count {
            let mut victims = live.clone();
            // Least useful first: never ready, stale, idle, then newest.
            victims.sort_by_key(|p| {
                let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
                (
                    pods::is_ready(p),
                    !stale(p),
                    !idle(p),
                    std::cmp::Reverse(created),
                )
            });
            for pod in victims.into_iter().take(live.len() - desired_count) {
                remove_worker(pod, head_workers, DeleteReason::ScaleDown, &mut plan);
            }
        } else if let Some(old) = live.iter().find(|p| stale(p) && !pods::is_ready(p)) {
            // A stale worker that is not ready serves nothing: replace it first, whatever the
            // rest of the group does (a rollout must not wait on the pods it replaces).
            remove_worker(old, head_workers, DeleteReason::Outdated, &mut plan);
        } else if !head_settled {
            // Replace workers only behind a current, ready head: it drains them.
        } else if let Some(old) = live.iter().filter(|p| stale(p)).min_by_key(|p| !idle(p)) {
            // One at a time, and only while the rest of the group is whole.
            let group_busy = all
                .iter()
                .any(|p| pods::is_draining(p) || pods::is_terminating(p));
            if !group_busy && live.iter().all(|p| pods::is_ready(p)) {
                remove_worker(old, head_workers, DeleteReason::Outdated, &mut plan);
            }
        }
    }

    for (group, group_pods) in &sorted.groups {
        if desired.group(group).is_none() {
            for pod in group_pods
                .iter()
                .filter(|p| !pods::is_terminating(p) && !pods::is_draining(p))
            {
                remove_worker(pod, head_workers, DeleteReason::GroupRemoved, &mut plan);
            }
        }
    }
    plan
}

/// Plans the head; returns whether it is settled: current, ready and staying.
fn plan_head(desired: &Desired, head: Option<&Pod>, plan: &mut Plan) -> bool {
    match head {
        None => plan.create.push(desired.head.clone()),
        Some(pod) if pods::is_terminating(pod) => {}
        Some(pod) if pods::is_finished(pod) => {
            plan.delete
                .push((pods::name(pod).to_owned(), DeleteReason::Failed));
        }
        Some(pod) if pods::template_hash(pod) != Some(desired.head_hash.as_str()) => {
            plan.delete
                .push((pods::name(pod).to_owned(), DeleteReason::Outdated));
        }
        Some(pod) => return pods::is_ready(pod),
    }
    false
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
    let target = (pods::name(pod).to_owned(), reason);
    match head_workers {
        Some(workers) if workers.contains_key(pods::name(pod)) => plan.drain.push(target),
        Some(_) => plan.delete.push(target),
        None if pods::never_started(pod) => plan.delete.push(target),
        None => {}
    }
}
