//! The HTTP layer: routes, request parsing, error mapping, the OpenAPI document. Thin on
//! purpose: every handler parses, calls [`Service`], and shapes the answer.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use vessel_api::{
    Accepted, ApiError, CreateVmRequest, EditVmRequest, ErrorBody, ErrorCode, HostCheck, HostInfo,
    Operation, OperationAction, OperationStatus, StopVmRequest, Vm, MAX_BODY_BYTES,
};

use crate::access::security::Caller;
use crate::vm::console_http;
use crate::vm::service::{ActionOptions, Service};

/// An API error as an HTTP response.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, HttpError>;

/// A JSON body parsed with our own error messages (axum's are plain text and terse).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                HttpError(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                ))
            } else {
                HttpError(ApiError::invalid(format!(
                    "could not read the request body: {e}"
                )))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| {
        HttpError(
            ApiError::invalid(format!("request body is not valid: {e}"))
                .with_hint("send a JSON object with the fields documented in /v1/openapi.json"),
        )
    })
}

/// A body that may be left out entirely, meaning all defaults.
fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, HttpError> {
    if bytes.is_empty() {
        Ok(T::default())
    } else {
        parse_json(bytes)
    }
}

/// Query parameters; unknown ones are refused like unknown body fields.
pub(crate) struct Params(pub(crate) HashMap<String, String>);

impl Params {
    pub(crate) fn parse(raw: Option<String>, allowed: &[&str]) -> Result<Params, HttpError> {
        let mut map = HashMap::new();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            if !allowed.contains(&key) {
                return Err(HttpError(ApiError::invalid(format!(
                    "unknown query parameter {key:?}; allowed: {}",
                    allowed.join(", ")
                ))));
            }
            map.insert(key.to_string(), value.to_string());
        }
        Ok(Params(map))
    }

    pub(crate) fn flag(&self, key: &str, default: bool) -> Result<bool, HttpError> {
        match self.0.get(key).map(String::as_str) {
            None => Ok(default),
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(HttpError(ApiError::invalid(format!(
                "{key}={other:?} is not true or false"
            )))),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vessel API", description = "Vessel host daemon REST API"),
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
        vm_stats,
        guest_info,
        all_stats,
        host_stats,
        metrics,
        attach_disk,
        detach_disk,
        list_snapshots,
        create_snapshot,
        revert_snapshot,
        delete_snapshot,
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
        cancel_operation,
        crate::observe::events::events,
        list_operations,
        get_operation,
        host_info,
        host_check,
        rotate_master_key,
        crate::vm::console_http::console_log,
        crate::vm::console_http::console_attach
    ),
    components(schemas(ErrorBody, Accepted, vessel_api::RebootVmRequest))
)]
pub struct ApiDoc;

/// The OpenAPI document, as served at `/v1/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::network::routes::NetworkApi::openapi());
    crate::access::security::extend_openapi(&mut doc);
    doc.to_pretty_json().expect("OpenAPI document serializes")
}

pub fn router(service: Service) -> Router {
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
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
            axum::routing::delete(delete_snapshot),
        )
        .route(
            "/v1/vms/{name}/snapshots/{snapshot}/revert",
            post(revert_snapshot),
        )
        .route("/v1/vms/{name}/stats", get(vm_stats))
        .route("/v1/vms/{name}/guest", get(guest_info))
        .route("/v1/stats", get(all_stats))
        .route("/v1/host/stats", get(host_stats))
        .route("/metrics", get(metrics))
        .route("/v1/vms/{name}/disks", post(attach_disk))
        .route(
            "/v1/vms/{name}/disks/{pool}/{volume}",
            axum::routing::delete(detach_disk),
        )
        .route("/v1/vms/{name}/console/log", get(console_http::console_log))
        .route("/v1/vms/{name}/console", get(console_http::console_attach))
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
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/v1/events", get(crate::observe::events::events))
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/host", get(host_info))
        .route("/v1/host/check", get(host_check))
        .route("/v1/host/master-key/rotate", post(rotate_master_key))
        .merge(crate::network::routes::routes())
        .fallback(|| async {
            HttpError(
                ApiError::not_found("no such API route")
                    .with_hint("see /v1/openapi.json for the routes"),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

/// The `wait` query parameter (default true), the only one most mutating routes take.
pub(crate) fn wait_param(q: Option<String>) -> Result<bool, HttpError> {
    Params::parse(q, &["wait"])?.flag("wait", true)
}

/// Runs the operation's wait (unless `wait=false`) and shapes the response.
pub(crate) async fn finish(
    service: &Service,
    op: Operation,
    wait: bool,
    ok: StatusCode,
) -> ApiResult<Response> {
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { operation: op })).into_response());
    }
    let done = service.wait(&op.id).await?;
    if done.status == OperationStatus::Failed {
        let context = format!("{} of VM {:?} failed", done.action.as_str(), done.vm);
        return Err(HttpError(done.failure(&context)));
    }
    if done.action == OperationAction::Delete {
        return Ok((ok, Json(done)).into_response());
    }
    let vm = service.get_vm(&done.vm).await?;
    Ok((ok, Json(vm)).into_response())
}

#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = Vec<Vm>)))]
async fn list_vms(State(s): State<Service>) -> ApiResult<Response> {
    let json = s.list_vms_json().await?;
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
    let options = ActionOptions {
        edit: Some(edit),
        ..Default::default()
    };
    let op = s.submit(&name, OperationAction::Edit, options).await?;
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
    let options = ActionOptions {
        force: params.flag("force", false)?,
        ..Default::default()
    };
    let op = s.submit(&name, OperationAction::Delete, options).await?;
    finish(&s, op, params.flag("wait", true)?, StatusCode::OK).await
}

async fn simple_action(
    s: Service,
    name: String,
    q: Option<String>,
    action: OperationAction,
) -> ApiResult<Response> {
    let wait = wait_param(q)?;
    let op = s.submit(&name, action, ActionOptions::default()).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/start", responses((status = 200, body = Vm), (status = 500, body = ErrorBody)))]
async fn start_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, OperationAction::Start).await
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
    let options = ActionOptions {
        force: req.force,
        timeout_secs: req.timeout_secs,
        ..Default::default()
    };
    let op = s.submit(&name, OperationAction::Stop, options).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/kill", responses((status = 200, body = Vm)))]
async fn kill_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, OperationAction::Kill).await
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
    let options = ActionOptions {
        force: req.force,
        ..Default::default()
    };
    let op = s.submit(&name, OperationAction::Reboot, options).await?;
    finish(&s, op, wait, StatusCode::OK).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/pause", responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn pause_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, OperationAction::Pause).await
}

#[utoipa::path(post, path = "/v1/vms/{name}/resume", responses((status = 200, body = Vm), (status = 409, body = ErrorBody)))]
async fn resume_vm(
    State(s): State<Service>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    simple_action(s, name, q, OperationAction::Resume).await
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

#[utoipa::path(get, path = "/v1/vms/{name}/stats",
    responses((status = 200, body = Object, description = "VmStats: CPU, memory, disk and network figures, sampled now; zeros with the state for a stopped VM"), (status = 404, body = ErrorBody)))]
async fn vm_stats(State(s): State<Service>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(Json(s.vm_stats(&name).await?).into_response())
}

#[utoipa::path(get, path = "/v1/vms/{name}/guest",
    responses((status = 200, body = vessel_api::GuestInfo), (status = 404, body = ErrorBody)))]
async fn guest_info(
    State(s): State<Service>,
    Path(name): Path<String>,
) -> ApiResult<Json<vessel_api::GuestInfo>> {
    Ok(Json(s.guest_info(&name).await?))
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

/// Waits for a host operation (unless `wait=false`) and answers with its result.
async fn finish_host(
    service: &Service,
    op: Operation,
    wait: bool,
    ok: StatusCode,
) -> ApiResult<Response> {
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { operation: op })).into_response());
    }
    let done = service.wait(&op.id).await?;
    match done.status {
        OperationStatus::Succeeded => {
            let result = done.result.unwrap_or(serde_json::Value::Null);
            Ok((ok, Json(result)).into_response())
        }
        _ => {
            let context = format!(
                "{} of {} failed",
                done.action.as_str(),
                done.resource.as_deref().unwrap_or_default()
            );
            Err(HttpError(done.failure(&context)))
        }
    }
}

#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = Vec<vessel_api::Image>)))]
async fn list_images(State(s): State<Service>) -> ApiResult<Json<Vec<vessel_api::Image>>> {
    Ok(Json(s.list_images().await?))
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

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", responses((status = 200, body = Operation), (status = 409, body = ErrorBody)))]
async fn cancel_operation(
    State(s): State<Service>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(s.cancel_operation(&id).await?))
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
    Path(pool): Path<String>,
) -> ApiResult<Json<Vec<vessel_api::Volume>>> {
    Ok(Json(s.list_volumes(&pool).await?))
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

#[utoipa::path(get, path = "/v1/operations", responses((status = 200, body = Vec<Operation>)))]
async fn list_operations(State(s): State<Service>) -> ApiResult<Json<Vec<Operation>>> {
    Ok(Json(s.list_operations().await?))
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

#[utoipa::path(post, path = "/v1/host/master-key/rotate", responses((status = 200, body = vessel_api::MasterKeyRotation)))]
async fn rotate_master_key(
    State(s): State<Service>,
) -> ApiResult<Json<vessel_api::MasterKeyRotation>> {
    Ok(Json(crate::storage::keys::rotate_master_key(&s.ctx).await?))
}

pub fn plain_text(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
