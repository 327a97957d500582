//! Routes of pools, volumes, images and the master key (thin: parse, call [`Service`], shape
//! the answer). Long jobs (imports, exports, full clones) answer with their operation's result.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use vessel_api::{Accepted, ErrorBody};

use crate::access::caller::Caller;
use crate::api::{finish_host, wait_param, ApiJson, ApiResult};
use crate::ctx::Service;

#[derive(OpenApi)]
#[openapi(paths(
    list_pools,
    create_pool,
    get_pool,
    delete_pool,
    list_volumes,
    create_volume,
    get_volume,
    delete_volume,
    resize_volume,
    clone_volume,
    import_volume,
    export_volume,
    list_images,
    import_image,
    get_image,
    delete_image,
    rotate_master_key
))]
pub struct StorageApi;

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/pools", get(list_pools).post(create_pool))
        .route("/v1/pools/{name}", get(get_pool).delete(delete_pool))
        .route(
            "/v1/pools/{pool}/volumes",
            get(list_volumes).post(create_volume),
        )
        .route(
            "/v1/pools/{pool}/volumes/{name}",
            get(get_volume).delete(delete_volume),
        )
        .route(
            "/v1/pools/{pool}/volumes/{name}/resize",
            post(resize_volume),
        )
        .route("/v1/pools/{pool}/volumes/{name}/clone", post(clone_volume))
        .route("/v1/pools/{pool}/imports", post(import_volume))
        .route(
            "/v1/pools/{pool}/volumes/{name}/export",
            post(export_volume),
        )
        .route("/v1/images", get(list_images).post(import_image))
        .route("/v1/images/{name}", get(get_image).delete(delete_image))
        .route("/v1/host/master-key/rotate", post(rotate_master_key))
}

#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = Vec<vessel_api::Image>)))]
async fn list_images(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<vessel_api::Image>>> {
    let visible = vessel_auth::Visibility::of(&caller.identity, vessel_auth::Permission::ImageRead);
    Ok(Json(s.list_images(&visible).await?))
}

#[utoipa::path(post, path = "/v1/images", request_body = vessel_api::ImportImageRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the import (default true)")),
    responses((status = 201, body = vessel_api::Image), (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn import_image(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::ImportImageRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.import_image(&req, &caller.identity).await?;
    finish_host(&s, op, wait, StatusCode::CREATED).await
}

#[utoipa::path(get, path = "/v1/images/{name}", responses((status = 200, body = vessel_api::Image), (status = 404, body = ErrorBody)))]
async fn get_image(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<vessel_api::Image>> {
    Ok(Json(s.get_image(&name).await?))
}

#[utoipa::path(delete, path = "/v1/images/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_image(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    s.delete_image(&name, &caller.identity).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/pools/{pool}/imports", request_body = vessel_api::ImportVolumeRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the import (default true)")),
    responses((status = 201, body = vessel_api::Volume), (status = 202, body = Accepted), (status = 400, body = ErrorBody)))]
async fn import_volume(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::ImportVolumeRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.import_volume(&pool, &req, &caller.identity).await?;
    finish_host(&s, op, wait, StatusCode::CREATED).await
}

#[utoipa::path(post, path = "/v1/pools/{pool}/volumes/{name}/export", request_body = vessel_api::ExportVolumeRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the export (default true)")),
    responses((status = 200, body = vessel_api::ExportedVolume), (status = 202, body = Accepted), (status = 400, body = ErrorBody)))]
async fn export_volume(
    State(s): State<Service>,
    Path((pool, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::ExportVolumeRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.export_volume(&pool, &name, &req).await?;
    finish_host(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(get, path = "/v1/pools", responses((status = 200, body = Vec<vessel_api::Pool>)))]
async fn list_pools(State(s): State<Service>) -> ApiResult<Json<Vec<vessel_api::Pool>>> {
    Ok(Json(s.list_pools().await?))
}

#[utoipa::path(post, path = "/v1/pools", request_body = vessel_api::CreatePoolRequest,
    responses((status = 201, body = vessel_api::Pool), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_pool(
    State(s): State<Service>,
    ApiJson(req): ApiJson<vessel_api::CreatePoolRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(s.create_pool(&req).await?)).into_response())
}

#[utoipa::path(get, path = "/v1/pools/{name}", responses((status = 200, body = vessel_api::Pool), (status = 404, body = ErrorBody)))]
async fn get_pool(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<vessel_api::Pool>> {
    Ok(Json(s.get_pool(&name).await?))
}

#[utoipa::path(delete, path = "/v1/pools/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_pool(State(s): State<Service>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    s.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/pools/{pool}/volumes", responses((status = 200, body = Vec<vessel_api::Volume>), (status = 404, body = ErrorBody)))]
async fn list_volumes(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    Path(pool): Path<String>,
) -> ApiResult<Json<Vec<vessel_api::Volume>>> {
    let visible =
        vessel_auth::Visibility::of(&caller.identity, vessel_auth::Permission::StorageRead);
    Ok(Json(s.list_volumes(&pool, &visible).await?))
}

#[utoipa::path(post, path = "/v1/pools/{pool}/volumes", request_body = vessel_api::CreateVolumeRequest,
    responses((status = 201, body = vessel_api::Volume), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_volume(
    State(s): State<Service>,
    Path(pool): Path<String>,
    ApiJson(req): ApiJson<vessel_api::CreateVolumeRequest>,
) -> ApiResult<Response> {
    Ok((
        StatusCode::CREATED,
        Json(s.create_volume(&pool, &req).await?),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/pools/{pool}/volumes/{name}", responses((status = 200, body = vessel_api::Volume), (status = 404, body = ErrorBody)))]
async fn get_volume(
    State(s): State<Service>,
    Path((pool, name)): Path<(String, String)>,
) -> ApiResult<Json<vessel_api::Volume>> {
    Ok(Json(s.get_volume(&pool, &name).await?))
}

#[utoipa::path(delete, path = "/v1/pools/{pool}/volumes/{name}", responses((status = 204), (status = 409, body = ErrorBody)))]
async fn delete_volume(
    State(s): State<Service>,
    Path((pool, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    s.delete_volume(&pool, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/pools/{pool}/volumes/{name}/resize", request_body = vessel_api::ResizeVolumeRequest,
    responses((status = 200, body = vessel_api::Volume), (status = 409, body = ErrorBody)))]
async fn resize_volume(
    State(s): State<Service>,
    Path((pool, name)): Path<(String, String)>,
    ApiJson(req): ApiJson<vessel_api::ResizeVolumeRequest>,
) -> ApiResult<Json<vessel_api::Volume>> {
    Ok(Json(s.resize_volume(&pool, &name, &req).await?))
}

#[utoipa::path(post, path = "/v1/pools/{pool}/volumes/{name}/clone", request_body = vessel_api::CloneVolumeRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the copy (default true)")),
    responses((status = 202, body = Accepted), (status = 201, body = vessel_api::Volume), (status = 409, body = ErrorBody)))]
async fn clone_volume(
    State(s): State<Service>,
    Path((pool, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::CloneVolumeRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.clone_volume(&pool, &name, &req).await?;
    finish_host(&s, op, wait, StatusCode::CREATED).await
}

#[utoipa::path(post, path = "/v1/host/master-key/rotate", responses((status = 200, body = vessel_api::MasterKeyRotation)))]
async fn rotate_master_key(
    State(s): State<Service>,
) -> ApiResult<Json<vessel_api::MasterKeyRotation>> {
    Ok(Json(crate::storage::keys::rotate_master_key(&s.ctx).await?))
}
