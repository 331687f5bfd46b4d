//! The `ComputeJob` controller: observe the job's cluster, driver pods and progress at the head,
//! let the pure [`machine`] decide, carry out its steps, and write the status it derived.
//!
//! A job runs one driver pod per attempt (`restartPolicy: Never`), owned by the job; a job with a
//! cluster of its own owns that ComputeCluster too, and deletes it when the job ends. A finalizer
//! makes deleting a running job cancel its work at the head before its driver and cluster go.
//! Jobs are reconciled when they change, when their driver pods or any ComputeCluster change
//! (mapped to the jobs that run on it), and while they run, every few seconds for progress.

pub mod driver;
pub mod machine;

use std::{sync::Arc, time::Instant};

use k8s_openapi::{
    api::core::v1::{Pod, Secret},
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Controller},
        events::EventType,
        reflector::ObjectRef,
        watcher,
    },
    Api, Client, Resource, ResourceExt,
};
use tracing::Instrument;

use self::{
    driver::{cluster_name, driver_pod, driver_selector, job_id, own_cluster, LABEL_JOB},
    machine::{decide, ClusterState, Driver, Observed, Step},
};
use crate::{
    context::{apply_status, drain_results, per_namespace, scoped_api, Context},
    contract::{LABEL_MANAGED_BY, MANAGER_NAME, TOKEN_SECRET_KEY},
    crd::{ClusterPhase, ComputeCluster, ComputeJob, ComputeJobStatus, JobPhase, JobProgress},
    head::Head,
    names::{head_pod_name, token_secret_name},
    Error,
};

/// Kind label of the job controller's metrics.
const KIND: &str = "ComputeJob";
/// The finalizer that cancels a deleted job's work at the head first.
pub const FINALIZER: &str = "flotilla.dev/cancel-work";
/// Re-reconcile a quiet job this often, as a safety net behind the watches.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);
/// Retry a failed reconcile after this long.
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the job controller over `namespaces` (all when empty) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    per_namespace(namespaces, |namespace| {
        let drivers = watcher::Config::default()
            .labels(&format!("{LABEL_MANAGED_BY}={MANAGER_NAME},{LABEL_JOB}"));
        let controller = Controller::new(
            scoped_api::<ComputeJob>(&client, namespace),
            Default::default(),
        );
        let jobs = controller.store();
        let results = controller
            .owns(scoped_api::<Pod>(&client, namespace), drivers)
            // Any cluster: a job may name one it does not own and wait for it to run.
            .watches(
                scoped_api::<ComputeCluster>(&client, namespace),
                watcher::Config::default(),
                move |cluster: ComputeCluster| {
                    let namespace = cluster.namespace();
                    let name = cluster.name_any();
                    jobs.state()
                        .into_iter()
                        .filter(|job| job.namespace() == namespace && cluster_name(job) == name)
                        .map(|job| ObjectRef::from_obj(&*job))
                        .collect::<Vec<_>>()
                },
            )
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone());
        drain_results(results, KIND)
    })
    .await;
}

fn error_policy(_job: Arc<ComputeJob>, _error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(RETRY)
}

async fn reconcile(job: Arc<ComputeJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        job = %job.name_any(),
        namespace = job.namespace().unwrap_or_default()
    );
    let result = reconcile_job(&job, &ctx).instrument(span).await;
    let label = result.as_ref().err().map(Error::label);
    ctx.metrics.reconciled(KIND, started.elapsed(), label);
    if let Err(e) = &result {
        tracing::warn!(job = %job.name_any(), error = %e, "job reconcile failed");
    }
    result
}

/// The job's APIs in its namespace.
struct Apis {
    jobs: Api<ComputeJob>,
    pods: Api<Pod>,
    clusters: Api<ComputeCluster>,
    secrets: Api<Secret>,
}

impl Apis {
    fn of(client: &Client, job: &ComputeJob) -> Self {
        let ns = job.namespace().unwrap_or_default();
        Apis {
            jobs: Api::namespaced(client.clone(), &ns),
            pods: Api::namespaced(client.clone(), &ns),
            clusters: Api::namespaced(client.clone(), &ns),
            secrets: Api::namespaced(client.clone(), &ns),
        }
    }
}

async fn reconcile_job(job: &ComputeJob, ctx: &Arc<Context>) -> Result<Action, Error> {
    let apis = Apis::of(&ctx.client, job);
    let has_finalizer = job.finalizers().iter().any(|f| f == FINALIZER);
    if job.meta().deletion_timestamp.is_some() {
        if has_finalizer {
            clean_up_deleted(job, ctx, &apis).await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut finalizers = job.finalizers().to_vec();
        finalizers.push(FINALIZER.to_owned());
        let patch = serde_json::json!({"metadata": {"finalizers": finalizers}});
        apis.jobs
            .patch(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        // The write brings the job back through the watch.
        return Ok(Action::await_change());
    }

    let cluster_name = cluster_name(job);
    let (cluster, cluster_object) = observe_cluster(&apis, job, &cluster_name).await?;
    let drivers: Vec<Driver> = apis
        .pods
        .list(&ListParams::default().labels(&driver_selector(job)))
        .await?
        .items
        .iter()
        .filter(|p| owned_by(*p, job))
        .filter_map(Driver::of)
        .collect();
    let id = job_id(job);
    // Read until the job ends, so the counts of a driver that just finished are final.
    let active = !matches!(
        job.status.as_ref().and_then(|s| s.phase),
        Some(JobPhase::Succeeded | JobPhase::Failed | JobPhase::Suspended)
    );
    let progress = if active && matches!(cluster, ClusterState::Running { .. }) {
        read_progress(&apis, &cluster_name, &id).await
    } else {
        None
    };

    let mut observed_job = job.clone();
    let status = observed_job
        .status
        .get_or_insert_with(ComputeJobStatus::default);
    status.job_id = Some(id.clone());
    status.cluster_name = Some(cluster_name.clone());
    let decision = decide(&Observed {
        job: &observed_job,
        cluster: cluster.clone(),
        drivers,
        progress,
        now: Timestamp::now(),
    });

    let reference = job.object_ref(&());
    for step in &decision.steps {
        match step {
            Step::CancelAtHead => {
                if let Err(e) = cancel_at_head(&apis, &cluster_name, &id).await {
                    tracing::warn!(job = %id, error = %e, "cannot cancel the job's work at the head");
                }
            }
            Step::DeleteDriver(name) => delete_quietly(&apis.pods, name).await?,
            Step::CreateCluster => {
                if let Some(own) = own_cluster(job) {
                    create_quietly(&apis.clusters, &own).await?;
                    ctx.event(
                        &reference,
                        None,
                        EventType::Normal,
                        "ClusterCreated",
                        format!("ComputeCluster {cluster_name} created for the job"),
                    )
                    .await;
                }
            }
            Step::DeleteCluster => {
                if cluster_object.as_ref().is_some_and(|c| owned_by(c, job)) {
                    delete_quietly(&apis.clusters, &cluster_name).await?;
                    ctx.event(
                        &reference,
                        None,
                        EventType::Normal,
                        "ClusterDeleted",
                        format!("ComputeCluster {cluster_name} deleted: the job no longer runs"),
                    )
                    .await;
                }
            }
            Step::CreateDriver(attempt) => {
                let image = match &cluster {
                    ClusterState::Running { image } => image.clone(),
                    _ => String::new(),
                };
                create_quietly(&apis.pods, &driver_pod(job, *attempt, &image)).await?;
            }
            Step::DeleteJob => {
                ctx.event(
                    &reference,
                    None,
                    EventType::Normal,
                    "Expired",
                    "ttlSecondsAfterFinished passed: deleting the job".to_owned(),
                )
                .await;
                delete_quietly(&apis.jobs, &job.name_any()).await?;
                return Ok(Action::await_change());
            }
        }
    }
    if job.status.as_ref() != Some(&decision.status) {
        write_status(&apis.jobs, job, &decision.status).await?;
    }
    for note in &decision.notes {
        let type_ = if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(
            &reference,
            decision.status.driver_pod.as_deref(),
            type_,
            note.reason,
            note.message.clone(),
        )
        .await;
    }
    Ok(Action::requeue(decision.requeue.unwrap_or(RESYNC)))
}

/// Whether `object` is controlled by `job`.
fn owned_by<K: Resource>(object: &K, job: &ComputeJob) -> bool {
    let uid = job.metadata.uid.as_deref();
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

async fn observe_cluster(
    apis: &Apis,
    job: &ComputeJob,
    name: &str,
) -> Result<(ClusterState, Option<ComputeCluster>), Error> {
    let Some(cluster) = apis.clusters.get_opt(name).await? else {
        return Ok((ClusterState::Missing, None));
    };
    // A cluster of the same name that this job does not own is not its own cluster.
    if job.spec.cluster.is_some() && !owned_by(&cluster, job) {
        let message = format!("a ComputeCluster named {name} exists and is not this job's");
        return Ok((ClusterState::Starting { message }, None));
    }
    let state = if cluster.meta().deletion_timestamp.is_some() {
        ClusterState::Deleting
    } else {
        let status = cluster.status.clone().unwrap_or_default();
        if status.phase == Some(ClusterPhase::Running) {
            ClusterState::Running {
                image: cluster.spec.image.clone(),
            }
        } else {
            let message = status
                .conditions
                .iter()
                .find(|c| c.status == "False" && c.type_ != "Progressing")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| {
                    format!(
                        "phase {}",
                        status
                            .phase
                            .map_or_else(|| "unknown".to_owned(), |p| format!("{p:?}"))
                    )
                });
            ClusterState::Starting { message }
        }
    };
    Ok((state, Some(cluster)))
}

/// A connection to the head of `cluster`, through its pod IP and the cluster token.
async fn connect_head(apis: &Apis, cluster: &str) -> Result<Head, String> {
    let head = apis
        .pods
        .get_opt(&head_pod_name(cluster))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no head pod")?;
    let ip = head
        .status
        .and_then(|s| s.pod_ip)
        .ok_or("the head pod has no IP")?;
    let secret = apis
        .secrets
        .get_opt(&token_secret_name(cluster))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no token Secret")?;
    let token = secret
        .data
        .and_then(|d| d.get(TOKEN_SECRET_KEY).cloned())
        .and_then(|t| String::from_utf8(t.0).ok())
        .ok_or("the token Secret holds no token")?;
    Head::connect(&ip, &token).await.map_err(|e| e.to_string())
}

async fn read_progress(apis: &Apis, cluster: &str, job: &str) -> Option<JobProgress> {
    let mut head = connect_head(apis, cluster)
        .await
        .map_err(|e| tracing::debug!(job, error = %e, "cannot reach the head for progress"))
        .ok()?;
    let counts = head.job(job).await.ok()??;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Some(JobProgress {
        tasks_submitted: count(counts.tasks_submitted),
        tasks_finished: count(counts.tasks_finished),
        tasks_failed: count(counts.tasks_failed),
    })
}

async fn cancel_at_head(apis: &Apis, cluster: &str, job: &str) -> Result<(), String> {
    let mut head = connect_head(apis, cluster).await?;
    let reply = head.cancel_job(job).await.map_err(|e| e.to_string())?;
    tracing::info!(
        job,
        tasks = reply.tasks_cancelled,
        actors = reply.actors_killed,
        "cancelled the job's work at the head"
    );
    Ok(())
}

/// A deleted job: its work is cancelled at the head, then its drivers and its own cluster are
/// deleted, then the finalizer is removed.
async fn clean_up_deleted(job: &ComputeJob, ctx: &Context, apis: &Apis) -> Result<(), Error> {
    let cluster = cluster_name(job);
    let id = job_id(job);
    let drivers = apis
        .pods
        .list(&ListParams::default().labels(&driver_selector(job)))
        .await?
        .items;
    let live = drivers.iter().any(|p| {
        owned_by(p, job)
            && p.metadata.deletion_timestamp.is_none()
            && !crate::cluster::pods::is_finished(p)
    });
    if live {
        if let Err(e) = cancel_at_head(apis, &cluster, &id).await {
            // The head may be gone already; the driver's end cancels its work as well.
            tracing::warn!(job = %id, error = %e, "cannot cancel the deleted job's work at the head");
        }
        ctx.event(
            &job.object_ref(&()),
            None,
            EventType::Normal,
            "Cancelled",
            "the job is being deleted: its work at the head was cancelled".to_owned(),
        )
        .await;
    }
    for pod in drivers.iter().filter(|p| owned_by(*p, job)) {
        delete_quietly(&apis.pods, &pod.name_any()).await?;
    }
    if let Some(own) = apis.clusters.get_opt(&cluster).await? {
        if owned_by(&own, job) {
            delete_quietly(&apis.clusters, &cluster).await?;
        }
    }
    let finalizers: Vec<&String> = job
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": job.resource_version()}
    });
    apis.jobs
        .patch(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

async fn create_quietly<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        // Made by an earlier pass whose status write did not land.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_quietly<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    api: &Api<ComputeJob>,
    job: &ComputeJob,
    status: &ComputeJobStatus,
) -> Result<(), Error> {
    Ok(apply_status(api, job, status).await?)
}
