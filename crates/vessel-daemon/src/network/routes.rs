//! Routes of networks and VM NICs (thin: parse, call [`Service`], shape the answer).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use vessel_api::{
    AddNicRequest, ApiError, CreateNetworkRequest, ErrorBody, Network, NetworkKind,
    UpdateNetworkRequest, Vm, VmNic,
};
use vessel_auth::{Permission, Scope};

use crate::access::caller::Caller;
use crate::api::{finish, wait_param, ApiJson, ApiResult};
use crate::ctx::Service;

/// Most of a network lives inside Vessel's own bridge and tables, so `network.write` in its
/// project is enough. Three things reach the host's own networking, which spans projects: joining
/// an existing host bridge, NAT through a host uplink (with forwarding turned on), and VXLAN
/// tunnels to other servers over the host's network. Those need the host admin permission, like
/// pools. The answer names the part, for the error.
fn touches_host(kind: NetworkKind, uplink: bool) -> Option<&'static str> {
    match kind {
        NetworkKind::Bridge => Some("a network on a host bridge"),
        NetworkKind::Vxlan => Some("a VXLAN network (tunnels over the host's network)"),
        NetworkKind::Managed if uplink => Some("an uplink"),
        NetworkKind::Managed | NetworkKind::User => None,
    }
}

fn require_host_admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    caller
        .identity
        .check(Permission::HostAdmin, Scope::Host)
        .map_err(|denied| {
            let mut e = crate::access::caller::permission_denied(denied);
            e.message = format!("{what} touches the host's own network: {}", e.message);
            e.with_hint("ask a host admin (admin on project *) to create it, or use a `managed` network without --uplink or a `user` network")
        })
}

/// The host routes a managed network's subnet to its bridge, so a tenant's subnet must be a
/// private range (RFC 1918, CGNAT); a host admin may use any.
fn require_private_subnet(caller: &Caller, subnet: &str) -> Result<(), ApiError> {
    if caller
        .identity
        .check(Permission::HostAdmin, Scope::Host)
        .is_ok()
    {
        return Ok(());
    }
    vessel_core::network::check_tenant_subnet(subnet).map_err(|message| {
        ApiError::new(vessel_api::ErrorCode::PermissionDenied, message).with_hint(
            "choose a subnet inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10, or ask a host admin",
        )
    })
}

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
async fn list_networks(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Network>>> {
    let visible = vessel_auth::Visibility::of(&caller.identity, Permission::NetworkRead);
    Ok(Json(s.list_networks(&visible).await?))
}

#[utoipa::path(post, path = "/v1/networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_network(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateNetworkRequest>,
) -> ApiResult<Response> {
    if let Some(what) = touches_host(req.kind, req.uplink.is_some()) {
        require_host_admin(&caller, what)?;
    }
    if let Some(subnet) = &req.subnet {
        require_private_subnet(&caller, subnet)?;
    }
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
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateNetworkRequest>,
) -> ApiResult<Json<Network>> {
    if req.peers.is_some() {
        let kind = s.get_network(&name).await?.kind;
        if let Some(what) = touches_host(kind, false) {
            require_host_admin(&caller, what)?;
        }
    }
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
