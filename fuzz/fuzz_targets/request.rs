//! Request parsing and spec validation: whatever bytes arrive as a body, a path or a token,
//! the daemon's parsers and rules answer with a value or an error, never a panic, and what they
//! accept stays within the host's limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vessel_api::{CreateVmRequest, EditVmRequest};
use vessel_core::{apply_edit, spec_from_create, HostCapacity};

const HOST: HostCapacity = HostCapacity {
    cpus: 4,
    memory_mib: 8192,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<CreateVmRequest>(data) {
        if let Ok(spec) = spec_from_create(&req, HOST) {
            assert!(spec.cpus >= 1 && spec.cpus <= HOST.cpus);
            assert!(spec.memory_mib <= HOST.memory_mib);
            if let Ok(edit) = serde_json::from_slice::<EditVmRequest>(data) {
                if let Ok(edited) = apply_edit(&spec, &edit, HOST) {
                    assert!(edited.cpus >= 1 && edited.cpus <= HOST.cpus);
                }
            }
        }
    }
    let _ = serde_json::from_slice::<vessel_api::CreateTokenRequest>(data);
    let _ = serde_json::from_slice::<vessel_api::Quota>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vessel_auth::token::Token::parse(text);
        let _ = vessel_auth::Grant::parse(text);
        if let Some((method, path)) = text.split_once(' ') {
            let _ = vessel_auth::lookup(method, path);
        }
    }
});
