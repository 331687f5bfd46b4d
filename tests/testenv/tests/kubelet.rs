//! The process kubelet against the fake API server: pods become processes, report status like a
//! kubelet, restart, probe, resolve their environment and stop when deleted.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use flotilla_testenv::{
    apiserver::FakeApiServer,
    kubelet::{ImageMapping, KubeletConfig, ProcessKubelet},
};
use k8s_openapi::{
    api::core::v1::{
        Container, ContainerPort, ContainerStatus, EnvVar, EnvVarSource, HTTPGetAction,
        ObjectFieldSelector, Pod, PodSpec, Probe, Secret, SecretKeySelector, Service, ServiceSpec,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    ByteString,
};
use kube::{
    api::{Api, DeleteParams, PostParams},
    Client,
};

const NAMESPACE: &str = "default";
const WAIT: Duration = Duration::from_secs(20);

/// A fake API server, a client of it and a kubelet on node `local` that maps image `busybox`
/// to `/bin` (and schedules pods itself).
struct Cluster {
    // Dropped last: the kubelet stops its processes first.
    kubelet: Option<ProcessKubelet>,
    client: Client,
    logs: tempfile::TempDir,
    _server: FakeApiServer,
}

impl Cluster {
    async fn start() -> Self {
        let server = FakeApiServer::start()
            .await
            .expect("fake API server starts");
        let client = server
            .client()
            .await
            .expect("client of the fake API server");
        let logs = tempfile::tempdir().expect("log dir");
        let mut config =
            KubeletConfig::new(vec![ImageMapping::new("busybox", "/bin")], logs.path());
        config.restart_backoff = (Duration::from_millis(50), Duration::from_millis(400));
        let kubelet = ProcessKubelet::start(client.clone(), config)
            .await
            .expect("kubelet starts");
        Self {
            kubelet: Some(kubelet),
            client,
            logs,
            _server: server,
        }
    }

    fn kubelet(&self) -> &ProcessKubelet {
        self.kubelet.as_ref().expect("the kubelet runs")
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    async fn create(&self, pod: Pod) -> Pod {
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("pod created")
    }

    fn log_path(&self, pod: &str) -> PathBuf {
        self.logs.path().join(format!("{NAMESPACE}_{pod}_main.log"))
    }

    /// Polls a pod until `done` holds; fails with the last status seen after [`WAIT`].
    async fn wait_pod(&self, name: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Ok(pod) = self.pods().get(name).await {
                if done(&pod) {
                    return pod;
                }
                last = pod.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pod {name} never got {what}; last status: {last:#?}");
    }

    async fn wait_log(&self, pod: &str, needle: &str) -> String {
        let path = self.log_path(pod);
        wait_until(&format!("{} to contain {needle:?}", path.display()), || {
            std::fs::read_to_string(&path)
                .ok()
                .filter(|log| log.contains(needle))
        })
        .await
    }

    async fn shutdown(mut self) {
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.shutdown().await;
        }
    }
}

/// Polls `check` until it returns something; fails after [`WAIT`].
async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A pod with one container `main` running `sh -c script` in image `busybox`.
fn sh_pod(name: &str, script: &str, restart_policy: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some(restart_policy.to_owned()),
            termination_grace_period_seconds: Some(5),
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some("busybox".to_owned()),
                command: Some(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn container(pod: &mut Pod) -> &mut Container {
    &mut pod.spec.as_mut().expect("spec").containers[0]
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn waiting_reason(pod: &Pod) -> Option<&str> {
    main_status(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

fn waiting_message(pod: &Pod) -> Option<&str> {
    main_status(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .message
        .as_deref()
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// Whether a process is gone for good (not even a zombie).
fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_pod_runs_as_a_process_on_its_own_address_and_becomes_ready() {
    let cluster = Cluster::start().await;
    cluster
        .create(sh_pod("sleeper", "sleep 600", "Always"))
        .await;
    let pod = cluster
        .wait_pod("sleeper", "Ready", |pod| {
            condition(pod, "Ready").as_deref() == Some("True")
        })
        .await;

    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some("local"),
        "bound by the kubelet"
    );
    assert_eq!(phase(&pod), Some("Running"));
    for type_ in [
        "PodScheduled",
        "Initialized",
        "ContainersReady",
        "PodReadyToStartContainers",
    ] {
        assert_eq!(condition(&pod, type_).as_deref(), Some("True"), "{type_}");
    }
    let expected_ip = ProcessKubelet::preferred_pod_ip(NAMESPACE, "sleeper").to_string();
    assert_eq!(pod_ip(&pod), Some(expected_ip.as_str()));
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(status.start_time.is_some());

    let pid = cluster
        .kubelet()
        .pid_of(NAMESPACE, "sleeper")
        .expect("a process runs");
    let main = main_status(&pod).expect("container status");
    assert_eq!(
        main.container_id.as_deref(),
        Some(format!("process://{pid}").as_str())
    );
    assert!(main.ready);
    assert_eq!(main.started, Some(true));
    assert_eq!(main.restart_count, 0);
    assert!(main
        .state
        .as_ref()
        .and_then(|s| s.running.as_ref())
        .is_some());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).expect("process cwd");
    assert!(cwd.starts_with(std::env::temp_dir()), "{}", cwd.display());

    cluster.shutdown().await;
    wait_until("the process to stop with the kubelet", || {
        process_gone(pid).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_http_readiness_probe_gates_ready() {
    let cluster = Cluster::start().await;
    let gate = tempfile::tempdir().expect("gate dir");
    let gate_file = gate.path().join("go");
    let mut pod = sh_pod(
        "web",
        "while [ ! -e \"$GATE\" ]; do sleep 0.05; done; exec python3 -m http.server --bind \"$POD_IP\" 8080",
        "Always",
    );
    let main = container(&mut pod);
    main.env = Some(vec![
        literal("GATE", &gate_file.to_string_lossy()),
        field("POD_IP", "status.podIP"),
    ]);
    main.ports = Some(vec![ContainerPort {
        name: Some("http".to_owned()),
        container_port: 8080,
        ..ContainerPort::default()
    }]);
    main.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/".to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(1),
        ..Probe::default()
    });
    cluster.create(pod).await;

    let pod = cluster
        .wait_pod("web", "a running container", |pod| {
            main_status(pod).is_some_and(|s| s.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
        .await;
    assert_eq!(phase(&pod), Some("Running"));
    assert_eq!(
        condition(&pod, "Ready").as_deref(),
        Some("False"),
        "no server yet"
    );
    assert_eq!(main_status(&pod).map(|s| s.ready), Some(false));

    std::fs::write(&gate_file, b"").expect("open the gate");
    let pod = cluster
        .wait_pod("web", "Ready", |pod| {
            condition(pod, "Ready").as_deref() == Some("True")
        })
        .await;
    assert_eq!(main_status(&pod).map(|s| s.ready), Some(true));
    cluster.shutdown().await;
}

#[tokio::test]
async fn exit_codes_decide_the_phase_under_restart_policy_never() {
    let cluster = Cluster::start().await;
    cluster.create(sh_pod("ok", "exit 0", "Never")).await;
    cluster.create(sh_pod("bad", "exit 3", "Never")).await;

    let ok = cluster
        .wait_pod("ok", "Succeeded", |pod| phase(pod) == Some("Succeeded"))
        .await;
    let terminated = main_status(&ok)
        .and_then(|s| s.state.as_ref()?.terminated.clone())
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(condition(&ok, "Ready").as_deref(), Some("False"));

    let bad = cluster
        .wait_pod("bad", "Failed", |pod| phase(pod) == Some("Failed"))
        .await;
    let status = main_status(&bad).expect("container status");
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    assert_eq!(status.restart_count, 0);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_crashing_container_backs_off_with_rising_restart_count() {
    let cluster = Cluster::start().await;
    cluster
        .create(sh_pod("crasher", "echo started; exit 1", "Always"))
        .await;
    let pod = cluster
        .wait_pod("crasher", "CrashLoopBackOff after restarts", |pod| {
            waiting_reason(pod) == Some("CrashLoopBackOff")
                && main_status(pod).is_some_and(|s| s.restart_count >= 3)
        })
        .await;
    assert_eq!(
        phase(&pod),
        Some("Running"),
        "restartPolicy Always keeps the pod Running"
    );
    let message = waiting_message(&pod).expect("back-off message");
    assert!(
        message.starts_with("back-off ")
            && message.contains("restarting failed container=main pod=crasher_default("),
        "{message}"
    );
    let last = main_status(&pod)
        .and_then(|s| s.last_state.as_ref()?.terminated.clone())
        .expect("last state");
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    let log = cluster
        .wait_log("crasher", "started\nstarted\nstarted\n")
        .await;
    assert!(log.lines().count() >= 3);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_killed_process_is_restarted() {
    let cluster = Cluster::start().await;
    cluster
        .create(sh_pod("victim", "sleep 600", "Always"))
        .await;
    cluster
        .wait_pod("victim", "Ready", |pod| {
            condition(pod, "Ready").as_deref() == Some("True")
        })
        .await;
    let pid = cluster
        .kubelet()
        .pid_of(NAMESPACE, "victim")
        .expect("a process runs");
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    let pod = cluster
        .wait_pod("victim", "a restart", |pod| {
            main_status(pod).is_some_and(|s| s.restart_count == 1 && s.ready)
        })
        .await;
    let last = main_status(&pod)
        .and_then(|s| s.last_state.as_ref()?.terminated.clone())
        .expect("last state");
    assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    let new_pid = cluster
        .kubelet()
        .pid_of(NAMESPACE, "victim")
        .expect("a new process");
    assert_ne!(new_pid, pid);
    cluster.shutdown().await;
}

#[tokio::test]
async fn an_unknown_image_cannot_be_pulled() {
    let cluster = Cluster::start().await;
    let mut pod = sh_pod("ghost", "true", "Always");
    container(&mut pod).image = Some("example.com/nothing:1.0".to_owned());
    cluster.create(pod).await;
    let pod = cluster
        .wait_pod("ghost", "ImagePullBackOff", |pod| {
            waiting_reason(pod) == Some("ImagePullBackOff")
        })
        .await;
    assert_eq!(phase(&pod), Some("Pending"));
    let message = waiting_message(&pod).expect("message");
    assert!(
        message.contains(
            "failed to pull image \"example.com/nothing:1.0\": not in the kubelet's image map"
        ),
        "{message}"
    );
    assert_eq!(condition(&pod, "Ready").as_deref(), Some("False"));
    assert_eq!(cluster.kubelet().pid_of(NAMESPACE, "ghost"), None);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_missing_program_is_a_start_error() {
    let cluster = Cluster::start().await;
    let mut pod = sh_pod("typo", "", "Never");
    container(&mut pod).command = Some(vec!["no-such-program".to_owned()]);
    cluster.create(pod).await;
    let pod = cluster
        .wait_pod("typo", "Failed", |pod| phase(pod) == Some("Failed"))
        .await;
    let terminated = main_status(&pod)
        .and_then(|s| s.state.as_ref()?.terminated.clone())
        .expect("terminated");
    assert_eq!(terminated.reason.as_deref(), Some("StartError"));
    assert_eq!(terminated.exit_code, 128);
    let message = terminated.message.unwrap_or_default();
    assert!(
        message.contains("\"no-such-program\": executable file not found in /bin"),
        "{message}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn deleting_a_pod_stops_its_process_and_removes_it() {
    let cluster = Cluster::start().await;
    // The shell ignores SIGTERM, its child does not: the whole process group gets the signal.
    cluster
        .create(sh_pod("doomed", "trap '' TERM; sleep 600 & wait", "Always"))
        .await;
    cluster
        .wait_pod("doomed", "Ready", |pod| {
            condition(pod, "Ready").as_deref() == Some("True")
        })
        .await;
    let pid = cluster
        .kubelet()
        .pid_of(NAMESPACE, "doomed")
        .expect("a process runs");
    cluster
        .pods()
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match cluster.pods().get_opt("doomed").await.expect("get pod") {
            None => break,
            Some(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(pod) => panic!("pod still there: {:#?}", pod.status),
        }
    }
    wait_until("the process to be gone", || process_gone(pid).then_some(())).await;
    assert_eq!(cluster.kubelet().pid_of(NAMESPACE, "doomed"), None);
    cluster.shutdown().await;
}

#[tokio::test]
async fn env_comes_from_secrets_and_the_downward_api() {
    let cluster = Cluster::start().await;
    let mut pod = sh_pod(
        "reader",
        "echo \"token=$TOKEN name=$NAME ip=$IP arg=$1\"; sleep 600",
        "Always",
    );
    let main = container(&mut pod);
    main.args = Some(vec!["sh".to_owned(), "$(NAME)-x".to_owned()]);
    main.env = Some(vec![
        EnvVar {
            name: "TOKEN".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "creds".to_owned(),
                    key: "token".to_owned(),
                    ..SecretKeySelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        field("NAME", "metadata.name"),
        field("IP", "status.podIP"),
    ]);
    cluster.create(pod).await;

    let pod = cluster
        .wait_pod("reader", "CreateContainerConfigError", |pod| {
            waiting_reason(pod) == Some("CreateContainerConfigError")
        })
        .await;
    assert_eq!(waiting_message(&pod), Some("secret \"creds\" not found"));
    assert_eq!(phase(&pod), Some("Pending"));

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("creds".to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(cluster.client.clone(), NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret created");
    let ip = ProcessKubelet::preferred_pod_ip(NAMESPACE, "reader");
    cluster
        .wait_log(
            "reader",
            &format!("token=s3cret name=reader ip={ip} arg=reader-x\n"),
        )
        .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn service_host_names_are_rewritten_to_a_selected_pods_ip() {
    let cluster = Cluster::start().await;
    let mut client_pod = sh_pod("client", "echo \"head=$HEAD url=$1\"; sleep 600", "Always");
    let main = container(&mut client_pod);
    main.env = Some(vec![literal("HEAD", "backend.default.svc:7400")]);
    main.args = Some(vec![
        "sh".to_owned(),
        "http://backend.default.svc.cluster.local:7401/readyz".to_owned(),
    ]);
    cluster.create(client_pod).await;

    let pod = cluster
        .wait_pod("client", "ContainerCreating for the Service", |pod| {
            waiting_reason(pod) == Some("ContainerCreating")
                && waiting_message(pod).is_some_and(|m| m.contains("backend.default.svc"))
        })
        .await;
    assert_eq!(phase(&pod), Some("Pending"));

    let service = Service {
        metadata: ObjectMeta {
            name: Some("backend".to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([("app".to_owned(), "backend".to_owned())])),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    Api::<Service>::namespaced(cluster.client.clone(), NAMESPACE)
        .create(&PostParams::default(), &service)
        .await
        .expect("service created");
    let mut backend = sh_pod("backend-0", "sleep 600", "Always");
    backend.metadata.labels = Some(BTreeMap::from([("app".to_owned(), "backend".to_owned())]));
    cluster.create(backend).await;

    let backend = cluster
        .wait_pod("backend-0", "an IP", |pod| pod_ip(pod).is_some())
        .await;
    let ip = pod_ip(&backend).expect("backend IP");
    cluster
        .wait_log(
            "client",
            &format!("head={ip}:7400 url=http://{ip}:7401/readyz\n"),
        )
        .await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_recreated_pod_gets_its_address_back() {
    let cluster = Cluster::start().await;
    cluster.create(sh_pod("head", "sleep 600", "Always")).await;
    cluster.create(sh_pod("other", "sleep 600", "Always")).await;
    let ready = |pod: &Pod| condition(pod, "Ready").as_deref() == Some("True");
    let first = cluster.wait_pod("head", "Ready", ready).await;
    let other = cluster.wait_pod("other", "Ready", ready).await;
    let ip = pod_ip(&first).expect("IP").to_owned();
    assert_ne!(Some(ip.as_str()), pod_ip(&other));

    cluster
        .pods()
        .delete("head", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster
        .pods()
        .get_opt("head")
        .await
        .expect("get pod")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod head never went away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.create(sh_pod("head", "sleep 600", "Always")).await;
    let second = cluster.wait_pod("head", "Ready", ready).await;
    assert_ne!(first.metadata.uid, second.metadata.uid);
    assert_eq!(pod_ip(&second), Some(ip.as_str()));
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() {
    let cluster = Cluster::start().await;
    let mut pod = sh_pod("flaky", "touch alive; sleep 600", "Always");
    container(&mut pod).liveness_probe = Some(Probe {
        exec: Some(k8s_openapi::api::core::v1::ExecAction {
            command: Some(vec![
                "sh".to_owned(),
                "-c".to_owned(),
                "test -e gone".to_owned(),
            ]),
        }),
        period_seconds: Some(1),
        failure_threshold: Some(2),
        ..Probe::default()
    });
    cluster.create(pod).await;
    let pod = cluster
        .wait_pod("flaky", "a liveness restart", |pod| {
            main_status(pod).is_some_and(|s| s.restart_count >= 1)
        })
        .await;
    let last = main_status(&pod)
        .and_then(|s| s.last_state.as_ref()?.terminated.clone())
        .expect("last state");
    assert_eq!(last.exit_code, 143, "stopped with SIGTERM");
    let message = last.message.unwrap_or_default();
    assert!(message.starts_with("Liveness probe failed: "), "{message}");
    cluster.shutdown().await;
}

#[tokio::test]
async fn dropping_the_kubelet_stops_its_processes() {
    let mut cluster = Cluster::start().await;
    cluster
        .create(sh_pod("orphan", "sleep 600 & wait", "Always"))
        .await;
    cluster
        .wait_pod("orphan", "Ready", |pod| {
            condition(pod, "Ready").as_deref() == Some("True")
        })
        .await;
    let pid = cluster
        .kubelet()
        .pid_of(NAMESPACE, "orphan")
        .expect("a process runs");
    drop(cluster.kubelet.take());
    // The shell may stay a zombie until this runtime reaps it; its group must be empty of
    // anything running.
    wait_until("the process group to stop", || {
        group_stopped(pid).then_some(())
    })
    .await;
}

/// Whether no process of the process group `pgid` is still running (zombies are stopped).
fn group_stopped(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().all(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return true;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return true;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.get(2) != Some(&pgid.to_string().as_str()) || fields.first() == Some(&"Z")
    })
}

#[tokio::test]
async fn the_kubelet_binary_runs_pods_until_sigterm() {
    let server = FakeApiServer::start()
        .await
        .expect("fake API server starts");
    let client = server.client().await.expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    let mut kubelet = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-kubelet"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--image", "busybox=/bin", "--node", "local", "--log-dir"])
        .arg(dir.path().join("logs"))
        .stderr(std::fs::File::create(dir.path().join("kubelet.log")).expect("kubelet log"))
        .kill_on_drop(true)
        .spawn()
        .expect("kubelet starts");
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    pods.create(
        &PostParams::default(),
        &sh_pod("bin", "echo hello; sleep 600", "Always"),
    )
    .await
    .expect("pod created");
    let deadline = tokio::time::Instant::now() + WAIT;
    let pid = loop {
        let pod = pods.get("bin").await.expect("get pod");
        let id = main_status(&pod).filter(|s| s.ready).and_then(|s| {
            s.container_id
                .as_deref()?
                .strip_prefix("process://")?
                .parse::<u32>()
                .ok()
        });
        if let Some(pid) = id {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod never ready: {:#?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = dir
        .path()
        .join("logs")
        .join(format!("{NAMESPACE}_bin_main.log"));
    wait_until("the container's output", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l == "hello\n")
    })
    .await;

    let kubelet_pid = kubelet.id().expect("kubelet pid").to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &kubelet_pid])
        .status()
        .expect("kill runs");
    let status = tokio::time::timeout(WAIT, kubelet.wait())
        .await
        .expect("the kubelet exits on SIGTERM")
        .expect("kubelet status");
    assert!(status.success(), "{status}");
    wait_until("the pod's process to stop", || {
        process_gone(pid).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_kubelet_registers_its_node_and_keeps_its_heartbeat() {
    use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
    let cluster = Cluster::start().await;
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let ready_heartbeat = |node: &Node| {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
            .and_then(|c| c.last_heartbeat_time.clone())
    };
    let mut first = None;
    for _ in 0..(WAIT.as_millis() / 50) {
        if let (Ok(node), Ok(lease)) = (nodes.get("local").await, leases.get("local").await) {
            if ready_heartbeat(&node).is_some() {
                first = Some((node, lease));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (node, lease) = first.expect("the node registers, ready, with its lease");
    let status = node.status.as_ref().expect("node status");
    let addresses = status.addresses.as_ref().expect("node addresses");
    assert!(addresses
        .iter()
        .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"));
    assert!(addresses
        .iter()
        .any(|a| a.type_ == "Hostname" && a.address == "local"));
    let capacity = status.capacity.as_ref().expect("node capacity");
    for resource in ["cpu", "memory", "pods"] {
        assert!(capacity.contains_key(resource), "capacity {resource}");
    }
    let spec = lease.spec.as_ref().expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("local"));
    let renewed = spec.renew_time.clone().expect("renew time");
    assert_eq!(
        lease
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].uid.clone()),
        node.metadata.uid
    );
    let beat = ready_heartbeat(&node).expect("a heartbeat");
    // Both are renewed on the next beats, the condition's transition time kept.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = nodes.get("local").await.expect("node");
        let lease = leases.get("local").await.expect("lease");
        let lease_renewed = lease
            .spec
            .and_then(|s| s.renew_time)
            .is_some_and(|t| t.0 > renewed.0);
        let node_renewed = ready_heartbeat(&now).is_some_and(|t| t.0 > beat.0);
        if lease_renewed && node_renewed {
            let transition = |n: &Node| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .and_then(|c| c.last_transition_time.clone())
            };
            assert_eq!(transition(&now), transition(&node));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the heartbeat is renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}
