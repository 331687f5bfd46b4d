//! Watches: a chunked stream of JSON watch events, one per line.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::Body;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    error::ApiError,
    resources::Resource,
    selector::{FieldSelector, LabelSelector},
    store::EventType,
    Shared,
};

/// How often an idle watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);

/// Renders each object of a watch (as itself, or as a one-row Table).
pub(crate) type Render = Box<dyn Fn(&Resource, &Value) -> Value + Send + Sync>;

/// What a watch sends.
pub(crate) struct WatchRequest {
    pub resource: Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None`, `""` or `"0"`: start with the current objects.
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub render: Render,
}

impl WatchRequest {
    fn matches(&self, object: &Value) -> bool {
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.namespace.as_deref().is_none_or(|n| n == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }

    fn event(&self, type_: &str, object: &Value) -> Bytes {
        let object = self.resource.present(object.clone());
        let line = json!({"type": type_, "object": (self.render)(&self.resource, &object)});
        Bytes::from(format!("{line}\n"))
    }

    fn bookmark(&self, resource_version: u64, initial_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": metadata});
        Bytes::from(format!(
            "{}\n",
            json!({"type": "BOOKMARK", "object": object})
        ))
    }
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {requested} ({oldest})")).to_status();
    Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})))
}

/// Starts a watch and returns its response body.
pub(crate) fn watch(shared: Arc<Shared>, request: WatchRequest) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        // Dropped sends mean the client went away; the task then ends.
        let _ = run(shared, request, tx).await;
    });
    let stream =
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>)));
    Body::from_stream(stream)
}

async fn run(
    shared: Arc<Shared>,
    request: WatchRequest,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), mpsc::error::SendError<Bytes>> {
    let mut changed = shared.changes.subscribe();
    let deadline = tokio::time::sleep(request.timeout);
    tokio::pin!(deadline);
    let start = {
        let store = shared.lock();
        match request.resource_version {
            Some(rv) if rv < store.compacted() => Err((rv, store.compacted() + 1)),
            Some(rv) if !request.send_initial_events => Ok((rv, Vec::new())),
            _ => {
                let objects = store.list(
                    &request.resource,
                    request.namespace.as_deref(),
                    &request.labels,
                    &request.fields,
                );
                Ok((store.resource_version(), objects))
            }
        }
    };
    let (mut last, initial) = match start {
        Ok(start) => start,
        Err((requested, oldest)) => return tx.send(expired(requested, oldest)).await,
    };
    for object in &initial {
        tx.send(request.event(EventType::Added.as_str(), object))
            .await?;
    }
    if request.send_initial_events && request.bookmarks {
        tx.send(request.bookmark(last, true)).await?;
    }
    loop {
        let (changes, compacted) = {
            let store = shared.lock();
            (store.changes_since(last), store.compacted())
        };
        if last < compacted {
            tx.send(expired(last, compacted + 1)).await?;
            return Ok(());
        }
        for change in &changes {
            last = change.resource_version;
            if change.key != request.resource.key() {
                continue;
            }
            let now = request.matches(&change.object);
            let before = change.old.as_ref().is_some_and(|o| request.matches(o));
            let type_ = match (change.type_, before, now) {
                (EventType::Modified, true, true) => EventType::Modified,
                (EventType::Modified, false, true) | (EventType::Added, _, true) => {
                    EventType::Added
                }
                (EventType::Modified, true, false) | (EventType::Deleted, _, true) => {
                    EventType::Deleted
                }
                _ => continue,
            };
            tx.send(request.event(type_.as_str(), &change.object))
                .await?;
        }
        tokio::select! {
            result = changed.changed() => {
                if result.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep(BOOKMARK_INTERVAL) => {
                if request.bookmarks {
                    tx.send(request.bookmark(last, false)).await?;
                }
            }
            () = &mut deadline => return Ok(()),
            () = tx.closed() => return Ok(()),
        }
    }
}
