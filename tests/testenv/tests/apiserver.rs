//! The fake API server against the real `kubectl` and kube-rs clients.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use flotilla_testenv::apiserver::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event as CoreEvent, Pod},
    events::v1::Event as EventsEvent,
};
use kube::{
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
    Api, Client, Resource as _,
};
use serde_json::{json, Value};
use tempfile::TempDir;

/// How long any condition may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server, a kubeconfig for it and a kube client.
struct Env {
    server: FakeApiServer,
    dir: TempDir,
    kubeconfig: PathBuf,
    client: Client,
}

impl Env {
    async fn start() -> Self {
        let server = FakeApiServer::start()
            .await
            .expect("start the fake API server");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("write kubeconfig");
        let client = server.client().await.expect("kube client");
        Self {
            server,
            dir,
            kubeconfig,
            client,
        }
    }

    /// Runs kubectl with the server's kubeconfig, optionally feeding `stdin`.
    async fn kubectl_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new("kubectl");
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .current_dir(repo())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("run kubectl");
        let mut input = child.stdin.take().expect("kubectl stdin");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .await
                .expect("write kubectl stdin");
        }
        drop(input);
        tokio::time::timeout(PATIENCE * 2, child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl output")
    }

    async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None).await
    }

    /// Runs kubectl, fails the test unless it succeeds, and returns its stdout.
    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let output = self.kubectl(args).await;
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `kubectl apply -f -` on `manifest`, failing the test unless it succeeds.
    async fn apply(&self, manifest: &str) {
        let output = self
            .kubectl_with(&["apply", "-f", "-"], Some(manifest))
            .await;
        assert!(output.status.success(), "kubectl apply: {output:?}");
    }

    async fn install_crds(&self) {
        self.kubectl_ok(&["apply", "-f", "crds/"]).await;
    }

    fn clusters(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("flotilla.dev", "v1alpha1", "ComputeCluster");
        Api::namespaced_with(self.client.clone(), "default", &ApiResource::from_gvk(&gvk))
    }
}

/// The repository root, from which the CRDs and examples are read.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Waits until `check` returns `Some`, failing the test after [`PATIENCE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CHANGED_MINIMAL: &str = "apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata:
  name: minimal
spec:
  image: flotilla:latest
  imagePullPolicy: IfNotPresent
  workerGroups:
    - name: default
      replicas: 3
";

#[tokio::test]
async fn kubectl_applies_the_crds_and_examples() {
    let env = Env::start().await;
    env.install_crds().await;
    let resources = env
        .kubectl_ok(&["api-resources", "--api-group=flotilla.dev"])
        .await;
    assert!(
        resources.contains("fcc") && resources.contains("fjob"),
        "{resources}"
    );
    env.kubectl_ok(&["apply", "-f", "examples/minimal-cluster.yaml"])
        .await;
    env.kubectl_ok(&["apply", "-f", "examples/full-cluster.yaml"])
        .await;

    let table = env.kubectl_ok(&["get", "fcc"]).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "DESIRED", "READY", "PHASE", "AUTOSCALER", "AGE"],
        "{table}"
    );
    assert!(
        table.contains("minimal") && table.contains("analytics"),
        "{table}"
    );

    let defaults = env
        .kubectl_ok(&[
            "get",
            "fcc",
            "minimal",
            "-o",
            "jsonpath={.spec.suspend}/{.spec.head.serviceType}/{.spec.workerGroups[0].minReplicas}/{.metadata.generation}",
        ])
        .await;
    assert_eq!(defaults, "false/ClusterIP/0/1");

    // A changed spec moves the generation.
    let output = env
        .kubectl_with(&["apply", "-f", "-"], Some(CHANGED_MINIMAL))
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generation = env
        .kubectl_ok(&[
            "get",
            "fcc",
            "minimal",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .await;
    assert_eq!(generation, "2");

    // A status write does not.
    let status = json!({"status": {"phase": "Running", "readyWorkers": 3, "desiredWorkers": 3}});
    env.clusters()
        .patch_status("minimal", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    let after = env
        .kubectl_ok(&[
            "get",
            "fcc",
            "minimal",
            "-o",
            "jsonpath={.metadata.generation}/{.status.phase}/{.spec.workerGroups[0].replicas}",
        ])
        .await;
    assert_eq!(after, "2/Running/3");
    let table = env
        .kubectl_ok(&["get", "fcc", "minimal", "--no-headers"])
        .await;
    let row: Vec<&str> = table.split_whitespace().collect();
    assert_eq!(row[..4], ["minimal", "3", "3", "Running"], "{table}");

    // Status in a main-resource write is ignored.
    let mut cluster = env.clusters().get("minimal").await.expect("get");
    cluster.data["status"] = json!({"phase": "Failed"});
    let replaced = env
        .clusters()
        .replace("minimal", &PostParams::default(), &cluster)
        .await
        .expect("replace");
    assert_eq!(replaced.data["status"]["phase"], "Running");
}

#[tokio::test]
async fn kubectl_apply_refuses_invalid_clusters() {
    let env = Env::start().await;
    env.install_crds().await;
    let cases = [
        (
            "workerGroups: [{name: a, replicas: -1}]",
            "spec.workerGroups[0].replicas in body should be greater than or equal to 0",
        ),
        (
            "workerGroups: [{name: a, replicas: 2, minReplicas: 3}]",
            "minReplicas must not be greater than replicas",
        ),
        (
            "workerGroups: [{name: a, replicas: 5, maxReplicas: 4}]",
            "replicas must not be greater than maxReplicas",
        ),
        ("workerGroups: [{name: a}, {name: a}]", "Duplicate value"),
        ("bogus: 1", "unknown field \"spec.bogus\""),
    ];
    for (spec, message) in cases {
        let manifest = format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeCluster\nmetadata:\n  name: bad\nspec:\n  image: x\n  {spec}\n"
        );
        let output = env
            .kubectl_with(&["apply", "-f", "-"], Some(&manifest))
            .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{spec} was accepted");
        assert!(stderr.contains(message), "{spec}: {stderr}");
    }
    let missing = "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeCluster\nmetadata:\n  name: bad\nspec: {}\n";
    let output = env.kubectl_with(&["apply", "-f", "-"], Some(missing)).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("spec.image: Required value"));
    // Nothing invalid was stored.
    assert!(env
        .clusters()
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty());
}

#[tokio::test]
async fn kubectl_wait_sees_a_status_patch_and_delete_removes_the_cluster() {
    let env = Env::start().await;
    env.install_crds().await;
    env.kubectl_ok(&["apply", "-f", "examples/minimal-cluster.yaml"])
        .await;
    let wait = env.kubectl(&[
        "wait",
        "--for=jsonpath={.status.phase}=Running",
        "fcc/minimal",
        "--timeout=30s",
    ]);
    let patch = async {
        let status = json!({"status": {"phase": "Running"}});
        env.clusters()
            .patch_status("minimal", &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch status");
    };
    let (output, ()) = tokio::join!(wait, patch);
    assert!(
        output.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    env.kubectl_ok(&["delete", "fcc", "minimal"]).await;
    let output = env.kubectl(&["get", "fcc", "minimal"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("computeclusters.flotilla.dev \"minimal\" not found"));
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted() {
    let env = Env::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let mut events = watcher(maps.clone(), watcher::Config::default()).boxed();
    // The initial listing ends before anything is created.
    loop {
        match events.try_next().await.expect("watch").expect("stream") {
            watcher::Event::InitDone => break,
            _ => continue,
        }
    }
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "watched"}, "data": {"a": "1"}}))
            .expect("configmap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("create");
    maps.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .expect("patch");
    maps.delete("watched", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("event in time")
            .expect("watch")
            .expect("stream");
        match event {
            watcher::Event::Apply(m) => {
                seen.push(format!("apply {}", m.data.unwrap_or_default()["a"]))
            }
            watcher::Event::Delete(m) => {
                seen.push(format!("delete {}", m.metadata.name.unwrap_or_default()))
            }
            _ => {}
        }
    }
    assert_eq!(seen, ["apply 1", "apply 2", "delete watched"]);
}

#[tokio::test]
async fn watch_sends_deleted_when_an_object_leaves_the_selector() {
    let env = Env::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "w", "labels": {"app": "x"}}}))
            .expect("configmap");
    let created = maps
        .create(&PostParams::default(), &map)
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let params = kube::api::WatchParams::default().labels("app=x");
    let mut stream = maps.watch(&params, &rv).await.expect("watch").boxed();
    // Leaving the selector is a DELETED event for this watch.
    maps.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .expect("relabel");
    let event = tokio::time::timeout(PATIENCE, stream.try_next())
        .await
        .expect("in time")
        .expect("watch")
        .expect("event");
    assert!(
        matches!(event, kube::api::WatchEvent::Deleted(_)),
        "{event:?}"
    );
}

#[tokio::test]
async fn garbage_collection_and_graceful_pod_deletion() {
    let env = Env::start().await;
    env.install_crds().await;
    env.kubectl_ok(&["apply", "-f", "examples/minimal-cluster.yaml"])
        .await;
    let cluster = env.clusters().get("minimal").await.expect("cluster");
    let owner = json!([{
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "ComputeCluster",
        "name": "minimal",
        "uid": cluster.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    for (name, node) in [("unbound", None), ("bound", Some("node-a"))] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": owner},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": node, "terminationGracePeriodSeconds": 5},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    }
    env.kubectl_ok(&["delete", "fcc", "minimal"]).await;
    // The unbound pod goes at once; the bound one terminates until its kubelet confirms.
    eventually("the unbound pod to go", || async {
        pods.get_opt("unbound")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    let bound = pods.get("bound").await.expect("bound pod");
    assert!(bound.metadata.deletion_timestamp.is_some());
    assert_eq!(bound.metadata.deletion_grace_period_seconds, Some(5));
    let table = env.kubectl_ok(&["get", "pods", "--no-headers"]).await;
    assert!(table.contains("Terminating"), "{table}");
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .expect("confirm deletion");
    assert!(pods.get_opt("bound").await.expect("get").is_none());
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let env = Env::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let map: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .expect("configmap");
    maps.create(&PostParams::default(), &map)
        .await
        .expect("create");
    maps.delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let held = maps.get("held").await.expect("still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    maps.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    assert!(maps.get_opt("held").await.expect("get").is_none());
}

#[tokio::test]
async fn server_side_apply_creates_updates_and_removes_fields() {
    let env = Env::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let apply = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": data});
    let params = PatchParams::apply("x").force();
    maps.patch(
        "applied",
        &params,
        &Patch::Apply(apply(json!({"a": "1", "b": "2"}))),
    )
    .await
    .expect("create by apply");
    maps.patch(
        "applied",
        &PatchParams::apply("other"),
        &Patch::Apply(apply(json!({"c": "3"}))),
    )
    .await
    .expect("other manager");
    let updated = maps
        .patch("applied", &params, &Patch::Apply(apply(json!({"a": "10"}))))
        .await
        .expect("update by apply");
    let data = updated.data.clone().unwrap_or_default();
    assert_eq!(data.get("a").map(String::as_str), Some("10"));
    assert_eq!(
        data.get("b"),
        None,
        "a field x no longer applies is removed"
    );
    assert_eq!(
        data.get("c").map(String::as_str),
        Some("3"),
        "another manager's field stays"
    );
    let managers: Vec<String> = updated
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["other", "x"]);
    // Applying the same configuration again writes nothing.
    let same = maps
        .patch("applied", &params, &Patch::Apply(apply(json!({"a": "10"}))))
        .await
        .expect("reapply");
    assert_eq!(
        same.metadata.resource_version,
        updated.metadata.resource_version
    );

    // A manager that does not force cannot take a field another manager applies.
    let conflict = maps
        .patch(
            "applied",
            &PatchParams::apply("third"),
            &Patch::Apply(apply(json!({"a": "20"}))),
        )
        .await
        .expect_err("conflict");
    assert!(
        matches!(conflict, kube::Error::Api(ref s) if s.code == 409),
        "{conflict:?}"
    );

    // Custom resources, with status through the status subresource.
    env.install_crds().await;
    let cluster = json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "ComputeCluster",
        "metadata": {"name": "ssa"},
        "spec": {"image": "flotilla:1", "workerGroups": [{"name": "a", "replicas": 1}, {"name": "b", "replicas": 1}]},
    });
    env.clusters()
        .patch("ssa", &params, &Patch::Apply(&cluster))
        .await
        .expect("apply cluster");
    let mut smaller = cluster.clone();
    smaller["spec"]["workerGroups"] = json!([{"name": "a", "replicas": 2}]);
    let applied = env
        .clusters()
        .patch("ssa", &params, &Patch::Apply(&smaller))
        .await
        .expect("reapply");
    assert_eq!(
        applied.data["spec"]["workerGroups"],
        json!([{"name": "a", "replicas": 2, "minReplicas": 0}])
    );
    assert_eq!(applied.metadata.generation, Some(2));
    let status = json!({"apiVersion": "flotilla.dev/v1alpha1", "kind": "ComputeCluster", "status": {"phase": "Pending"}});
    let with_status = env
        .clusters()
        .patch_status("ssa", &params, &Patch::Apply(&status))
        .await
        .expect("apply status");
    assert_eq!(with_status.data["status"]["phase"], "Pending");
    assert_eq!(with_status.metadata.generation, Some(2));
}

#[tokio::test]
async fn label_and_field_selectors() {
    let env = Env::start().await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    for (name, labels, node) in [
        ("a", json!({"app": "web", "tier": "front"}), Some("n1")),
        ("b", json!({"app": "web"}), None),
        ("c", json!({"app": "db"}), Some("n1")),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": node},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
    }
    let names = |list: kube::api::ObjectList<Pod>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()
    };
    for (selector, expected) in [
        ("app=web", vec!["a", "b"]),
        ("app==web,tier", vec!["a"]),
        ("app!=web", vec!["c"]),
        ("app in (db, web),!tier", vec!["b", "c"]),
        ("app notin (web)", vec!["c"]),
    ] {
        let found = names(
            pods.list(&ListParams::default().labels(selector))
                .await
                .expect("list"),
        );
        assert_eq!(found, expected, "{selector}");
    }
    let on_node = names(
        pods.list(&ListParams::default().fields("spec.nodeName=n1"))
            .await
            .expect("list"),
    );
    assert_eq!(on_node, ["a", "c"]);
    let unbound = names(
        pods.list(&ListParams::default().fields("spec.nodeName=,status.phase=Pending"))
            .await
            .expect("list"),
    );
    assert_eq!(unbound, ["b"]);
    let bad = pods
        .list(&ListParams::default().fields("spec.image=x"))
        .await
        .expect_err("unsupported field");
    assert!(
        matches!(bad, kube::Error::Api(ref s) if s.code == 400),
        "{bad:?}"
    );
    let all: Api<Pod> = Api::all(env.client.clone());
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        3
    );
    let by_kubectl = env
        .kubectl_ok(&["get", "pods", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(by_kubectl, "pod/a\npod/b\n");
}

#[tokio::test]
async fn recorder_events_show_in_kubectl_get_events_and_core_lists() {
    let env = Env::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), "default");
    let subject: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "subject"}})).expect("configmap");
    let subject = maps
        .create(&PostParams::default(), &subject)
        .await
        .expect("create");
    let core: Api<CoreEvent> = Api::namespaced(env.client.clone(), "default");
    let mut seen = watcher(
        core.clone(),
        watcher::Config::default().fields("involvedObject.name=subject"),
    )
    .boxed();
    loop {
        let event = tokio::time::timeout(PATIENCE, seen.try_next())
            .await
            .expect("watch in time")
            .expect("watch")
            .expect("stream");
        if matches!(event, watcher::Event::InitDone) {
            break;
        }
    }
    let recorder = Recorder::new(
        env.client.clone(),
        Reporter {
            controller: "flotilla-test".to_owned(),
            instance: Some("test-0".to_owned()),
        },
    );
    let checked = Event {
        type_: EventType::Warning,
        reason: "Checked".to_owned(),
        note: Some("the subject was checked".to_owned()),
        action: "Check".to_owned(),
        secondary: None,
    };
    let reference = subject.object_ref(&());
    recorder
        .publish(&checked, &reference)
        .await
        .expect("publish");

    let shown = env
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=Checked,involvedObject.name=subject",
            "-o",
            "jsonpath={range .items[*]}{.message}|{.involvedObject.kind}/{.involvedObject.name}|{.type}|{.reportingComponent}|{.reportingInstance}|{.action}{\"\\n\"}{end}",
        ])
        .await;
    assert_eq!(
        shown,
        "the subject was checked|ConfigMap/subject|Warning|flotilla-test|test-0|Check\n"
    );
    let none = env
        .kubectl_ok(&[
            "get",
            "events",
            "--field-selector",
            "reason=Other",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await;
    assert_eq!(none, "");

    let listed = core
        .list(
            &ListParams::default()
                .fields("involvedObject.kind=ConfigMap,source=flotilla-test,type=Warning"),
        )
        .await
        .expect("core list")
        .items;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let event = &listed[0];
    assert_eq!(event.message.as_deref(), Some("the subject was checked"));
    assert_eq!(event.involved_object.name.as_deref(), Some("subject"));
    assert_eq!(event.involved_object.uid, subject.metadata.uid);
    assert_eq!(event.reporting_component.as_deref(), Some("flotilla-test"));
    assert!(event.event_time.is_some() && event.count.is_none());
    let added = tokio::time::timeout(PATIENCE, seen.try_next())
        .await
        .expect("watch in time")
        .expect("watch")
        .expect("stream");
    let watcher::Event::Apply(added) = added else {
        panic!("expected the event, got {added:?}");
    };
    assert_eq!(added.message.as_deref(), Some("the subject was checked"));

    // Publishing again makes a series, patched through events.k8s.io and seen through core v1.
    recorder
        .publish(&checked, &reference)
        .await
        .expect("publish again");
    let modified = tokio::time::timeout(PATIENCE, seen.try_next())
        .await
        .expect("watch in time")
        .expect("watch")
        .expect("stream");
    let watcher::Event::Apply(modified) = modified else {
        panic!("expected the series, got {modified:?}");
    };
    assert_eq!(modified.series.and_then(|s| s.count), Some(2));
    assert_eq!(modified.metadata.name, event.metadata.name);
}

#[tokio::test]
async fn core_and_events_k8s_io_events_are_one_kind() {
    let env = Env::start().await;
    let core: Api<CoreEvent> = Api::namespaced(env.client.clone(), "default");
    let modern: Api<EventsEvent> = Api::namespaced(env.client.clone(), "default");
    let legacy: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "legacy"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Started",
        "message": "started the container",
        "type": "Normal",
        "source": {"component": "kubelet", "host": "n1"},
        "firstTimestamp": "2025-01-01T00:00:00Z",
        "lastTimestamp": "2025-01-01T00:01:00Z",
        "count": 3,
    }))
    .expect("core event");
    core.create(&PostParams::default(), &legacy)
        .await
        .expect("create core event");
    let seen = modern.get("legacy").await.expect("get as events.k8s.io");
    assert_eq!(seen.note.as_deref(), Some("started the container"));
    assert_eq!(
        seen.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("web")
    );
    assert_eq!(seen.deprecated_count, Some(3));
    assert_eq!(
        seen.deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("kubelet")
    );
    assert!(seen.deprecated_first_timestamp.is_some() && seen.deprecated_last_timestamp.is_some());

    let names = |list: kube::api::ObjectList<EventsEvent>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|e| e.metadata.name)
            .collect()
    };
    for selector in [
        "regarding.name=web,reason=Started",
        "regarding.kind=Pod,type=Normal",
        "source=kubelet",
    ] {
        let found = names(
            modern
                .list(&ListParams::default().fields(selector))
                .await
                .expect("list"),
        );
        assert_eq!(found, ["legacy"], "{selector}");
    }
    for (api, selector) in [
        ("events.k8s.io", "involvedObject.name=web"),
        ("events.k8s.io", "note=x"),
        ("core", "regarding.name=web"),
        ("core", "message=x"),
    ] {
        let error = if api == "core" {
            core.list(&ListParams::default().fields(selector))
                .await
                .map(|_| ())
        } else {
            modern
                .list(&ListParams::default().fields(selector))
                .await
                .map(|_| ())
        }
        .expect_err(selector);
        assert!(
            matches!(error, kube::Error::Api(ref s) if s.code == 400 && s.message.contains("field label not supported")),
            "{selector}: {error:?}"
        );
    }

    // events.k8s.io/v1 creations are checked strictly, with a 422 naming the fields.
    let incomplete: EventsEvent = serde_json::from_value(json!({
        "metadata": {"name": "incomplete"},
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Started",
        "type": "Sometimes",
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "deprecatedCount": 2,
        "series": {"count": 1, "lastObservedTime": "2025-01-01T00:00:00.000000Z"},
    }))
    .expect("events.k8s.io event");
    let error = modern
        .create(&PostParams::default(), &incomplete)
        .await
        .expect_err("incomplete event");
    let kube::Error::Api(status) = error else {
        panic!("expected a Status, got {error:?}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    for field in [
        "series.count",
        "reportingInstance",
        "type",
        "count",
        "reportingController",
        "action",
    ] {
        assert!(
            status.message.contains(field),
            "{field}: {}",
            status.message
        );
    }

    // A field of the other version is unknown: dropped with a warning, refused when strict.
    let mixed = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "mixed"},
        "regarding": {"kind": "Pod", "name": "web", "namespace": "default"},
        "note": "the note",
        "message": "not a field of events.k8s.io/v1",
        "reason": "Started",
        "action": "Start",
        "type": "Normal",
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "flotilla.dev/test",
        "reportingInstance": "test-0",
    });
    let events = env.dir.path().join("mixed.json");
    std::fs::write(&events, mixed.to_string()).expect("write event");
    let events = events.to_str().expect("utf-8 path");
    let refused = env
        .kubectl(&["create", "--validate=strict", "-f", events])
        .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unknown field \"message\""),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let accepted = env
        .kubectl(&["create", "--validate=warn", "-f", events])
        .await;
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(String::from_utf8_lossy(&accepted.stderr).contains("unknown field \"message\""));
    let stored = core.get("mixed").await.expect("get as core");
    assert_eq!(stored.message.as_deref(), Some("the note"));
    assert_eq!(
        stored.reporting_component.as_deref(),
        Some("flotilla.dev/test")
    );
    assert_eq!(
        stored.metadata.uid,
        modern.get("mixed").await.expect("get").metadata.uid
    );

    // Deleting through one version deletes the one object.
    modern
        .delete("legacy", &DeleteParams::default())
        .await
        .expect("delete");
    let left: Vec<String> = core
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|e| e.metadata.name)
        .collect();
    assert_eq!(left, ["mixed"]);
}

#[tokio::test]
async fn optimistic_concurrency_and_leases() {
    let env = Env::start().await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "default");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "one", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let again = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect_err("exists");
    assert!(
        matches!(again, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{again:?}"
    );

    let mut taken = created.clone();
    taken
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("two".to_owned());
    let updated = leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .expect("update");
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    // The same stale object again conflicts.
    let stale = leases
        .replace("leader", &PostParams::default(), &taken)
        .await
        .expect_err("conflict");
    assert!(
        matches!(stale, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{stale:?}"
    );
    let current = leases.get("leader").await.expect("get");
    assert_eq!(
        current.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("two")
    );

    let missing: Api<Lease> = Api::namespaced(env.client.clone(), "nowhere");
    let error = missing
        .create(&PostParams::default(), &lease)
        .await
        .expect_err("no namespace");
    assert!(
        matches!(error, kube::Error::Api(ref s) if s.code == 404 && s.message.contains("namespaces \"nowhere\" not found")),
        "{error:?}"
    );
}

#[tokio::test]
async fn deleting_a_crd_removes_its_resource_and_objects() {
    let env = Env::start().await;
    env.install_crds().await;
    env.kubectl_ok(&["apply", "-f", "examples/minimal-cluster.yaml"])
        .await;
    env.kubectl_ok(&["delete", "-f", "crds/computecluster.yaml"])
        .await;
    let output = env.kubectl(&["get", "fcc"]).await;
    assert!(!output.status.success(), "fcc is still served");
    env.install_crds().await;
    let listed = env.kubectl_ok(&["get", "fcc", "-o", "name"]).await;
    assert_eq!(listed, "", "the old objects are gone");
    assert!(env.server.url().starts_with("http://127.0.0.1:"));
}

/// A pod named `name` with one container `c` and the given resources and service account.
fn admitted_pod(name: &str, account: Option<&str>, resources: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": account,
            "containers": [{"name": "c", "image": "busybox", "resources": resources}],
        },
    }))
    .expect("pod")
}

/// The message and code of a refused write.
fn refusal<T: std::fmt::Debug>(result: kube::Result<T>) -> (u16, String, String) {
    match result.expect_err("the write is refused") {
        kube::Error::Api(status) => (status.code, status.reason, status.message),
        other => panic!("not an API refusal: {other:?}"),
    }
}

#[tokio::test]
async fn pods_need_their_service_account() {
    let env = Env::start().await;
    for namespace in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        env.kubectl_ok(&["get", "serviceaccount", "default", "-n", namespace])
            .await;
    }
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: science\n")
        .await;
    env.kubectl_ok(&["get", "sa", "default", "-n", "science"])
        .await;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "science");
    pods.create(
        &PostParams::default(),
        &admitted_pod("plain", None, json!({})),
    )
    .await
    .expect("a pod of the default account is admitted");
    let missing = pods
        .create(
            &PostParams::default(),
            &admitted_pod("runner", Some("science-runner"), json!({})),
        )
        .await;
    assert_eq!(
        refusal(missing),
        (
            403,
            "Forbidden".to_owned(),
            "pods \"runner\" is forbidden: error looking up service account science/science-runner: serviceaccount \"science-runner\" not found".to_owned()
        )
    );
    let manifest = "apiVersion: v1
kind: Pod
metadata:
  name: runner
  namespace: science
spec:
  serviceAccountName: science-runner
  containers:
  - name: c
    image: busybox
";
    let output = env
        .kubectl_with(&["create", "-f", "-"], Some(manifest))
        .await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "pods \"runner\" is forbidden: error looking up service account science/science-runner"
        ),
        "{output:?}"
    );
    env.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: science-runner\n  namespace: science\n",
    )
    .await;
    env.kubectl_with(&["create", "-f", "-"], Some(manifest))
        .await
        .status
        .success()
        .then_some(())
        .expect("the pod is admitted once its account exists");
    assert!(pods.get("runner").await.is_ok());
}

#[tokio::test]
async fn resource_quotas_limit_pods_and_report_their_use() {
    let env = Env::start().await;
    env.kubectl_with(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1
kind: ResourceQuota
metadata:
  name: two-pods
spec:
  hard:
    pods: \"2\"
",
        ),
    )
    .await
    .status
    .success()
    .then_some(())
    .expect("kubectl apply creates the quota");
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &admitted_pod(name, None, json!({})))
            .await
            .expect("within the quota");
    }
    let third = pods
        .create(&PostParams::default(), &admitted_pod("c", None, json!({})))
        .await;
    assert_eq!(
        refusal(third),
        (
            403,
            "Forbidden".to_owned(),
            "pods \"c\" is forbidden: exceeded quota: two-pods, requested: pods=1, used: pods=2, limited: pods=2".to_owned()
        )
    );
    let used = env
        .kubectl_ok(&[
            "get",
            "quota",
            "two-pods",
            "-o",
            "jsonpath={.status.used.pods}/{.status.hard.pods}",
        ])
        .await;
    assert_eq!(used, "2/2");
    // A pod that has finished no longer counts.
    let mut done = pods.get_status("a").await.expect("pod a");
    done.status.get_or_insert_with(Default::default).phase = Some("Succeeded".to_owned());
    pods.replace_status("a", &PostParams::default(), &done)
        .await
        .expect("status update");
    pods.create(&PostParams::default(), &admitted_pod("c", None, json!({})))
        .await
        .expect("room again once a pod has finished");

    env.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: compute\n")
        .await;
    env.apply(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: compute\n  namespace: compute\nspec:\n  hard:\n    requests.cpu: \"1\"\n    limits.memory: 1Gi\n",
    )
    .await;
    let compute: Api<Pod> = Api::namespaced(env.client.clone(), "compute");
    let bare = compute
        .create(
            &PostParams::default(),
            &admitted_pod("bare", None, json!({})),
        )
        .await;
    assert_eq!(
        refusal(bare).2,
        "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"
    );
    let sized = json!({"requests": {"cpu": "600m"}, "limits": {"memory": "512Mi"}});
    compute
        .create(
            &PostParams::default(),
            &admitted_pod("one", None, sized.clone()),
        )
        .await
        .expect("within the quota");
    let over = compute
        .create(&PostParams::default(), &admitted_pod("two", None, sized))
        .await;
    assert_eq!(
        refusal(over).2,
        "pods \"two\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    assert_eq!(
        quota_used(&env).await,
        json!({"requests.cpu": "600m", "limits.memory": "512Mi"})
    );
    compute
        .delete("one", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(
        quota_used(&env).await,
        json!({"requests.cpu": "0", "limits.memory": "0"})
    );
}

/// `status.used` of the quota `compute` in namespace `compute`, as `kubectl` shows it.
async fn quota_used(env: &Env) -> Value {
    let used = env
        .kubectl_ok(&[
            "get",
            "quota",
            "compute",
            "-n",
            "compute",
            "-o",
            "jsonpath={.status.used}",
        ])
        .await;
    serde_json::from_str(&used).expect("status.used is JSON")
}

/// `kubectl create namespace|serviceaccount|quota|configmap|secret` send protobuf bodies (client-go
/// writes built-in kinds that way and does not fall back to JSON): the server reads them as the
/// real one does, and what it stored is what kubectl asked for. A kind it cannot read from
/// protobuf gets 415, and a broken protobuf body 400.
#[tokio::test]
async fn kubectl_create_of_built_in_kinds_sends_protobuf() {
    let env = Env::start().await;
    env.kubectl_ok(&["create", "namespace", "science"]).await;
    for args in [
        vec!["create", "serviceaccount", "runner"],
        vec!["create", "quota", "small", "--hard=pods=3,cpu=2,memory=1Gi"],
        vec![
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
        ],
        vec![
            "create",
            "secret",
            "generic",
            "key",
            "--from-literal=token=s3cret",
        ],
    ] {
        let mut args = args;
        args.extend(["-n", "science"]);
        env.kubectl_ok(&args).await;
    }
    let get = |what: &'static str, path: &'static str| {
        let env = &env;
        async move {
            env.kubectl_ok(&[
                "get",
                what,
                "-n",
                "science",
                "-o",
                &format!("jsonpath={path}"),
            ])
            .await
        }
    };
    assert_eq!(get("namespace/science", "{.status.phase}").await, "Active");
    assert_eq!(
        get("serviceaccount/runner", "{.metadata.namespace}").await,
        "science"
    );
    let hard: Value =
        serde_json::from_str(&get("resourcequota/small", "{.spec.hard}").await).unwrap();
    assert_eq!(hard, json!({"pods": "3", "cpu": "2", "memory": "1Gi"}));
    assert_eq!(get("configmap/settings", "{.data.mode}").await, "fast");
    // "s3cret" in base64: bytes travel as bytes.
    assert_eq!(get("secret/key", "{.data.token}").await, "czNjcmV0");

    // The quota holds: its pod count is the real server's.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "science");
    let small = json!({"requests": {"cpu": "100m", "memory": "10Mi"}});
    for name in ["a", "b", "c"] {
        pods.create(
            &PostParams::default(),
            &admitted_pod(name, None, small.clone()),
        )
        .await
        .expect("within the quota");
    }
    let (code, _, _) = refusal(
        pods.create(&PostParams::default(), &admitted_pod("d", None, small))
            .await,
    );
    assert_eq!(code, 403, "a fourth pod is over the quota kubectl created");

    // Bodies it cannot read are refused as a server refuses them.
    let post = |body: &'static [u8]| {
        let client = env.client.clone();
        async move {
            let request = http::Request::post("/api/v1/namespaces")
                .header("content-type", "application/vnd.kubernetes.protobuf")
                .body(kube::client::Body::from(body.to_vec()))
                .unwrap();
            client.send(request).await.map(|r| r.status().as_u16())
        }
    };
    assert_eq!(post(b"not protobuf").await.unwrap(), 400);
    // An envelope naming a kind this server does not read: apiVersion "v1", kind "Pod".
    assert_eq!(
        post(b"k8s\0\x0a\x09\x0a\x02v1\x12\x03Pod").await.unwrap(),
        415
    );
}
