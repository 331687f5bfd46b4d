//! End to end, as a user does it, on one machine: the fake API server, the real `kubectl`, the
//! operator binary out of process (through a kubeconfig), and the process kubelet running the
//! real `flotilla` binary for every pod.
//!
//! The runtime binary must be built next to the operator's (`cargo test --workspace` does that;
//! alone: `cargo build -p flotilla --bin flotilla`).
//!
//! With `USE_EXISTING_CLUSTER=true` and `KUBECONFIG` (the envtest convention) the same tests run
//! against that cluster instead of the fake: each in a namespace of its own, deleted when the test
//! ends (also when it fails), with the process kubelet only where the cluster has no nodes of its
//! own. See the README's testing section.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{
    eventually,
    kube::{free_port, head_of, Kube, Process},
    repo,
};
use flotilla::{builtins::sleep_then, TaskOptions};
use flotilla_operator::{
    crd::{ClusterPhase, ComputeCluster},
    head::{Head, HeadView},
};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Pod, Secret, Service},
    events::v1::Event,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{api::ListParams, Api, Client};

/// Generous: the first pods of a debug build on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(90);

impl Kube {
    /// `kubectl apply -f -` of `yaml`.
    fn apply_manifest(&self, yaml: &str) {
        let (ok, text) = self.apply(yaml);
        assert!(ok, "kubectl apply of {yaml}: {text}");
    }

    /// `kubectl patch fcc <name> --type merge -p <patch>`.
    fn patch_cluster(&self, name: &str, patch: &str) {
        self.kubectl_ok(&["patch", "fcc", name, "--type", "merge", "-p", patch]);
    }
}

async fn http_get(address: &str, path: &str) -> Option<String> {
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=2).read().decode())",
            &format!("http://{address}{path}"),
        ])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the series `series` (its name and labels, as rendered) in `metrics`; 0 when
/// absent.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn cluster(api: &Api<ComputeCluster>, name: &str) -> Option<ComputeCluster> {
    api.get_opt(name).await.ok().flatten()
}

/// Waits for a condition of cluster `name` that `matches`.
async fn condition_of(
    clusters: &Api<ComputeCluster>,
    name: &str,
    matches: impl Fn(&Condition) -> bool,
) -> Condition {
    eventually(&format!("a matching condition on {name}"), LONG, || async {
        let status = cluster(clusters, name).await?.status?;
        status.conditions.into_iter().find(|c| matches(c))
    })
    .await
}

/// Live (not terminating) worker pods of `cluster`.
async fn workers(pods: &Api<Pod>, cluster: &str) -> Vec<Pod> {
    let selector = format!("flotilla.dev/cluster={cluster},flotilla.dev/role=worker");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The workers registered at the cluster's head, asked through the head's own API.
async fn registered(client: &Client, cluster: &str) -> Option<Vec<(String, HeadView)>> {
    let (ip, token) = head_of(client, cluster).await?;
    let mut head = Head::connect(&ip, &token).await.ok()?;
    let mut workers: Vec<_> = head.workers().await.ok()?.into_iter().collect();
    workers.sort_by(|a, b| a.0.cmp(&b.0));
    Some(workers)
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks for existence; a zombie reaped by the kubelet is gone.
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn set_replicas(kube: &Kube, replicas: u32) {
    scale(kube, "minimal", replicas);
}

/// Sets the first worker group's `replicas`, leaving its other fields as they are.
fn scale(kube: &Kube, cluster: &str, replicas: u32) {
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/workerGroups/0/replicas","value":{replicas}}}]"#
    );
    kube.kubectl_ok(&["patch", "fcc", cluster, "--type", "json", "-p", &patch]);
}

/// Waits until the cluster `name` has `n` live worker pods, all ready and all registered at the head.
async fn wait_for_workers(kube: &Kube, name: &str, n: usize) -> Vec<String> {
    let client = kube.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let clusters: Api<ComputeCluster> = Api::default_namespaced(client.clone());
    eventually(
        &format!("{n} workers registered at the head"),
        LONG,
        || async {
            let pod_names = names(&workers(&pods, name).await);
            let at_head: Vec<String> = registered(&client, name)
                .await?
                .into_iter()
                .filter(|(_, view)| *view != HeadView::Draining)
                .map(|(name, _)| name)
                .collect();
            let status = cluster(&clusters, name).await?.status?;
            (pod_names.len() == n
                && at_head == pod_names
                && status.ready_workers == n as i32
                && status.phase == Some(ClusterPhase::Running))
            .then_some(pod_names)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_apply_to_delete() {
    let kube = Kube::start().await;
    let kubelet = kube.kubelet().await;
    let (_operator, http) = kube.operator("operator", &[]);
    let client = kube.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let clusters: Api<ComputeCluster> = Api::default_namespaced(client.clone());

    // Apply the minimal example: a head and two workers, registered at the head.
    let example = repo().join("examples/minimal-cluster.yaml");
    kube.kubectl_ok(&["apply", "-f", &example.display().to_string()]);
    let first = wait_for_workers(&kube, "minimal", 2).await;
    let table = kube.kubectl_ok(&["get", "fcc", "minimal"]);
    assert!(
        table.contains("Running"),
        "kubectl get fcc shows the phase: {table}"
    );
    let services: Api<Service> = Api::default_namespaced(client.clone());
    assert!(services
        .get_opt("minimal-head")
        .await
        .expect("get")
        .is_some());

    // A spec the schema accepts but the operator cannot honour: a False condition and a
    // Warning Event, while the first cluster is still served.
    let bad = r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: reserved}
spec:
  image: flotilla:latest
  workerGroups:
    - name: default
      podTemplate: {env: [{name: FLOTILLA_TOKEN, value: guessable}]}
"#;
    kube.apply_manifest(bad);
    let condition = condition_of(&clusters, "reserved", |c| {
        c.type_ == "SpecValid" && c.status == "False"
    })
    .await;
    assert_eq!(condition.reason, "ReservedEnvVar");
    assert!(
        condition.message.contains("FLOTILLA_TOKEN"),
        "{}",
        condition.message
    );
    let events: Api<Event> = Api::default_namespaced(client.clone());
    eventually("a Warning event on the refused cluster", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("reserved")
            })
            .map(|_| ())
    })
    .await;
    assert!(workers(&pods, "reserved").await.is_empty());

    // A cluster whose image cannot be pulled says so, in the kubelet's words.
    let broken = repo().join("operator/tests/fixtures/unpullable-cluster.yaml");
    kube.kubectl_ok(&["apply", "-f", &broken.display().to_string()]);
    let head_ready = eventually("the unpullable head's condition", LONG, || async {
        let status = cluster(&clusters, "unpullable").await?.status?;
        let condition = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "HeadReady")?;
        (status.phase == Some(ClusterPhase::Failed)).then_some(condition)
    })
    .await;
    assert!(
        ["ErrImagePull", "ImagePullBackOff"].contains(&head_ready.reason.as_str()),
        "{head_ready:?}"
    );
    assert!(
        head_ready.message.contains("no-such-image"),
        "{}",
        head_ready.message
    );
    kube.kubectl_ok(&["delete", "fcc", "unpullable"]);

    // A pod of someone else's holding the head's name blocks the cluster, visibly.
    kube.kubectl_ok(&[
        "run",
        "taken-head",
        "--image=registry.invalid/other:1",
        "--restart=Never",
    ]);
    let taken = std::fs::read_to_string(&broken).expect("fixture");
    kube.apply_manifest(&taken.replace("name: unpullable", "name: taken"));
    let progressing = condition_of(&clusters, "taken", |c| {
        c.type_ == "Progressing" && c.reason == "ApplyFailed"
    })
    .await;
    assert!(
        progressing.message.contains("taken-head already exists"),
        "{}",
        progressing.message
    );
    // The refusal holds: the operator retries later and later, and writes no status for it.
    let refusals = || async {
        let metrics = http_get(&http, "/metrics").await.expect("operator metrics");
        counter(
            &metrics,
            "flotilla_operator_reconcile_errors_total{error=\"name_taken\",kind=\"ComputeCluster\"}",
        )
    };
    let version = |c: ComputeCluster| c.metadata.resource_version;
    let (before, written) = (
        refusals().await,
        cluster(&clusters, "taken").await.map(version),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (after, now) = (
        refusals().await,
        cluster(&clusters, "taken").await.map(version),
    );
    assert!(
        after - before <= 2,
        "{} reconciles of a refused cluster in 8 s",
        after - before
    );
    assert_eq!(now, written, "no status written for a repeated refusal");
    kube.kubectl_ok(&["delete", "fcc", "taken"]);
    kube.kubectl_ok(&["delete", "pod", "taken-head"]);

    // Scale up, then down: removed workers are drained at the head before their pods go.
    set_replicas(&kube, 3).await;
    let three = wait_for_workers(&kube, "minimal", 3).await;
    assert!(
        first.iter().all(|n| three.contains(n)),
        "scale-up keeps the old workers"
    );
    // Scale down while every slot is busy: drained workers finish their tasks before their pods
    // go, so every task succeeds and none is retried elsewhere.
    let (head_ip, token) = head_of(&client, "minimal")
        .await
        .expect("the head's address");
    let driver = flotilla::Runtime::connect(&format!("{head_ip}:7400"), Some(&token))
        .await
        .expect("a driver connects to the head");
    let slots: u32 = driver
        .status()
        .await
        .expect("status")
        .workers
        .iter()
        .map(|w| w.slots)
        .sum();
    let tasks: Vec<_> = (0..u64::from(slots))
        .map(|i| sleep_then.remote(&driver, 1500, i))
        .collect();
    eventually("every slot busy", LONG, || async {
        let status = driver.status().await.ok()?;
        (status.tasks_running == u64::from(slots)).then_some(())
    })
    .await;
    set_replicas(&kube, 1).await;
    let results = driver.get_all(&tasks).await.expect("every task succeeds");
    assert_eq!(results, (0..u64::from(slots)).collect::<Vec<_>>());
    let one = wait_for_workers(&kube, "minimal", 1).await;
    assert!(three.contains(&one[0]));
    let status = driver.status().await.expect("status");
    assert_eq!(
        (status.tasks_failed, status.tasks_retried),
        (0, 0),
        "no task lost its worker"
    );
    drop(driver);
    let drained = eventually("drain events", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.into_iter().filter_map(|e| e.reason).collect();
        (reasons.iter().filter(|r| *r == "DrainedWorker").count() >= 2).then_some(reasons)
    })
    .await;
    assert!(drained.iter().any(|r| r == "DrainingWorker"), "{drained:?}");

    // Kill the worker's process: it comes back and registers again (where pods are processes
    // of this machine).
    let survivor = one[0].clone();
    if let Some(kubelet) = &kubelet {
        let pid = kubelet
            .pid_of(&kube.ns, &survivor)
            .expect("the worker runs");
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("kill");
        eventually(
            "the killed worker restarted and registered",
            LONG,
            || async {
                let pod = pods.get_opt(&survivor).await.ok()??;
                let restarts = pod.status?.container_statuses?.first()?.restart_count;
                let at_head = registered(&client, "minimal").await?;
                let new_pid = kubelet.pid_of(&kube.ns, &survivor)?;
                (restarts >= 1 && new_pid != pid && at_head.iter().any(|(n, _)| *n == survivor))
                    .then_some(())
            },
        )
        .await;
    }

    // A deleted worker pod is replaced by a new one, which registers.
    kube.kubectl_ok(&["delete", "pod", &survivor, "--wait=false"]);
    let replaced = wait_for_workers(&kube, "minimal", 1).await;
    assert_ne!(replaced[0], survivor, "a new pod, with a new name");

    // A new image replaces the head first, then the worker; all come back registered.
    kube.patch_cluster("minimal", r#"{"spec":{"image":"flotilla:v2"}}"#);
    eventually(
        "every pod on the new image, the worker registered",
        LONG,
        || async {
            let live: Vec<Pod> = pods
                .list(&ListParams::default().labels("flotilla.dev/cluster=minimal"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let images: Vec<String> = live
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers.first()?.image.clone())
                .collect();
            let worker_names = names(&workers(&pods, "minimal").await);
            let at_head: Vec<String> = registered(&client, "minimal")
                .await?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let status = cluster(&clusters, "minimal").await?.status?;
            (live.len() == 2
                && images.iter().all(|i| i == "flotilla:v2")
                && at_head == worker_names
                && status.phase == Some(ClusterPhase::Running))
            .then_some(())
        },
    )
    .await;
    let survivor = names(&workers(&pods, "minimal").await).remove(0);

    // Suspend: every pod and process goes, the resource, Secret and Service stay.
    let pids: Vec<u32> = [&survivor, &"minimal-head".to_owned()]
        .iter()
        .filter_map(|p| kubelet.as_ref()?.pid_of(&kube.ns, p))
        .collect();
    kube.patch_cluster("minimal", r#"{"spec":{"suspend":true}}"#);
    eventually("a suspended cluster without pods", LONG, || async {
        let status = cluster(&clusters, "minimal").await?.status?;
        let left = pods
            .list(&ListParams::default().labels("flotilla.dev/cluster=minimal"))
            .await
            .ok()?;
        (status.phase == Some(ClusterPhase::Suspended) && left.items.is_empty()).then_some(())
    })
    .await;
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "suspended pods' processes are gone"
    );
    assert!(services
        .get_opt("minimal-head")
        .await
        .expect("get")
        .is_some());

    // The operator's own metrics count what it did.
    let metrics = http_get(&http, "/metrics").await.expect("operator metrics");
    assert!(
        metrics.contains(
            "flotilla_operator_reconcile_total{kind=\"ComputeCluster\",result=\"success\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("error=\"invalid_spec\""), "{metrics}");
    assert!(
        metrics.contains("flotilla_operator_drains_total{result=\"drained\"}"),
        "{metrics}"
    );

    // Delete: the garbage collector removes everything the operator created.
    kube.kubectl_ok(&["delete", "fcc", "minimal", "reserved", "--wait=true"]);
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    eventually("every child gone", LONG, || async {
        let pods_left = pods.list(&ListParams::default()).await.ok()?.items;
        let service = services.get_opt("minimal-head").await.ok()?;
        let secret = secrets.get_opt("minimal-token").await.ok()?;
        (pods_left.is_empty() && service.is_none() && secret.is_none()).then_some(())
    })
    .await;
    if let Some(kubelet) = kubelet {
        kubelet.shutdown().await;
    }
    assert!(
        !kube.operator_log("operator").contains("panicked"),
        "{}",
        kube.operator_log("operator")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_never_both_lead() {
    let kube = Kube::start().await;
    let client = kube.client().await;
    let lease_args = [
        "--leader-election",
        "--lease-name",
        "flotilla-test",
        "--lease-namespace",
        &kube.ns,
        "--lease-duration-seconds",
        "3",
    ];
    let mut replicas = vec![
        ("first", kube.operator("first", &lease_args)),
        ("second", kube.operator("second", &lease_args)),
    ];
    let leases: Api<Lease> = Api::default_namespaced(client.clone());

    // Which replicas say they lead, asked over and over: never two at once.
    async fn leaders(replicas: &[(&str, (Process, String))]) -> Vec<String> {
        let mut leading = Vec::new();
        for (name, (_, http)) in replicas {
            if http_get(http, "/metrics")
                .await
                .is_some_and(|m| m.contains("flotilla_operator_leader 1"))
            {
                leading.push((*name).to_owned());
            }
        }
        assert!(leading.len() <= 1, "two replicas lead at once: {leading:?}");
        leading
    }
    let holder_is = |expected: Vec<String>| {
        let leases = leases.clone();
        async move {
            let lease = leases.get_opt("flotilla-test").await.ok()??;
            let holder = lease.spec?.holder_identity?;
            (expected == [holder]).then_some(())
        }
    };

    let first_leader = eventually("one leader, holding the lease", LONG, || async {
        let leading = leaders(&replicas).await;
        holder_is(leading.clone()).await?;
        leading.into_iter().next()
    })
    .await;

    // The leader dies without a word (SIGKILL): the standby takes over once the lease expires.
    let index = replicas
        .iter()
        .position(|(n, _)| *n == first_leader)
        .expect("leader");
    let (_, (mut process, _)) = replicas.remove(index);
    process.0.kill().expect("SIGKILL");
    let _ = process.0.wait();
    let standby = replicas[0].0;
    eventually("the standby takes over an expired lease", LONG, || async {
        let leading = leaders(&replicas).await;
        holder_is(leading.clone()).await?;
        (leading == [standby]).then_some(())
    })
    .await;

    // A new replica waits; the leader stops cleanly and hands the lease over at once.
    replicas.push(("third", kube.operator("third", &lease_args)));
    eventually("the third replica up and waiting", LONG, || async {
        let (_, (_, http)) = &replicas[1];
        http_get(http, "/readyz").await.map(|_| ())
    })
    .await;
    assert_eq!(leaders(&replicas).await, [standby]);
    let (_, (leader, _)) = replicas.remove(0);
    drop(leader);
    eventually("the third replica leads", LONG, || async {
        let leading = leaders(&replicas).await;
        holder_is(leading.clone()).await?;
        (leading == ["third"]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_moves_the_work_elsewhere() {
    let kube = Kube::start().await;
    let _kubelet = kube.kubelet().await;
    let (_operator, _http) = kube.operator("operator", &[]);
    let client = kube.client().await;
    let manifest = repo().join("operator/tests/fixtures/short-drain-cluster.yaml");
    kube.kubectl_ok(&["apply", "-f", &manifest.display().to_string()]);
    let both = wait_for_workers(&kube, "short-drain", 2).await;

    // Both single-slot workers run a task longer than the 1 s drain timeout.
    let (head_ip, token) = head_of(&client, "short-drain")
        .await
        .expect("the head's address");
    let driver = flotilla::Runtime::connect(&format!("{head_ip}:7400"), Some(&token))
        .await
        .expect("a driver connects to the head");
    let tasks: Vec<_> = (0..2)
        .map(|i| sleep_then.remote(&driver, 3000, i))
        .collect();
    eventually("both workers busy", LONG, || async {
        (driver.status().await.ok()?.tasks_running == 2).then_some(())
    })
    .await;
    scale(&kube, "short-drain", 1);

    // The drain gives up after 1 s: the pod goes, and its task runs again on the other worker.
    let events: Api<Event> = Api::default_namespaced(client.clone());
    let timed_out = eventually("a DrainTimedOut event", LONG, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("DrainTimedOut"))
    })
    .await;
    assert_eq!(timed_out.type_.as_deref(), Some("Warning"));
    let results = driver.get_all(&tasks).await.expect("every task succeeds");
    assert_eq!(results, [0, 1]);
    let left = wait_for_workers(&kube, "short-drain", 1).await;
    assert!(both.contains(&left[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_sizes_the_first_worker_group() {
    let kube = Kube::start().await;
    let _kubelet = kube.kubelet().await;
    let (_operator, _http) = kube.operator("operator", &[]);
    let example = repo().join("examples/minimal-cluster.yaml");
    kube.kubectl_ok(&["apply", "-f", &example.display().to_string()]);
    wait_for_workers(&kube, "minimal", 2).await;

    // Through the scale subresource, as `kubectl scale`, an HPA or KEDA size a cluster.
    kube.kubectl_ok(&["scale", "fcc", "minimal", "--replicas=3"]);
    let three = wait_for_workers(&kube, "minimal", 3).await;
    let scale_path = format!(
        "/apis/flotilla.dev/v1alpha1/namespaces/{}/computeclusters/minimal/scale",
        kube.ns
    );
    let scale: serde_json::Value =
        serde_json::from_str(&kube.kubectl_ok(&["get", "--raw", &scale_path])).expect("a Scale");
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
    assert_eq!(scale["status"]["replicas"], 3, "{scale}");
    let selector = scale["status"]["selector"].as_str().expect("a selector");
    let selected = kube.kubectl_ok(&["get", "pods", "-l", selector, "-o", "name"]);
    let mut selected: Vec<&str> = selected
        .lines()
        .filter_map(|l| l.strip_prefix("pod/"))
        .collect();
    selected.sort_unstable();
    assert_eq!(selected, three, "the selector picks the group's workers");

    kube.kubectl_ok(&["scale", "fcc", "minimal", "--replicas=1"]);
    let one = wait_for_workers(&kube, "minimal", 1).await;
    assert!(three.contains(&one[0]));
}

/// A cluster whose pods run under a ServiceAccount of their own.
const ACCOUNT_CLUSTER: &str = "apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata:
  name: accounted
spec:
  image: flotilla:latest
  imagePullPolicy: IfNotPresent
  head:
    podTemplate:
      serviceAccountName: science-runner
  workerGroups:
    - name: default
      replicas: 1
      podTemplate:
        serviceAccountName: science-runner
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_service_account_blocks_the_cluster_without_a_loop() {
    let kube = Kube::start().await;
    let _kubelet = kube.kubelet().await;
    let (_operator, http) = kube.operator("operator", &[]);
    let client = kube.client().await;
    let clusters: Api<ComputeCluster> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    kube.apply_manifest(ACCOUNT_CLUSTER);

    // The API server's ServiceAccount admission refuses the pods, and the status says so.
    let progressing = condition_of(&clusters, "accounted", |c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason == "ApplyFailed"
    })
    .await;
    assert!(
        progressing.message.contains(&format!(
            "is forbidden: error looking up service account {}/science-runner: \
             serviceaccount \"science-runner\" not found",
            kube.ns
        )),
        "{}",
        progressing.message
    );

    // The refusal holds: few reconciles and no status writes over 8 s.
    let reconciles = || async {
        let metrics = http_get(&http, "/metrics").await.expect("operator metrics");
        ["success", "error"]
            .iter()
            .map(|result| {
                counter(
                    &metrics,
                    &format!(
                        "flotilla_operator_reconcile_total{{kind=\"ComputeCluster\",result=\"{result}\"}}"
                    ),
                )
            })
            .sum::<u64>()
    };
    let version = |c: ComputeCluster| c.metadata.resource_version;
    let (before, written) = (
        reconciles().await,
        cluster(&clusters, "accounted").await.map(version),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (after, now) = (
        reconciles().await,
        cluster(&clusters, "accounted").await.map(version),
    );
    assert!(
        after - before <= 3,
        "{} reconciles of a refused cluster in 8 s",
        after - before
    );
    assert_eq!(now, written, "no status written for a repeated refusal");
    assert!(
        pods.list(&ListParams::default().labels("flotilla.dev/cluster=accounted"))
            .await
            .expect("list pods")
            .items
            .is_empty(),
        "no pod is admitted without its ServiceAccount"
    );

    // Once the ServiceAccount exists, the next retry creates the pods under it.
    kube.apply_manifest(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: science-runner\n",
    );
    let created = eventually("the cluster's pods", LONG, || async {
        let list = pods
            .list(&ListParams::default().labels("flotilla.dev/cluster=accounted"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    for pod in created {
        assert_eq!(
            pod.spec.and_then(|s| s.service_account_name).as_deref(),
            Some("science-runner")
        );
    }
    kube.kubectl_ok(&["delete", "fcc", "accounted"]);
}

/// A real Prometheus on 127.0.0.1 scraping every second the heads listed in a file it watches.
struct Prometheus {
    process: Option<Process>,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus with its config, targets file and data under `dir`.
    async fn start(dir: &Path) -> Self {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        std::fs::write(dir.join("heads.json"), "[]").expect("targets file");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\n\
                 scrape_configs:\n\
                 - job_name: flotilla-heads\n\
                 \x20 file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n",
                dir.join("heads.json").display()
            ),
        )
        .expect("prometheus config");
        let mut prometheus = Prometheus {
            process: None,
            port: free_port(),
            dir,
        };
        prometheus.restart().await;
        prometheus
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Scrapes the heads at these pod IPs (port 7401).
    fn scrape(&self, head_ips: &[&str]) {
        let targets: Vec<String> = head_ips.iter().map(|ip| format!("\"{ip}:7401\"")).collect();
        let json = format!("[{{\"targets\": [{}]}}]", targets.join(", "));
        let tmp = self.dir.join("heads.json.tmp");
        std::fs::write(&tmp, json).expect("targets written");
        std::fs::rename(&tmp, self.dir.join("heads.json")).expect("targets replaced");
    }

    fn stop(&mut self) {
        self.process = None;
    }

    async fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join("prometheus.log")).expect("log");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts (Debian package prometheus)");
        self.process = Some(Process(child));
        let address = format!("127.0.0.1:{}", self.port);
        eventually("Prometheus ready", LONG, || async {
            http_get(&address, "/-/ready").await.map(|_| ())
        })
        .await;
    }
}

/// The autoscaler's Events on `cluster` with `reason`.
async fn events_of(events: &Api<Event>, cluster: &str, reason: &str) -> Vec<String> {
    events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster)
        })
        .filter_map(|e| e.note)
        .collect()
}

/// The autoscaler's desired size of the first group of `name`.
async fn desired_of(clusters: &Api<ComputeCluster>, name: &str) -> Option<i32> {
    let status = cluster(clusters, name).await?.status?;
    Some(status.worker_groups.first()?.desired_replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_follows_the_queue_through_a_real_prometheus() {
    let kube = Kube::start().await;
    let _kubelet = kube.kubelet().await;
    let mut prometheus = Prometheus::start(kube.dir.path()).await;
    let url = prometheus.url();
    let (_operator, http) = kube.operator("operator", &["--prometheus-url", &url]);
    let client = kube.client().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let clusters: Api<ComputeCluster> = Api::default_namespaced(client.clone());
    let events: Api<Event> = Api::default_namespaced(client.clone());

    // `elastic` grows from 1 to 4 one-slot workers; `scratch` may shrink to zero, and has a
    // group offering a gpu that starts at zero. Short windows keep the test quick.
    let manifest = |name: &str, replicas: i32, min: i32, max: i32, extra: &str| {
        format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeCluster\nmetadata: {{name: {name}}}\n\
             spec:\n  image: flotilla:latest\n  workerGroups:\n\
             \x20 - {{name: default, replicas: {replicas}, minReplicas: {min}, maxReplicas: {max}, slots: 1}}\n\
             {extra}\
             \x20 autoscaling:\n    pollIntervalSeconds: 1\n\
             \x20   scaleDown: {{stabilizationWindowSeconds: 4, maxStepPercent: 100, drainTimeoutSeconds: 30}}\n\
             \x20   fallback: {{failureThreshold: 2, behavior: hold}}\n"
        )
    };
    kube.apply_manifest(&manifest("elastic", 1, 1, 4, ""));
    let gpu = "\x20 - {name: gpu, replicas: 0, minReplicas: 0, maxReplicas: 1, slots: 2, \
               customResources: {gpu: 1}}\n";
    kube.apply_manifest(&manifest("scratch", 1, 0, 2, gpu));
    let heads = eventually("both heads have addresses", LONG, || async {
        let elastic = head_of(&client, "elastic").await?;
        let scratch = head_of(&client, "scratch").await?;
        Some((elastic, scratch))
    })
    .await;
    let ((elastic_ip, elastic_token), (scratch_ip, scratch_token)) = heads;
    prometheus.scrape(&[&elastic_ip, &scratch_ip]);
    condition_of(&clusters, "elastic", |c| {
        c.type_ == "AutoscalerReady" && c.status == "True"
    })
    .await;
    let first = wait_for_workers(&kube, "elastic", 1).await;

    // With no work, `scratch` goes to zero once its window has passed.
    eventually("scratch at zero workers", LONG, || async {
        (desired_of(&clusters, "scratch").await? == 0 && workers(&pods, "scratch").await.is_empty())
            .then_some(())
    })
    .await;

    // A burst of long tasks from a real driver: the group grows to its maximum.
    let driver = flotilla::Runtime::connect(&format!("{elastic_ip}:7400"), Some(&elastic_token))
        .await
        .expect("a driver connects to the head");
    let burst_started = Instant::now();
    let tasks: Vec<_> = (0..12u64)
        .map(|i| sleep_then.remote(&driver, 3000, i))
        .collect();
    let four = wait_for_workers(&kube, "elastic", 4).await;
    let grown_after = burst_started.elapsed();
    assert!(four.contains(&first[0]), "growing keeps the first worker");
    let results = driver.get_all(&tasks).await.expect("every task succeeds");
    assert_eq!(results, (0..12).collect::<Vec<u64>>());
    let status = driver.status().await.expect("status");
    assert_eq!(
        (status.tasks_failed, status.tasks_retried),
        (0, 0),
        "no task failed or was retried"
    );
    let scaled_up = events_of(&events, "elastic", "ScaledUp").await;
    assert!(
        scaled_up
            .iter()
            .any(|n| n.contains("1 → ") && n.contains("demand")),
        "{scaled_up:?}"
    );
    eprintln!("burst to 4 registered workers: {grown_after:?}");

    // Prometheus goes away: the autoscaler says so, in the words of the failure, and holds the
    // size even though the queue is empty and the window has long passed.
    prometheus.stop();
    let down = condition_of(&clusters, "elastic", |c| {
        c.type_ == "AutoscalerReady" && c.status == "False"
    })
    .await;
    assert_eq!(down.reason, "MetricsUnreachable", "{down:?}");
    assert!(down.message.contains(&url), "{}", down.message);
    assert!(
        down.message.contains("onnection refused"),
        "{}",
        down.message
    );
    let warned = eventually("a Warning event about the metrics", LONG, || async {
        let notes = events_of(&events, "elastic", "AutoscalerMetricsFailed").await;
        notes.into_iter().find(|n| n.contains("onnection refused"))
    })
    .await;
    assert!(warned.contains("fallback hold applies"), "{warned}");
    eventually("failed reads past the scale-down window", LONG, || async {
        let status = cluster(&clusters, "elastic").await?.status?;
        (status.autoscaler?.consecutive_failures >= 8).then_some(())
    })
    .await;
    assert_eq!(
        desired_of(&clusters, "elastic").await,
        Some(4),
        "the size holds"
    );
    assert_eq!(workers(&pods, "elastic").await.len(), 4);

    // Prometheus is back: the autoscaler recovers by itself and shrinks the idle group back
    // to its minimum through drains.
    prometheus.restart().await;
    condition_of(&clusters, "elastic", |c| {
        c.type_ == "AutoscalerReady" && c.status == "True"
    })
    .await;
    let one = wait_for_workers(&kube, "elastic", 1).await;
    assert!(four.contains(&one[0]));
    let scaled_down = eventually("a ScaledDown event", LONG, || async {
        let notes = events_of(&events, "elastic", "ScaledDown").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(
        scaled_down.iter().any(|n| n.ends_with("→ 1 workers")),
        "{scaled_down:?}"
    );
    eventually("drained workers", LONG, || async {
        let drained = events_of(&events, "elastic", "DrainedWorker").await;
        (drained.len() >= 3).then_some(())
    })
    .await;
    let status = cluster(&clusters, "elastic")
        .await
        .and_then(|c| c.status)
        .expect("status");
    let autoscaler = status.autoscaler.expect("status.autoscaler");
    assert_eq!(autoscaler.desired_workers, Some(1));
    assert!(autoscaler.reason.is_some());
    assert!(autoscaler.last_scale_time.is_some());
    assert_eq!(autoscaler.consecutive_failures, 0);
    assert!(status.worker_groups[0].last_scale_time.is_some());
    let table = kube.kubectl_ok(&["get", "fcc", "elastic"]);
    assert!(table.contains("AUTOSCALER"), "{table}");

    // New work at the head of `scratch` brings its group back from zero, and it runs.
    let driver = flotilla::Runtime::connect(&format!("{scratch_ip}:7400"), Some(&scratch_token))
        .await
        .expect("a driver connects to the scratch head");
    let task = sleep_then.remote(&driver, 10, 7);
    assert_eq!(driver.get(&task).await.expect("the task runs"), 7);
    let back = events_of(&events, "scratch", "ScaledUp").await;
    assert!(back.iter().any(|n| n.contains("0 → 1")), "{back:?}");

    // A task asking for a gpu brings the gpu group, which has no worker the head knows, from
    // zero; tasks no group could run even at its maximum are reported and not chased.
    let needs =
        |options: TaskOptions, value: u64| sleep_then.remote_with(&driver, &options, 10, value);
    let on_gpu = needs(TaskOptions::default().resource("gpu", 1).slots(2), 8);
    let too_big = needs(TaskOptions::default().slots(4), 9);
    let no_tpu = needs(TaskOptions::default().resource("tpu", 1), 10);
    assert_eq!(driver.get(&on_gpu).await.expect("the gpu task runs"), 8);
    let back = events_of(&events, "scratch", "ScaledUp").await;
    assert!(
        back.iter().any(|n| n.contains("group gpu: 0 → 1")),
        "{back:?}"
    );
    let infeasible = condition_of(&clusters, "scratch", |c| {
        c.type_ == "DemandFeasible"
            && c.status == "False"
            && c.message.contains("slots, more than one worker")
            && c.message.contains("tpu (1 slots")
    })
    .await;
    assert_eq!(infeasible.reason, "NoGroupOffers");
    let status = cluster(&clusters, "scratch").await.and_then(|c| c.status);
    let sizes: Vec<i32> = status
        .map(|s| s.worker_groups.iter().map(|g| g.desired_replicas).collect())
        .unwrap_or_default();
    assert!(
        sizes.iter().all(|&n| n <= 1),
        "infeasible work is not chased: {sizes:?}"
    );
    driver.cancel(&too_big);
    driver.cancel(&no_tpu);
    condition_of(&clusters, "scratch", |c| {
        c.type_ == "DemandFeasible" && c.status == "True"
    })
    .await;

    // The operator's own series say what it read and decided.
    let metrics = http_get(&http, "/metrics").await.expect("operator metrics");
    let ns = &kube.ns;
    for series in [
        format!("flotilla_operator_autoscaler_demand_slots{{cluster=\"elastic\",namespace=\"{ns}\"}}"),
        format!(
            "flotilla_operator_autoscaler_desired_workers{{cluster=\"elastic\",group=\"default\",namespace=\"{ns}\"}}"
        ),
        format!(
            "flotilla_operator_autoscaler_read_errors_total{{cluster=\"elastic\",namespace=\"{ns}\",reason=\"MetricsUnreachable\"}}"
        ),
        "flotilla_operator_autoscaler_read_seconds_count{source=\"prometheus\"}".to_owned(),
    ] {
        assert!(metrics.contains(&series), "no {series} in\n{metrics}");
    }
}
