//! Routes of statistics and metrics (thin: parse, call [`Service`], shape the answer). The event
//! list and stream are in `events.rs`.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;
use vessel_api::ErrorBody;

use crate::api::ApiResult;
use crate::ctx::Service;

#[derive(OpenApi)]
#[openapi(paths(
    vm_stats,
    all_stats,
    host_stats,
    metrics,
    crate::observe::events::events
))]
pub struct ObserveApi;

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/vms/{name}/stats", get(vm_stats))
        .route("/v1/stats", get(all_stats))
        .route("/v1/host/stats", get(host_stats))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(crate::observe::events::events))
}

#[utoipa::path(get, path = "/v1/vms/{name}/stats",
    responses((status = 200, body = Object, description = "VmStats: CPU, memory, disk and network figures, sampled now; zeros with the state for a stopped VM"), (status = 404, body = ErrorBody)))]
async fn vm_stats(State(s): State<Service>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.vm_stats(&name).await?).into_response())
}

#[utoipa::path(get, path = "/v1/stats",
    responses((status = 200, body = Object, description = "{host: HostStats, vms: [VmStats]}: the latest sampling round (what `vessel top` shows)")))]
async fn all_stats(State(s): State<Service>) -> ApiResult<Response> {
    Ok(Json(s.latest_stats().await?).into_response())
}

#[utoipa::path(get, path = "/v1/host/stats",
    responses((status = 200, body = Object, description = "HostStats: CPU, memory, disks, network, committed vCPUs and memory, VMs per state")))]
async fn host_stats(State(s): State<Service>) -> ApiResult<Response> {
    Ok(Json(s.latest_stats().await?.host).into_response())
}

/// Prometheus exposition (text format 0.0.4) of the latest sampling round.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, body = String, content_type = "text/plain; version=0.0.4")))]
async fn metrics(State(s): State<Service>) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let round = s.latest_stats().await?;
    let text = vessel_metrics::prometheus::render(&round.host, &round.vms, Some(started.elapsed()));
    Ok((
        [(
            header::CONTENT_TYPE,
            vessel_metrics::prometheus::CONTENT_TYPE,
        )],
        text,
    )
        .into_response())
}
