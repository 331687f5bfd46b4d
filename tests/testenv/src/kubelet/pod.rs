//! The pod worker: one task per pod that starts its containers as processes, restarts them,
//! probes them, writes the pod's status and stops everything when the pod goes away.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitStatus, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Pod},
    jiff::Timestamp,
};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use rustix::process::Signal;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{sleep, sleep_until, timeout, Instant},
};

use super::{
    command::{find_image, resolve_command},
    env::{resolve_env, rewrite_service_hosts, EnvError, PodFacts},
    ip::HOST_IP,
    probe::{spawn_prober, ProbeEvent, ProbeReport, ProbeTarget},
    process::{exit_code, log_path, signal_group, spawn, Launch},
    status::{
        pod_status, ConditionClock, ContainerRecord, PodView, RestartPolicy, State, Terminated,
    },
    Shared,
};

/// Termination grace periods (deletion, liveness restarts) are capped at this.
pub const MAX_GRACE: Duration = Duration::from_secs(10);
/// How soon a container whose config (Secret, ConfigMap) is missing is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// How soon a container waiting for a Service's pod is tried again.
const SERVICE_RETRY: Duration = Duration::from_millis(200);
/// How soon a failed status write or pod deletion is tried again.
const API_RETRY: Duration = Duration::from_secs(1);
/// How long after SIGKILL the kubelet waits for processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The latest the kubelet knows of its pod.
#[derive(Debug, Clone)]
pub enum PodUpdate {
    Present(Box<Pod>),
    /// The pod is no longer in the API.
    Gone,
}

/// How a pod worker's task is told about its pod and about the kubelet's shutdown.
pub struct WorkerInputs {
    pub updates: watch::Receiver<PodUpdate>,
    /// Becomes `true` when the kubelet shuts down: stop the processes, write nothing.
    pub shutdown: watch::Receiver<bool>,
    /// The worker of an earlier pod with the same namespace and name; its `true` says it is
    /// done. The new pod starts after it, so it can take over the same address and ports.
    pub predecessor: Option<watch::Receiver<bool>>,
}

/// Exponential back-off: `base`, doubling up to `cap`.
#[derive(Debug, Clone)]
struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    fn new((base, cap): (Duration, Duration)) -> Self {
        Self {
            base,
            cap,
            next: base,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(self.cap);
        delay
    }

    fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Go's rendering of short durations, as in the kubelet's back-off messages: `400ms`, `1.6s`.
fn go_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}s", duration.as_secs_f64())
    }
}

/// A process the worker started.
#[derive(Debug)]
struct RunningProcess {
    pid: u32,
    since: Instant,
    started_at: Timestamp,
    prober: Option<JoinHandle<()>>,
    /// Set when the worker is stopping the process (liveness failure): SIGKILL after grace.
    kill_timer: Option<JoinHandle<()>>,
    /// Why the worker stopped it, reported with its termination.
    stop_reason: Option<String>,
}

impl RunningProcess {
    fn forget_tasks(&mut self) {
        for task in [self.prober.take(), self.kill_timer.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// One container of the pod.
#[derive(Debug)]
struct Slot {
    spec: Container,
    init: bool,
    record: ContainerRecord,
    /// Counts starts, so news about an earlier run is recognised.
    generation: u64,
    process: Option<RunningProcess>,
    /// When a waiting container may be tried again; `None`: now.
    next_attempt: Option<Instant>,
    crash_backoff: Backoff,
    pull_backoff: Backoff,
}

/// A container process ended.
#[derive(Debug)]
struct Exit {
    position: usize,
    generation: u64,
    pid: u32,
    status: std::io::Result<ExitStatus>,
}

/// What woke the worker up.
enum Wake {
    Update(Option<PodUpdate>),
    Shutdown,
    Exit(Exit),
    Probe(ProbeReport),
    Timer,
}

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    namespace: String,
    name: String,
    uid: String,
    api: Api<Pod>,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    ip: Ipv4Addr,
    dir: PathBuf,
    start_time: Timestamp,
    clock: ConditionClock,
    /// The status last written, to write only changes.
    last_written: Option<serde_json::Value>,
    /// A status write failed; try again soon.
    status_retry: bool,
    exits_tx: mpsc::UnboundedSender<Exit>,
    probes_tx: mpsc::UnboundedSender<ProbeReport>,
}

impl PodWorker {
    /// Runs a pod until it is deleted or gone, or the kubelet shuts down.
    pub async fn run(shared: Arc<Shared>, pod: Pod, mut inputs: WorkerInputs) {
        let (Some(namespace), Some(name), Some(uid)) = (
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
            pod.metadata.uid.clone(),
        ) else {
            return;
        };
        let api = Api::<Pod>::namespaced(shared.client.clone(), &namespace);
        if pod.metadata.deletion_timestamp.is_some() {
            // Nothing of this pod runs here (the kubelet restarted, or the pod was deleted
            // before it started): confirm the deletion.
            confirm_deletion(&api, &name, &uid, &mut inputs).await;
            return;
        }
        if let Some(mut predecessor) = inputs.predecessor.take() {
            tokio::select! {
                () = became_true(&mut predecessor) => {}
                () = became_true(&mut inputs.shutdown) => return,
            }
        }
        let ip = shared.acquire_ip(&namespace, &name);
        let dir = shared.root_dir.join(format!("{namespace}_{name}_{uid}"));
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let (probes_tx, probes) = mpsc::unbounded_channel();
        let spec = pod.spec.clone().unwrap_or_default();
        let backoff = shared.config.restart_backoff;
        let slots = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (c, true))
            .chain(spec.containers.iter().map(|c| (c, false)))
            .map(|(spec, init)| Slot {
                record: ContainerRecord::new(&spec.name, spec.image.as_deref().unwrap_or_default()),
                spec: spec.clone(),
                init,
                generation: 0,
                process: None,
                next_attempt: None,
                crash_backoff: Backoff::new(backoff),
                pull_backoff: Backoff::new(backoff),
            })
            .collect();
        let mut worker = PodWorker {
            policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            shared,
            pod,
            namespace,
            name,
            uid,
            api,
            slots,
            ip,
            dir,
            start_time: Timestamp::now(),
            clock: ConditionClock::default(),
            last_written: None,
            status_retry: false,
            exits_tx,
            probes_tx,
        };
        if let Err(err) = std::fs::create_dir_all(&worker.dir) {
            tracing::warn!(pod = %worker.key(), %err, "creating the pod directory");
        }
        worker.mark_initializing();
        worker.main_loop(inputs, exits, probes).await;
        worker.shared.release_ip(worker.ip);
        if let Err(err) = std::fs::remove_dir_all(&worker.dir) {
            tracing::debug!(pod = %worker.key(), %err, "removing the pod directory");
        }
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    async fn main_loop(
        &mut self,
        mut inputs: WorkerInputs,
        mut exits: mpsc::UnboundedReceiver<Exit>,
        mut probes: mpsc::UnboundedReceiver<ProbeReport>,
    ) {
        loop {
            if *inputs.shutdown.borrow() {
                self.stop_processes(MAX_GRACE, &mut exits).await;
                return;
            }
            let gone = matches!(*inputs.updates.borrow(), PodUpdate::Gone);
            if gone || self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(gone, &mut inputs, &mut exits).await;
                return;
            }
            self.start_due_containers().await;
            self.write_status(false).await;
            let wake_at = self.next_wake();
            let wake = tokio::select! {
                changed = inputs.updates.changed() => {
                    Wake::Update(changed.ok().map(|()| inputs.updates.borrow_and_update().clone()))
                }
                _ = inputs.shutdown.changed() => Wake::Shutdown,
                Some(exit) = exits.recv() => Wake::Exit(exit),
                Some(report) = probes.recv() => Wake::Probe(report),
                () = sleep_until(wake_at) => Wake::Timer,
            };
            match wake {
                Wake::Update(Some(PodUpdate::Present(pod))) => self.pod = *pod,
                // The kubelet dropped the sender: it is going away.
                Wake::Update(None) => {
                    self.stop_processes(MAX_GRACE, &mut exits).await;
                    return;
                }
                Wake::Update(Some(PodUpdate::Gone)) | Wake::Shutdown | Wake::Timer => {}
                Wake::Exit(exit) => self.on_exit(exit, true),
                Wake::Probe(report) => self.on_probe(report),
            }
        }
    }

    /// When the worker next has something to do without news.
    fn next_wake(&self) -> Instant {
        let retry = Instant::now()
            + if self.status_retry {
                API_RETRY
            } else {
                Duration::from_secs(60)
            };
        self.slots
            .iter()
            .filter(|slot| {
                slot.process.is_none() && matches!(slot.record.state, State::Waiting { .. })
            })
            .filter_map(|slot| slot.next_attempt)
            .fold(retry, Instant::min)
    }

    fn init_done(&self) -> bool {
        self.slots
            .iter()
            .filter(|slot| slot.init)
            .all(|slot| slot.record.succeeded())
    }

    fn mark_initializing(&mut self) {
        if !self.init_done() {
            for slot in self.slots.iter_mut().filter(|slot| !slot.init) {
                slot.record.state = State::waiting("PodInitializing", None);
            }
        }
    }

    /// Starts the containers that should run now: the first unfinished init container, or,
    /// once all init containers succeeded, every container that is waiting and due.
    async fn start_due_containers(&mut self) {
        let now = Instant::now();
        let due = |slot: &Slot| {
            slot.process.is_none()
                && matches!(slot.record.state, State::Waiting { .. })
                && slot.next_attempt.is_none_or(|at| at <= now)
        };
        let init_done = self.init_done();
        let candidates: Vec<usize> = if init_done {
            (0..self.slots.len())
                .filter(|&i| !self.slots[i].init && due(&self.slots[i]))
                .collect()
        } else {
            self.slots
                .iter()
                .position(|slot| slot.init && !slot.record.succeeded())
                .filter(|&i| due(&self.slots[i]))
                .into_iter()
                .collect()
        };
        for position in candidates {
            self.start_container(position).await;
        }
    }

    /// Tries to start one container; on failure leaves it waiting with the reason.
    async fn start_container(&mut self, position: usize) {
        let now = Instant::now();
        let shared = Arc::clone(&self.shared);
        let slot = &mut self.slots[position];
        let image = slot.spec.image.clone().unwrap_or_default();
        if slot.init && slot.spec.restart_policy.as_deref() == Some("Always") {
            slot.record.state = State::waiting(
                "CreateContainerConfigError",
                Some("sidecar containers (init containers with restartPolicy Always) are not supported by the process kubelet".to_owned()),
            );
            slot.next_attempt = Some(now + CONFIG_RETRY);
            return;
        }
        let Some(mapping) = find_image(&shared.config.images, &image) else {
            let reason = format!("failed to pull image {image:?}: not in the kubelet's image map");
            let pulled_before = matches!(
                &slot.record.state,
                State::Waiting { reason, .. } if reason == "ErrImagePull" || reason == "ImagePullBackOff"
            );
            slot.record.state = if pulled_before {
                State::waiting(
                    "ImagePullBackOff",
                    Some(format!("Back-off pulling image {image:?}: {reason}")),
                )
            } else {
                State::waiting("ErrImagePull", Some(reason))
            };
            slot.next_attempt = Some(now + slot.pull_backoff.next_delay());
            return;
        };
        slot.pull_backoff.reset();
        slot.record.image_id = Some(format!("local://{}", mapping.bin_dir.display()));

        let facts = PodFacts {
            pod_ip: self.ip,
            host_ip: HOST_IP,
            node_name: shared.config.node_name.clone(),
        };
        let spec = slot.spec.clone();
        let prepared = prepare(
            &shared,
            &self.pod,
            &facts,
            &spec,
            &self.dir,
            &mapping.bin_dir,
        )
        .await;
        let slot = &mut self.slots[position];
        let (mut env, mut command, mut args) = match prepared {
            Ok(prepared) => prepared,
            Err(EnvError::Config(message)) => {
                slot.record.state = State::waiting("CreateContainerConfigError", Some(message));
                slot.next_attempt = Some(now + CONFIG_RETRY);
                return;
            }
            Err(EnvError::ServicePending(message)) => {
                slot.record.state = State::waiting("ContainerCreating", Some(message));
                slot.next_attempt = Some(now + SERVICE_RETRY);
                return;
            }
        };
        let mut texts: Vec<&mut String> = env
            .iter_mut()
            .map(|(_, value)| value)
            .chain(command.iter_mut().flatten())
            .chain(args.iter_mut().flatten())
            .collect();
        if let Err(err) = rewrite_service_hosts(&shared.client, &mut texts).await {
            slot.record.state = State::waiting("ContainerCreating", Some(err.to_string()));
            slot.next_attempt = Some(now + SERVICE_RETRY);
            return;
        }
        let resolved = resolve_command(mapping, &image, command.as_deref(), args.as_deref(), &env);
        let (program, argv) = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                let message = format!("failed to start container {:?}: {err}", spec.name);
                self.start_failed(position, message);
                return;
            }
        };
        let log = log_path(
            &shared.config.log_dir,
            &self.namespace,
            &self.name,
            &spec.name,
        );
        shared.log_runs.started(&log);
        let launch = Launch {
            program: &program,
            args: &argv,
            env: &env,
            workdir: &self.dir,
            log: &log,
        };
        let child = spawn(&launch).and_then(|child| match child.id() {
            Some(pid) => Ok((child, pid)),
            None => Err(std::io::Error::other(
                "the process exited before it could be tracked",
            )),
        });
        let (mut child, pid) = match child {
            Ok(started) => started,
            Err(err) => {
                let message = format!(
                    "failed to start container {:?}: exec {}: {err}",
                    spec.name,
                    program.display()
                );
                self.start_failed(position, message);
                return;
            }
        };
        tracing::info!(pod = %self.key(), container = %spec.name, pid, "started container");
        shared
            .processes
            .insert(pid, &self.namespace, &self.name, position, &spec.name);
        let slot = &mut self.slots[position];
        slot.generation += 1;
        let generation = slot.generation;
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // The worker stops listening only when it is gone, and then nobody needs the news.
            let _ = exits.send(Exit {
                position,
                generation,
                pid,
                status,
            });
        });
        let prober = (!slot.init).then(|| {
            let target = ProbeTarget {
                pod_ip: self.ip,
                ports: spec.ports.clone().unwrap_or_default(),
                image: image.clone(),
                mapping: mapping.clone(),
                env,
                workdir: self.dir.clone(),
            };
            spawn_prober(&spec, target, position, generation, self.probes_tx.clone())
        });
        let started_at = Timestamp::now();
        slot.record.state = State::Running { pid, started_at };
        slot.record.ready = false;
        slot.record.started = false;
        slot.process = Some(RunningProcess {
            pid,
            since: now,
            started_at,
            prober,
            kill_timer: None,
            stop_reason: None,
        });
    }

    /// A process ended: record it, clean up what it left behind, restart per policy.
    fn on_exit(&mut self, exit: Exit, may_restart: bool) {
        let Exit {
            position,
            generation,
            pid,
            status,
        } = exit;
        self.shared.processes.remove(pid);
        // Whatever the container started goes with it.
        signal_group(pid, Signal::KILL);
        let key = self.key();
        let Some(slot) = self.slots.get_mut(position) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(mut process) = slot.process.take() else {
            return;
        };
        process.forget_tasks();
        let (code, signal) = match status {
            Ok(status) => exit_code(status),
            Err(err) => {
                tracing::warn!(pod = %key, pid, %err, "waiting for a container process");
                (255, None)
            }
        };
        tracing::info!(pod = %key, container = %slot.spec.name, pid, code, "container exited");
        let mut terminated =
            Terminated::exited(code, signal, pid, process.started_at, Timestamp::now());
        terminated.message = process.stop_reason;
        let fallback =
            slot.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if terminated.message.is_none() && code != 0 && fallback {
            let log = log_path(
                &self.shared.config.log_dir,
                &self.namespace,
                &self.name,
                &slot.spec.name,
            );
            terminated.message = self.shared.log_runs.tail_for_message(&log);
        }
        self.after_exit(position, terminated, process.since.elapsed(), may_restart);
    }

    /// Records a container that could not be started, as a run that ended at once.
    fn start_failed(&mut self, position: usize, message: String) {
        self.after_exit(
            position,
            Terminated::start_error(message, Timestamp::now()),
            Duration::ZERO,
            true,
        );
    }

    /// Records a finished (or failed to start) run and schedules the restart, if any.
    fn after_exit(
        &mut self,
        position: usize,
        terminated: Terminated,
        ran_for: Duration,
        may_restart: bool,
    ) {
        let pod = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let policy = self.policy;
        let slot = &mut self.slots[position];
        slot.record.ready = false;
        slot.record.started = false;
        let restart = may_restart
            && if slot.init {
                terminated.exit_code != 0 && policy != RestartPolicy::Never
            } else {
                policy.restarts(terminated.exit_code)
            };
        if !restart {
            slot.record.state = State::Terminated(terminated);
            return;
        }
        // A container that ran well for a while starts over with the shortest back-off.
        if ran_for > slot.crash_backoff.cap * 2 {
            slot.crash_backoff.reset();
        }
        let delay = slot.crash_backoff.next_delay();
        slot.record.state = if terminated.reason == "StartError" {
            State::waiting("RunContainerError", terminated.message.clone())
        } else {
            State::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {} restarting failed container={} pod={pod}",
                    go_duration(delay),
                    slot.spec.name
                )),
            )
        };
        slot.record.restart_count += 1;
        slot.record.last_terminated = Some(terminated);
        slot.next_attempt = Some(Instant::now() + delay);
    }

    fn on_probe(&mut self, report: ProbeReport) {
        let grace = self.grace_period(false);
        let key = self.key();
        let Some(slot) = self.slots.get_mut(report.position) else {
            return;
        };
        if slot.generation != report.generation {
            return;
        }
        let Some(process) = slot.process.as_mut() else {
            return;
        };
        match report.event {
            ProbeEvent::Started => slot.record.started = true,
            ProbeEvent::Ready(ready) => slot.record.ready = ready,
            ProbeEvent::Unhealthy(message) => {
                tracing::info!(pod = %key, container = %slot.spec.name, %message, "restarting unhealthy container");
                slot.record.ready = false;
                let pid = process.pid;
                signal_group(pid, Signal::TERM);
                process.stop_reason = Some(message);
                process.kill_timer = Some(tokio::spawn(async move {
                    sleep(grace).await;
                    signal_group(pid, Signal::KILL);
                }));
            }
        }
    }

    /// The pod's termination grace period (or, when deleting, the deletion's), capped.
    fn grace_period(&self, deleting: bool) -> Duration {
        let seconds = deleting
            .then_some(self.pod.metadata.deletion_grace_period_seconds)
            .flatten()
            .or_else(|| self.pod.spec.as_ref()?.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0)).min(MAX_GRACE)
    }

    /// The pids of the containers' running processes.
    fn running(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.process.as_ref())
            .map(|p| p.pid)
            .collect()
    }

    /// Handles exits until no process runs or `within` has passed.
    async fn wait_for_exits(
        &mut self,
        within: Duration,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        let deadline = Instant::now() + within;
        while !self.running().is_empty() {
            match timeout(
                deadline.saturating_duration_since(Instant::now()),
                exits.recv(),
            )
            .await
            {
                Ok(Some(exit)) => self.on_exit(exit, false),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Stops every process: SIGTERM, up to `grace` to exit, then SIGKILL.
    async fn stop_processes(&mut self, grace: Duration, exits: &mut mpsc::UnboundedReceiver<Exit>) {
        for pid in self.running() {
            signal_group(pid, Signal::TERM);
        }
        self.wait_for_exits(grace, exits).await;
        for pid in self.running() {
            signal_group(pid, Signal::KILL);
        }
        self.wait_for_exits(KILL_WAIT, exits).await;
        for slot in &mut self.slots {
            if let Some(mut process) = slot.process.take() {
                tracing::warn!(
                    pid = process.pid,
                    "a container process did not go away after SIGKILL"
                );
                process.forget_tasks();
                self.shared.processes.remove(process.pid);
            }
            slot.record.ready = false;
        }
    }

    /// The pod was deleted: stop its processes, report the final status, confirm the deletion.
    async fn terminate(
        &mut self,
        gone: bool,
        inputs: &mut WorkerInputs,
        exits: &mut mpsc::UnboundedReceiver<Exit>,
    ) {
        tracing::info!(pod = %self.key(), "stopping pod");
        self.stop_processes(self.grace_period(true), exits).await;
        if gone {
            return;
        }
        if self.slots.iter().any(|slot| slot.generation > 0) {
            self.write_status(true).await;
        }
        confirm_deletion(&self.api, &self.name, &self.uid, inputs).await;
    }

    /// Writes the pod's status if it differs from what was last written.
    async fn write_status(&mut self, terminal: bool) {
        let split = self
            .slots
            .iter()
            .position(|slot| !slot.init)
            .unwrap_or(self.slots.len());
        let records: Vec<ContainerRecord> =
            self.slots.iter().map(|slot| slot.record.clone()).collect();
        let (init, containers) = records.split_at(split);
        let readiness_gates = self
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.readiness_gates.as_ref())
            .map(|gates| {
                gates
                    .iter()
                    .map(|gate| gate.condition_type.clone())
                    .collect()
            })
            .unwrap_or_default();
        let view = PodView {
            policy: self.policy,
            init,
            containers,
            pod_ip: self.ip,
            host_ip: HOST_IP,
            start_time: self.start_time,
            terminal,
            current: self.pod.status.as_ref(),
            readiness_gates,
        };
        let status = pod_status(&view, &mut self.clock, Timestamp::now());
        let value = match serde_json::to_value(&status) {
            Ok(value) => value,
            Err(err) => {
                tracing::error!(pod = %self.key(), %err, "serializing pod status");
                return;
            }
        };
        if self.last_written.as_ref() == Some(&value) {
            return;
        }
        // The uid makes the server refuse the write if the pod was replaced meanwhile.
        let patch = serde_json::json!({ "metadata": { "uid": self.uid }, "status": value });
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                self.pod.status = pod.status;
                self.last_written = Some(value);
                self.status_retry = false;
            }
            Err(err) => {
                tracing::warn!(pod = %self.key(), %err, "writing pod status");
                self.status_retry = true;
            }
        }
    }
}

/// Builds a container's environment and copies of its command and args, ready for Service
/// names to be rewritten.
type Prepared = (
    Vec<(String, String)>,
    Option<Vec<String>>,
    Option<Vec<String>>,
);

async fn prepare(
    shared: &Shared,
    pod: &Pod,
    facts: &PodFacts,
    container: &Container,
    dir: &std::path::Path,
    bin_dir: &std::path::Path,
) -> Result<Prepared, EnvError> {
    let dir = dir.to_string_lossy().into_owned();
    let mut env = vec![
        (
            "PATH".to_owned(),
            format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
        ),
        ("HOME".to_owned(), dir.clone()),
        ("TMPDIR".to_owned(), dir),
        (
            "HOSTNAME".to_owned(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
    ];
    env.extend(resolve_env(&shared.client, pod, facts, container).await?);
    Ok((env, container.command.clone(), container.args.clone()))
}

/// Deletes the pod for good (grace period 0, this pod's uid only), retrying until it is gone or
/// the kubelet shuts down.
async fn confirm_deletion(api: &Api<Pod>, name: &str, uid: &str, inputs: &mut WorkerInputs) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    loop {
        match api.delete(name, &params).await {
            Ok(_) => return,
            // Already gone, or replaced by a pod with another uid.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
            Err(err) => tracing::warn!(pod = name, %err, "deleting pod"),
        }
        tokio::select! {
            () = gone(&mut inputs.updates) => return,
            () = became_true(&mut inputs.shutdown) => return,
            () = sleep(API_RETRY) => {}
        }
    }
}

/// Resolves once the flag is `true` or its sender is gone.
pub async fn became_true(flag: &mut watch::Receiver<bool>) {
    // Either outcome means the wait is over; the guard is dropped at once.
    let _ = flag.wait_for(|value| *value).await;
}

/// Resolves once the pod is gone from the API or the kubelet dropped its worker.
async fn gone(updates: &mut watch::Receiver<PodUpdate>) {
    let _ = updates
        .wait_for(|update| matches!(update, PodUpdate::Gone))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::new((Duration::from_millis(100), Duration::from_millis(500)));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn durations_render_like_go() {
        assert_eq!(go_duration(Duration::from_millis(400)), "400ms");
        assert_eq!(go_duration(Duration::from_millis(1600)), "1.6s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
    }
}
