//! Each route is declared in three places: the axum routers of the features, their OpenAPI
//! fragments and the permission table (`vessel_auth::ROUTES`). These tests walk all three and
//! fail naming any route that one of them lacks, so that they cannot drift apart. (The
//! end-to-end test in `crates/vessel/tests/security.rs` then checks every row's permission
//! against a running daemon.)

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use tower::ServiceExt as _;
use vessel_auth::ROUTES;

use crate::ctx::Service;

/// The methods a route may have.
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

type Routes = BTreeSet<(String, String)>;

fn table() -> Routes {
    ROUTES
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect()
}

/// The one route the OpenAPI document does not list: the document itself.
const THE_DOCUMENT: (&str, &str) = ("GET", "/v1/openapi.json");

fn openapi() -> Routes {
    let doc: serde_json::Value = serde_json::from_str(&crate::api::openapi_json()).unwrap();
    let mut routes = Routes::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.insert((method.to_uppercase(), path.clone()));
        }
    }
    routes
}

/// `a` minus `b`, as a readable list.
fn missing(a: &Routes, b: &Routes) -> Vec<String> {
    a.difference(b).map(|(m, p)| format!("{m} {p}")).collect()
}

#[test]
fn the_openapi_document_and_the_permission_table_list_the_same_routes() {
    let (mut table, openapi) = (table(), openapi());
    table.remove(&(THE_DOCUMENT.0.to_string(), THE_DOCUMENT.1.to_string()));
    assert!(table.len() > 60, "{}", table.len());
    let no_row = missing(&openapi, &table);
    let undocumented = missing(&table, &openapi);
    assert!(
        no_row.is_empty(),
        "in the OpenAPI document but not in vessel_auth::ROUTES: {no_row:?}"
    );
    assert!(
        undocumented.is_empty(),
        "in vessel_auth::ROUTES but not in the OpenAPI document (add a #[utoipa::path] and list the handler in its feature's OpenApi): {undocumented:?}"
    );
}

/// Every `.route("PATH", ...)` in the daemon's sources: the paths its routers are built with.
fn routed_paths() -> BTreeSet<String> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = BTreeSet::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                // Normalized so that rustfmt's line breaks do not matter.
                let flat: String = text.split_whitespace().collect();
                for piece in flat.split(".route(\"").skip(1) {
                    let path = piece.split('"').next().unwrap();
                    if path.starts_with('/') {
                        paths.insert(path.to_string());
                    }
                }
            }
        }
    }
    paths
}

#[test]
fn every_path_the_routers_are_built_with_is_in_the_permission_table() {
    let routed = routed_paths();
    assert!(routed.len() > 40, "{routed:?}");
    let known: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    let unknown: Vec<&String> = routed
        .iter()
        .filter(|p| !known.contains(p.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "routed but not in vessel_auth::ROUTES (so denied to all but root): {unknown:?}"
    );
}

/// A path template with its parameters filled in.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "x1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// A daemon's state on a fresh data dir (nothing started: no controller, no QEMU).
pub(crate) async fn test_ctx(dir: &std::path::Path) -> Arc<crate::ctx::Ctx> {
    let config = crate::Config::with_paths(dir.to_path_buf(), dir.join("sock"));
    let store = vessel_store::SqliteStore::open(&dir.join("vessel.db")).unwrap();
    Arc::new(
        crate::ctx::Ctx::new(
            Arc::new(store),
            Arc::new(vessel_qemu::QemuBackend::new("qemu-system-x86_64")),
            vessel_qemu::AccelChoice {
                accel: vessel_qemu::Accel::Tcg,
                reason: "test".into(),
            },
            config,
            vessel_core::HostCapacity {
                cpus: 1,
                memory_mib: 1024,
            },
            "test".into(),
            crate::storage::keys::load_keyring(dir).unwrap(),
        )
        .await
        .unwrap(),
    )
}

/// The daemon's whole app (every feature's router, access's own, the security middleware) on
/// a fresh data dir.
async fn app(dir: &std::path::Path) -> axum::Router {
    let ctx = test_ctx(dir).await;
    let config = ctx.config.clone();
    let sec = crate::access::security::open(Arc::clone(&ctx), &config)
        .await
        .unwrap();
    crate::access::security::app(crate::api::router(Service { ctx }), sec)
}

/// Whether a request reached a handler: the routers answer a path they do not know with the
/// fallback's 404 and a known path with a method it does not have with 405. (Root's requests
/// outside the permission table go on to the router, so these are what root sees.)
async fn reaches_a_handler(app: &axum::Router, method: &str, path: &str) -> bool {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(crate::access::tls::Peer::Unix);
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let fallback = status == StatusCode::NOT_FOUND
        && String::from_utf8_lossy(&body).contains("no such API route");
    status != StatusCode::METHOD_NOT_ALLOWED && !fallback
}

/// Every path of the table is asked with every method, as root on an empty data dir, with
/// parameters that name nothing (so that a handler that runs refuses the request or finds
/// nothing, and changes nothing that matters).
#[tokio::test]
async fn the_router_serves_exactly_the_methods_of_the_permission_table() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let table = table();
    let templates: BTreeSet<&String> = table.iter().map(|(_, p)| p).collect();
    let (mut unrouted, mut extra) = (Vec::new(), Vec::new());
    for template in templates {
        for method in METHODS {
            let routed = reaches_a_handler(&app, method, &concrete(template)).await;
            let listed = table.contains(&(method.to_string(), template.clone()));
            match (listed, routed) {
                (true, false) => unrouted.push(format!("{method} {template}")),
                (false, true) => extra.push(format!("{method} {template}")),
                _ => {}
            }
        }
    }
    assert!(
        unrouted.is_empty() && extra.is_empty(),
        "in vessel_auth::ROUTES but no router serves them: {unrouted:?}; served by a router but not in vessel_auth::ROUTES: {extra:?}"
    );
    assert!(
        !reaches_a_handler(&app, "GET", "/v1/no-such-route").await,
        "the probe tells a missing route"
    );
}
