//! Routes of access (thin: parse, call the module that does the work, shape the answer): who
//! am I, the audit log, users and tokens (`identities.rs`), projects and quotas
//! (`projects.rs`). Their state is the security middleware's ([`Security`]).

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use vessel_api::{
    ApiError, CreateProjectRequest, CreateTokenRequest, CreateUserRequest, CreatedToken,
    IssueCertRequest, IssuedCert, Project, Quota, TokenInfo, User, Whoami,
};
use vessel_auth::Permission;

use crate::access::caller::Caller;
use crate::access::identities;
use crate::access::projects;
use crate::access::security::Security;
use crate::api::{optional_json, ApiJson, ApiResult, HttpError, Params};

#[derive(OpenApi)]
#[openapi(paths(
    whoami,
    list_audit,
    verify_audit,
    list_users,
    create_user,
    get_user,
    delete_user,
    issue_cert,
    list_tokens,
    create_token,
    revoke_token,
    list_projects,
    create_project,
    get_project,
    delete_project,
    set_quota
))]
pub struct AccessApi;

pub fn router() -> Router<Arc<Security>> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/audit", get(list_audit))
        .route("/v1/audit/verify", get(verify_audit))
        .route("/v1/users", get(list_users).post(create_user))
        .route("/v1/users/{name}", get(get_user).delete(delete_user))
        .route("/v1/users/{name}/certs", post(issue_cert))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/projects", get(list_projects).post(create_project))
        .route(
            "/v1/projects/{name}",
            get(get_project).delete(delete_project),
        )
        .route("/v1/projects/{name}/quota", put(set_quota))
}

// ---- who am I, the audit log ----

#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = Whoami), (status = 401, body = vessel_api::ErrorBody)))]
async fn whoami(Extension(caller): Extension<Caller>) -> Json<Whoami> {
    Json(Whoami {
        identity: caller.identity.name,
        grants: caller.identity.grants,
        source: caller.source,
        method: caller.method.to_string(),
    })
}

#[utoipa::path(get, path = "/v1/audit",
    params(
        ("since" = Option<u64>, Query, description = "only records at or after this time (ms since the epoch)"),
        ("identity" = Option<String>, Query, description = "only records of this identity"),
        ("action" = Option<String>, Query, description = "only this action; ending in `.` is a prefix (`vms.`)"),
        ("limit" = Option<usize>, Query, description = "at most this many, the newest")
    ),
    responses((status = 200, body = Vec<vessel_api::AuditRecord>), (status = 400, body = vessel_api::ErrorBody)))]
async fn list_audit(
    State(sec): State<Arc<Security>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<vessel_api::AuditRecord>>> {
    let params = Params::parse(q, &["since", "identity", "action", "limit"])?;
    let number = |key: &str| -> Result<Option<u64>, HttpError> {
        params
            .0
            .get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    HttpError(ApiError::invalid(format!("{key}={v:?} is not a number")))
                })
            })
            .transpose()
    };
    let filter = vessel_audit::ListFilter {
        since_ms: number("since")?,
        identity: params.0.get("identity").map(|s| decode_query(s)),
        action: params.0.get("action").map(|s| decode_query(s)),
        limit: number("limit")?.map(|n| n as usize),
    };
    let records = sec
        .audit
        .list(&filter)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))?;
    Ok(Json(records.into_iter().map(audit_view).collect()))
}

/// A query value as sent in a URL: `+` is a space, `%XX` a byte.
fn decode_query(text: &str) -> String {
    vessel_auth::routes::percent_decode(&text.replace('+', " "))
}

pub fn audit_view(r: vessel_audit::AuditRecord) -> vessel_api::AuditRecord {
    vessel_api::AuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        identity: r.identity,
        source: r.source,
        action: r.action,
        target: r.target,
        result: r.result,
        hash: r.hash.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, body = vessel_api::AuditVerifyReport)))]
async fn verify_audit(
    State(sec): State<Arc<Security>>,
) -> ApiResult<Json<vessel_api::AuditVerifyReport>> {
    // Sign the newest records first, so that everything appended so far is pinned by a key.
    sec.audit
        .checkpoint()
        .await
        .map_err(|e| ApiError::internal(format!("cannot checkpoint the audit log: {e}")))?;
    let key =
        vessel_audit::parse_public_key(sec.audit.public_key_hex()).map_err(ApiError::internal)?;
    let report = vessel_audit::verify_store(sec.ctx.store.as_ref(), &key)
        .await
        .map_err(|e| ApiError::internal(format!("cannot verify the audit log: {e}")))?;
    Ok(Json(report_view(report, sec.audit.public_key_hex())))
}

pub fn report_view(
    report: vessel_audit::VerifyReport,
    public_key: &str,
) -> vessel_api::AuditVerifyReport {
    vessel_api::AuditVerifyReport {
        records: report.records,
        last_seq: report.last_seq,
        valid_checkpoints: report.valid_checkpoints,
        last_verified_checkpoint: report.last_verified_checkpoint,
        pruned_through: report.pruned_through,
        issues: report.issues.iter().map(ToString::to_string).collect(),
        public_key: public_key.to_string(),
    }
}

// ---- users and tokens ----

#[utoipa::path(get, path = "/v1/users", responses((status = 200, body = Vec<User>)))]
async fn list_users(State(sec): State<Arc<Security>>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(identities::list_users(sec.ctx.store.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = vessel_api::ErrorBody), (status = 409, body = vessel_api::ErrorBody)))]
async fn create_user(
    State(sec): State<Arc<Security>>,
    ApiJson(req): ApiJson<CreateUserRequest>,
) -> ApiResult<Response> {
    let user = identities::create_user(sec.ctx.store.as_ref(), &sec.auth_cache, req).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[utoipa::path(get, path = "/v1/users/{name}", responses((status = 200, body = User), (status = 404, body = vessel_api::ErrorBody)))]
async fn get_user(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(
        identities::get_user(sec.ctx.store.as_ref(), &name).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/users/{name}", responses((status = 204), (status = 404, body = vessel_api::ErrorBody)))]
async fn delete_user(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    identities::delete_user(sec.ctx.store.as_ref(), &sec.auth_cache, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/users/{name}/certs", request_body = Option<IssueCertRequest>,
    responses((status = 201, body = IssuedCert), (status = 404, body = vessel_api::ErrorBody), (status = 409, body = vessel_api::ErrorBody)))]
async fn issue_cert(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: IssueCertRequest = optional_json(&body)?;
    let issued = identities::issue_cert(
        sec.ctx.store.as_ref(),
        &sec.auth_cache,
        sec.tls.as_ref(),
        &name,
        req,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = Vec<TokenInfo>)))]
async fn list_tokens(State(sec): State<Arc<Security>>) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(identities::list_tokens(sec.ctx.store.as_ref()).await?))
}

#[utoipa::path(post, path = "/v1/tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken), (status = 400, body = vessel_api::ErrorBody), (status = 404, body = vessel_api::ErrorBody)))]
async fn create_token(
    State(sec): State<Arc<Security>>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> ApiResult<Response> {
    let created: CreatedToken =
        identities::create_token(sec.ctx.store.as_ref(), &sec.auth_cache, req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", responses((status = 204), (status = 404, body = vessel_api::ErrorBody)))]
async fn revoke_token(
    State(sec): State<Arc<Security>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    identities::revoke_token(sec.ctx.store.as_ref(), &sec.auth_cache, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- projects and quotas ----

#[utoipa::path(get, path = "/v1/projects", responses((status = 200, body = Vec<Project>)))]
async fn list_projects(
    State(sec): State<Arc<Security>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<Project>>> {
    let visible = vessel_auth::Visibility::of(&caller.identity, Permission::ProjectRead);
    Ok(Json(
        projects::list(sec.ctx.store.as_ref(), &visible).await?,
    ))
}

#[utoipa::path(post, path = "/v1/projects", request_body = CreateProjectRequest,
    responses((status = 201, body = Project), (status = 400, body = vessel_api::ErrorBody), (status = 409, body = vessel_api::ErrorBody)))]
async fn create_project(
    State(sec): State<Arc<Security>>,
    ApiJson(req): ApiJson<CreateProjectRequest>,
) -> ApiResult<Response> {
    let project = projects::create(sec.ctx.store.as_ref(), req).await?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

#[utoipa::path(get, path = "/v1/projects/{name}", responses((status = 200, body = Project), (status = 404, body = vessel_api::ErrorBody)))]
async fn get_project(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(projects::get(sec.ctx.store.as_ref(), &name).await?))
}

#[utoipa::path(put, path = "/v1/projects/{name}/quota", request_body = Quota,
    responses((status = 200, body = Project), (status = 404, body = vessel_api::ErrorBody)))]
async fn set_quota(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
    ApiJson(quota): ApiJson<Quota>,
) -> ApiResult<Json<Project>> {
    Ok(Json(
        projects::set_quota(sec.ctx.store.as_ref(), &name, quota).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/projects/{name}", responses((status = 204), (status = 409, body = vessel_api::ErrorBody)))]
async fn delete_project(
    State(sec): State<Arc<Security>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    projects::delete(sec.ctx.store.as_ref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_plus_and_escapes() {
        assert_eq!(decode_query("vms.+start%2E"), "vms. start.");
        assert_eq!(decode_query("%zz"), "%zz");
    }

    proptest::proptest! {
        #[test]
        fn any_query_decodes_without_panicking(text in ".{0,60}") {
            let _ = decode_query(&text);
        }
    }
}
