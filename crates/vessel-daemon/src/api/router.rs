//! The whole API: every feature's routes and OpenAPI fragment merged into one router and one
//! document. The only file of `api/` that knows the features.

use axum::http::header;
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use vessel_api::{Accepted, ApiError, ErrorBody, MAX_BODY_BYTES};

use crate::api::{operations, HttpError};
use crate::ctx::Service;

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
