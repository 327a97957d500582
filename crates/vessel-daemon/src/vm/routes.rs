//! Routes of VMs: lifecycle, disks, snapshots, the guest agent (thin: parse, call [`Service`],
//! shape the answer). Consoles have their own file (`console_http.rs`), NICs are with networks.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use vessel_api::{
    Accepted, CreateVmRequest, EditVmRequest, ErrorBody, Operation, StopVmRequest, Vm,
};

use crate::access::caller::Caller;
use crate::api::{finish, optional_json, wait_param, ApiJson, ApiResult, Params};
use crate::ctx::Service;
use crate::vm::model::Payload;

#[derive(OpenApi)]
#[openapi(
    paths(
        list_vms,
        create_vm,
        get_vm,
        edit_vm,
        delete_vm,
        start_vm,
        stop_vm,
        kill_vm,
        reboot_vm,
        pause_vm,
        resume_vm,
        guest_info,
        attach_disk,
        detach_disk,
        list_snapshots,
        create_snapshot,
        revert_snapshot,
        delete_snapshot,
        crate::vm::console_http::console_log,
        crate::vm::console_http::console_attach
    ),
    components(schemas(vessel_api::RebootVmRequest))
)]
pub struct VmApi;

pub fn routes() -> Router<Service> {
    Router::new()
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route(
            "/v1/vms/{name}",
            get(get_vm).patch(edit_vm).delete(delete_vm),
        )
        .route("/v1/vms/{name}/start", post(start_vm))
        .route("/v1/vms/{name}/stop", post(stop_vm))
        .route("/v1/vms/{name}/kill", post(kill_vm))
        .route("/v1/vms/{name}/reboot", post(reboot_vm))
        .route("/v1/vms/{name}/pause", post(pause_vm))
        .route("/v1/vms/{name}/resume", post(resume_vm))
        .route(
            "/v1/vms/{name}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}",
            delete(delete_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}/revert",
            post(revert_snapshot),
        )
        .route("/v1/vms/{name}/guest", get(guest_info))
        .route("/v1/vms/{name}/disks", post(attach_disk))
        .route("/v1/vms/{name}/disks/{pool}/{volume}", delete(detach_disk))
        .route(
            "/v1/vms/{name}/console/log",
            get(crate::vm::console_http::console_log),
        )
        .route(
            "/v1/vms/{name}/console",
            get(crate::vm::console_http::console_attach),
        )
}

#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = Vec<Vm>)))]
async fn list_vms(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Response> {
    let visible = vessel_auth::Visibility::of(&caller.identity, vessel_auth::Permission::VmRead);
    let json = s.list_vms_json(&visible).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[utoipa::path(post, path = "/v1/vms", request_body = CreateVmRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 201, body = Vm), (status = 202, body = Accepted), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_vm(
    State(s): State<Service>,
    Extension(caller): Extension<Caller>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<CreateVmRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.create_vm(&req, &caller.identity).await?;
    finish(&s, op, wait, StatusCode::CREATED).await
}

#[utoipa::path(get, path = "/v1/vms/{name}", responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn get_vm(State(s): State<Service>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(s.get_vm(&name).await?))
}

#[utoipa::path(patch, path = "/v1/vms/{name}", request_body = EditVmRequest,
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn edit_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(edit): ApiJson<EditVmRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.submit(&name, Payload::Edit(edit)).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/vms/{name}",
    params(("force" = Option<bool>, Query, description = "kill a running VM first"), ("wait" = Option<bool>, Query)),
    responses((status = 200, body = Operation), (status = 409, body = ErrorBody)))]
async fn delete_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let params = Params::parse(q, &["wait", "force"])?;
    let force = params.flag("force", false)?;
    let op = s.submit(&name, Payload::Delete { force }).await?;
    finish(&s, op, params.flag("wait", true)?, StatusCode::OK).await
}

async fn simple_action(
    s: Service,
    name: String,
    q: Option<String>,
    payload: Payload,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.submit(&name, payload).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/start", responses((status = 200, body = Vm), (status = 500, body = ErrorBody)))]
async fn start_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, Payload::Start).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/stop", request_body = Option<StopVmRequest>, responses((status = 200, body = Vm)))]
async fn stop_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let req: StopVmRequest = optional_json(&body)?;
    let stop = Payload::Stop {
        force: req.force,
        timeout_secs: req.timeout_secs,
    };
    let op = s.submit(&name, stop).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/kill", responses((status = 200, body = Vm)))]
async fn kill_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, Payload::Kill).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/reboot", request_body = Option<vessel_api::RebootVmRequest>, responses((status = 200, body = Vm)))]
async fn reboot_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let req: vessel_api::RebootVmRequest = optional_json(&body)?;
    let op = s
        .submit(&name, Payload::Reboot { force: req.force })
        .await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/pause", responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn pause_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, Payload::Pause).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/resume", responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn resume_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, Payload::Resume).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/disks", request_body = vessel_api::AttachDiskRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn attach_disk(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::AttachDiskRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.attach_disk(&name, &req).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/vms/{name}/disks/{pool}/{volume}",
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn detach_disk(
    State(s): State<Service>,
    Path((name, pool, volume)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.detach_disk(&name, &pool, &volume).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(get, path = "/v1/vms/{name}/guest",
    responses((status = 200, body = vessel_api::GuestInfo), (status = 404, body = ErrorBody)))]
async fn guest_info(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<vessel_api::GuestInfo>> {
    Ok(Json(s.guest_info(&name).await?))
}

#[utoipa::path(get, path = "/v1/vms/{name}/snapshots", responses((status = 200, body = Vec<vessel_api::Snapshot>), (status = 404, body = ErrorBody)))]
async fn list_snapshots(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<vessel_api::Snapshot>>> {
    Ok(Json(s.list_snapshots(&name).await?))
}

#[utoipa::path(post, path = "/v1/vms/{name}/snapshots", request_body = vessel_api::CreateSnapshotRequest,
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_snapshot(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ApiJson(req): ApiJson<vessel_api::CreateSnapshotRequest>,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.create_snapshot(&name, &req).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/snapshots/{snapshot}/revert",
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn revert_snapshot(
    State(s): State<Service>,
    Path((name, snapshot)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.revert_snapshot(&name, &snapshot).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/vms/{name}/snapshots/{snapshot}",
    params(("wait" = Option<bool>, Query, description = "wait for the operation (default true)")),
    responses((status = 200, body = Vm), (status = 404, body = ErrorBody)))]
async fn delete_snapshot(
    State(s): State<Service>,
    Path((name, snapshot)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.delete_snapshot(&name, &snapshot).await?;
    finish(&s, op, wait, StatusCode::OK).await
}
