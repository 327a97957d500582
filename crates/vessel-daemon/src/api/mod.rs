//! The HTTP layer: routes, request parsing, error mapping, the OpenAPI document. Thin on
//! purpose: every handler parses, calls [`Service`], and shapes the answer.

pub mod operations;

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use vessel_api::{
    Accepted, ApiError, ErrorBody, ErrorCode, Operation, OperationAction, OperationStatus,
    MAX_BODY_BYTES,
};

use crate::vm::service::Service;

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
pub(crate) fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, HttpError> {
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
        let raw = raw.unwrap_or_default();
        if let Some((key, _)) = pairs(&raw).find(|(key, _)| !allowed.contains(key)) {
            return Err(HttpError(ApiError::invalid(format!(
                "unknown query parameter {key:?}; allowed: {}",
                allowed.join(", ")
            ))));
        }
        Ok(Params::any(&raw))
    }

    /// Every parameter, whatever its name: for the security middleware, which reads one and
    /// leaves refusing the others to the handler.
    pub(crate) fn any(raw: &str) -> Params {
        Params(
            pairs(raw)
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect::<HashMap<_, _>>(),
        )
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

/// `key=value` pairs of a query; a bare `key` is `key=true`.
fn pairs(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "true")))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Vessel API", description = "Vessel host daemon REST API"),
    components(schemas(ErrorBody, Accepted))
)]
pub struct ApiDoc;

/// The OpenAPI document, as served at `/v1/openapi.json`: each feature's fragment merged.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::vm::routes::VmApi::openapi());
    doc.merge(crate::storage::routes::StorageApi::openapi());
    doc.merge(crate::network::routes::NetworkApi::openapi());
    doc.merge(crate::observe::routes::ObserveApi::openapi());
    doc.merge(operations::OperationsApi::openapi());
    crate::access::security::extend_openapi(&mut doc);
    doc.to_pretty_json().expect("OpenAPI document serializes")
}

/// Every feature's routes, merged (the security middleware wraps the result, see `lib.rs`).
pub fn router(service: Service) -> Router {
    Router::new()
        .route(
            "/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi_json()) }),
        )
        .merge(crate::vm::routes::routes())
        .merge(crate::storage::routes::routes())
        .merge(crate::network::routes::routes())
        .merge(crate::observe::routes::routes())
        .merge(operations::routes())
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

pub fn plain_text(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
