//! A `ComputeCluster`'s status, derived from what the operator observed (pure, no I/O).
//!
//! Conditions (each `True` or `False` with a reason and a message):
//! - `SpecValid`: the operator can honour the spec; `False` names every problem.
//! - `HeadReady`: the head pod is ready; `False` carries the pod's own words when it cannot start.
//! - `WorkersReady`: every desired worker is ready; `False` says how many are, or why one cannot
//!   start.
//! - `Progressing`: the operator is creating, draining or deleting pods, or pods are starting;
//!   `False` with the API server's refusal when it cannot (quota, admission policy).
//! - `Ready`: the cluster runs as the spec asks (phase `Running`), for `kubectl wait
//!   --for=condition=Ready` and status-aware tools.
//!
//! A condition keeps its `lastTransitionTime` until its status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::{
    builders::{head_address, head_pod_name, head_service_name},
    crd::{ClusterPhase, ComputeClusterStatus, HeadStatus, WorkerGroupStatus},
    plan::{self, ClusterPods, Plan},
    validation::{InvalidSpec, ValidatedCluster},
};

/// Condition type: the spec can be honoured.
pub const SPEC_VALID: &str = "SpecValid";
/// Condition type: the head pod is ready.
pub const HEAD_READY: &str = "HeadReady";
/// Condition type: every desired worker is ready.
pub const WORKERS_READY: &str = "WorkersReady";
/// Condition type: pods are being created, drained, deleted or are starting.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the cluster runs as the spec asks.
pub const READY: &str = "Ready";

/// Builds conditions, keeping the transition times of those whose status did not change.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Time,
    out: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    fn new(previous: Option<&'a ComputeClusterStatus>, generation: Option<i64>, now: Time) -> Self {
        Conditions {
            previous: previous
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default(),
            generation,
            now,
            out: Vec::new(),
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: impl Into<String>) {
        let status = if status { "True" } else { "False" };
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.out.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time,
        });
    }
}

/// The status of a cluster whose spec cannot be honoured: phase `Failed`, `SpecValid` false with
/// every problem; the rest of the previous status is kept.
pub fn invalid(
    previous: Option<&ComputeClusterStatus>,
    generation: Option<i64>,
    problems: &InvalidSpec,
    now: Time,
) -> ComputeClusterStatus {
    let mut conditions = Conditions::new(previous, generation, now);
    conditions.set(SPEC_VALID, false, problems.reason(), problems.to_string());
    let mut kept: Vec<Condition> = conditions
        .previous
        .iter()
        .filter(|c| c.type_ != SPEC_VALID)
        .cloned()
        .collect();
    let mut status = previous.cloned().unwrap_or_default();
    status.conditions = conditions.out;
    status.conditions.append(&mut kept);
    status.phase = Some(ClusterPhase::Failed);
    status.observed_generation = generation;
    status
}

/// The status of a valid cluster from its pods and the step this reconcile takes; `blocked` is
/// the API server's refusal of that step, if it refused.
#[allow(clippy::too_many_arguments)]
pub fn derive(
    cluster: &ValidatedCluster,
    pods: &[k8s_openapi::api::core::v1::Pod],
    step: &Plan,
    blocked: Option<&str>,
    previous: Option<&ComputeClusterStatus>,
    generation: Option<i64>,
    now: Time,
) -> ComputeClusterStatus {
    let sorted = ClusterPods::sort(&cluster.name, pods);
    let mut conditions = Conditions::new(previous, generation, now.clone());
    conditions.set(
        SPEC_VALID,
        true,
        "Valid",
        "the operator can honour the spec",
    );

    // The head.
    let head = sorted.head.filter(|p| !plan::is_terminating(p));
    let head_ready = head.is_some_and(plan::is_ready);
    let head_problem = head.and_then(plan::start_problem);
    match (head, &head_problem) {
        (_, _) if cluster.suspend => {
            conditions.set(HEAD_READY, false, "Suspended", "the cluster is suspended")
        }
        (None, _) => conditions.set(
            HEAD_READY,
            false,
            "PodMissing",
            "the head pod is being created",
        ),
        (Some(_), Some((reason, message))) => {
            conditions.set(HEAD_READY, false, reason, message.clone())
        }
        (Some(_), None) if head_ready => {
            conditions.set(HEAD_READY, true, "PodReady", "the head pod is ready")
        }
        (Some(pod), None) => conditions.set(
            HEAD_READY,
            false,
            "PodNotReady",
            format!("the head pod is {}", plan::phase(pod).unwrap_or("Pending")),
        ),
    }

    // The workers.
    let mut groups = Vec::new();
    let (mut desired_total, mut existing_total, mut live_total, mut ready_total) = (0, 0, 0, 0);
    let mut worker_problem = None;
    for group in &cluster.groups {
        let existing = sorted
            .groups
            .get(&group.name)
            .into_iter()
            .flatten()
            .filter(|p| !plan::is_terminating(p))
            .count();
        let live = sorted.live(&group.name);
        let ready = live.iter().filter(|p| plan::is_ready(p)).count();
        if worker_problem.is_none() {
            worker_problem = live.iter().find_map(|p| {
                let (reason, message) = plan::start_problem(p)?;
                Some((
                    reason,
                    format!(
                        "{}: {message}",
                        p.metadata.name.as_deref().unwrap_or_default()
                    ),
                ))
            });
        }
        let desired = if cluster.suspend {
            0
        } else {
            group.replicas as i32
        };
        let previous_group =
            previous.and_then(|s| s.worker_groups.iter().find(|g| g.name == group.name));
        let last_scale_time = match previous_group {
            Some(g) if g.desired_replicas == desired => g.last_scale_time.clone(),
            _ => Some(now.clone()),
        };
        desired_total += desired;
        existing_total += existing as i32;
        live_total += live.len() as i32;
        ready_total += ready as i32;
        groups.push(WorkerGroupStatus {
            name: group.name.clone(),
            replicas: existing as i32,
            ready_replicas: ready as i32,
            desired_replicas: desired,
            last_scale_time,
        });
    }
    // Draining workers are on their way out: they neither count nor keep the cluster from ready.
    let workers_ready = ready_total == desired_total && live_total == desired_total;
    match &worker_problem {
        _ if workers_ready => conditions.set(
            WORKERS_READY,
            true,
            "AllReady",
            format!("{ready_total} of {desired_total} workers ready"),
        ),
        Some((reason, message)) => conditions.set(WORKERS_READY, false, reason, message.clone()),
        None => conditions.set(
            WORKERS_READY,
            false,
            "WorkersNotReady",
            format!("{ready_total} of {desired_total} workers ready"),
        ),
    }

    // Progress.
    let settling = pods
        .iter()
        .any(|p| plan::is_terminating(p) || plan::is_draining(p));
    let starting = pods
        .iter()
        .any(|p| !plan::is_terminating(p) && !plan::is_ready(p) && !plan::is_finished(p));
    let (progressing, reason, message) = if let Some(refusal) = blocked {
        (false, "ApplyFailed", refusal.to_owned())
    } else if !step.create.is_empty() {
        (
            true,
            "CreatingPods",
            format!("creating {} pods", step.create.len()),
        )
    } else if !step.drain.is_empty() {
        (
            true,
            "DrainingWorkers",
            format!("draining {} workers", step.drain.len()),
        )
    } else if !step.delete.is_empty() {
        (
            true,
            "DeletingPods",
            format!("deleting {} pods", step.delete.len()),
        )
    } else if settling {
        (
            true,
            "PodsStopping",
            "waiting for drained or deleted pods to go".to_owned(),
        )
    } else if starting && worker_problem.is_none() && head_problem.is_none() {
        (
            true,
            "PodsStarting",
            "waiting for pods to become ready".to_owned(),
        )
    } else {
        (false, "Stable", "every pod matches the spec".to_owned())
    };
    conditions.set(PROGRESSING, progressing, reason, message);

    let phase = if cluster.suspend {
        ClusterPhase::Suspended
    } else if head_problem.is_some() {
        ClusterPhase::Failed
    } else if !head_ready {
        ClusterPhase::Pending
    } else if workers_ready {
        ClusterPhase::Running
    } else {
        ClusterPhase::Degraded
    };

    let running = phase == ClusterPhase::Running;
    conditions.set(
        READY,
        running,
        if running { "Running" } else { "NotRunning" },
        format!("the cluster is {phase:?}"),
    );

    ComputeClusterStatus {
        phase: Some(phase),
        conditions: conditions.out,
        observed_generation: generation,
        desired_workers: desired_total,
        workers: existing_total,
        ready_workers: ready_total,
        head: Some(HeadStatus {
            pod_name: head.map(|_| head_pod_name(&cluster.name)),
            service_name: Some(head_service_name(&cluster.name)),
            address: Some(head_address(cluster)),
        }),
        worker_groups: groups,
        autoscaler: previous.and_then(|s| s.autoscaler.clone()),
    }
}
