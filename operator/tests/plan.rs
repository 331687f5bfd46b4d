//! The pure half of the controller: which pods to create, drain and delete, and the status the
//! operator derives from what it observed.

use std::collections::HashMap;

use flotilla_operator::{
    cluster::{
        apply::Applied,
        desired::{Desired, WorkerTemplate},
        observe::{Observed, TokenSecret},
        plan::{DeleteReason, MarkedDrain, Plan},
        status::{self, Progress, Stamp},
        validate::{self as validation, ValidatedCluster},
    },
    contract::ANNOTATION_DRAINING,
    crd::{ClusterPhase, ComputeCluster, ComputeClusterStatus},
    head::HeadView,
    Refusal,
};
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::core::Status;

fn cluster(spec: &str) -> ValidatedCluster {
    let yaml = format!(
        r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {{name: demo, namespace: ns, uid: 1f2e3d4c-0000-0000-0000-000000000001, generation: 3}}
spec:
{spec}
"#
    );
    let cluster: ComputeCluster = serde_yaml::from_str(&yaml).expect("cluster parses");
    validation::validate(&cluster).expect("cluster is valid")
}

fn two_workers() -> ValidatedCluster {
    cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 2}]")
}

fn counter() -> impl FnMut() -> String {
    let mut n = 0;
    move || {
        n += 1;
        format!("s{n:04}")
    }
}

/// A pod as the kubelet reports it: `Running` and ready, created `age` seconds after the epoch.
fn running(mut pod: Pod, age: i64) -> Pod {
    pod.metadata.creation_timestamp = Some(Time(
        Timestamp::from_second(1_700_000_000 + age).expect("valid time"),
    ));
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("127.0.0.9".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn not_ready(mut pod: Pod) -> Pod {
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..PodStatus::default()
    });
    pod
}

fn waiting(mut pod: Pod, reason: &str, message: &str) -> Pod {
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        container_statuses: Some(vec![ContainerStatus {
            name: "flotilla".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

fn worker(cluster: &ValidatedCluster, group: &str, suffix: &str) -> Pod {
    WorkerTemplate::new(cluster, cluster.group(group).expect("group")).pod(suffix)
}

fn head_pod(cluster: &ValidatedCluster) -> Pod {
    Desired::of(cluster).head
}

fn head(cluster: &ValidatedCluster) -> Pod {
    running(head_pod(cluster), 0)
}

/// What the operator observes of a cluster whose Secret and Service exist: `pods`, and the
/// head's view of its workers (`None`: the head could not be asked).
fn observed(pods: &[Pod], head_workers: Option<&HashMap<String, HeadView>>) -> Observed {
    Observed {
        secret: TokenSecret::Token("t0ken".into()),
        service_exists: true,
        service: None,
        pods: pods.to_vec(),
        head_ip: None,
        head_workers: head_workers.cloned(),
    }
}

/// The plan for `cluster` given its `pods` and the head's view of its workers.
fn plan(
    cluster: &ValidatedCluster,
    pods: &[Pod],
    head_workers: Option<&HashMap<String, HeadView>>,
    suffix: impl FnMut() -> String,
) -> Plan {
    flotilla_operator::cluster::plan::plan(
        &Desired::of(cluster),
        &observed(pods, head_workers),
        suffix,
    )
}

/// What applying every write of `step` did.
fn applied_in_full(step: &Plan) -> Applied {
    Applied {
        created: names(&step.create),
        deleted: step.delete.clone(),
        marked: step.drain.clone(),
        undrained: step.undrain.clone(),
        refusal: None,
    }
}

/// The status of `cluster` after a pass that observed `pods` and applied `applied`.
fn derive(
    cluster: &ValidatedCluster,
    pods: &[Pod],
    applied: &Applied,
    previous: Option<&ComputeClusterStatus>,
    generation: Option<i64>,
    now: Time,
) -> ComputeClusterStatus {
    let stamp = Stamp {
        previous,
        generation,
        now,
    };
    status::derive(cluster, &observed(pods, None), applied, &stamp)
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().expect("name"))
        .collect()
}

fn names_of(list: &[(String, DeleteReason)]) -> Vec<&str> {
    list.iter().map(|(n, _)| n.as_str()).collect()
}

fn views(entries: &[(&str, HeadView)]) -> HashMap<String, HeadView> {
    entries.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
}

fn now() -> Time {
    Time(Timestamp::from_second(1_800_000_000).expect("valid time"))
}

/// `pod` as the operator leaves it when it starts draining it.
fn marked_draining(mut pod: Pod) -> Pod {
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(ANNOTATION_DRAINING.into(), "2026-01-01T00:00:00Z".into());
    pod
}

#[test]
fn a_new_cluster_gets_its_head_and_every_worker() {
    let c = two_workers();
    let step = plan(&c, &[], None, counter());
    assert_eq!(
        names(&step.create),
        ["demo-head", "demo-cpu-s0001", "demo-cpu-s0002"]
    );
    assert!(step.delete.is_empty() && step.drain.is_empty());
}

#[test]
fn a_whole_cluster_needs_nothing_and_is_running() {
    let c = two_workers();
    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        running(worker(&c, "cpu", "b"), 2),
    ];
    let step = plan(&c, &pods, Some(&HashMap::new()), counter());
    assert!(step.is_empty(), "{step:?}");
    let s = derive(&c, &pods, &applied_in_full(&step), None, Some(3), now());
    assert_eq!(s.phase, Some(ClusterPhase::Running));
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("condition");
    assert_eq!(ready.status, "True");
    assert_eq!((s.desired_workers, s.workers, s.ready_workers), (2, 2, 2));
    assert_eq!(s.observed_generation, Some(3));
    let progressing = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(progressing.status, "False");
    assert_eq!(s.worker_groups[0].ready_replicas, 2);
    assert_eq!(
        s.head.and_then(|h| h.address).as_deref(),
        Some("demo-head.ns.svc:7400")
    );
}

#[test]
fn a_failed_worker_is_deleted_and_replaced() {
    let c = two_workers();
    let mut failed = running(worker(&c, "cpu", "a"), 1);
    failed.status.as_mut().expect("status").phase = Some("Failed".into());
    let pods = vec![head(&c), failed, running(worker(&c, "cpu", "b"), 2)];
    let step = plan(&c, &pods, Some(&HashMap::new()), counter());
    assert_eq!(
        step.delete,
        [("demo-cpu-a".to_owned(), DeleteReason::Failed)]
    );
    assert_eq!(names(&step.create), ["demo-cpu-s0001"]);
}

#[test]
fn scale_down_drains_idle_workers_and_never_a_busy_one() {
    let c = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 1}]");
    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        running(worker(&c, "cpu", "b"), 2),
        running(worker(&c, "cpu", "c"), 3),
    ];
    let head_view = views(&[
        ("demo-cpu-a", HeadView::Idle),
        ("demo-cpu-b", HeadView::Busy),
        ("demo-cpu-c", HeadView::Idle),
    ]);
    let step = plan(&c, &pods, Some(&head_view), counter());
    let mut drained = names_of(&step.drain);
    drained.sort_unstable();
    assert_eq!(drained, ["demo-cpu-a", "demo-cpu-c"]);
    assert!(step.delete.is_empty() && step.create.is_empty());
}

#[test]
fn scale_down_prefers_workers_that_never_became_ready() {
    let c = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 1}]");
    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        not_ready(worker(&c, "cpu", "b")),
    ];
    let head_view = views(&[("demo-cpu-a", HeadView::Idle)]);
    let step = plan(&c, &pods, Some(&head_view), counter());
    // Not registered at the head: nothing to drain, so it goes at once.
    assert_eq!(
        step.delete,
        [("demo-cpu-b".to_owned(), DeleteReason::ScaleDown)]
    );
    assert!(step.drain.is_empty());
}

#[test]
fn without_the_head_a_ready_worker_is_never_removed() {
    let c = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 0}]");
    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        not_ready(worker(&c, "cpu", "b")),
    ];
    let step = plan(&c, &pods, None, counter());
    assert_eq!(names_of(&step.delete), ["demo-cpu-b"]);
    assert!(
        step.drain.is_empty(),
        "a ready worker may be busy: {step:?}"
    );
}

#[test]
fn draining_workers_no_longer_count_towards_the_group() {
    let c = two_workers();
    let leaving = marked_draining(running(worker(&c, "cpu", "a"), 1));
    let pods = vec![head(&c), leaving, running(worker(&c, "cpu", "b"), 2)];
    let step = plan(&c, &pods, Some(&HashMap::new()), counter());
    assert_eq!(names(&step.create), ["demo-cpu-s0001"]);
    assert!(step.drain.is_empty() && step.delete.is_empty());
}

#[test]
fn a_draining_worker_the_head_knows_is_taken_back_before_new_pods_are_made() {
    let c = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 3}]");
    let mut older = marked_draining(running(worker(&c, "cpu", "a"), 1));
    older
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(ANNOTATION_DRAINING.into(), "2025-01-01T00:00:00Z".into());
    let newer = marked_draining(running(worker(&c, "cpu", "b"), 2));
    let unknown = marked_draining(running(worker(&c, "cpu", "c"), 3));
    let pods = vec![head(&c), older, newer, unknown];
    let known = views(&[
        ("demo-cpu-a", HeadView::Draining),
        ("demo-cpu-b", HeadView::Draining),
    ]);
    // Three wanted, none live: both known drains are taken back, newest first, and one pod is
    // made; the worker the head does not know keeps going away.
    let step = plan(&c, &pods, Some(&known), counter());
    assert_eq!(step.undrain, ["demo-cpu-b", "demo-cpu-a"]);
    assert_eq!(names(&step.create), ["demo-cpu-s0001"]);
    assert_eq!(
        step.run_drains
            .iter()
            .map(|m| m.pod.as_str())
            .collect::<Vec<_>>(),
        ["demo-cpu-c"],
        "the drains of the workers taken back do not run again"
    );
    assert!(step.drain.is_empty() && step.delete.is_empty());
}

#[test]
fn a_new_image_replaces_workers_one_at_a_time() {
    let old = two_workers();
    let new = cluster("  image: flotilla:2\n  workerGroups: [{name: cpu, replicas: 2}]");
    let pods = vec![
        running(head_pod(&new), 0),
        running(worker(&old, "cpu", "a"), 1),
        running(worker(&old, "cpu", "b"), 2),
    ];
    let head_view = views(&[
        ("demo-cpu-a", HeadView::Idle),
        ("demo-cpu-b", HeadView::Busy),
    ]);
    let step = plan(&new, &pods, Some(&head_view), counter());
    assert_eq!(step.drain.len(), 1, "{step:?}");
    assert_eq!(step.drain[0].1, DeleteReason::Outdated);

    // While one is being replaced, the other waits.
    let mut pods = pods;
    pods[1].metadata.deletion_timestamp = Some(now());
    let step = plan(&new, &pods, Some(&head_view), counter());
    assert_eq!(names(&step.create), ["demo-cpu-s0001"]);
    assert!(step.drain.is_empty() && step.delete.is_empty(), "{step:?}");
}

#[test]
fn a_changed_head_template_replaces_the_head() {
    let old = two_workers();
    let new = cluster("  image: flotilla:2\n  workerGroups: [{name: cpu, replicas: 2}]");
    let pods = vec![
        head(&old),
        running(worker(&old, "cpu", "a"), 1),
        running(worker(&old, "cpu", "b"), 2),
    ];
    let head_view = views(&[
        ("demo-cpu-a", HeadView::Idle),
        ("demo-cpu-b", HeadView::Idle),
    ]);
    let step = plan(&new, &pods, Some(&head_view), counter());
    assert_eq!(
        step.delete,
        [("demo-head".to_owned(), DeleteReason::Outdated)]
    );
    assert!(
        step.drain.is_empty(),
        "workers wait for the new head: {step:?}"
    );
}

#[test]
fn suspend_deletes_every_pod_and_reports_suspended() {
    let c =
        cluster("  image: flotilla:1\n  suspend: true\n  workerGroups: [{name: cpu, replicas: 2}]");
    let pods = vec![head(&c), running(worker(&c, "cpu", "a"), 1)];
    let step = plan(&c, &pods, None, counter());
    let mut deleted = names_of(&step.delete);
    deleted.sort_unstable();
    assert_eq!(deleted, ["demo-cpu-a", "demo-head"]);
    assert!(step.create.is_empty());
    let s = derive(&c, &pods, &applied_in_full(&step), None, Some(3), now());
    assert_eq!(s.phase, Some(ClusterPhase::Suspended));
    assert_eq!(s.desired_workers, 0);
}

#[test]
fn workers_of_a_removed_group_are_drained() {
    let old = cluster(
        "  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 1}, {name: gpu, replicas: 1}]",
    );
    let new = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 1}]");
    let pods = vec![
        head(&new),
        running(worker(&old, "cpu", "a"), 1),
        running(worker(&old, "gpu", "b"), 2),
    ];
    let head_view = views(&[
        ("demo-cpu-a", HeadView::Idle),
        ("demo-gpu-b", HeadView::Busy),
    ]);
    let step = plan(&new, &pods, Some(&head_view), counter());
    assert_eq!(
        step.drain,
        [("demo-gpu-b".to_owned(), DeleteReason::GroupRemoved)]
    );
}

#[test]
fn a_worker_that_cannot_start_shows_its_own_message() {
    let c = two_workers();
    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        waiting(
            worker(&c, "cpu", "b"),
            "ImagePullBackOff",
            "Back-off pulling image \"flotilla:1\"",
        ),
    ];
    let s = derive(&c, &pods, &Applied::default(), None, Some(3), now());
    assert_eq!(s.phase, Some(ClusterPhase::Degraded));
    let workers = s
        .conditions
        .iter()
        .find(|c| c.type_ == "WorkersReady")
        .expect("condition");
    assert_eq!(workers.status, "False");
    assert_eq!(workers.reason, "ImagePullBackOff");
    assert_eq!(
        workers.message,
        "demo-cpu-b: Back-off pulling image \"flotilla:1\""
    );
}

#[test]
fn a_head_in_a_crash_loop_fails_the_cluster() {
    let c = two_workers();
    let pods = vec![waiting(
        head_pod(&c),
        "CrashLoopBackOff",
        "back-off 10s restarting failed container",
    )];
    let s = derive(&c, &pods, &Applied::default(), None, Some(3), now());
    assert_eq!(s.phase, Some(ClusterPhase::Failed));
    let head = s
        .conditions
        .iter()
        .find(|c| c.type_ == "HeadReady")
        .expect("condition");
    assert_eq!(
        (head.status.as_str(), head.reason.as_str()),
        ("False", "CrashLoopBackOff")
    );
}

#[test]
fn conditions_keep_their_transition_time_until_they_flip() {
    let c = two_workers();
    let pods = vec![head(&c), running(worker(&c, "cpu", "a"), 1)];
    let earlier = Time(Timestamp::from_second(1_750_000_000).expect("valid time"));
    let first = derive(
        &c,
        &pods,
        &Applied::default(),
        None,
        Some(3),
        earlier.clone(),
    );
    let second = derive(&c, &pods, &Applied::default(), Some(&first), Some(3), now());
    assert_eq!(first, second, "nothing changed, so nothing moves");

    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        running(worker(&c, "cpu", "b"), 2),
    ];
    let third = derive(
        &c,
        &pods,
        &Applied::default(),
        Some(&second),
        Some(3),
        now(),
    );
    let time_of = |s: &ComputeClusterStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| c.last_transition_time.clone())
    };
    assert_eq!(time_of(&third, "HeadReady"), Some(earlier));
    assert_eq!(time_of(&third, "WorkersReady"), Some(now()));
}

#[test]
fn an_invalid_spec_fails_the_cluster_and_names_the_problem() {
    let raw: ComputeCluster = serde_yaml::from_str(
        r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: demo, namespace: ns, uid: u1, generation: 4}
spec:
  image: flotilla:1
  workerGroups: [{name: cpu, replicas: 5, maxReplicas: 2}]
"#,
    )
    .expect("parses");
    let problems = validation::validate(&raw).expect_err("min/max violated");
    let stamp = Stamp {
        previous: None,
        generation: Some(4),
        now: now(),
    };
    let s = status::invalid(&stamp, &problems);
    assert_eq!(s.phase, Some(ClusterPhase::Failed));
    let valid = s
        .conditions
        .iter()
        .find(|c| c.type_ == "SpecValid")
        .expect("condition");
    assert_eq!(valid.status, "False");
    assert!(valid.message.contains("maxReplicas"), "{}", valid.message);
}

#[test]
fn a_stale_worker_that_is_not_ready_is_replaced_without_waiting() {
    let old = two_workers();
    let new = cluster("  image: flotilla:3\n  workerGroups: [{name: cpu, replicas: 2}]");
    let mut crashing = running(worker(&old, "cpu", "a"), 1);
    crashing.status = waiting(worker(&old, "cpu", "a"), "CrashLoopBackOff", "back-off").status;
    let pods = vec![
        running(head_pod(&new), 0),
        crashing,
        running(worker(&old, "cpu", "b"), 2),
    ];
    let head_view = views(&[("demo-cpu-b", HeadView::Busy)]);
    let step = plan(&new, &pods, Some(&head_view), counter());
    assert_eq!(
        step.delete,
        [("demo-cpu-a".to_owned(), DeleteReason::Outdated)]
    );
    assert!(step.drain.is_empty(), "{step:?}");
}

#[test]
fn without_the_head_a_started_worker_stays_even_if_not_ready() {
    let c = cluster("  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 0}]");
    let mut slow = running(worker(&c, "cpu", "a"), 1);
    // Running, but its readiness probe fails: it may be busy.
    slow.status.as_mut().expect("status").conditions = None;
    let step = plan(&c, &[head(&c), slow], None, counter());
    assert!(step.is_empty(), "{step:?}");
}

#[test]
fn a_refused_step_stops_progress_with_the_refusal() {
    let c = two_workers();
    let step = plan(&c, &[head(&c)], Some(&HashMap::new()), counter());
    let refusal = "pods \"demo-cpu-s0001\" is forbidden: exceeded quota";
    // The API server refuses the first pod of the step.
    let applied = Applied {
        refusal: Some(Refusal::Rejected {
            kind: "Pod",
            name: names(&step.create)[0].clone(),
            status: Box::new(Status::failure(refusal, "Forbidden").with_code(403)),
        }),
        ..Applied::default()
    };
    let s = derive(&c, &[head(&c)], &applied, None, Some(3), now());
    let progressing = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "ApplyFailed")
    );
    assert_eq!(progressing.message, refusal);
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("condition");
    assert_eq!(ready.status, "False");
}

/// A pass whose pod `pod` the API server refused with `message`.
fn refused(pod: &str, message: &str) -> Applied {
    Applied {
        refusal: Some(Refusal::Rejected {
            kind: "Pod",
            name: pod.to_owned(),
            status: Box::new(Status::failure(message, "Forbidden").with_code(403)),
        }),
        ..Applied::default()
    }
}

#[test]
fn a_refusal_repeated_on_a_new_pod_name_leaves_the_status_as_it_was() {
    let c = two_workers();
    let quota = |pod: &str| {
        format!(
            "pods \"{pod}\" is forbidden: exceeded quota: compute, requested: pods=1, used: \
             pods=2, limited: pods=2"
        )
    };
    let first = derive(
        &c,
        &[head(&c)],
        &refused("demo-cpu-x7k2p", &quota("demo-cpu-x7k2p")),
        None,
        Some(3),
        now(),
    );
    // The retry creates a pod of another random name and is refused the same way.
    let later = Time(Timestamp::from_second(1_800_000_100).expect("valid time"));
    let again = derive(
        &c,
        &[head(&c)],
        &refused("demo-cpu-q4zr9", &quota("demo-cpu-q4zr9")),
        Some(&first),
        Some(3),
        later.clone(),
    );
    assert_eq!(again, first, "nothing for the retry to write");

    // Another refusal is news.
    let sa = "pods \"demo-cpu-b5c6d\" is forbidden: error looking up service account ns/gone: \
              serviceaccount \"gone\" not found";
    let other = derive(
        &c,
        &[head(&c)],
        &refused("demo-cpu-b5c6d", sa),
        Some(&first),
        Some(3),
        later,
    );
    let progressing = other
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(progressing.message, sa);
}

#[test]
fn spec_replicas_sizes_the_first_group_and_status_answers_for_it() {
    let unscaled = cluster(
        "  image: flotilla:1\n  workerGroups: [{name: cpu, replicas: 2}, {name: gpu, replicas: 1}]",
    );
    assert_eq!(unscaled.groups[0].replicas, 2);
    let c = cluster(
        "  image: flotilla:1\n  replicas: 4\n  workerGroups: [{name: cpu, replicas: 2}, {name: gpu, replicas: 1}]",
    );
    let sizes: Vec<(&str, u32, u32)> = c
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.replicas, g.max_replicas))
        .collect();
    assert_eq!(sizes, [("cpu", 4, 4), ("gpu", 1, 1)]);

    let pods = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        running(worker(&c, "gpu", "b"), 2),
    ];
    let s = derive(&c, &pods, &Applied::default(), None, Some(3), now());
    assert_eq!((s.replicas, s.desired_workers), (1, 5));
    assert_eq!(
        s.selector.as_deref(),
        Some("app.kubernetes.io/name=flotilla,flotilla.dev/cluster=demo,flotilla.dev/group=cpu,flotilla.dev/role=worker")
    );
}

#[test]
fn spec_replicas_stays_within_the_first_groups_bounds() {
    let yaml = r#"
apiVersion: flotilla.dev/v1alpha1
kind: ComputeCluster
metadata: {name: demo, namespace: ns, uid: 1f2e3d4c-0000-0000-0000-000000000001}
spec:
  image: flotilla:1
  replicas: 9
  workerGroups: [{name: cpu, replicas: 2, maxReplicas: 8}]
"#;
    let cluster: ComputeCluster = serde_yaml::from_str(yaml).expect("cluster parses");
    let invalid = validation::validate(&cluster).expect_err("9 is over maxReplicas");
    assert_eq!(invalid.reason(), "ReplicaBounds");
    assert!(invalid.to_string().contains("replicas=9"), "{invalid}");
}

#[test]
fn a_missing_secret_and_service_are_created_and_marked_drains_run() {
    let c = two_workers();
    let leaving = marked_draining(running(worker(&c, "cpu", "a"), 1));
    let pods = vec![head(&c), leaving, running(worker(&c, "cpu", "b"), 2)];
    let mut seen = observed(&pods, Some(&HashMap::new()));
    seen.secret = TokenSecret::Missing;
    seen.service_exists = false;
    let step = flotilla_operator::cluster::plan::plan(&Desired::of(&c), &seen, counter());
    assert!(step.create_secret && step.create_service, "{step:?}");
    assert_eq!(
        step.run_drains,
        [MarkedDrain {
            pod: "demo-cpu-a".into(),
            since: Some("2026-01-01T00:00:00Z".parse().expect("a time")),
        }]
    );

    let mut whole = observed(&pods, Some(&HashMap::new()));
    let step = flotilla_operator::cluster::plan::plan(&Desired::of(&c), &whole, counter());
    assert!(!step.create_secret && !step.create_service, "{step:?}");
    assert!(step.apply_service, "a Service not seen is applied");

    // A Service holding every field the operator sets, plus what the API server adds, is left
    // alone; one someone changed is put back.
    let mut service = Desired::of(&c).service;
    let spec = service.spec.as_mut().expect("a spec");
    spec.cluster_ip = Some("10.0.0.7".into());
    whole.service = Some(service.clone());
    let step = flotilla_operator::cluster::plan::plan(&Desired::of(&c), &whole, counter());
    assert!(!step.apply_service, "{step:?}");
    let ports = service
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .expect("ports");
    ports[0].port += 1;
    whole.service = Some(service);
    let step = flotilla_operator::cluster::plan::plan(&Desired::of(&c), &whole, counter());
    assert!(step.apply_service, "{step:?}");
}

#[test]
fn only_a_cluster_on_its_way_is_looked_at_again_soon() {
    let c = two_workers();
    let whole = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        running(worker(&c, "cpu", "b"), 2),
    ];
    let settled = Applied::default();
    assert!(!Progress::of(&c, &observed(&whole, None), &settled).is_moving());

    let step = plan(&c, &[head(&c)], Some(&HashMap::new()), counter());
    let creating = applied_in_full(&step);
    assert!(Progress::of(&c, &observed(&[head(&c)], None), &creating).is_moving());

    // A worker that cannot pull its image waits for a change to the spec, not for a poll.
    let stuck = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        waiting(worker(&c, "cpu", "b"), "ImagePullBackOff", "no such image"),
    ];
    assert!(!Progress::of(&c, &observed(&stuck, None), &settled).is_moving());
    let starting = vec![
        head(&c),
        running(worker(&c, "cpu", "a"), 1),
        not_ready(worker(&c, "cpu", "b")),
    ];
    assert!(Progress::of(&c, &observed(&starting, None), &settled).is_moving());
}
