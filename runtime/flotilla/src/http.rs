//! HTTP endpoints of the head and workers: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! and the head's dashboard at `/`.

use std::{fmt::Write, sync::Arc};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};

use crate::head::{HeadConfig, HeadHandle, StatusView};

/// The head's routes.
pub fn head_router(handle: HeadHandle, config: HeadConfig) -> Router {
    let state = Arc::new((handle, config));
    Router::new()
        .route("/metrics", get(head_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(head_ready))
        .route("/", get(dashboard))
        .with_state(state)
}

type HeadState = State<Arc<(HeadHandle, HeadConfig)>>;

async fn head_ready(State(state): HeadState) -> impl IntoResponse {
    match state.0.status().await {
        Ok(_) => (axum::http::StatusCode::OK, "ready\n"),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "head core stopped\n",
        ),
    }
}

async fn head_metrics(State(state): HeadState) -> impl IntoResponse {
    let runs = state.0.runs_by_name().await.unwrap_or_default();
    match state.0.status().await {
        Ok(view) => (
            axum::http::StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render_head_metrics(&view, &state.1) + &render_runs(&runs, &state.1),
        ),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            format!("# head unavailable: {e}\n"),
        ),
    }
}

/// Renders the DESIGN.md §3 series in Prometheus text format.
pub fn render_head_metrics((snap, workers): &StatusView, config: &HeadConfig) -> String {
    let labels = format!(
        "cluster=\"{}\",namespace=\"{}\"",
        escape(&config.cluster),
        escape(&config.namespace)
    );
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, series: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (extra, value) in series {
            let _ = writeln!(out, "{name}{{{labels}{extra}}} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "flotilla_tasks_pending",
        "gauge",
        "Tasks ready to run, waiting for a free slot.",
        &one(snap.tasks_pending),
    );
    metric(
        "flotilla_tasks_waiting",
        "gauge",
        "Tasks waiting for their arguments.",
        &one(snap.tasks_waiting),
    );
    metric(
        "flotilla_tasks_running",
        "gauge",
        "Tasks running now.",
        &one(snap.tasks_running),
    );
    metric(
        "flotilla_tasks_finished_total",
        "counter",
        "Tasks finished successfully.",
        &one(snap.tasks_finished),
    );
    metric(
        "flotilla_tasks_failed_total",
        "counter",
        "Tasks failed for good.",
        &one(snap.tasks_failed),
    );
    metric(
        "flotilla_tasks_retried_total",
        "counter",
        "Tasks retried after a worker failure.",
        &one(snap.tasks_retried),
    );
    metric(
        "flotilla_slots",
        "gauge",
        "Task slots across live workers.",
        &[
            (",state=\"busy\"".into(), snap.slots_busy),
            (",state=\"free\"".into(), snap.slots_free),
        ],
    );
    metric(
        "flotilla_workers",
        "gauge",
        "Workers by state.",
        &[
            (",state=\"idle\"".into(), snap.workers_idle),
            (",state=\"busy\"".into(), snap.workers_busy),
            (",state=\"draining\"".into(), snap.workers_draining),
        ],
    );
    metric(
        "flotilla_actors",
        "gauge",
        "Actors by state.",
        &[
            (",state=\"alive\"".into(), snap.actors_alive),
            (",state=\"restarting\"".into(), snap.actors_restarting),
            (",state=\"dead\"".into(), snap.actors_dead),
        ],
    );
    metric(
        "flotilla_object_store_bytes",
        "gauge",
        "Object store bytes across workers.",
        &[
            (",location=\"memory\"".into(), snap.store_memory_bytes),
            (",location=\"spilled\"".into(), snap.store_spilled_bytes),
        ],
    );
    metric(
        "flotilla_desired_workers",
        "gauge",
        "The head's estimate of workers needed.",
        &one(snap.desired_workers),
    );
    metric(
        "flotilla_objects",
        "gauge",
        "Objects tracked by the head.",
        &one(snap.objects),
    );
    metric(
        "flotilla_drivers",
        "gauge",
        "Connected driver sessions.",
        &one(snap.sessions),
    );
    // Per-group series.
    let mut groups: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for w in workers {
        let g = groups.entry(w.group.as_str()).or_default();
        g.0 += 1;
        g.1 += u64::from(w.slots);
    }
    let workers_by_group: Vec<(String, u64)> = groups
        .iter()
        .map(|(g, (n, _))| (format!(",group=\"{}\"", escape(g)), *n))
        .collect();
    metric(
        "flotilla_group_workers",
        "gauge",
        "Registered workers per group.",
        &workers_by_group,
    );
    let slots_by_group: Vec<(String, u64)> = groups
        .iter()
        .map(|(g, (_, s))| (format!(",group=\"{}\"", escape(g)), *s))
        .collect();
    metric(
        "flotilla_group_slots",
        "gauge",
        "Task slots per group.",
        &slots_by_group,
    );
    out
}

/// `flotilla_task_runs_total{task, outcome}`: runs by task name (the function or method, or the
/// name a call gave in its options).
pub fn render_runs(runs: &crate::head::RunsByName, config: &HeadConfig) -> String {
    let mut out = String::from(
        "# HELP flotilla_task_runs_total Task runs by task name and outcome.\n# TYPE flotilla_task_runs_total counter\n",
    );
    let labels = format!(
        "cluster=\"{}\",namespace=\"{}\"",
        escape(&config.cluster),
        escape(&config.namespace)
    );
    for (name, finished, failed) in runs {
        let task = escape(name);
        let _ = writeln!(
            out,
            "flotilla_task_runs_total{{{labels},task=\"{task}\",outcome=\"finished\"}} {finished}"
        );
        let _ = writeln!(
            out,
            "flotilla_task_runs_total{{{labels},task=\"{task}\",outcome=\"failed\"}} {failed}"
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn dashboard(State(state): HeadState) -> impl IntoResponse {
    let Ok((snap, workers)) = state.0.status().await else {
        return axum::response::Html("<h1>head unavailable</h1>".to_string());
    };
    let mut rows = String::new();
    for w in &workers {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html(&w.name),
            html(&w.address),
            w.state.label(),
            w.busy_slots,
            w.slots,
            w.store.objects,
            w.store.memory_bytes,
            w.store.spilled_bytes
        );
    }
    axum::response::Html(format!(
        "<!doctype html><html><head><title>Flotilla {cluster}</title><meta http-equiv=refresh content=2>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head><body>\
         <h1>Flotilla cluster {cluster}</h1>\
         <p>tasks: {pending} pending, {waiting} waiting, {running} running, {finished} finished, {failed} failed, {retried} retried \
         &middot; actors alive: {actors} &middot; objects: {objects} &middot; drivers: {drivers}</p>\
         <table><tr><th>worker</th><th>address</th><th>state</th><th>busy/slots</th><th>objects</th><th>memory bytes</th><th>spilled bytes</th></tr>{rows}</table>\
         </body></html>",
        cluster = html(&state.1.cluster),
        pending = snap.tasks_pending,
        waiting = snap.tasks_waiting,
        running = snap.tasks_running,
        finished = snap.tasks_finished,
        failed = snap.tasks_failed,
        retried = snap.tasks_retried,
        actors = snap.actors_alive,
        objects = snap.objects,
        drivers = snap.sessions,
    ))
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What a worker's `/metrics` shows.
pub trait WorkerMetrics: Send + Sync + 'static {
    /// Prometheus text.
    fn render(&self) -> String;
    /// Whether the worker is registered with a head.
    fn ready(&self) -> bool;
}

/// A worker's routes.
pub fn worker_router(metrics: Arc<dyn WorkerMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<dyn WorkerMetrics>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<dyn WorkerMetrics>>| async move {
                if m.ready() {
                    (axum::http::StatusCode::OK, "ready\n")
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "not registered with a head\n",
                    )
                }
            }),
        )
        .with_state(metrics)
}
