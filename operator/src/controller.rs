//! The `ComputeCluster` controller: reads what exists, plans one step ([`crate::plan`]), carries
//! it out, and writes the status it observed ([`crate::status`]).
//!
//! Children: the token Secret (created once, never rewritten: running workers hold the token),
//! the head Service (server-side applied under the `flotilla-operator` field manager), and the
//! pods (created and deleted one by one; pods are immutable, so a changed template means a new
//! pod). Every child carries a controller owner reference, so deleting the cluster lets the
//! garbage collector remove them all. Every create, delete, drain and rejected spec is recorded as
//! a Kubernetes Event on the cluster.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flotilla_proto::v1::DrainOutcome;
use futures::{future::join_all, StreamExt};
use k8s_openapi::{
    api::core::v1::{ObjectReference, Pod, Secret, Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
    Api, Client, Resource, ResourceExt,
};
use rand::Rng;

use crate::{
    builders,
    contract::{LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGER_NAME, TOKEN_SECRET_KEY},
    crd::{ComputeCluster, ComputeClusterStatus},
    head::Head,
    metrics::Metrics,
    plan::{self, Plan, ANNOTATION_DRAINING},
    status,
    validation::{self, ValidatedCluster},
    Error,
};

/// Kind label of the ComputeCluster controller's metrics.
const KIND: &str = "ComputeCluster";
/// How long a worker may take to drain when the spec does not say.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Re-reconcile a settled cluster this often, as a safety net behind the watches.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-reconcile a cluster that is still moving this often.
const SETTLING: Duration = Duration::from_secs(2);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    /// Worker pods (`namespace/name`) with a drain in flight.
    draining: Mutex<HashSet<String>>,
}

impl Context {
    /// A context for the operator replica called `instance`.
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER_NAME.to_owned(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            draining: Mutex::new(HashSet::new()),
        }
    }

    fn draining(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an Event on `cluster`; `pod` names the pod it concerns, if any (the Event's
    /// `related` object, which also keeps Events about different pods apart).
    async fn event(
        &self,
        cluster: &ComputeCluster,
        pod: Option<&str>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let secondary = pod.map(|name| ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.to_owned()),
            namespace: cluster.namespace(),
            ..ObjectReference::default()
        });
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &cluster.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, reason, "cannot record an event");
        }
    }
}

/// Runs the controller over `namespaces` (all when empty) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let controllers = scopes.into_iter().map(|namespace| {
        let children =
            watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER_NAME}"));
        Controller::new(
            api::<ComputeCluster>(&client, namespace),
            watcher::Config::default(),
        )
        .owns(api::<Pod>(&client, namespace), children.clone())
        .owns(api::<Service>(&client, namespace), children.clone())
        .owns(api::<Secret>(&client, namespace), children)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
    });
    join_all(controllers).await;
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Retry failed reconciles soon; a spec that cannot be honoured waits for the next change.
fn error_policy(_cluster: Arc<ComputeCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error {
        Error::InvalidSpec(_) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

async fn reconcile(cluster: Arc<ComputeCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_cluster(&cluster, &ctx).await;
    let label = result.as_ref().err().map(Error::label);
    ctx.metrics.reconciled(KIND, started.elapsed(), label);
    if let Err(e) = &result {
        tracing::warn!(cluster = %cluster.name_any(), error = %e, "reconcile failed");
    }
    result
}

async fn reconcile_cluster(cluster: &ComputeCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    if cluster.meta().deletion_timestamp.is_some() {
        // The garbage collector removes the children through their owner references.
        return Ok(Action::await_change());
    }
    let namespace = cluster.namespace().unwrap_or_default();
    let generation = cluster.meta().generation;
    let clusters: Api<ComputeCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = Time(Timestamp::now());

    let valid = match validation::validate(cluster) {
        Ok(valid) => valid,
        Err(problems) => {
            let new = status::invalid(cluster.status.as_ref(), generation, &problems, now);
            if cluster.status.as_ref() != Some(&new) {
                ctx.event(
                    cluster,
                    None,
                    EventType::Warning,
                    problems.reason(),
                    problems.to_string(),
                )
                .await;
                write_status(&clusters, cluster, &new).await?;
            }
            return Err(Error::InvalidSpec(problems));
        }
    };

    let token = ensure_secret(cluster, &valid, ctx).await?;
    ensure_service(cluster, &valid, ctx).await?;

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{LABEL_CLUSTER}={}", valid.name);
    let uid = cluster.uid();
    let observed: Vec<Pod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();

    let head_ip = head_pod_ip(&valid, &observed);
    let head_workers = match &head_ip {
        Some(ip) => match Head::connect(ip, &token).await {
            Ok(mut head) => head.workers().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        None => Err("no head pod runs".to_owned()),
    };
    let head_workers = match head_workers {
        Ok(workers) => Some(workers),
        Err(why) => {
            tracing::debug!(cluster = %valid.name, why, "cannot ask the head about its workers");
            None
        }
    };

    let step = plan::plan(&valid, &observed, head_workers.as_ref(), worker_suffix);
    let carried = carry_out(cluster, &valid, &step, ctx).await;
    resume_drains(cluster, &valid, &observed, head_ip.as_deref(), &token, ctx);

    // An API server that refuses a child (quota, admission policy) blocks progress: say so in
    // the status, not only in the operator's log.
    let blocked = carried.as_ref().err().map(ToString::to_string);
    let new = status::derive(
        &valid,
        &observed,
        &step,
        blocked.as_deref(),
        cluster.status.as_ref(),
        generation,
        now,
    );
    let settled = new
        .conditions
        .iter()
        .any(|c| c.type_ == status::PROGRESSING && c.status == "False");
    if cluster.status.as_ref() != Some(&new) {
        write_status(&clusters, cluster, &new).await?;
    }
    carried?;
    // A settled cluster changes through the watches; one still moving is looked at again soon.
    Ok(Action::requeue(if settled { RESYNC } else { SETTLING }))
}

async fn write_status(
    api: &Api<ComputeCluster>,
    cluster: &ComputeCluster,
    status: &ComputeClusterStatus,
) -> Result<(), Error> {
    // Server-side apply: fields the operator no longer sends (a head that went away) are removed.
    let patch = serde_json::json!({
        "apiVersion": ComputeCluster::api_version(&()),
        "kind": ComputeCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(MANAGER_NAME).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The token, from the cluster's Secret; creates the Secret with a fresh random token if it is
/// missing. An existing token is never replaced: running workers hold it.
async fn ensure_secret(
    cluster: &ComputeCluster,
    valid: &ValidatedCluster,
    ctx: &Context,
) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let name = builders::token_secret_name(&valid.name);
    if let Some(secret) = secrets.get_opt(&name).await? {
        let owner = secret
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        if owner.is_some_and(|o| Some(&o.uid) != cluster.uid().as_ref()) {
            // Left by an earlier cluster of the same name, and about to be garbage collected:
            // its token must not reach the new cluster's pods.
            return Err(Error::ForeignSecret { name });
        }
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get(TOKEN_SECRET_KEY))
            .and_then(|t| String::from_utf8(t.0.clone()).ok())
            .filter(|t| !t.is_empty());
        return token.ok_or(Error::BadSecret { name });
    }
    let token: String = {
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    secrets
        .create(&post_params(), &builders::token_secret(valid, &token))
        .await?;
    ctx.event(
        cluster,
        None,
        EventType::Normal,
        "CreatedSecret",
        format!("created Secret {name} with the cluster token"),
    )
    .await;
    Ok(token)
}

/// Applies the head Service (server-side apply: only the fields the operator sets).
async fn ensure_service(
    cluster: &ComputeCluster,
    valid: &ValidatedCluster,
    ctx: &Context,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let name = builders::head_service_name(&valid.name);
    let existed = services.get_opt(&name).await?.is_some();
    let mut service = builders::head_service(valid);
    service.meta_mut().managed_fields = None;
    services
        .patch(
            &name,
            &PatchParams::apply(MANAGER_NAME).force(),
            &Patch::Apply(&service),
        )
        .await?;
    if !existed {
        ctx.event(
            cluster,
            None,
            EventType::Normal,
            "CreatedService",
            format!("created Service {name}"),
        )
        .await;
    }
    Ok(())
}

/// Creates under the operator's field manager.
fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER_NAME.to_owned()),
        ..PostParams::default()
    }
}

/// Patches under the operator's field manager.
fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER_NAME.to_owned()),
        ..PatchParams::default()
    }
}

/// The IP of a head pod that runs (ready or not: a head failing its probe may still schedule),
/// `None` when there is none, or it is going or gone.
fn head_pod_ip(valid: &ValidatedCluster, pods: &[Pod]) -> Option<String> {
    let head_name = builders::head_pod_name(&valid.name);
    pods.iter()
        .find(|p| p.metadata.name.as_deref() == Some(head_name.as_str()))
        .filter(|p| !plan::is_terminating(p) && !plan::is_finished(p))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
}

/// A random worker name suffix, as Kubernetes makes them (no vowels, no look-alike digits).
fn worker_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..validation::WORKER_SUFFIX_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

async fn carry_out(
    cluster: &ComputeCluster,
    valid: &ValidatedCluster,
    step: &Plan,
    ctx: &Context,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    for pod in &step.create {
        let name = pod.name_any();
        match pods.create(&post_params(), pod).await {
            Ok(_) => {
                ctx.event(
                    cluster,
                    Some(&name),
                    EventType::Normal,
                    "CreatedPod",
                    format!("created pod {name}"),
                )
                .await;
            }
            // Created by an earlier reconcile that did not see it yet, or left by an earlier
            // cluster of the same name and about to be garbage collected; anything else holding
            // the name blocks the cluster, and the status says so.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let holder = pods.get_opt(&name).await?;
                let owner = holder.as_ref().and_then(|p| {
                    p.owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true))
                        .map(|o| o.kind.clone())
                });
                if owner.as_deref() != Some("ComputeCluster") {
                    return Err(Error::NameTaken { kind: "Pod", name });
                }
            }
            Err(e) => {
                // No `related` pod: the name is new on every retry, the refusal is not.
                ctx.event(
                    cluster,
                    None,
                    EventType::Warning,
                    "CreatePodFailed",
                    format!("cannot create pod {name}: {e}"),
                )
                .await;
                return Err(e.into());
            }
        }
    }
    for (name, reason) in &step.delete {
        delete_pod(&pods, name).await?;
        ctx.event(
            cluster,
            Some(name),
            EventType::Normal,
            reason.as_str(),
            format!("deleted pod {name}"),
        )
        .await;
    }
    for (name, reason) in &step.drain {
        let patch = serde_json::json!({
            "metadata": {"annotations": {ANNOTATION_DRAINING: Timestamp::now().to_string()}}
        });
        pods.patch(name, &patch_params(), &Patch::Merge(&patch))
            .await?;
        ctx.event(
            cluster,
            Some(name),
            EventType::Normal,
            "DrainingWorker",
            format!(
                "draining worker {name} before deleting it ({})",
                reason.as_str()
            ),
        )
        .await;
    }
    Ok(())
}

async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Starts a drain for every worker marked draining that has none in flight (new ones, and those
/// an earlier operator replica started): the head drains it, then its pod is deleted.
fn resume_drains(
    cluster: &ComputeCluster,
    valid: &ValidatedCluster,
    observed: &[Pod],
    head_ip: Option<&str>,
    token: &str,
    ctx: &Arc<Context>,
) {
    let timeout = valid
        .autoscaling
        .as_ref()
        .map(|a| a.scale_down.drain_timeout_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_secs);
    // Pods marked by this reconcile are not in `observed` yet; they are picked up by the next.
    for pod in observed
        .iter()
        .filter(|p| plan::is_draining(p) && !plan::is_terminating(p))
    {
        let name = pod.name_any();
        let key = format!("{}/{name}", valid.namespace);
        if !ctx.draining().insert(key.clone()) {
            continue;
        }
        // The deadline counts from when the drain started, across retries and operator restarts.
        let started = pod
            .annotations()
            .get(ANNOTATION_DRAINING)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or_else(Timestamp::now);
        let elapsed = Timestamp::now()
            .duration_since(started)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let job = DrainJob {
            ctx: ctx.clone(),
            cluster: cluster.clone(),
            namespace: valid.namespace.clone(),
            pod: name,
            head_ip: head_ip.map(str::to_owned),
            token: token.to_owned(),
            remaining: timeout.saturating_sub(elapsed),
            key,
        };
        tokio::spawn(job.run());
    }
}

/// One worker being drained, then deleted.
struct DrainJob {
    ctx: Arc<Context>,
    cluster: ComputeCluster,
    namespace: String,
    pod: String,
    /// The head pod's IP; `None` when no head pod runs.
    head_ip: Option<String>,
    token: String,
    /// What is left of the drain timeout.
    remaining: Duration,
    key: String,
}

/// How a drain ended, and so what the Event says.
enum Drained {
    /// The head moved the worker's objects and its tasks finished.
    Done,
    /// The head does not know the worker: nothing runs there.
    NotRegistered,
    /// The deadline passed first (the head's answer, or ours when it did not answer).
    TimedOut(String),
    /// No head pod runs, so nothing runs on the worker either.
    NoHead,
}

impl DrainJob {
    async fn run(self) {
        let outcome = match &self.head_ip {
            None => Ok(Drained::NoHead),
            Some(_) if self.remaining.is_zero() => {
                Ok(Drained::TimedOut("the drain timeout passed".to_owned()))
            }
            Some(ip) => match Head::connect(ip, &self.token).await {
                Ok(mut head) => match head.drain(&self.pod, self.remaining).await {
                    Ok((DrainOutcome::Drained, _)) => Ok(Drained::Done),
                    Ok((DrainOutcome::NotRegistered, _)) => Ok(Drained::NotRegistered),
                    // The deadline passed, or the worker went away before it emptied.
                    Ok((
                        DrainOutcome::TimedOut
                        | DrainOutcome::WorkerLost
                        | DrainOutcome::Unspecified,
                        message,
                    )) => Ok(Drained::TimedOut(message)),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            },
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(why) => {
                // The head runs but did not answer: the worker may be busy, so it stays until
                // the deadline; the next reconcile tries again.
                tracing::warn!(pod = %self.pod, why, "cannot drain a worker yet; will retry");
                self.ctx.metrics.drained("error");
                self.ctx.draining().remove(&self.key);
                return;
            }
        };
        let pod = &self.pod;
        let (type_, reason, note, result) = match outcome {
            Drained::Done => (
                EventType::Normal,
                "DrainedWorker",
                format!("worker {pod} drained; deleting its pod"),
                "drained",
            ),
            Drained::NotRegistered => (
                EventType::Normal,
                "NothingToDrain",
                format!("worker {pod} is not registered at the head; deleting its pod"),
                "not_registered",
            ),
            Drained::TimedOut(message) => (
                EventType::Warning,
                "DrainTimedOut",
                format!("worker {pod} did not drain in time ({message}); deleting its pod"),
                "timeout",
            ),
            Drained::NoHead => (
                EventType::Normal,
                "DeletedWorker",
                format!("no head runs, so nothing runs on worker {pod}; deleting its pod"),
                "no_head",
            ),
        };
        self.ctx.metrics.drained(result);
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        match delete_pod(&pods, pod).await {
            Ok(()) => {
                self.ctx
                    .event(&self.cluster, Some(pod), type_, reason, note)
                    .await
            }
            Err(e) => tracing::warn!(pod, error = %e, "cannot delete a drained worker"),
        }
        self.ctx.draining().remove(&self.key);
    }
}
