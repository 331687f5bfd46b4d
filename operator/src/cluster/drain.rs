//! The drain of one worker marked draining: the head empties the worker (its tasks finish, its
//! objects move), then the worker's pod is deleted and an Event says how the drain ended.
//!
//! A drain runs in the background, past the reconcile that started it; the mark on the pod
//! (`flotilla.dev/draining-since`) is the durable record, so a drain that failed, or whose
//! operator replica went away, is started again by a later reconcile.

use std::{sync::Arc, time::Duration};

use flotilla_proto::v1::DrainOutcome;
use k8s_openapi::{
    api::core::v1::{ObjectReference, Pod},
    jiff::Timestamp,
};
use kube::{api::DeleteParams, runtime::events::EventType, Api};

use super::plan::MarkedDrain;
use crate::{
    context::Context,
    head::{Head, HeadError},
};

/// How to reach the head that drains a cluster's workers.
#[derive(Clone, Debug)]
pub struct HeadAccess {
    /// The head pod's IP.
    pub ip: String,
    /// The cluster token.
    pub token: String,
}

/// One worker being drained, then deleted.
pub struct DrainJob {
    ctx: Arc<Context>,
    /// The ComputeCluster, which the Events are about.
    cluster: ObjectReference,
    namespace: String,
    pod: String,
    /// The head; `None` when no head pod runs, so nothing runs on the worker either.
    head: Option<HeadAccess>,
    /// What is left of the drain timeout.
    remaining: Duration,
}

/// How a drain ended, and so what the Event says and the metric counts.
enum Drained {
    /// The head moved the worker's objects and its tasks finished.
    Done,
    /// The head does not know the worker: nothing runs there.
    NotRegistered,
    /// The deadline passed first (the head's answer, or ours when it did not answer).
    TimedOut(String),
    /// No head pod runs, so nothing runs on the worker either.
    NoHead,
    /// The drain was called off (the worker was taken back): the pod stays.
    Cancelled,
}

impl DrainJob {
    /// The drain of `marked`, a worker of `cluster` in `namespace`, allowed `timeout` from when
    /// it was marked.
    pub fn new(
        ctx: Arc<Context>,
        cluster: ObjectReference,
        namespace: &str,
        marked: &MarkedDrain,
        head: Option<HeadAccess>,
        timeout: Duration,
    ) -> Self {
        let now = Timestamp::now();
        let elapsed = now
            .duration_since(marked.since.unwrap_or(now))
            .try_into()
            .unwrap_or(Duration::ZERO);
        DrainJob {
            ctx,
            cluster,
            namespace: namespace.to_owned(),
            pod: marked.pod.clone(),
            head,
            remaining: timeout.saturating_sub(elapsed),
        }
    }

    /// Starts the drain in the background, unless one of the same pod is in flight.
    pub fn spawn(self) {
        if self.ctx.claim_drain(&self.key()) {
            tokio::spawn(self.run());
        }
    }

    /// The pod as `namespace/name`, the key of the drains in flight.
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    async fn run(self) {
        match self.drain().await {
            Ok(Drained::Cancelled) => {
                tracing::info!(pod = %self.pod, "drain cancelled; the worker takes work again");
            }
            Ok(drained) => self.finish(drained).await,
            Err(e) => {
                // The head runs but did not answer: the worker may be busy, so it stays until
                // the deadline; the next reconcile tries again.
                tracing::warn!(pod = %self.pod, error = %e, "cannot drain a worker yet; will retry");
                self.ctx.metrics.drained("error");
            }
        }
        self.ctx.release_drain(&self.key());
    }

    /// Asks the head to drain the worker.
    async fn drain(&self) -> Result<Drained, HeadError> {
        let Some(head) = &self.head else {
            return Ok(Drained::NoHead);
        };
        if self.remaining.is_zero() {
            return Ok(Drained::TimedOut("the drain timeout passed".to_owned()));
        }
        let mut client = Head::connect(&head.ip, &head.token).await?;
        Ok(match client.drain(&self.pod, self.remaining).await? {
            (DrainOutcome::Drained, _) => Drained::Done,
            (DrainOutcome::NotRegistered, _) => Drained::NotRegistered,
            (DrainOutcome::Cancelled, _) => Drained::Cancelled,
            // The deadline passed, or the worker went away before it emptied.
            (
                DrainOutcome::TimedOut | DrainOutcome::WorkerLost | DrainOutcome::Unspecified,
                message,
            ) => Drained::TimedOut(message),
        })
    }

    /// Counts the drain, deletes the pod and records how the drain ended.
    async fn finish(&self, drained: Drained) {
        let pod = &self.pod;
        let (type_, reason, note, result) = match drained {
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
            Drained::Cancelled => return,
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
    }
}

/// Deletes pod `name`; one already gone counts as deleted.
pub async fn delete_pod(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    match pods.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}
