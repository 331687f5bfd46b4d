//! The job as a state machine over what was observed: the driver pods, the cluster and the
//! job's own status. Pure: [`decide`] takes the observation and the time, and returns the next
//! status and the steps that get there; it never guesses a phase it did not observe.

use flotilla_proto::contract::EXIT_CLUSTER_LOST;
use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};

use crate::{
    cluster::pods,
    crd::{ComputeJob, ComputeJobStatus, JobPhase, JobProgress},
};

/// Label of a driver pod holding its attempt number.
pub const LABEL_ATTEMPT: &str = "flotilla.dev/attempt";
/// Drivers lost to the infrastructure retried before the job fails; `backoffLimit` counts only
/// the driver's own failures.
pub const MAX_INFRASTRUCTURE_FAILURES: i32 = 6;
/// How often a running job's progress is read from the head.
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a job waiting for its cluster looks again (the cluster watch usually comes first).
const WAITING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Condition: the cluster runs and its head is ready.
pub const CLUSTER_READY: &str = "ClusterReady";
/// Condition: the current driver runs.
pub const DRIVER_RUNNING: &str = "DriverRunning";
/// Condition: `spec.suspend` holds the job.
pub const SUSPENDED: &str = "Suspended";
/// Condition: the job succeeded.
pub const COMPLETE: &str = "Complete";
/// Condition: the job failed for good.
pub const FAILED: &str = "Failed";

/// The cluster a job runs on, as observed.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterState {
    /// No such ComputeCluster.
    Missing,
    /// It is being deleted.
    Deleting,
    /// It exists and is not running yet; `message` says why, in its own words.
    Starting {
        /// The cluster's own account of what it waits for.
        message: String,
    },
    /// It runs and its head is ready.
    Running {
        /// The cluster's image, the driver's default.
        image: String,
    },
}

/// How a driver pod is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverRun {
    /// Not running yet; `problem` is the kubelet's reason and message when it cannot start.
    Pending {
        /// `(reason, message)` of a container that cannot start.
        problem: Option<(String, String)>,
    },
    /// The driver program runs.
    Running,
    /// It exited with status 0.
    Succeeded,
    /// It exited with a non-zero status (or could not be started): the program's failure.
    Failed {
        /// Its termination message, or its exit status.
        message: String,
    },
    /// The pod failed without its program failing (evicted, node lost) or is being deleted.
    Lost {
        /// What happened to it.
        message: String,
    },
}

/// A driver pod of the job.
#[derive(Clone, Debug, PartialEq)]
pub struct Driver {
    /// The pod's name.
    pub name: String,
    /// Its attempt number (label [`LABEL_ATTEMPT`]).
    pub attempt: i32,
    /// When it was created.
    pub created: Option<Timestamp>,
    /// How it is doing.
    pub run: DriverRun,
}

impl Driver {
    /// A driver as its pod shows it; `None` for a pod without an attempt label.
    pub fn of(pod: &Pod) -> Option<Self> {
        let attempt = pods::label(pod, LABEL_ATTEMPT)?.parse().ok()?;
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        Some(Driver {
            name: pods::name(pod).to_owned(),
            attempt,
            created,
            run: run_of(pod),
        })
    }

    fn is_live(&self) -> bool {
        matches!(self.run, DriverRun::Pending { .. } | DriverRun::Running)
    }
}

fn run_of(pod: &Pod) -> DriverRun {
    if pods::is_terminating(pod) {
        return DriverRun::Lost {
            message: format!("driver pod {} was deleted", pods::name(pod)),
        };
    }
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match pods::phase(pod) {
        Some("Succeeded") => DriverRun::Succeeded,
        Some("Failed") => match terminated {
            Some(t) if t.exit_code == i32::from(EXIT_CLUSTER_LOST) => DriverRun::Lost {
                message: format!(
                    "driver pod {} lost its cluster: {}",
                    pods::name(pod),
                    t.message
                        .as_deref()
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .unwrap_or("the head could not be reached")
                ),
            },
            Some(t) if t.exit_code != 0 => {
                let message = t
                    .message
                    .as_deref()
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!(
                            "exit status {}{}",
                            t.exit_code,
                            t.reason
                                .as_deref()
                                .map(|r| format!(" ({r})"))
                                .unwrap_or_default()
                        )
                    });
                DriverRun::Failed { message }
            }
            _ => {
                let s = status.cloned().unwrap_or_default();
                let reason = s.reason.unwrap_or_else(|| "Failed".to_owned());
                let message = s.message.unwrap_or_else(|| "the pod failed".to_owned());
                DriverRun::Lost {
                    message: format!("driver pod {}: {reason}: {message}", pods::name(pod)),
                }
            }
        },
        Some("Running") => DriverRun::Running,
        _ => DriverRun::Pending {
            problem: pods::start_problem(pod),
        },
    }
}

/// Everything a decision is made from.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The job, with its spec and its status as last written.
    pub job: &'a ComputeJob,
    /// The job's cluster.
    pub cluster: ClusterState,
    /// The job's driver pods.
    pub drivers: Vec<Driver>,
    /// The job's task counts at the head, when they could be read.
    pub progress: Option<JobProgress>,
    /// Now.
    pub now: Timestamp,
}

/// A step the reconcile carries out, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Cancel the job's tasks and actors at the head (before its drivers go).
    CancelAtHead,
    /// Delete a driver pod.
    DeleteDriver(String),
    /// Create the job's own cluster.
    CreateCluster,
    /// Delete the job's own cluster.
    DeleteCluster,
    /// Create the driver pod of this attempt.
    CreateDriver(i32),
    /// Delete the job itself (its TTL after finishing passed).
    DeleteJob,
}

/// An Event to record on the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// The Event's reason.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to write.
    pub status: ComputeJobStatus,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Events to record.
    pub notes: Vec<Note>,
    /// When to look again, if nothing else brings the job back sooner.
    pub requeue: Option<std::time::Duration>,
}

/// The name of the driver pod of `attempt`.
pub fn driver_pod_name(job: &str, attempt: i32) -> String {
    format!("{job}-driver-{attempt}")
}

struct Machine<'a> {
    obs: &'a Observed<'a>,
    now: Time,
    st: ComputeJobStatus,
    steps: Vec<Step>,
    notes: Vec<Note>,
    requeue: Option<std::time::Duration>,
}

impl Machine<'_> {
    fn note(&mut self, warning: bool, reason: &'static str, message: impl Into<String>) {
        self.notes.push(Note {
            warning,
            reason,
            message: message.into(),
        });
    }

    fn condition(&mut self, type_: &str, holds: bool, reason: &str, message: impl Into<String>) {
        let status = if holds { "True" } else { "False" };
        let previous = self.st.conditions.iter().position(|c| c.type_ == type_);
        let last_transition_time = previous
            .map(|i| &self.st.conditions[i])
            .filter(|c| c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        let condition = Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: self.obs.job.metadata.generation,
            last_transition_time,
        };
        match previous {
            Some(i) => self.st.conditions[i] = condition,
            None => self.st.conditions.push(condition),
        }
    }

    fn since(&self, type_: &str, status: &str) -> Option<Timestamp> {
        self.st
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.0)
    }

    fn soon(&mut self, after: std::time::Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    fn own_cluster(&self) -> bool {
        self.obs.job.spec.cluster.is_some()
    }

    /// Cancels the job's work at the head and removes its live drivers and its own cluster.
    fn stop_everything(&mut self) {
        let live: Vec<String> = self
            .obs
            .drivers
            .iter()
            .filter(|d| d.is_live())
            .map(|d| d.name.clone())
            .collect();
        if !live.is_empty() {
            self.steps.push(Step::CancelAtHead);
        }
        self.steps.extend(live.into_iter().map(Step::DeleteDriver));
        if self.own_cluster()
            && !matches!(
                self.obs.cluster,
                ClusterState::Missing | ClusterState::Deleting
            )
        {
            self.steps.push(Step::DeleteCluster);
        }
    }

    /// Records that a driver of this attempt has run; true the first time.
    fn started(&mut self) -> bool {
        let first = self.st.start_time.is_none();
        if first {
            self.st.start_time = Some(self.now.clone());
        }
        first
    }

    /// Ends the job: `Succeeded` when `ok`, else `Failed` with `reason`.
    fn finish(&mut self, ok: bool, reason: &'static str, message: String) {
        self.st.phase = Some(if ok {
            JobPhase::Succeeded
        } else {
            JobPhase::Failed
        });
        self.st.completion_time = Some(self.now.clone());
        self.condition(COMPLETE, ok, reason, message.clone());
        self.condition(FAILED, !ok, reason, message.clone());
        self.condition(DRIVER_RUNNING, false, reason, "the job has finished");
        self.note(!ok, reason, message.clone());
        self.st.message = Some(message);
        self.stop_everything();
        self.expire();
    }

    /// A finished job is deleted `ttlSecondsAfterFinished` after it finished.
    fn expire(&mut self) {
        let (Some(ttl), Some(done)) = (
            self.obs.job.spec.ttl_seconds_after_finished,
            self.st.completion_time.as_ref(),
        ) else {
            return;
        };
        let at = done.0 + SignedDuration::from_secs(i64::from(ttl));
        match at.duration_since(self.obs.now).try_into() {
            Ok(left) if at > self.obs.now => self.soon(left),
            _ => self.steps.push(Step::DeleteJob),
        }
    }

    /// Fails the job when `startupDeadlineSeconds` passed since `anchor`, with `stuck` as the
    /// reason it did not start; otherwise looks again at the deadline.
    fn check_startup(&mut self, anchor: Timestamp, stuck: String) -> bool {
        let Some(limit) = self.obs.job.spec.startup_deadline_seconds else {
            return false;
        };
        let at = anchor + SignedDuration::from_secs(limit);
        if self.obs.now >= at {
            self.finish(
                false,
                "StartupDeadlineExceeded",
                format!("not running after startupDeadlineSeconds ({limit} s): {stuck}"),
            );
            return true;
        }
        if let Ok(left) = at.duration_since(self.obs.now).try_into() {
            self.soon(left);
        }
        false
    }

    /// When the wait for the cluster and the first driver began: the job's creation, or its
    /// last resume.
    fn startup_anchor(&self) -> Timestamp {
        let created = self
            .obs
            .job
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(self.obs.now, |t| t.0);
        self.since(SUSPENDED, "False")
            .map_or(created, |resumed| resumed.max(created))
    }
}

/// The next status of the job, and the steps towards it.
pub fn decide(obs: &Observed<'_>) -> Decision {
    let job = obs.job;
    let mut m = Machine {
        obs,
        now: Time(obs.now),
        st: job.status.clone().unwrap_or_default(),
        steps: Vec::new(),
        notes: Vec::new(),
        requeue: None,
    };
    m.st.observed_generation = job.metadata.generation;
    run(&mut m);
    Decision {
        status: m.st,
        steps: m.steps,
        notes: m.notes,
        requeue: m.requeue,
    }
}

fn run(m: &mut Machine<'_>) {
    let obs = m.obs;
    let spec = &obs.job.spec;
    let phase = m.st.phase;

    // Finished: keep it so, clean up what is left, and wait for the TTL.
    if matches!(phase, Some(JobPhase::Succeeded | JobPhase::Failed)) {
        m.stop_everything();
        m.expire();
        return;
    }

    if spec.suspend {
        if phase != Some(JobPhase::Suspended) {
            m.note(
                false,
                "Suspended",
                "spec.suspend is true: the driver is stopped",
            );
        }
        m.stop_everything();
        m.st.phase = Some(JobPhase::Suspended);
        m.st.driver_pod = None;
        m.st.start_time = None;
        m.st.progress = None;
        m.st.message = Some("suspended: set spec.suspend to false to start again".to_owned());
        m.condition(SUSPENDED, true, "Suspended", "spec.suspend is true");
        m.condition(DRIVER_RUNNING, false, "Suspended", "the job is suspended");
        return;
    }
    if phase == Some(JobPhase::Suspended) {
        m.note(
            false,
            "Resumed",
            "spec.suspend is false: a new attempt starts",
        );
        m.condition(SUSPENDED, false, "Resumed", "spec.suspend is false");
        m.st.phase = Some(JobPhase::Pending);
    }
    if m.st.phase.is_none() {
        m.st.phase = Some(JobPhase::Pending);
        m.note(false, "Accepted", "the job waits for its cluster");
    }

    if let (Some(limit), Some(start)) = (spec.active_deadline_seconds, m.st.start_time.clone()) {
        let at = start.0 + SignedDuration::from_secs(limit);
        if obs.now >= at {
            m.finish(
                false,
                "DeadlineExceeded",
                format!("the job ran longer than activeDeadlineSeconds ({limit} s)"),
            );
            return;
        }
        if let Ok(left) = at.duration_since(obs.now).try_into() {
            m.soon(left);
        }
    }

    if let Some(progress) = &obs.progress {
        m.st.progress = Some(progress.clone());
    }

    // The cluster.
    let cluster_name = m.st.cluster_name.clone().unwrap_or_default();
    let cluster_problem = match &obs.cluster {
        ClusterState::Running { .. } => {
            m.condition(CLUSTER_READY, true, "ClusterRunning", "the head is ready");
            None
        }
        ClusterState::Missing if m.own_cluster() => {
            m.steps.push(Step::CreateCluster);
            let message = format!("creating ComputeCluster {cluster_name}");
            m.condition(CLUSTER_READY, false, "ClusterCreating", message.clone());
            Some(message)
        }
        ClusterState::Missing => {
            let message = format!("ComputeCluster {cluster_name} does not exist");
            m.condition(CLUSTER_READY, false, "ClusterNotFound", message.clone());
            Some(message)
        }
        ClusterState::Deleting => {
            let message = format!("ComputeCluster {cluster_name} is being deleted");
            m.condition(CLUSTER_READY, false, "ClusterDeleting", message.clone());
            Some(message)
        }
        ClusterState::Starting { message } => {
            let message = format!("ComputeCluster {cluster_name} is not running: {message}");
            m.condition(CLUSTER_READY, false, "ClusterStarting", message.clone());
            Some(message)
        }
    };

    // The current attempt's driver.
    let current = obs
        .drivers
        .iter()
        .find(|d| d.attempt == m.st.attempts && m.st.attempts > 0);
    let ended = match current.map(|d| &d.run) {
        Some(DriverRun::Succeeded) => {
            // A driver that ran and ended between two looks was never seen running.
            m.started();
            m.finish(true, "Succeeded", "the driver exited with status 0".into());
            return;
        }
        Some(DriverRun::Running) => {
            m.st.phase = Some(JobPhase::Running);
            if m.started() {
                m.note(false, "Running", "the driver runs");
            }
            let name = current.map(|d| d.name.clone()).unwrap_or_default();
            m.condition(DRIVER_RUNNING, true, "Running", format!("pod {name}"));
            m.st.message = Some(format!("running (attempt {})", m.st.attempts));
            m.soon(PROGRESS_EVERY);
            return;
        }
        Some(DriverRun::Pending { problem }) => {
            m.st.phase = Some(JobPhase::Starting);
            let driver = current.expect("matched a driver above");
            let stuck = problem.as_ref().map_or_else(
                || format!("driver pod {} is starting", driver.name),
                |(reason, message)| format!("driver pod {}: {reason}: {message}", driver.name),
            );
            m.condition(DRIVER_RUNNING, false, "DriverStarting", stuck.clone());
            m.st.message = Some(stuck.clone());
            let anchor = driver.created.unwrap_or(obs.now).max(m.startup_anchor());
            m.check_startup(anchor, stuck);
            return;
        }
        Some(DriverRun::Failed { message }) => {
            m.started();
            m.st.failed += 1;
            let message = message.clone();
            if m.st.failed > spec.backoff_limit {
                m.finish(
                    false,
                    "BackoffLimitExceeded",
                    format!(
                        "the driver failed {} times (backoffLimit {}); last: {message}",
                        m.st.failed, spec.backoff_limit
                    ),
                );
                return;
            }
            m.note(
                true,
                "DriverFailed",
                format!(
                    "attempt {} failed ({} of backoffLimit {}): {message}",
                    m.st.attempts, m.st.failed, spec.backoff_limit
                ),
            );
            true
        }
        Some(DriverRun::Lost { message }) => {
            let message = message.clone();
            lost(m, &message, current.map(|d| d.name.clone()))
        }
        None if m.st.driver_pod.is_some() && m.st.attempts > 0 => {
            let message = format!(
                "driver pod {} is gone",
                m.st.driver_pod.clone().unwrap_or_default()
            );
            lost(m, &message, None)
        }
        None => true,
    };
    if !ended || m.st.phase.is_some_and(|p| p == JobPhase::Failed) {
        return;
    }

    // A new attempt, once the cluster runs.
    match cluster_problem {
        None => {
            m.st.attempts += 1;
            let name = driver_pod_name(
                obs.job.metadata.name.as_deref().unwrap_or_default(),
                m.st.attempts,
            );
            m.steps.push(Step::CreateDriver(m.st.attempts));
            m.note(
                false,
                "DriverCreated",
                format!("attempt {}: pod {name}", m.st.attempts),
            );
            m.st.driver_pod = Some(name.clone());
            m.st.phase = Some(JobPhase::Starting);
            m.condition(
                DRIVER_RUNNING,
                false,
                "DriverStarting",
                format!("driver pod {name} is starting"),
            );
            m.st.message = Some(format!("starting attempt {}", m.st.attempts));
        }
        Some(problem) => {
            m.st.driver_pod = None;
            // A cluster of the job's own is part of its start; someone else's is waited for.
            m.st.phase = Some(if m.own_cluster() {
                JobPhase::Starting
            } else {
                JobPhase::Pending
            });
            m.condition(DRIVER_RUNNING, false, "WaitingForCluster", problem.clone());
            m.st.message = Some(problem.clone());
            let anchor = m.startup_anchor();
            if !m.check_startup(anchor, problem) {
                m.soon(WAITING_EVERY);
            }
        }
    }
}

/// The current driver was lost to the infrastructure: count it, and start again unless that
/// happened too often. Returns whether a new attempt may start.
fn lost(m: &mut Machine<'_>, message: &str, pod: Option<String>) -> bool {
    m.st.infrastructure_failures += 1;
    if let Some(pod) = pod {
        m.steps.push(Step::DeleteDriver(pod));
    }
    if m.st.infrastructure_failures > MAX_INFRASTRUCTURE_FAILURES {
        m.finish(
            false,
            "InfrastructureFailures",
            format!(
                "{} drivers lost to the infrastructure (at most {MAX_INFRASTRUCTURE_FAILURES}); last: {message}",
                m.st.infrastructure_failures
            ),
        );
        return false;
    }
    m.note(
        true,
        "DriverLost",
        format!(
            "attempt {}: {message}; retrying without using up backoffLimit ({} of {MAX_INFRASTRUCTURE_FAILURES} infrastructure failures)",
            m.st.attempts, m.st.infrastructure_failures
        ),
    );
    true
}
