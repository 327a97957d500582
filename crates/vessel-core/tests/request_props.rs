//! Property tests of request parsing and spec validation (the fuzzing of the security issue,
//! run as ordinary tests: bounded, deterministic per seed, in every `cargo test`).
//!
//! - Any bytes given as a create or edit request body either parse or are refused; never a
//!   panic. A body with a field the API does not know is always refused.
//! - Any create request either yields a spec within the host's capacity or a reason; never a
//!   panic. Any edit of a valid spec likewise.

use proptest::prelude::*;
use vessel_api::{CreateVmRequest, EditVmRequest};
use vessel_core::{apply_edit, spec_from_create, validate_name, HostCapacity};

const HOST: HostCapacity = HostCapacity {
    cpus: 4,
    memory_mib: 8192,
};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,20}",
        ".{0,40}",
        Just(String::new()),
        Just("/etc/hostname".to_string()),
        Just("a\nb".to_string()),
        Just("../../x".to_string()),
    ]
}

fn request() -> impl Strategy<Value = CreateVmRequest> {
    (
        text(),
        any::<u32>(),
        prop_oneof![any::<u64>(), 0u64..20_000],
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(
            |(name, cpus, memory_mib, kernel, initrd, cmdline, disk, image, size, full)| {
                CreateVmRequest {
                    name,
                    cpus: cpus % 8,
                    memory_mib,
                    kernel,
                    initrd,
                    cmdline,
                    disk,
                    image,
                    disk_size_bytes: size,
                    full_clone: full,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_as_a_body_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = serde_json::from_slice::<CreateVmRequest>(&bytes);
        let _ = serde_json::from_slice::<EditVmRequest>(&bytes);
    }

    #[test]
    fn json_shaped_bodies_parse_or_are_refused(
        name in text(), cpus in any::<i64>(), memory in any::<f64>(), extra in "[a-z_]{1,12}",
    ) {
        let body = serde_json::json!({"name": name, "cpus": cpus, "memory_mib": memory});
        let _ = serde_json::from_value::<CreateVmRequest>(body.clone());
        let mut with_extra = body;
        let known = ["name", "cpus", "memory_mib", "kernel", "initrd", "cmdline", "disk", "machine",
            "nic", "restart_policy", "start", "image", "disk_size_bytes", "full_clone", "encrypted",
            "pool", "user_data", "network_config", "project"];
        prop_assume!(!known.contains(&extra.as_str()));
        with_extra[extra.as_str()] = serde_json::json!(1);
        prop_assert!(serde_json::from_value::<CreateVmRequest>(with_extra).is_err());
    }

    #[test]
    fn a_create_yields_a_spec_within_the_host_or_a_reason(req in request()) {
        if let Ok(spec) = spec_from_create(&req, HOST) {
            prop_assert!(spec.cpus >= 1 && spec.cpus <= HOST.cpus);
            prop_assert!(spec.memory_mib >= 1 && spec.memory_mib <= HOST.memory_mib);
            prop_assert!(validate_name("VM", &spec.name).is_ok());
        }
    }

    #[test]
    fn an_edit_of_a_valid_spec_stays_valid_or_is_refused(
        cpus in proptest::option::of(any::<u32>()),
        memory in proptest::option::of(any::<u64>()),
        cmdline in proptest::option::of(text()),
    ) {
        let base = CreateVmRequest {
            name: "vm1".into(),
            cpus: 1,
            memory_mib: 256,
            kernel: Some("/boot/vmlinuz".into()),
            ..Default::default()
        };
        let spec = spec_from_create(&base, HOST).unwrap();
        let edit = EditVmRequest { cpus, memory_mib: memory, cmdline, ..Default::default() };
        if let Ok(edited) = apply_edit(&spec, &edit, HOST) {
            prop_assert!(edited.cpus >= 1 && edited.cpus <= HOST.cpus);
            prop_assert!(edited.memory_mib <= HOST.memory_mib);
        }
    }
}
