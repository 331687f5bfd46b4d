//! Pod status as a kubelet reports it, derived from what the kubelet knows about each container.
//! Pure: no clock (the caller passes `now`), no API calls.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

/// The pod's `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Parses `spec.restartPolicy`; unset or unknown means `Always`, the API default.
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("OnFailure") => Self::OnFailure,
            Some("Never") => Self::Never,
            _ => Self::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => exit_code != 0,
            Self::Never => false,
        }
    }
}

/// A finished run of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error` or `StartError`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    /// The process, if one was started.
    pub pid: Option<u32>,
}

impl Terminated {
    /// A process that exited.
    pub fn exited(
        exit_code: i32,
        signal: Option<i32>,
        pid: u32,
        started_at: Timestamp,
        now: Timestamp,
    ) -> Self {
        Self {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_owned(),
            message: None,
            started_at: Some(started_at),
            finished_at: now,
            pid: Some(pid),
        }
    }

    /// A container whose process could not be started, as containerd reports it.
    pub fn start_error(message: String, now: Timestamp) -> Self {
        Self {
            exit_code: 128,
            signal: None,
            reason: "StartError".to_owned(),
            message: Some(message),
            started_at: None,
            finished_at: now,
            pid: None,
        }
    }

    fn to_api(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            signal: self.signal,
            reason: Some(self.reason.clone()),
            message: self.message.clone(),
            started_at: self.started_at.map(Time),
            finished_at: Some(Time(self.finished_at)),
            container_id: self.pid.map(container_id),
        }
    }
}

/// The current state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: u32,
        started_at: Timestamp,
    },
    Terminated(Terminated),
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        Self::Waiting {
            reason: reason.to_owned(),
            message,
        }
    }
}

/// What the kubelet knows about one container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// Set once the image was found in the image map.
    pub image_id: Option<String>,
    pub state: State,
    pub last_terminated: Option<Terminated>,
    pub restart_count: i32,
    pub ready: bool,
    pub started: bool,
}

impl ContainerRecord {
    pub fn new(name: &str, image: &str) -> Self {
        Self {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: None,
            state: State::waiting("ContainerCreating", None),
            last_terminated: None,
            restart_count: 0,
            ready: false,
            started: false,
        }
    }

    /// Whether the container ran to completion with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }

    pub fn to_api(&self) -> ContainerStatus {
        let (state, container_id) = match &self.state {
            State::Waiting { reason, message } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                None,
            ),
            State::Running { pid, started_at } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..ContainerState::default()
                },
                Some(container_id(*pid)),
            ),
            State::Terminated(terminated) => (
                ContainerState {
                    terminated: Some(terminated.to_api()),
                    ..ContainerState::default()
                },
                terminated.pid.map(container_id),
            ),
        };
        let last_state = ContainerState {
            terminated: self.last_terminated.as_ref().map(Terminated::to_api),
            ..ContainerState::default()
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone().unwrap_or_default(),
            container_id,
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(last_state),
            ..ContainerStatus::default()
        }
    }
}

/// The container ID reported for a process.
pub fn container_id(pid: u32) -> String {
    format!("process://{pid}")
}

/// The pod phase, following the kubelet's rules: waiting containers keep a pod Pending, a
/// running one makes it Running, and once all have stopped the restart policy decides. A
/// `terminal` pod (being deleted, all stopped) ends Succeeded or Failed whatever its policy.
pub fn phase(
    policy: RestartPolicy,
    init: &[ContainerRecord],
    containers: &[ContainerRecord],
    terminal: bool,
) -> &'static str {
    if !init.iter().all(ContainerRecord::succeeded) {
        let failed = init
            .iter()
            .any(|c| matches!(&c.state, State::Terminated(t) if t.exit_code != 0));
        return if terminal || (failed && policy == RestartPolicy::Never) {
            "Failed"
        } else {
            "Pending"
        };
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for container in containers {
        match &container.state {
            State::Running { .. } => running += 1,
            State::Terminated(terminated) => {
                stopped += 1;
                if terminated.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } if container.last_terminated.is_some() => stopped += 1,
            State::Waiting { .. } => waiting += 1,
        }
    }
    if terminal {
        return if waiting == 0 && stopped > 0 && stopped == succeeded {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped == 0 {
        "Pending"
    } else {
        match policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::OnFailure => "Running",
            RestartPolicy::Never => "Failed",
        }
    }
}

/// Remembers when each condition last changed, for `lastTransitionTime`.
#[derive(Debug, Default)]
pub struct ConditionClock {
    last: BTreeMap<&'static str, (bool, Timestamp)>,
}

impl ConditionClock {
    fn condition(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: Option<&str>,
        message: Option<String>,
        now: Timestamp,
    ) -> PodCondition {
        let entry = self.last.entry(type_).or_insert((status, now));
        if entry.0 != status {
            *entry = (status, now);
        }
        PodCondition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.map(str::to_owned),
            message,
            last_transition_time: Some(Time(entry.1)),
            ..PodCondition::default()
        }
    }
}

/// Conditions the kubelet writes; any other condition on the pod is kept as it is.
const OWN_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// Everything [`pod_status`] derives the status from.
#[derive(Debug)]
pub struct PodView<'a> {
    pub policy: RestartPolicy,
    pub init: &'a [ContainerRecord],
    pub containers: &'a [ContainerRecord],
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    pub start_time: Timestamp,
    /// The pod is being deleted and all its processes have stopped.
    pub terminal: bool,
    /// The pod's current status as read from the API (for conditions others own).
    pub current: Option<&'a PodStatus>,
    /// `spec.readinessGates` condition types.
    pub readiness_gates: Vec<String>,
}

/// The status to write for a pod.
pub fn pod_status(view: &PodView<'_>, clock: &mut ConditionClock, now: Timestamp) -> PodStatus {
    let phase = phase(view.policy, view.init, view.containers, view.terminal);
    let completed = matches!(phase, "Succeeded" | "Failed");
    let names = |filter: &dyn Fn(&ContainerRecord) -> bool, list: &[ContainerRecord]| {
        list.iter()
            .filter(|c| filter(c))
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let current_conditions = view
        .current
        .and_then(|status| status.conditions.clone())
        .unwrap_or_default();
    let condition_true = |type_: &str| {
        current_conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };

    let incomplete_init = names(&|c| !c.succeeded(), view.init);
    let unready = names(&|c| !c.ready, view.containers);
    let containers_ready = unready.is_empty() && !view.containers.is_empty();
    let gates_open = view.readiness_gates.iter().all(|gate| condition_true(gate));
    let not_ready_reason = |fallback| if completed { "PodCompleted" } else { fallback };
    let not_ready_message =
        || (!completed).then(|| format!("containers with unready status: [{unready}]"));

    let mut conditions = vec![
        clock.condition("PodReadyToStartContainers", !view.terminal, None, None, now),
        if incomplete_init.is_empty() {
            clock.condition("Initialized", true, None, None, now)
        } else {
            clock.condition(
                "Initialized",
                false,
                Some(not_ready_reason("ContainersNotInitialized")),
                (!completed)
                    .then(|| format!("containers with incomplete status: [{incomplete_init}]")),
                now,
            )
        },
        if containers_ready && gates_open {
            clock.condition("Ready", true, None, None, now)
        } else if containers_ready {
            clock.condition(
                "Ready",
                false,
                Some("ReadinessGatesNotReady"),
                Some("corresponding condition of pod readiness gate is not true".to_owned()),
                now,
            )
        } else {
            clock.condition(
                "Ready",
                false,
                Some(not_ready_reason("ContainersNotReady")),
                not_ready_message(),
                now,
            )
        },
        if containers_ready {
            clock.condition("ContainersReady", true, None, None, now)
        } else {
            clock.condition(
                "ContainersReady",
                false,
                Some(not_ready_reason("ContainersNotReady")),
                not_ready_message(),
                now,
            )
        },
    ];
    match current_conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
    {
        Some(scheduled) => conditions.push(scheduled.clone()),
        None => conditions.push(clock.condition("PodScheduled", true, None, None, now)),
    }
    conditions.extend(
        current_conditions
            .iter()
            .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );

    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        host_ip: Some(view.host_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: view.host_ip.to_string(),
        }]),
        pod_ip: Some(view.pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: view.pod_ip.to_string(),
        }]),
        start_time: Some(Time(view.start_time)),
        init_container_statuses: (!view.init.is_empty())
            .then(|| view.init.iter().map(ContainerRecord::to_api).collect()),
        container_statuses: Some(
            view.containers
                .iter()
                .map(ContainerRecord::to_api)
                .collect(),
        ),
        ..PodStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_700_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn record(state: State) -> ContainerRecord {
        ContainerRecord {
            state,
            ..ContainerRecord::new("c", "busybox")
        }
    }

    fn running() -> ContainerRecord {
        record(State::Running {
            pid: 42,
            started_at: now(),
        })
    }

    fn exited(code: i32) -> ContainerRecord {
        record(State::Terminated(Terminated::exited(
            code,
            None,
            42,
            now(),
            now(),
        )))
    }

    fn crash_looping() -> ContainerRecord {
        ContainerRecord {
            last_terminated: Some(Terminated::exited(1, None, 42, now(), now())),
            restart_count: 1,
            ..record(State::waiting("CrashLoopBackOff", None))
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        use RestartPolicy::*;
        let waiting = record(State::waiting("ErrImagePull", None));
        assert_eq!(
            phase(Always, &[], std::slice::from_ref(&waiting), false),
            "Pending"
        );
        assert_eq!(phase(Always, &[], &[running(), waiting], false), "Pending");
        assert_eq!(phase(Always, &[], &[running()], false), "Running");
        assert_eq!(phase(Always, &[], &[crash_looping()], false), "Running");
        assert_eq!(phase(OnFailure, &[], &[crash_looping()], false), "Running");
        assert_eq!(phase(Never, &[], &[exited(0)], false), "Succeeded");
        assert_eq!(phase(Never, &[], &[exited(0), exited(2)], false), "Failed");
        assert_eq!(phase(OnFailure, &[], &[exited(0)], false), "Succeeded");
        assert_eq!(phase(Always, &[], &[exited(143)], true), "Failed");
        assert_eq!(phase(Always, &[], &[exited(0)], true), "Succeeded");
        // Init containers gate the rest.
        let init_running = running();
        assert_eq!(
            phase(
                Always,
                &[init_running],
                &[record(State::waiting("PodInitializing", None))],
                false
            ),
            "Pending"
        );
        assert_eq!(
            phase(
                Never,
                &[exited(1)],
                &[record(State::waiting("PodInitializing", None))],
                false
            ),
            "Failed"
        );
        assert_eq!(
            phase(
                OnFailure,
                &[exited(1)],
                &[record(State::waiting("PodInitializing", None))],
                false
            ),
            "Pending"
        );
        assert_eq!(phase(Always, &[exited(0)], &[running()], false), "Running");
    }

    #[test]
    fn container_status_reports_states_and_last_state() {
        let status = crash_looping().to_api();
        let waiting = status.state.and_then(|s| s.waiting).and_then(|w| w.reason);
        assert_eq!(waiting.as_deref(), Some("CrashLoopBackOff"));
        let last = status.last_state.and_then(|s| s.terminated);
        assert_eq!(last.as_ref().map(|t| t.exit_code), Some(1));
        assert_eq!(
            last.and_then(|t| t.container_id).as_deref(),
            Some("process://42")
        );
        assert_eq!(status.container_id, None);
        assert_eq!(status.restart_count, 1);
        let status = running().to_api();
        assert_eq!(status.container_id.as_deref(), Some("process://42"));
        assert!(status.state.and_then(|s| s.running).is_some());
    }

    #[test]
    fn conditions_keep_transition_times_and_foreign_conditions() {
        let mut clock = ConditionClock::default();
        let foreign = PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "example.com/gate".into(),
                status: "True".into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        };
        let mut container = running();
        let mut view = |containers: &[ContainerRecord]| -> PodStatus {
            let view = PodView {
                policy: RestartPolicy::Always,
                init: &[],
                containers,
                pod_ip: Ipv4Addr::new(127, 1, 2, 3),
                host_ip: Ipv4Addr::LOCALHOST,
                start_time: now(),
                terminal: false,
                current: Some(&foreign),
                readiness_gates: vec!["example.com/gate".into()],
            };
            pod_status(&view, &mut clock, now())
        };
        let get = |status: &PodStatus, type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_)
                .cloned()
                .unwrap_or_default()
        };
        let status = view(std::slice::from_ref(&container));
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(get(&status, "Ready").status, "False");
        assert_eq!(
            get(&status, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert_eq!(get(&status, "Initialized").status, "True");
        assert_eq!(get(&status, "PodScheduled").status, "True");
        assert_eq!(get(&status, "example.com/gate").status, "True");
        assert_eq!(status.pod_ip.as_deref(), Some("127.1.2.3"));
        container.ready = true;
        let status = view(std::slice::from_ref(&container));
        assert_eq!(get(&status, "Ready").status, "True");
        assert_eq!(get(&status, "ContainersReady").status, "True");
        assert!(get(&status, "Ready").last_transition_time.is_some());
    }
}
