//! The job state machine, transition by transition, from observed pods and clusters.

use flotilla_operator::{
    crd::{ComputeJob, JobPhase, JobProgress},
    job::machine::{decide, ClusterState, Decision, Driver, DriverRun, Observed, Step},
};
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};

const T0: &str = "2026-01-01T00:00:00Z";

fn at(seconds: i64) -> Timestamp {
    let t0: Timestamp = T0.parse().unwrap();
    t0 + k8s_openapi::jiff::SignedDuration::from_secs(seconds)
}

fn job(spec: &str) -> ComputeJob {
    serde_yaml::from_str(&format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: ComputeJob\nmetadata: {{name: j, namespace: ns, uid: 0123456789ab, generation: 1, creationTimestamp: '{T0}'}}\nspec: {spec}"
    ))
    .unwrap()
}

fn on_ref(extra: &str) -> ComputeJob {
    job(&format!(
        "{{clusterRef: {{name: c}}, backoffLimit: 1, startupDeadlineSeconds: 60{extra}}}"
    ))
}

fn own(extra: &str) -> ComputeJob {
    job(&format!(
        "{{cluster: {{image: flotilla, workerGroups: [{{name: w, replicas: 2}}]}}{extra}}}"
    ))
}

fn running() -> ClusterState {
    ClusterState::Running {
        image: "flotilla".into(),
    }
}

fn driver(attempt: i32, run: DriverRun) -> Driver {
    Driver {
        name: format!("j-driver-{attempt}"),
        attempt,
        created: Some(at(0)),
        run,
    }
}

/// Decides at `now` (seconds after T0), then stores the new status in the job, as the
/// reconcile's status write does.
fn step(job: &mut ComputeJob, cluster: ClusterState, drivers: Vec<Driver>, now: i64) -> Decision {
    let mut observed = job.clone();
    observed.status.get_or_insert_default().cluster_name = Some("c".into());
    let decision = decide(&Observed {
        job: &observed,
        cluster,
        drivers,
        progress: None,
        now: at(now),
    });
    job.status = Some(decision.status.clone());
    decision
}

fn phase(job: &ComputeJob) -> JobPhase {
    job.status.as_ref().unwrap().phase.unwrap()
}

fn condition(job: &ComputeJob, type_: &str) -> (String, String, String) {
    let c = job
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn message(job: &ComputeJob) -> String {
    job.status
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap_or_default()
}

#[test]
fn a_job_waits_for_its_cluster_then_starts_a_driver_then_runs_then_succeeds() {
    let mut j = on_ref("");
    let d = step(
        &mut j,
        ClusterState::Starting {
            message: "HeadReady: starting".into(),
        },
        vec![],
        0,
    );
    assert_eq!(phase(&j), JobPhase::Pending);
    assert!(d.steps.is_empty(), "{:?}", d.steps);
    assert_eq!(condition(&j, "ClusterReady").1, "ClusterStarting");
    assert!(d.requeue.is_some());

    let d = step(&mut j, running(), vec![], 1);
    assert_eq!(d.steps, [Step::CreateDriver(1)]);
    assert_eq!(phase(&j), JobPhase::Starting);
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.attempts, st.driver_pod.as_deref()),
        (1, Some("j-driver-1"))
    );
    assert!(d.notes.iter().any(|n| n.reason == "DriverCreated"));

    let pending = driver(1, DriverRun::Pending { problem: None });
    let d = step(&mut j, running(), vec![pending], 2);
    assert!(d.steps.is_empty());
    assert_eq!(phase(&j), JobPhase::Starting);

    let d = step(&mut j, running(), vec![driver(1, DriverRun::Running)], 3);
    assert_eq!(phase(&j), JobPhase::Running);
    assert_eq!(
        j.status.as_ref().unwrap().start_time.as_ref().unwrap().0,
        at(3)
    );
    assert_eq!(condition(&j, "DriverRunning").0, "True");
    assert!(
        d.requeue.is_some_and(|r| r.as_secs() <= 2),
        "progress is refreshed"
    );

    let d = step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 9);
    assert_eq!(phase(&j), JobPhase::Succeeded);
    assert!(d.steps.is_empty(), "nothing left to stop: {:?}", d.steps);
    assert_eq!(
        condition(&j, "Complete"),
        (
            "True".into(),
            "Succeeded".into(),
            "the driver exited with status 0".into()
        )
    );
    assert_eq!(
        j.status
            .as_ref()
            .unwrap()
            .completion_time
            .as_ref()
            .unwrap()
            .0,
        at(9)
    );
    // Finished stays finished.
    step(&mut j, ClusterState::Missing, vec![], 10);
    assert_eq!(phase(&j), JobPhase::Succeeded);
}

/// A driver that ran and ended between two looks was never seen running: the job still has a
/// start time, and it is not after its completion.
#[test]
fn a_driver_never_seen_running_still_gives_the_job_a_start_time() {
    let mut j = on_ref("");
    step(&mut j, running(), vec![], 1);
    step(
        &mut j,
        running(),
        vec![driver(1, DriverRun::Pending { problem: None })],
        2,
    );
    step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 4);
    assert_eq!(phase(&j), JobPhase::Succeeded);
    let st = j.status.unwrap();
    assert_eq!(st.start_time.unwrap().0, at(4));
    assert_eq!(st.completion_time.unwrap().0, at(4));
}

#[test]
fn progress_read_from_the_head_is_kept_in_the_status() {
    let mut j = on_ref("");
    step(&mut j, running(), vec![], 0);
    let progress = JobProgress {
        tasks_submitted: 4,
        tasks_finished: 3,
        tasks_failed: 1,
    };
    let decision = decide(&Observed {
        job: &j,
        cluster: running(),
        drivers: vec![driver(1, DriverRun::Running)],
        progress: Some(progress.clone()),
        now: at(1),
    });
    assert_eq!(decision.status.progress, Some(progress));
}

#[test]
fn a_missing_cluster_is_said_and_fails_the_job_at_the_startup_deadline() {
    let mut j = on_ref("");
    let d = step(&mut j, ClusterState::Missing, vec![], 0);
    assert_eq!(phase(&j), JobPhase::Pending);
    assert_eq!(condition(&j, "ClusterReady").1, "ClusterNotFound");
    assert!(d.requeue.is_some());
    step(&mut j, ClusterState::Deleting, vec![], 30);
    assert_eq!(condition(&j, "ClusterReady").1, "ClusterDeleting");
    assert_eq!(phase(&j), JobPhase::Pending);
    step(&mut j, ClusterState::Missing, vec![], 60);
    assert_eq!(phase(&j), JobPhase::Failed);
    assert_eq!(condition(&j, "Failed").1, "StartupDeadlineExceeded");
    assert!(
        message(&j).contains("ComputeCluster c does not exist"),
        "{}",
        message(&j)
    );
}

#[test]
fn a_driver_that_cannot_start_fails_the_job_with_its_own_message() {
    let mut j = on_ref("");
    step(&mut j, running(), vec![], 0);
    let stuck = driver(
        1,
        DriverRun::Pending {
            problem: Some((
                "ImagePullBackOff".into(),
                "Back-off pulling image \"nope\"".into(),
            )),
        },
    );
    step(&mut j, running(), vec![stuck.clone()], 59);
    assert_eq!(phase(&j), JobPhase::Starting);
    let d = step(&mut j, running(), vec![stuck], 61);
    assert_eq!(phase(&j), JobPhase::Failed);
    assert!(
        message(&j).contains("ImagePullBackOff: Back-off pulling image"),
        "{}",
        message(&j)
    );
    assert_eq!(
        d.steps,
        [Step::CancelAtHead, Step::DeleteDriver("j-driver-1".into())]
    );
}

#[test]
fn application_failures_use_up_the_backoff_limit_then_fail_with_the_drivers_message() {
    let mut j = on_ref("");
    step(&mut j, running(), vec![], 0);
    let failed = |n, m: &str| driver(n, DriverRun::Failed { message: m.into() });
    let d = step(&mut j, running(), vec![failed(1, "boom 1")], 5);
    assert_eq!(d.steps, [Step::CreateDriver(2)]);
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.attempts, st.failed, st.infrastructure_failures),
        (2, 1, 0)
    );
    assert!(d
        .notes
        .iter()
        .any(|n| n.warning && n.reason == "DriverFailed" && n.message.contains("boom 1")));
    let d = step(
        &mut j,
        running(),
        vec![failed(1, "boom 1"), failed(2, "boom 2")],
        6,
    );
    assert!(d.steps.is_empty(), "{:?}", d.steps);
    assert_eq!(phase(&j), JobPhase::Failed);
    assert_eq!(condition(&j, "Failed").1, "BackoffLimitExceeded");
    assert!(message(&j).ends_with("last: boom 2"), "{}", message(&j));
}

#[test]
fn a_lost_driver_is_retried_without_using_up_the_backoff_limit() {
    let mut j = on_ref("");
    step(&mut j, running(), vec![], 0);
    step(&mut j, running(), vec![driver(1, DriverRun::Running)], 1);
    // Deleted under the job.
    let lost = driver(
        1,
        DriverRun::Lost {
            message: "driver pod j-driver-1 was deleted".into(),
        },
    );
    let d = step(&mut j, running(), vec![lost], 2);
    assert_eq!(
        d.steps,
        [
            Step::DeleteDriver("j-driver-1".into()),
            Step::CreateDriver(2)
        ]
    );
    let st = j.status.clone().unwrap();
    assert_eq!(
        (st.attempts, st.failed, st.infrastructure_failures),
        (2, 0, 1)
    );
    assert!(d
        .notes
        .iter()
        .any(|n| n.reason == "DriverLost" && n.message.contains("without using up backoffLimit")));
    // Gone altogether.
    step(&mut j, running(), vec![driver(2, DriverRun::Running)], 3);
    let d = step(&mut j, running(), vec![], 4);
    assert_eq!(d.steps, [Step::CreateDriver(3)]);
    assert_eq!(j.status.as_ref().unwrap().infrastructure_failures, 2);
    // Not without end.
    for n in 3..=7 {
        step(
            &mut j,
            running(),
            vec![driver(
                n,
                DriverRun::Lost {
                    message: "evicted".into(),
                },
            )],
            5,
        );
    }
    assert_eq!(phase(&j), JobPhase::Failed);
    assert_eq!(condition(&j, "Failed").1, "InfrastructureFailures");
}

#[test]
fn the_active_deadline_stops_a_running_job_and_cancels_its_work() {
    let mut j = on_ref(", activeDeadlineSeconds: 10");
    step(&mut j, running(), vec![], 0);
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Running)], 1);
    assert!(d.requeue.is_some_and(|r| r.as_secs() <= 10));
    step(&mut j, running(), vec![driver(1, DriverRun::Running)], 10);
    assert_eq!(phase(&j), JobPhase::Running);
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Running)], 11);
    assert_eq!(phase(&j), JobPhase::Failed);
    assert_eq!(condition(&j, "Failed").1, "DeadlineExceeded");
    assert_eq!(
        d.steps,
        [Step::CancelAtHead, Step::DeleteDriver("j-driver-1".into())]
    );
}

#[test]
fn an_own_cluster_is_created_first_and_deleted_when_the_job_ends() {
    let mut j = own("");
    let d = step(&mut j, ClusterState::Missing, vec![], 0);
    assert_eq!(d.steps, [Step::CreateCluster]);
    assert_eq!(phase(&j), JobPhase::Starting);
    let d = step(
        &mut j,
        ClusterState::Starting {
            message: "starting".into(),
        },
        vec![],
        1,
    );
    assert!(d.steps.is_empty());
    let d = step(&mut j, running(), vec![], 2);
    assert_eq!(d.steps, [Step::CreateDriver(1)]);
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 3);
    assert_eq!(d.steps, [Step::DeleteCluster]);
    let d = step(
        &mut j,
        ClusterState::Deleting,
        vec![driver(1, DriverRun::Succeeded)],
        4,
    );
    assert!(d.steps.is_empty());
}

#[test]
fn suspend_stops_the_driver_and_the_cluster_and_resume_starts_a_new_attempt() {
    let mut j = own("");
    step(&mut j, running(), vec![], 0);
    step(&mut j, running(), vec![driver(1, DriverRun::Running)], 1);
    j.spec.suspend = true;
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Running)], 2);
    assert_eq!(
        d.steps,
        [
            Step::CancelAtHead,
            Step::DeleteDriver("j-driver-1".into()),
            Step::DeleteCluster
        ]
    );
    assert_eq!(phase(&j), JobPhase::Suspended);
    assert_eq!(condition(&j, "Suspended").0, "True");
    let d = step(&mut j, ClusterState::Missing, vec![], 3);
    assert!(d.steps.is_empty(), "{:?}", d.steps);
    j.spec.suspend = false;
    let d = step(&mut j, ClusterState::Missing, vec![], 4);
    assert_eq!(d.steps, [Step::CreateCluster]);
    assert_eq!(
        condition(&j, "Suspended"),
        (
            "False".into(),
            "Resumed".into(),
            "spec.suspend is false".into()
        )
    );
    let d = step(&mut j, running(), vec![], 5);
    assert_eq!(d.steps, [Step::CreateDriver(2)]);
}

#[test]
fn the_startup_deadline_counts_from_the_resume() {
    let mut j = on_ref(", suspend: true");
    step(&mut j, ClusterState::Missing, vec![], 0);
    assert_eq!(phase(&j), JobPhase::Suspended);
    j.spec.suspend = false;
    step(&mut j, ClusterState::Missing, vec![], 100);
    step(&mut j, ClusterState::Missing, vec![], 159);
    assert_eq!(phase(&j), JobPhase::Pending);
    step(&mut j, ClusterState::Missing, vec![], 160);
    assert_eq!(phase(&j), JobPhase::Failed);
}

#[test]
fn a_finished_job_is_deleted_after_its_ttl() {
    let mut j = on_ref(", ttlSecondsAfterFinished: 30");
    step(&mut j, running(), vec![], 0);
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 10);
    assert!(
        d.requeue.is_some_and(|r| r.as_secs() == 30),
        "{:?}",
        d.requeue
    );
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 39);
    assert!(!d.steps.contains(&Step::DeleteJob));
    let d = step(&mut j, running(), vec![driver(1, DriverRun::Succeeded)], 40);
    assert_eq!(d.steps, [Step::DeleteJob]);
}

#[test]
fn driver_pods_are_read_as_the_kubelet_reports_them() {
    let pod = |phase: &str, extra: serde_json::Value| -> Pod {
        let mut pod = serde_json::json!({
            "metadata": {"name": "j-driver-3", "labels": {"flotilla.dev/attempt": "3"}},
            "status": {"phase": phase}
        });
        json_patch_merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap()
    };
    let exited = |code: i32, message: Option<&str>| {
        serde_json::json!({"status": {"containerStatuses": [{
            "name": "flotilla", "image": "flotilla", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}
        }]}})
    };
    let run = |p: Pod| Driver::of(&p).unwrap().run;
    assert_eq!(
        run(pod("Running", serde_json::json!({}))),
        DriverRun::Running
    );
    assert_eq!(run(pod("Succeeded", exited(0, None))), DriverRun::Succeeded);
    assert_eq!(
        run(pod("Failed", exited(1, Some("error: boom\n")))),
        DriverRun::Failed {
            message: "error: boom".into()
        }
    );
    assert_eq!(
        run(pod("Failed", exited(2, None))),
        DriverRun::Failed {
            message: "exit status 2 (Error)".into()
        }
    );
    // A driver that lost its cluster (the head gone and not back) is the infrastructure's
    // failure: it says so with its exit status.
    assert!(matches!(
        run(pod("Failed", exited(75, Some("error: lost the head at h:7400\n")))),
        DriverRun::Lost { message } if message.contains("lost its cluster: error: lost the head")
    ));
    assert!(matches!(
        run(pod("Failed", serde_json::json!({"status": {"reason": "Evicted", "message": "low on memory"}}))),
        DriverRun::Lost { message } if message.contains("Evicted: low on memory")
    ));
    assert!(matches!(
        run(pod("Running", serde_json::json!({"metadata": {"deletionTimestamp": T0}}))),
        DriverRun::Lost { message } if message.contains("was deleted")
    ));
    assert_eq!(
        Driver::of(&pod("Running", serde_json::json!({})))
            .unwrap()
            .attempt,
        3
    );
}

fn json_patch_merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                json_patch_merge(t.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}
