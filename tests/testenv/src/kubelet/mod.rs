//! The process kubelet: an ordinary Kubernetes client that runs the pods bound to its node as
//! local processes, so that the whole system runs end to end on one machine.
//!
//! It uses only standard API calls (list/watch pods; get Secrets, ConfigMaps and Services;
//! `pods/binding`; merge patches of `pods/status`; delete with `gracePeriodSeconds=0`), so it
//! works against any API server.
//!
//! # What it does
//!
//! - **Pods**: it runs every pod whose `spec.nodeName` is its node. With
//!   [`KubeletConfig::schedule`] it also binds pods without a node (and with the default
//!   scheduler) to its node through `pods/{name}/binding`, acting as the scheduler.
//! - **Addresses**: each pod gets its own loopback address `127.a.b.c` (never in
//!   `127.0.0.0/16`), a hash of namespace and name, so a pod re-created under the same name
//!   gets the same address; on a collision with a live pod the next free address is used. A
//!   replacement pod starts only after the previous pod of that name has stopped. `hostIP` is
//!   127.0.0.1.
//! - **Images**: an image stands for a local directory of binaries ([`ImageMapping`]). An image
//!   missing from the map leaves the container waiting in `ErrImagePull`, then
//!   `ImagePullBackOff`, and the pod Pending.
//! - **Processes**: `command[0]` (or the image's entrypoint) is looked up in the image's
//!   `bin_dir` unless absolute; `args` follow; `$(VAR)` is expanded as Kubernetes does. The
//!   environment holds only `PATH` (`<bin_dir>:/usr/local/bin:/usr/bin:/bin`), `HOME` and
//!   `TMPDIR` (a per-pod directory, also the working directory; it stands in for every volume),
//!   `HOSTNAME` (the pod name) and the container's `env`/`envFrom` (literal values, `fieldRef`,
//!   `secretKeyRef`, `configMapKeyRef`; a missing object or key leaves the container waiting in
//!   `CreateContainerConfigError`, retried every second). Each process runs in its own process
//!   group; stdout and stderr are appended to `<log_dir>/<namespace>_<pod>_<container>.log`,
//!   served as a kubelet serves them (`/containerLogs/…` with `tailLines`, `follow`,
//!   `previous` and `limitBytes`, on the port the Node names as its kubelet endpoint, which is
//!   where the API server's `pods/{name}/log` goes). A container that fails with
//!   `terminationMessagePolicy: FallbackToLogsOnError` gets the end of its output (80 lines, at
//!   most 2048 bytes) as its termination message. A
//!   program that cannot be started ends as `terminated` with reason `StartError` (exit code
//!   128) and is retried with back-off, shown as `RunContainerError`.
//! - **Cluster DNS stand-in**: a host `<service>.<namespace>.svc[.cluster.local]` (with any
//!   `:port`, anywhere in the text) in an environment value, a command or an argument is
//!   replaced by the IP of a pod the Service selects (ready pods first, then by name), or by an
//!   `ExternalName` Service's target. Until such a pod has an IP the container waits in
//!   `ContainerCreating` with a message saying which Service it waits for. Names are resolved
//!   once, when the container starts.
//! - **Restarts**: `restartPolicy` Always/OnFailure/Never as a kubelet applies it; restarts wait
//!   an exponential back-off ([`KubeletConfig::restart_backoff`]), shown as `CrashLoopBackOff`
//!   with `back-off 400ms restarting failed container=… pod=…`, `restartCount` rising and
//!   `lastState.terminated` holding the previous run. The back-off resets after a run longer
//!   than twice its cap. Init containers run one after another before the others; sidecar init
//!   containers (`restartPolicy: Always`) are refused with a `CreateContainerConfigError`.
//! - **Probes**: startup, readiness and liveness probes (httpGet over plain HTTP, tcpSocket,
//!   exec) with `failureThreshold`/`successThreshold` as written and timings capped for tests:
//!   `initialDelaySeconds` at 2 s, `periodSeconds` at 1 s, `timeoutSeconds` at 2 s, and until a
//!   container first becomes ready its readiness probe runs every 100 ms. Without a readiness
//!   probe a container is ready once running. A failed liveness or startup probe restarts the
//!   container (SIGTERM, SIGKILL after the grace period).
//! - **Not modelled**: volumes (every mount shares the per-pod directory), security contexts
//!   and users (processes run as the kubelet's user), resources, image pull policy, host
//!   ports, and Services' own cluster IPs (only the DNS stand-in above).
//! - **Status**: written through `pods/status` (JSON merge patch, guarded by the pod's uid) only
//!   when it changed: phase, the `PodReadyToStartContainers`, `Initialized`, `Ready`,
//!   `ContainersReady` and `PodScheduled` conditions (others are kept), pod and host IPs,
//!   `startTime`, and container statuses with `containerID` `process://<pid>` and `imageID`
//!   `local://<bin_dir>`.
//! - **Deletion**: when a pod gets a `deletionTimestamp`, or disappears, its process groups get
//!   SIGTERM, then SIGKILL after the grace period (capped at 10 s); the final status is written
//!   and the pod deleted with `gracePeriodSeconds=0` (and a uid precondition) if still there.
//!   Whatever a container left running in its process group is killed when its main process
//!   exits.
//! - **Robustness**: pods are followed with a `kube::runtime` watcher, which re-lists after
//!   errors; a re-list reconciles (pods missing from it are stopped) and processes are never
//!   lost in between. Each pod has its own task, so one bad pod never holds up others.
//! - **Node**: it registers its Node (labels `kubernetes.io/hostname`, `os`, `arch`; address
//!   127.0.0.1; the machine's CPUs and memory and 110 pods as capacity; a `Ready` condition)
//!   and keeps it alive as a real kubelet does: every [`HEARTBEAT`] it renews the node's Lease
//!   in `kube-node-lease` and the conditions' `lastHeartbeatTime`.
//! - **Shutdown**: [`ProcessKubelet::shutdown`] stops every process (as for a deletion, but
//!   without writing to the API). Dropping the kubelet without it stops them too, blocking:
//!   SIGTERM, up to 2 s, then SIGKILL.

mod command;
mod env;
mod heartbeat;
mod ip;
mod logs;
mod pod;
mod probe;
mod process;
mod status;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::{
    api::{Api, ListParams, PostParams},
    core::ObjectMeta,
    runtime::{watcher, WatchStreamExt},
    Client,
};
use tokio::{
    sync::watch,
    task::{JoinHandle, JoinSet},
};

pub use self::heartbeat::HEARTBEAT;
use self::{
    ip::{IpTable, HOST_IP},
    pod::{PodUpdate, PodWorker, WorkerInputs},
    process::ProcessTable,
};

/// How the kubelet runs pods.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The node this kubelet is, e.g. `local`.
    pub node_name: String,
    /// Which local binaries each image stands for.
    pub images: Vec<ImageMapping>,
    /// Where container output goes: `<namespace>_<pod>_<container>.log`, stdout and stderr,
    /// appended across restarts. Created if missing.
    pub log_dir: PathBuf,
    /// Base and cap of the crash-loop back-off.
    pub restart_backoff: (Duration, Duration),
    /// Also bind pods that have no node to this one, as the scheduler would.
    pub schedule: bool,
}

impl KubeletConfig {
    /// A configuration for node `local` that schedules pods, with back-off from 100 ms to 5 s.
    pub fn new(images: Vec<ImageMapping>, log_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: "local".to_owned(),
            images,
            log_dir: log_dir.into(),
            restart_backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            schedule: true,
        }
    }
}

/// What an image stands for on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMapping {
    /// An exact image reference, or a repository without tag or digest (`flotilla` matches
    /// `flotilla:latest` and `flotilla@sha256:…`). Exact matches win.
    pub image: String,
    /// The image's `PATH`: a container's `command[0]` is looked up here unless absolute.
    pub bin_dir: PathBuf,
    /// The image's entrypoint, run when a container has no `command` (looked up in `bin_dir`
    /// unless absolute).
    pub entrypoint: Option<PathBuf>,
}

impl ImageMapping {
    /// An image whose programs live in `bin_dir`, with no entrypoint.
    pub fn new(image: impl Into<String>, bin_dir: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            bin_dir: bin_dir.into(),
            entrypoint: None,
        }
    }

    /// Sets the entrypoint.
    pub fn with_entrypoint(mut self, entrypoint: impl Into<PathBuf>) -> Self {
        self.entrypoint = Some(entrypoint.into());
        self
    }
}

/// What the kubelet's tasks share.
struct Shared {
    client: Client,
    config: KubeletConfig,
    ips: Mutex<IpTable>,
    processes: ProcessTable,
    /// Where each container's runs begin in its log.
    log_runs: logs::LogRuns,
    /// The port serving container logs (the Node's kubelet endpoint).
    log_port: u16,
    /// Holds a working directory per pod.
    root_dir: PathBuf,
}

impl Shared {
    fn acquire_ip(&self, namespace: &str, name: &str) -> Ipv4Addr {
        self.ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .acquire(namespace, name)
    }

    fn release_ip(&self, ip: Ipv4Addr) {
        self.ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .release(ip);
    }
}

/// A running process kubelet. It runs until [`ProcessKubelet::shutdown`] or until dropped;
/// either way every process it started is stopped.
pub struct ProcessKubelet {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ProcessKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessKubelet")
            .field("node_name", &self.shared.config.node_name)
            .field("root_dir", &self.shared.root_dir)
            .finish_non_exhaustive()
    }
}

/// How soon a failed binding is tried again.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// How long a dropped kubelet gives its processes between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(2);

impl ProcessKubelet {
    /// Starts the kubelet. Fails if the API server cannot list pods or the directories cannot
    /// be created.
    pub async fn start(client: Client, config: KubeletConfig) -> anyhow::Result<Self> {
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        Api::<Pod>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
            .map_err(|err| anyhow::anyhow!("the kubelet cannot list pods: {err}"))?;
        std::fs::create_dir_all(&config.log_dir)?;
        let root_dir = std::env::temp_dir().join(format!(
            "flotilla-kubelet-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root_dir)?;
        let logs_listener = tokio::net::TcpListener::bind((HOST_IP, 0)).await?;
        let shared = Arc::new(Shared {
            client,
            config,
            ips: Mutex::new(IpTable::default()),
            processes: ProcessTable::default(),
            log_runs: logs::LogRuns::default(),
            log_port: logs_listener.local_addr()?.port(),
            root_dir,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut logs_shutdown = shutdown_rx.clone();
        let router = logs::router(Arc::clone(&shared));
        tokio::spawn(async move {
            let stopped = async move {
                let _ = logs_shutdown.wait_for(|stop| *stop).await;
            };
            if let Err(err) = axum::serve(logs_listener, router)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!(%err, "serving container logs");
            }
        });
        tokio::spawn(heartbeat::run(Arc::clone(&shared), shutdown_rx.clone()));
        let task = tokio::spawn(Node::new(Arc::clone(&shared)).run(shutdown_rx));
        Ok(Self {
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// Stops every process (SIGTERM, then SIGKILL after the pod's grace period, capped at
    /// 10 s) and the kubelet. Pods are left in the API as they are.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::error!(%err, "the kubelet task failed");
            }
        }
    }

    /// The pid of a pod's first running container (init containers count first), e.g. to kill
    /// it in a test. The process leads its own process group.
    pub fn pid_of(&self, namespace: &str, pod: &str) -> Option<u32> {
        self.shared.processes.pid_of(namespace, pod, None)
    }

    /// The pid of a named container of a pod, if it runs.
    pub fn container_pid(&self, namespace: &str, pod: &str, container: &str) -> Option<u32> {
        self.shared
            .processes
            .pid_of(namespace, pod, Some(container))
    }

    /// The address pods named `namespace/name` get unless another live pod holds it.
    pub fn preferred_pod_ip(namespace: &str, name: &str) -> Ipv4Addr {
        ip::preferred_ip(namespace, name)
    }
}

impl Drop for ProcessKubelet {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared.processes.stop_all_blocking(DROP_GRACE);
        if let Err(err) = std::fs::remove_dir_all(&self.shared.root_dir) {
            tracing::debug!(%err, "removing the kubelet's directory");
        }
    }
}

/// A pod worker as the node sees it.
struct WorkerHandle {
    namespace: String,
    name: String,
    updates: watch::Sender<PodUpdate>,
    done: watch::Receiver<bool>,
}

/// The node loop: follows pods, binds unscheduled ones, and starts and stops pod workers.
struct Node {
    shared: Arc<Shared>,
    workers: HashMap<String, WorkerHandle>,
    tasks: JoinSet<()>,
    /// Which worker task serves which pod uid.
    task_uids: HashMap<tokio::task::Id, String>,
    /// Pods whose worker finished (deletion confirmed) while the API may still show them.
    finished: HashSet<String>,
    /// Pods a binding was posted for.
    bound: HashSet<String>,
    /// Pods whose binding failed, to try again.
    unbound: HashMap<String, Pod>,
    /// During a re-list: the uids seen so far.
    relisting: Option<HashSet<String>>,
    worker_shutdown: watch::Sender<bool>,
}

impl Node {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            finished: HashSet::new(),
            bound: HashSet::new(),
            unbound: HashMap::new(),
            relisting: None,
            worker_shutdown: watch::channel(false).0,
        }
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let pods = Api::<Pod>::all(self.shared.client.clone());
        let events = watcher(pods, watcher::Config::default()).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut bind_retry = tokio::time::interval(BIND_RETRY);
        loop {
            tokio::select! {
                _ = bind_retry.tick(), if !self.unbound.is_empty() => {
                    for (_, pod) in std::mem::take(&mut self.unbound) {
                        self.try_bind(pod).await;
                    }
                }
                () = pod::became_true(&mut shutdown) => break,
                Some(joined) = self.tasks.join_next_with_id() => {
                    let id = match joined {
                        Ok((id, ())) => id,
                        Err(err) => {
                            tracing::error!(%err, "a pod worker failed");
                            err.id()
                        }
                    };
                    if let Some(uid) = self.task_uids.remove(&id) {
                        self.workers.remove(&uid);
                        self.finished.insert(uid);
                    }
                }
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(err)) => tracing::warn!(%err, "watching pods"),
                    None => break,
                },
            }
        }
        self.worker_shutdown.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
    }

    async fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisting = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.on_pod(pod).await,
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid {
                    if let Some(worker) = self.workers.get(&uid) {
                        worker.updates.send_replace(PodUpdate::Gone);
                    }
                    self.finished.remove(&uid);
                    self.bound.remove(&uid);
                    self.unbound.remove(&uid);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisting.take() {
                    for (uid, worker) in &self.workers {
                        if !seen.contains(uid) {
                            worker.updates.send_replace(PodUpdate::Gone);
                        }
                    }
                    self.finished.retain(|uid| seen.contains(uid));
                    self.bound.retain(|uid| seen.contains(uid));
                    self.unbound.retain(|uid, _| seen.contains(uid));
                }
            }
        }
    }

    async fn on_pod(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(uid.clone());
        }
        let spec = pod.spec.as_ref();
        let node = spec.and_then(|spec| spec.node_name.as_deref());
        if node.is_some() {
            self.unbound.remove(&uid);
        }
        match node {
            Some(node) if node == self.shared.config.node_name => self.run_pod(uid, pod),
            Some(_) => {}
            None => {
                let default_scheduler = spec
                    .and_then(|spec| spec.scheduler_name.as_deref())
                    .is_none_or(|name| name == "default-scheduler");
                if self.shared.config.schedule
                    && default_scheduler
                    && pod.metadata.deletion_timestamp.is_none()
                    && self.bound.insert(uid)
                {
                    self.try_bind(pod).await;
                }
            }
        }
    }

    /// Hands a pod of this node to its worker, starting one if needed.
    fn run_pod(&mut self, uid: String, pod: Pod) {
        if let Some(worker) = self.workers.get(&uid) {
            worker
                .updates
                .send_replace(PodUpdate::Present(Box::new(pod)));
            return;
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let completed = pod
            .status
            .as_ref()
            .and_then(|status| status.phase.as_deref())
            .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
        if self.finished.contains(&uid) || (completed && !deleting) {
            return;
        }
        let (Some(namespace), Some(name)) =
            (pod.metadata.namespace.clone(), pod.metadata.name.clone())
        else {
            return;
        };
        let predecessor = self
            .workers
            .values()
            .find(|worker| worker.namespace == namespace && worker.name == name)
            .map(|worker| worker.done.clone());
        let (updates, updates_rx) = watch::channel(PodUpdate::Present(Box::new(pod.clone())));
        let (done_tx, done) = watch::channel(false);
        let inputs = WorkerInputs {
            updates: updates_rx,
            shutdown: self.worker_shutdown.subscribe(),
            predecessor,
        };
        let shared = Arc::clone(&self.shared);
        let handle = self.tasks.spawn(async move {
            PodWorker::run(shared, pod, inputs).await;
            done_tx.send_replace(true);
        });
        self.task_uids.insert(handle.id(), uid.clone());
        self.workers.insert(
            uid,
            WorkerHandle {
                namespace,
                name,
                updates,
                done,
            },
        );
    }

    /// Binds a pod, or keeps it to try again.
    async fn try_bind(&mut self, pod: Pod) {
        match self.bind(&pod).await {
            Ok(()) => {}
            // Bound meanwhile (or gone): the watch brings the news.
            Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
            Err(err) => {
                tracing::warn!(%err, "binding pod");
                if let Some(uid) = pod.metadata.uid.clone() {
                    self.unbound.insert(uid, pod);
                }
            }
        }
    }

    /// Binds a pod to this node, as a scheduler does.
    async fn bind(&self, pod: &Pod) -> Result<(), kube::Error> {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            return Ok(());
        };
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                uid: pod.metadata.uid.clone(),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.shared.config.node_name.clone()),
                ..ObjectReference::default()
            },
        };
        tracing::info!(pod = %format!("{namespace}/{name}"), node = %self.shared.config.node_name, "binding pod");
        Api::<Pod>::namespaced(self.shared.client.clone(), namespace)
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
            .map(drop)
    }
}
