//! A `ComputeCluster`'s status, derived from what the operator observed and what it applied
//! (pure, no I/O), and whether the cluster is still moving.
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
//! `replicas` and `selector` are the first worker group's, for the scale subresource.
//!
//! A condition keeps its `lastTransitionTime` until its status flips. A refusal repeated on
//! every retry keeps its first message while only the random name of the refused worker pod
//! differs, so retrying writes no new status.

use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};

use super::{
    apply::Applied,
    observe::Observed,
    pods::{self, ClusterPods},
    validate::{InvalidSpec, ValidatedCluster},
};
use crate::{
    crd::{ClusterPhase, ComputeClusterStatus, HeadStatus, WorkerGroupStatus},
    names::{
        head_address, head_pod_name, head_service_name, worker_pod_name, worker_selector,
        WORKER_SUFFIX_LEN,
    },
    Refusal,
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

/// What the status of one pass is written over and stamped with.
#[derive(Clone, Debug)]
pub struct Stamp<'a> {
    /// The status being replaced: conditions keep its transition times while they hold, and a
    /// group keeps its last scale time while its size stays.
    pub previous: Option<&'a ComputeClusterStatus>,
    /// The generation of the spec the pass acted on.
    pub generation: Option<i64>,
    /// When the pass ran.
    pub now: Time,
}

/// One condition's value.
struct Verdict {
    holds: bool,
    reason: String,
    message: String,
}

impl Verdict {
    fn new(holds: bool, reason: &str, message: impl Into<String>) -> Self {
        Verdict {
            holds,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Builds conditions, keeping the transition times of those whose status did not change.
struct Conditions<'a> {
    stamp: &'a Stamp<'a>,
    out: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    fn new(stamp: &'a Stamp<'a>) -> Self {
        Conditions {
            stamp,
            out: Vec::new(),
        }
    }

    fn previous(&self) -> &'a [Condition] {
        self.stamp
            .previous
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default()
    }

    fn set(&mut self, type_: &str, verdict: Verdict) {
        let status = if verdict.holds { "True" } else { "False" };
        let last_transition_time = self
            .previous()
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(
                || self.stamp.now.clone(),
                |c| c.last_transition_time.clone(),
            );
        self.out.push(Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: verdict.reason,
            message: verdict.message,
            observed_generation: self.stamp.generation,
            last_transition_time,
        });
    }
}

/// The status of a cluster whose spec cannot be honoured: phase `Failed`, `SpecValid` false with
/// every problem; the rest of the previous status is kept.
pub fn invalid(stamp: &Stamp<'_>, problems: &InvalidSpec) -> ComputeClusterStatus {
    let mut conditions = Conditions::new(stamp);
    conditions.set(
        SPEC_VALID,
        Verdict::new(false, problems.reason(), problems.to_string()),
    );
    let kept = conditions
        .previous()
        .iter()
        .filter(|c| c.type_ != SPEC_VALID)
        .cloned();
    let mut status = stamp.previous.cloned().unwrap_or_default();
    status.conditions = conditions.out.into_iter().chain(kept).collect();
    status.phase = Some(ClusterPhase::Failed);
    status.observed_generation = stamp.generation;
    status
}

/// The status of a valid cluster from what this pass observed and applied.
pub fn derive(
    cluster: &ValidatedCluster,
    observed: &Observed,
    applied: &Applied,
    stamp: &Stamp<'_>,
) -> ComputeClusterStatus {
    let sorted = ClusterPods::sort(&cluster.name, &observed.pods);
    let head = live_head(&sorted);
    let workers = WorkerTally::of(cluster, &sorted, stamp);
    let stuck = head.and_then(pods::start_problem).is_some() || workers.problem.is_some();
    let progress = Progress::from_parts(observed, applied, stuck);
    let phase = phase(cluster, head, &workers);

    let mut conditions = Conditions::new(stamp);
    conditions.set(
        SPEC_VALID,
        Verdict::new(true, "Valid", "the operator can honour the spec"),
    );
    conditions.set(HEAD_READY, head_ready(cluster, head));
    conditions.set(WORKERS_READY, workers_ready(&workers));
    let mut progressing = progress.verdict();
    if let Progress::Blocked(_) = progress {
        keep_repeated_refusal(cluster, conditions.previous(), &mut progressing);
    }
    conditions.set(PROGRESSING, progressing);
    conditions.set(READY, ready(phase));

    ComputeClusterStatus {
        phase: Some(phase),
        conditions: conditions.out,
        observed_generation: stamp.generation,
        desired_workers: workers.desired,
        workers: workers.existing,
        ready_workers: workers.ready,
        replicas: workers.groups.first().map_or(0, |g| g.replicas),
        selector: cluster.groups.first().map(|g| {
            worker_selector(&cluster.name, &g.name)
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        head: Some(HeadStatus {
            pod_name: head.map(|_| head_pod_name(&cluster.name)),
            service_name: Some(head_service_name(&cluster.name)),
            address: Some(head_address(&cluster.name, &cluster.namespace)),
        }),
        worker_groups: workers.groups,
        autoscaler: stamp.previous.and_then(|s| s.autoscaler.clone()),
    }
}

/// Keeps the previous `Progressing` message when `verdict` repeats its refusal with another
/// random worker pod name: the API server names the pod it refused, and a new name on every
/// retry would make every retry a status write.
fn keep_repeated_refusal(
    cluster: &ValidatedCluster,
    previous: &[Condition],
    verdict: &mut Verdict,
) {
    let Some(before) = previous
        .iter()
        .find(|c| c.type_ == PROGRESSING && c.status == "False" && c.reason == verdict.reason)
    else {
        return;
    };
    if without_worker_suffixes(cluster, &before.message)
        == without_worker_suffixes(cluster, &verdict.message)
    {
        verdict.message.clone_from(&before.message);
    }
}

/// `message` with the random suffix of every worker pod name of `cluster` replaced by `*`.
fn without_worker_suffixes(cluster: &ValidatedCluster, message: &str) -> String {
    let mut out = message.to_owned();
    for group in &cluster.groups {
        let prefix = worker_pod_name(&cluster.name, &group.name, "");
        let mut from = 0;
        while let Some(found) = out[from..].find(&prefix) {
            let start = from + found + prefix.len();
            let suffix = out[start..]
                .char_indices()
                .take_while(|(_, c)| c.is_ascii_alphanumeric())
                .count();
            if suffix == WORKER_SUFFIX_LEN {
                out.replace_range(start..start + suffix, "*");
            }
            from = start;
        }
    }
    out
}

/// The head pod, unless it is being deleted.
fn live_head<'a>(sorted: &ClusterPods<'a>) -> Option<&'a Pod> {
    sorted.head.filter(|p| !pods::is_terminating(p))
}

/// The workers of every group of the spec, counted.
struct WorkerTally {
    groups: Vec<WorkerGroupStatus>,
    /// Workers the spec asks for (none while suspended).
    desired: i32,
    /// Worker pods not being deleted.
    existing: i32,
    /// Workers that count towards their group's size.
    live: i32,
    /// Live workers that are ready.
    ready: i32,
    /// Why the first live worker that cannot start cannot: `(reason, "<pod>: <message>")`.
    problem: Option<(String, String)>,
}

impl WorkerTally {
    fn of(cluster: &ValidatedCluster, sorted: &ClusterPods<'_>, stamp: &Stamp<'_>) -> Self {
        let mut tally = WorkerTally {
            groups: Vec::new(),
            desired: 0,
            existing: 0,
            live: 0,
            ready: 0,
            problem: worker_problem(cluster, sorted),
        };
        for group in &cluster.groups {
            let existing = sorted
                .group(&group.name)
                .iter()
                .filter(|p| !pods::is_terminating(p))
                .count() as i32;
            let live = sorted.live(&group.name);
            let ready = live.iter().filter(|p| pods::is_ready(p)).count() as i32;
            let desired = if cluster.suspend {
                0
            } else {
                group.replicas as i32
            };
            let previous = stamp
                .previous
                .and_then(|s| s.worker_groups.iter().find(|g| g.name == group.name));
            let last_scale_time = match previous {
                Some(g) if g.desired_replicas == desired => g.last_scale_time.clone(),
                _ => Some(stamp.now.clone()),
            };
            tally.desired += desired;
            tally.existing += existing;
            tally.live += live.len() as i32;
            tally.ready += ready;
            tally.groups.push(WorkerGroupStatus {
                name: group.name.clone(),
                replicas: existing,
                ready_replicas: ready,
                desired_replicas: desired,
                last_scale_time,
            });
        }
        tally
    }

    /// Whether exactly the desired workers live and all are ready. Draining workers are on their
    /// way out: they neither count nor keep the cluster from ready.
    fn all_ready(&self) -> bool {
        self.ready == self.desired && self.live == self.desired
    }
}

/// Why the first live worker of the spec's groups that cannot start cannot.
fn worker_problem(
    cluster: &ValidatedCluster,
    sorted: &ClusterPods<'_>,
) -> Option<(String, String)> {
    cluster
        .groups
        .iter()
        .flat_map(|group| sorted.live(&group.name))
        .find_map(|pod| {
            let (reason, message) = pods::start_problem(pod)?;
            Some((reason, format!("{}: {message}", pods::name(pod))))
        })
}

fn head_ready(cluster: &ValidatedCluster, head: Option<&Pod>) -> Verdict {
    if cluster.suspend {
        return Verdict::new(false, "Suspended", "the cluster is suspended");
    }
    let Some(pod) = head else {
        return Verdict::new(false, "PodMissing", "the head pod is being created");
    };
    if let Some((reason, message)) = pods::start_problem(pod) {
        Verdict::new(false, &reason, message)
    } else if pods::is_ready(pod) {
        Verdict::new(true, "PodReady", "the head pod is ready")
    } else {
        Verdict::new(
            false,
            "PodNotReady",
            format!("the head pod is {}", pods::phase(pod).unwrap_or("Pending")),
        )
    }
}

fn workers_ready(workers: &WorkerTally) -> Verdict {
    let count = format!("{} of {} workers ready", workers.ready, workers.desired);
    match &workers.problem {
        _ if workers.all_ready() => Verdict::new(true, "AllReady", count),
        Some((reason, message)) => Verdict::new(false, reason, message.clone()),
        None => Verdict::new(false, "WorkersNotReady", count),
    }
}

fn phase(cluster: &ValidatedCluster, head: Option<&Pod>, workers: &WorkerTally) -> ClusterPhase {
    if cluster.suspend {
        ClusterPhase::Suspended
    } else if head.and_then(pods::start_problem).is_some() {
        ClusterPhase::Failed
    } else if !head.is_some_and(pods::is_ready) {
        ClusterPhase::Pending
    } else if workers.all_ready() {
        ClusterPhase::Running
    } else {
        ClusterPhase::Degraded
    }
}

fn ready(phase: ClusterPhase) -> Verdict {
    let running = phase == ClusterPhase::Running;
    Verdict::new(
        running,
        if running { "Running" } else { "NotRunning" },
        format!("the cluster is {phase:?}"),
    )
}

/// Whether the cluster is still moving towards its spec, and why: the `Progressing` condition,
/// and how soon the operator looks at the cluster again.
#[derive(Debug)]
pub enum Progress<'a> {
    /// A write was refused; nothing moves until something changes.
    Blocked(&'a Refusal),
    /// This many pods were created.
    Creating(usize),
    /// This many workers were marked draining.
    Draining(usize),
    /// This many pods were deleted.
    Deleting(usize),
    /// Drained or deleted pods have yet to go.
    Stopping,
    /// Pods have yet to become ready.
    Starting,
    /// Every pod matches the spec, or waits for a change only a person can make (an image that
    /// cannot be pulled, a crash loop).
    Stable,
}

impl<'a> Progress<'a> {
    /// The progress of `cluster` after a pass that observed `observed` and applied `applied`.
    pub fn of(cluster: &ValidatedCluster, observed: &Observed, applied: &'a Applied) -> Self {
        let sorted = ClusterPods::sort(&cluster.name, &observed.pods);
        let stuck = live_head(&sorted).and_then(pods::start_problem).is_some()
            || worker_problem(cluster, &sorted).is_some();
        Self::from_parts(observed, applied, stuck)
    }

    /// `stuck`: a pod of the cluster cannot start, so waiting for pods to start is no progress.
    fn from_parts(observed: &Observed, applied: &'a Applied, stuck: bool) -> Self {
        let all = &observed.pods;
        if let Some(refusal) = &applied.refusal {
            Progress::Blocked(refusal)
        } else if !applied.created.is_empty() {
            Progress::Creating(applied.created.len())
        } else if !applied.marked.is_empty() {
            Progress::Draining(applied.marked.len())
        } else if !applied.deleted.is_empty() {
            Progress::Deleting(applied.deleted.len())
        } else if all
            .iter()
            .any(|p| pods::is_terminating(p) || pods::is_draining(p))
        {
            Progress::Stopping
        } else if !stuck
            && all
                .iter()
                .any(|p| !pods::is_terminating(p) && !pods::is_ready(p) && !pods::is_finished(p))
        {
            Progress::Starting
        } else {
            Progress::Stable
        }
    }

    /// Whether the cluster is on its way somewhere (`Progressing` is true): it is worth looking
    /// at again soon rather than waiting for a change.
    pub fn is_moving(&self) -> bool {
        !matches!(self, Progress::Blocked(_) | Progress::Stable)
    }

    fn verdict(&self) -> Verdict {
        let moving = self.is_moving();
        match self {
            Progress::Blocked(refusal) => Verdict::new(moving, "ApplyFailed", refusal.to_string()),
            Progress::Creating(n) => {
                Verdict::new(moving, "CreatingPods", format!("creating {n} pods"))
            }
            Progress::Draining(n) => {
                Verdict::new(moving, "DrainingWorkers", format!("draining {n} workers"))
            }
            Progress::Deleting(n) => {
                Verdict::new(moving, "DeletingPods", format!("deleting {n} pods"))
            }
            Progress::Stopping => Verdict::new(
                moving,
                "PodsStopping",
                "waiting for drained or deleted pods to go",
            ),
            Progress::Starting => {
                Verdict::new(moving, "PodsStarting", "waiting for pods to become ready")
            }
            Progress::Stable => Verdict::new(moving, "Stable", "every pod matches the spec"),
        }
    }
}
