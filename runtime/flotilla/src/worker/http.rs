//! A worker's HTTP endpoints besides its objects: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz` (registered with a head).

use std::sync::{atomic::Ordering, Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::Shared;
use crate::metrics::register;

/// A worker's registry and the series in it; every series carries `worker` and `group`.
pub(super) struct WorkerMetrics {
    registry: Registry,
    tasks: IntCounter,
    failed: IntCounter,
    /// Tasks and actor calls running now.
    pub(super) running: IntGauge,
    slots: IntGauge,
    store_bytes: IntGaugeVec,
    objects: IntGauge,
    task_seconds: Histogram,
}

impl WorkerMetrics {
    pub(super) fn new(worker: &str, group: &str) -> Self {
        let labels = [("worker", worker), ("group", group)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let registry = Registry::new_custom(None, Some(labels))
            .expect("worker and group are valid label names");
        let counter = |name: &str, help: &str| {
            register(
                &registry,
                IntCounter::new(name, help).expect("a valid name"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(&registry, IntGauge::new(name, help).expect("a valid name"))
        };
        WorkerMetrics {
            tasks: counter("flotilla_worker_tasks_total", "Tasks and actor calls run."),
            failed: counter(
                "flotilla_worker_tasks_failed_total",
                "Tasks and actor calls that failed.",
            ),
            running: gauge(
                "flotilla_worker_tasks_running",
                "Tasks and actor calls running now.",
            ),
            slots: gauge("flotilla_worker_slots", "Task slots of this worker."),
            store_bytes: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "flotilla_worker_object_store_bytes",
                        "Object store bytes, in memory and spilled.",
                    ),
                    &["location"],
                )
                .expect("a valid name"),
            ),
            objects: gauge("flotilla_worker_objects", "Objects in the store."),
            task_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "flotilla_worker_task_duration_seconds",
                        "How long tasks and actor calls ran here.",
                    )
                    .buckets(crate::metrics::RUN_BUCKETS.to_vec()),
                )
                .expect("valid buckets"),
            ),
            registry,
        }
    }

    /// Counts a finished run, and whether it succeeded.
    pub(super) fn ran(&self, ok: bool) {
        self.tasks.inc();
        if !ok {
            self.failed.inc();
        }
    }

    /// Records how long a run took.
    pub(super) fn observe_run(&self, took: std::time::Duration) {
        self.task_seconds.observe(took.as_secs_f64());
    }

    fn render(&self, shared: &Shared) -> String {
        let stats = shared.store.stats();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.slots.set(i64::from(shared.config.slots));
        self.store_bytes
            .with_label_values(&["memory"])
            .set(gauge(stats.memory_bytes));
        self.store_bytes
            .with_label_values(&["spilled"])
            .set(gauge(stats.spilled_bytes));
        self.objects.set(gauge(stats.objects));
        crate::metrics::encode(&self.registry)
    }
}

type Worker = State<Arc<Shared>>;

/// A worker's routes.
pub(super) fn worker_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(shared)
}

async fn metrics(State(shared): Worker) -> impl IntoResponse {
    crate::metrics::response(shared.metrics.render(&shared))
}

async fn ready(State(shared): Worker) -> impl IntoResponse {
    if shared.registered.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not registered with a head\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_worker_name_cannot_inject_a_series() {
        let metrics = WorkerMetrics::new("w\"1\nflotilla_injected 1\n", "g\\");
        metrics.ran(true);
        let text = crate::metrics::encode(&metrics.registry);
        assert!(
            !text.lines().any(|l| l.starts_with("flotilla_injected")),
            "{text}"
        );
        assert!(
            text.contains(r#"worker="w\"1\nflotilla_injected 1\n""#),
            "{text}"
        );
        assert!(text.contains(r#"group="g\\""#), "{text}");
    }
}
