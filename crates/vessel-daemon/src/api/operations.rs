//! Routes of operations (list, show, cancel) and of the host itself (capacity, check).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use vessel_api::{ApiError, ErrorBody, HostCheck, HostInfo, Operation};

use crate::access::caller::Caller;
use crate::api::ApiResult;
use crate::ctx::Service;

#[derive(OpenApi)]
#[openapi(paths(
    list_operations,
    get_operation,
    cancel_operation,
    host_info,
    host_check
))]
pub struct OperationsApi;

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/v1/host", get(host_info))
        .route("/v1/host/check", get(host_check))
}

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", responses((status = 200, body = Operation), (status = 409, body = ErrorBody)))]
async fn cancel_operation(
    State(s): State<Service>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(s.cancel_operation(&id).await?))
}

#[utoipa::path(get, path = "/v1/operations", responses((status = 200, body = Vec<Operation>)))]
async fn list_operations(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Operation>>> {
    let visible =
        vessel_auth::Visibility::of(&caller.identity, vessel_auth::Permission::OperationRead);
    Ok(Json(s.list_operations(&visible).await?))
}

/// The project of an operation: that of what it works on (`None`: no such operation).
pub async fn project_of(s: &Service, id: &str) -> Option<String> {
    s.get_operation(id).await.ok().map(|op| op.project)
}

#[utoipa::path(get, path = "/v1/operations/{id}", responses((status = 200, body = Operation), (status = 404, body = ErrorBody)))]
async fn get_operation(
    State(s): State<Service>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(s.get_operation(&id).await?))
}

#[utoipa::path(get, path = "/v1/host", responses((status = 200, body = HostInfo)))]
async fn host_info(State(s): State<Service>) -> ApiResult<Json<HostInfo>> {
    Ok(Json(s.host_info().await?))
}

#[utoipa::path(get, path = "/v1/host/check", responses((status = 200, body = HostCheck)))]
async fn host_check(State(s): State<Service>) -> ApiResult<Json<HostCheck>> {
    let binary = s.ctx.config.qemu_binary.clone();
    let check = tokio::task::spawn_blocking(move || vessel_qemu::host::check_host(&binary))
        .await
        .map_err(|e| ApiError::internal(format!("host check failed: {e}")))?;
    Ok(Json(check))
}
