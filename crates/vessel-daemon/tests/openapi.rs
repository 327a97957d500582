//! The OpenAPI document is checked in (docs/openapi.json) so that every API change shows up in
//! review. After a deliberate change: `VESSEL_UPDATE_SNAPSHOTS=1 cargo test -p vessel-daemon --test openapi`.

use std::path::Path;

#[test]
fn openapi_document_matches_the_checked_in_snapshot() {
    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let current = vessel_daemon::openapi_json() + "\n";
    if std::env::var_os("VESSEL_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&snapshot).unwrap_or_default();
    assert!(
        checked_in == current,
        "the API changed: review the difference, then run with VESSEL_UPDATE_SNAPSHOTS=1 to update docs/openapi.json"
    );
}

#[test]
fn openapi_document_lists_every_vm_route() {
    let doc: serde_json::Value = serde_json::from_str(&vessel_daemon::openapi_json()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/v1/vms",
        "/v1/vms/{name}",
        "/v1/vms/{name}/start",
        "/v1/vms/{name}/stop",
        "/v1/vms/{name}/kill",
        "/v1/vms/{name}/reboot",
        "/v1/vms/{name}/pause",
        "/v1/vms/{name}/resume",
        "/v1/vms/{name}/console",
        "/v1/vms/{name}/console/log",
        "/v1/operations/{id}",
        "/v1/host/check",
        "/v1/networks",
        "/v1/networks/{name}",
        "/v1/vms/{name}/nics",
        "/v1/vms/{name}/nics/{nic}",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["CreateVmRequest"].is_object());
    assert!(doc["components"]["schemas"]["CreateNetworkRequest"].is_object());
}
