//! The `ComputeCluster` controller: the watches, the error policy, and the reconcile entry that
//! runs the [`crate::cluster`] pipeline (observe → validate → desired → plan → apply → status)
//! and writes the status.
//!
//! Children: the token Secret (created once, never rewritten: running workers hold the token),
//! the head Service (server-side applied under the `flotilla-operator` field manager), and the
//! pods (created and deleted one by one; pods are immutable, so a changed template means a new
//! pod). Every child carries a controller owner reference, so deleting the cluster lets the
//! garbage collector remove them all. Every create, delete, drain and rejected spec is recorded as
//! a Kubernetes Event on the cluster.
//!
//! A cluster is reconciled when its spec changes (a new `metadata.generation`), not when the
//! operator's own status write comes back through the watch; a child's change, a requeue and
//! the resync bring it back otherwise. A failing cluster is retried after a delay that doubles
//! with each failure in a row, so a write the API server keeps refusing (a quota, a missing
//! ServiceAccount) costs a few calls a minute, not a loop.
//!
//! ComputeClusters are watched through [`DeserializeGuard`]: an object this binary cannot read
//! (as during a CRD upgrade or rollback) is reported with a Warning Event, a log line and an
//! `invalid_object` error count, and every other cluster is reconciled as usual.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Pod, Secret, Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    core::{error_boundary::InvalidObject, DeserializeGuard},
    runtime::{
        controller::{Action, Controller},
        events::EventType,
        predicates, reflector,
        reflector::ObjectRef,
        watcher, WatchStreamExt,
    },
    Api, Resource, ResourceExt,
};
use tracing::Instrument;

use crate::{
    autoscale::steer::{fill_status, steer},
    cluster::{
        apply::apply,
        desired::Desired,
        observe::observe,
        plan::plan,
        status::{self, Progress, Stamp},
        validate::validate,
    },
    context::{apply_status, drain_results, per_namespace, scoped_api, Context, MAX_EVENT_NOTE},
    contract::{LABEL_MANAGED_BY, MANAGER_NAME},
    crd::{ComputeCluster, ComputeClusterStatus},
    names::random_worker_suffix,
    Error,
};

/// Kind label of the ComputeCluster controller's metrics.
const KIND: &str = "ComputeCluster";
/// Re-reconcile a settled cluster this often, as a safety net behind the watches.
const RESYNC: Duration = Duration::from_secs(300);
/// Re-reconcile a cluster that is still moving this often (drains run through the head, which
/// no watch reports on).
const SETTLING: Duration = Duration::from_secs(2);
/// Re-reconcile a cluster whose pods are only starting this often: their changes come through
/// the pod watch, so this is a safety net, not the way progress is seen.
const STARTING: Duration = Duration::from_secs(30);
/// Retry a failed reconcile this soon the first time; each failure in a row doubles it.
const RETRY: Duration = Duration::from_secs(5);
/// The longest wait before retrying a cluster that keeps failing.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A watched ComputeCluster: the object, or what is left of one this binary cannot read.
type Watched = DeserializeGuard<ComputeCluster>;

/// Runs the controller over `namespaces` (all when empty) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: &[String],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    per_namespace(namespaces, |namespace| {
        let children =
            watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER_NAME}"));
        let (reader, writer) = reflector::store();
        // Only spec changes: the operator's status writes come back through this watch, and a
        // reconcile for each would undo the retry delay of a failing cluster.
        let clusters = watcher(
            scoped_api::<Watched>(&client, namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
        // The autoscaler asks for a reconcile of a cluster whose decision changed.
        let scope = namespace.map(str::to_owned);
        let decided = ctx
            .autoscalers
            .subscribe()
            .filter(move |(ns, _)| std::future::ready(scope.as_ref().is_none_or(|s| s == ns)))
            .map(|(ns, name)| ObjectRef::<Watched>::new(&name).within(&ns));
        let results = Controller::for_stream(clusters, reader)
            .reconcile_on(decided)
            .owns(scoped_api::<Pod>(&client, namespace), children.clone())
            .owns(scoped_api::<Service>(&client, namespace), children.clone())
            .owns(scoped_api::<Secret>(&client, namespace), children)
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone());
        drain_results(results, KIND)
    })
    .await;
}

/// Retry failed reconciles, later with each failure in a row; an object that cannot be read or
/// honoured waits for the next change.
fn error_policy(object: Arc<Watched>, error: &Error, ctx: Arc<Context>) -> Action {
    match error {
        Error::InvalidSpec(_) | Error::InvalidObject { .. } => Action::await_change(),
        _ => Action::requeue(retry_delay(ctx.failed(&key(&object)))),
    }
}

/// How long to wait before retrying after `failures` failed reconciles in a row (at least one).
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// `namespace/name` of a watched cluster.
fn key(object: &Watched) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

async fn reconcile(object: Arc<Watched>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        cluster = %object.name_any(),
        namespace = object.namespace().unwrap_or_default()
    );
    let result = match &object.0 {
        Ok(cluster) => reconcile_cluster(cluster, &ctx).instrument(span).await,
        Err(invalid) => {
            report_unreadable(&object, invalid, &ctx)
                .instrument(span)
                .await
        }
    };
    if result.is_ok() {
        ctx.succeeded(&key(&object));
    }
    let label = result.as_ref().err().map(Error::label);
    ctx.metrics.reconciled(KIND, started.elapsed(), label);
    if let Err(e) = &result {
        tracing::warn!(cluster = %object.name_any(), error = %e, "reconcile failed");
    }
    result
}

/// Reports a ComputeCluster this binary cannot read with a Warning Event; the error counts it.
async fn report_unreadable(
    object: &Watched,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action, Error> {
    let error = Error::InvalidObject {
        kind: KIND,
        name: format!(
            "{}/{}",
            object.namespace().unwrap_or_default(),
            object.name_any()
        ),
        source: Box::new(invalid.clone()),
    };
    ctx.event(
        &object.object_ref(&()),
        None,
        EventType::Warning,
        "InvalidObject",
        format!(
            "the operator cannot read this object: {}; fix the field or use an operator that \
             knows it",
            invalid.error
        ),
    )
    .await;
    Err(error)
}

async fn reconcile_cluster(cluster: &ComputeCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    if cluster.meta().deletion_timestamp.is_some() {
        // The garbage collector removes the children through their owner references.
        ctx.autoscalers.untrack(
            &cluster.namespace().unwrap_or_default(),
            &cluster.name_any(),
        );
        return Ok(Action::await_change());
    }
    let stamp = Stamp {
        previous: cluster.status.as_ref(),
        generation: cluster.meta().generation,
        now: Time(Timestamp::now()),
    };
    let clusters: Api<ComputeCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());

    let observed = observe(&ctx.client, cluster).await?;
    let mut valid = match validate(cluster) {
        Ok(valid) => valid,
        Err(problems) => {
            let new = status::invalid(&stamp, &problems);
            if cluster.status.as_ref() != Some(&new) {
                ctx.event(
                    &cluster.object_ref(&()),
                    None,
                    EventType::Warning,
                    problems.reason(),
                    problems.summary(MAX_EVENT_NOTE),
                )
                .await;
                write_status(&clusters, cluster, &new).await?;
            }
            return Err(Error::InvalidSpec(problems));
        }
    };
    observed.check_secret(&valid.name)?;
    let decision = steer(ctx, cluster, &mut valid, observed.head_ip.as_deref());
    let desired = Desired::of(&valid);
    let step = plan(&desired, &observed, random_worker_suffix);
    let applied = apply(ctx, &valid, &desired, &observed, &step).await?;

    let mut new = status::derive(&valid, &observed, &applied, &stamp);
    let autoscaled = valid.autoscaling.as_ref().is_some_and(|a| a.enabled) && !valid.suspend;
    fill_status(&mut new, autoscaled, decision.as_ref(), cluster, &stamp.now);
    if cluster.status.as_ref() != Some(&new) {
        write_status(&clusters, cluster, &new).await?;
    }
    let progress = Progress::of(&valid, &observed, &applied);
    let again = match progress {
        Progress::Starting => STARTING,
        _ if progress.is_moving() => SETTLING,
        _ => RESYNC,
    };
    if let Some(refusal) = applied.refusal {
        // Shown in the status; the error counts it and retries soon.
        return Err(refusal.into());
    }
    // A settled cluster changes through the watches; one still moving is looked at again soon.
    Ok(Action::requeue(again))
}

async fn write_status(
    api: &Api<ComputeCluster>,
    cluster: &ComputeCluster,
    status: &ComputeClusterStatus,
) -> Result<(), Error> {
    Ok(apply_status(api, cluster, status).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }
}
