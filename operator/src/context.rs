//! What every reconcile shares: the Kubernetes client, the Event recorder, the operator's
//! metrics, the drains in flight, and the failures in a row of each object; and what every
//! controller's setup shares: one controller per watched namespace, each kind's API in it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use futures::{future::join_all, Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client, Resource, ResourceExt,
};

use crate::{autoscale::Autoscalers, contract::MANAGER_NAME, metrics::Metrics};

/// Runs one controller, made by `controller`, for each of `namespaces`, or one over all of them
/// when none is given; returns when all have ended.
pub async fn per_namespace<F, Fut>(namespaces: &[String], controller: F)
where
    F: FnMut(Option<&str>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    join_all(scopes.into_iter().map(controller)).await;
}

/// The API of kind `K` in `namespace`, or across all namespaces.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs a controller's results to their end; a failed reconcile is already logged by the
/// reconcile itself, so here it is only a debug line saying which controller.
pub async fn drain_results<T, E: std::fmt::Display>(
    results: impl Stream<Item = Result<T, E>>,
    controller: &'static str,
) {
    results
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, controller, "reconcile failed");
            }
        })
        .await
}

/// Writes `status` as the whole status of `object` with server-side apply: fields the operator no
/// longer sends are removed.
pub async fn apply_status<K>(
    api: &Api<K>,
    object: &K,
    status: &impl serde::Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER_NAME).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The longest Event note, in bytes, the API server accepts.
pub const MAX_EVENT_NOTE: usize = 1024;
/// Ends a note shortened to fit.
const SHORTENED: &str = " …";

/// Shared by every reconcile of one operator replica.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Metrics,
    recorder: Recorder,
    /// Worker pods (`namespace/name`) with a drain in flight.
    draining: Mutex<HashSet<String>>,
    /// Failed reconciles in a row, by object (`namespace/name`); the retry delay grows with it.
    failures: Mutex<HashMap<String, u32>>,
    /// The autoscaler's loop of each autoscaled cluster.
    pub autoscalers: Arc<Autoscalers>,
}

impl Context {
    /// A context for the operator replica called `instance` (the Events' reporting instance).
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: MANAGER_NAME.to_owned(),
            instance,
        };
        Context {
            autoscalers: Arc::new(Autoscalers::new(&metrics)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            draining: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn draining(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set only holds names; one left by a panicking holder is still right.
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the drain of `pod` (`namespace/name`); `false` when one is in flight already.
    pub fn claim_drain(&self, pod: &str) -> bool {
        self.draining().insert(pod.to_owned())
    }

    /// Gives the drain of `pod` back, so a later reconcile may start it again.
    pub fn release_drain(&self, pod: &str) {
        self.draining().remove(pod);
    }

    /// Counts a failed reconcile of `object` (`namespace/name`); returns its failures in a row.
    pub fn failed(&self, object: &str) -> u32 {
        // Counts only; one left by a panicking holder is still right.
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(object.to_owned()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// Ends the failures in a row of `object` (`namespace/name`).
    pub fn succeeded(&self, object: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(object);
    }

    /// Records an Event on `regarding`; `pod` names the pod it concerns, if any (the Event's
    /// `related` object, which also keeps Events about different pods apart). A note longer
    /// than the API server takes is shortened. A failure to record is logged: an Event is worth
    /// no retry of the reconcile.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        pod: Option<&str>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_as(regarding, pod, type_, reason, reason, note)
            .await;
    }

    /// Records an Event as [`Context::event`] does, with its own `action`. Events that share the
    /// regarded object, reason and action count as one series that keeps its first note, so a
    /// distinct action keeps a distinct note (a new size, another failure).
    pub async fn event_as(
        &self,
        regarding: &ObjectReference,
        pod: Option<&str>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let secondary = pod.map(|name| ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.to_owned()),
            namespace: regarding.namespace.clone(),
            ..ObjectReference::default()
        });
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(fit_note(note)),
            action: action.to_owned(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(error = %e, reason, "cannot record an event");
        }
    }
}

/// `note` cut to [`MAX_EVENT_NOTE`] bytes at a character boundary, marked as shortened; the API
/// server refuses the whole Event otherwise.
fn fit_note(mut note: String) -> String {
    if note.len() <= MAX_EVENT_NOTE {
        return note;
    }
    let mut end = MAX_EVENT_NOTE - SHORTENED.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(SHORTENED);
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_the_api_servers_limit() {
        assert_eq!(fit_note("short".to_owned()), "short");
        let exact = "x".repeat(MAX_EVENT_NOTE);
        assert_eq!(fit_note(exact.clone()), exact);
        // Multi-byte characters straddle the cut.
        let long = "é".repeat(MAX_EVENT_NOTE);
        let fitted = fit_note(long.clone());
        assert!(fitted.len() <= MAX_EVENT_NOTE, "{} bytes", fitted.len());
        assert!(fitted.ends_with(SHORTENED));
        assert!(long.starts_with(fitted.trim_end_matches(SHORTENED)));
    }
}
