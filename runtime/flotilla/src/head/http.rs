//! The head's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`, `/readyz`, and a dashboard
//! at `/`.

use std::{fmt::Write, sync::Arc};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use super::{core::HeadHandle, metrics::HeadMetrics, HeadConfig};

/// What the routes read.
struct HeadRoutes {
    handle: HeadHandle,
    config: HeadConfig,
    metrics: Arc<HeadMetrics>,
}

type Routes = State<Arc<HeadRoutes>>;

/// The head's routes.
pub(crate) fn head_router(
    handle: HeadHandle,
    config: HeadConfig,
    metrics: Arc<HeadMetrics>,
) -> Router {
    let routes = Arc::new(HeadRoutes {
        handle,
        config,
        metrics,
    });
    Router::new()
        .route("/metrics", get(head_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(head_ready))
        .route("/", get(dashboard))
        .with_state(routes)
}

async fn head_ready(State(routes): Routes) -> impl IntoResponse {
    match routes.handle.status().await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "head core stopped\n"),
    }
}

async fn head_metrics(State(routes): Routes) -> axum::response::Response {
    let runs = routes.handle.runs_by_name().await.unwrap_or_default();
    match routes.handle.status().await {
        Ok((snap, workers)) => {
            crate::metrics::response(routes.metrics.render(&snap, &workers, &runs)).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("# head unavailable: {e}\n"),
        )
            .into_response(),
    }
}

async fn dashboard(State(routes): Routes) -> impl IntoResponse {
    let Ok((snap, workers)) = routes.handle.status().await else {
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
        cluster = html(&routes.config.cluster),
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
