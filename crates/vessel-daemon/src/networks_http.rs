//! Routes of networks and VM NICs (thin: parse, call [`Service`], shape the answer).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use utoipa::OpenApi;
use vessel_api::{
    AddNicRequest, CreateNetworkRequest, ErrorBody, Network, UpdateNetworkRequest, Vm, VmNic,
};

use crate::http::{finish, wait_param, ApiJson, ApiResult};
use crate::service::Service;

#[derive(OpenApi)]
#[openapi(paths(
    list_networks,
    create_network,
    get_network,
    update_network,
    delete_network,
    list_nics,
    add_nic,
    remove_nic
))]
pub struct NetworkApi;

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/networks", get(list_networks).post(create_network))
        .route(
            "/v1/networks/{name}",
            get(get_network)
                .patch(update_network)
                .delete(delete_network),
        )
        .route("/v1/vms/{name}/nics", get(list_nics).post(add_nic))
        .route("/v1/vms/{name}/nics/{nic}", delete(remove_nic))
}

#[utoipa::path(get, path = "/v1/networks", responses((status = 200, body = Vec<Network>)))]
async fn list_networks(State(s): State<Service>) -> ApiResult<Json<Vec<Network>>> {
    Ok(Json(s.list_networks().await?))
}

#[utoipa::path(post, path = "/v1/networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_network(
    State(s): State<Service>,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(s.create_network(&req).await?)).into_response())
}

#[utoipa::path(get, path = "/v1/networks/{name}",
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
async fn get_network(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<Network>> {
    Ok(Json(s.get_network(&name).await?))
}

#[utoipa::path(patch, path = "/v1/networks/{name}", request_body = UpdateNetworkRequest,
    responses((status = 200, body = Network), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_network(
    State(s): State<Service>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateNetworkRequest>,
) -> ApiResult<Json<Network>> {
    Ok(Json(s.update_network(&name, &req).await?))
}

#[utoipa::path(delete, path = "/v1/networks/{name}",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_network(State(s): State<Service>, Path(name): Path<String>) -> ApiResult<Response> {
    s.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/vms/{name}/nics",
    responses((status = 200, body = Vec<VmNic>), (status = 404, body = ErrorBody)))]
async fn list_nics(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<VmNic>>> {
    Ok(Json(s.get_vm(&name).await?.spec.nics))
}

#[utoipa::path(post, path = "/v1/vms/{name}/nics", request_body = AddNicRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn add_nic(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<AddNicRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.add_nic(&name, &req).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/vms/{name}/nics/{nic}",
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_nic(
    State(s): State<Service>,
    Path((name, nic)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.remove_nic(&name, &nic).await?;
    finish(&s, op, wait, StatusCode::OK).await
}
