//! A ComputeCluster this operator cannot read never stops the controller: stored under a looser
//! schema (as during a CRD upgrade or rollback), it is reported with a Warning Event and an
//! `invalid_object` error count, while a good cluster next to it is reconciled as usual.
//!
//! The controller runs in this process against the fake API server; no kubelet runs, so pods are
//! created but never start.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use flotilla_operator::{
    cluster::status::SPEC_VALID, context::Context, controller, crd::ComputeCluster,
    metrics::Metrics,
};
use flotilla_testenv::apiserver::FakeApiServer;
use futures::FutureExt;
use k8s_openapi::{
    api::{core::v1::Pod, events::v1::Event},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    api::{ApiResource, DynamicObject, ListParams, PostParams},
    Api, CustomResourceExt,
};
use serde_json::json;

const NS: &str = "default";
const LIMIT: Duration = Duration::from_secs(30);

/// Polls `check` every 50 ms until it yields a value, or panics after [`LIMIT`] naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < LIMIT,
            "timed out after {LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ComputeCluster CRD with a spec schema that stores anything.
fn lenient_crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(ComputeCluster::crd()).expect("the CRD serializes");
    *crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
        .expect("the CRD has a spec schema") =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    serde_json::from_value(crd).expect("the lenient CRD parses")
}

fn cluster(name: &str, replicas: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "flotilla.dev/v1alpha1",
        "kind": "ComputeCluster",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "image": "flotilla:1",
            "workerGroups": [{"name": "cpu", "replicas": replicas}],
        },
    }))
    .expect("the manifest parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_cluster_is_reported_and_the_others_are_reconciled() {
    let server = FakeApiServer::start()
        .await
        .expect("fake API server starts");
    let client = server.client().await.expect("kube client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &lenient_crd())
        .await
        .expect("CRD created");
    let clusters: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::erase::<ComputeCluster>(&()),
    );
    // `replicas` as a string: stored, but not a ComputeCluster this operator can read.
    for object in [cluster("bad", json!("two")), cluster("good", json!(1))] {
        clusters
            .create(&PostParams::default(), &object)
            .await
            .expect("cluster stored");
    }

    let metrics = Metrics::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        Some("test".to_owned()),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    }
    .shared();
    let running = tokio::spawn(controller::run(ctx, &[], shutdown));

    // The good cluster is reconciled: its head pod is created and its spec found valid.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    eventually("the good cluster's head pod", || async {
        pods.get_opt("good-head").await.ok()?.map(|_| ())
    })
    .await;
    let typed: Api<ComputeCluster> = Api::namespaced(client.clone(), NS);
    eventually("the good cluster's SpecValid condition", || async {
        let status = typed.get_status("good").await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == SPEC_VALID && c.status == "True")
            .then_some(())
    })
    .await;

    // The bad one is reported: a Warning Event on it, and an error count.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let warning = eventually("a Warning Event on the unreadable cluster", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidObject")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
        })
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .note
            .as_deref()
            .is_some_and(|n| n.contains("cannot read")),
        "{warning:?}"
    );
    let rendered = eventually("the invalid_object error count", || async {
        let text = metrics.render();
        text.contains(
            "flotilla_operator_reconcile_errors_total{error=\"invalid_object\",kind=\"ComputeCluster\"} 1",
        )
        .then_some(text)
    })
    .await;
    assert!(
        rendered.contains(
            "flotilla_operator_reconcile_total{kind=\"ComputeCluster\",result=\"success\"}"
        ),
        "{rendered}"
    );
    let bad_pods = pods
        .list(&ListParams::default().labels("flotilla.dev/cluster=bad"))
        .await
        .expect("pods list");
    assert!(bad_pods.items.is_empty(), "nothing is built for it");

    let _ = stop.send(());
    tokio::time::timeout(LIMIT, running)
        .await
        .expect("the controller stops on shutdown")
        .expect("the controller does not panic");
}
