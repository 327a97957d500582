//! The HTTP layer: routes, request parsing, error mapping, the OpenAPI document. Thin on
//! purpose: every handler parses, calls [`Service`], and shapes the answer.

pub mod operations;
pub mod router;

pub use router::{openapi_json, router};

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use vessel_api::{
    Accepted, ApiError, ErrorBody, ErrorCode, Operation, OperationAction, OperationStatus,
    MAX_BODY_BYTES,
};

use crate::ctx::Service;

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

/// The `wait` query parameter (default true), the only one most mutating routes take.
pub(crate) fn wait_param(q: Option<String>) -> Result<bool, HttpError> {
    Params::parse(q, &["wait"])?.flag("wait", true)
}

/// Runs the wait of a VM operation (unless `wait=false`) and answers with the VM (or, for a
/// delete, the operation).
pub(crate) async fn finish(
    service: &Service,
    op: Operation,
    wait: bool,
    ok: StatusCode,
) -> ApiResult<Response> {
    let done = match waited(service, op, wait).await? {
        Waited::Accepted(response) => return Ok(response),
        Waited::Done(done) => done,
    };
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

/// Runs the wait of a host operation (an import, an export, a full clone: unless
/// `wait=false`) and answers with its result.
pub(crate) async fn finish_host(
    service: &Service,
    op: Operation,
    wait: bool,
    ok: StatusCode,
) -> ApiResult<Response> {
    let done = match waited(service, op, wait).await? {
        Waited::Accepted(response) => return Ok(response),
        Waited::Done(done) => done,
    };
    if done.status != OperationStatus::Succeeded {
        let resource = done.resource.as_deref().unwrap_or_default();
        let context = format!("{} of {resource} failed", done.action.as_str());
        return Err(HttpError(done.failure(&context)));
    }
    let result = done.result.unwrap_or(serde_json::Value::Null);
    Ok((ok, Json(result)).into_response())
}

enum Waited {
    /// `wait=false`: 202 with the operation, to be followed with `GET /v1/operations/{id}`.
    Accepted(Response),
    Done(Operation),
}

async fn waited(service: &Service, op: Operation, wait: bool) -> ApiResult<Waited> {
    if !wait {
        let accepted = (StatusCode::ACCEPTED, Json(Accepted { operation: op }));
        return Ok(Waited::Accepted(accepted.into_response()));
    }
    Ok(Waited::Done(service.wait(&op.id).await?))
}

pub fn plain_text(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
