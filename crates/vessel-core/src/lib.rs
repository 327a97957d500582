//! Vessel's domain rules.
//!
//! Invariant: this crate does no IO. Everything it needs to know about the world (host capacity,
//! whether a file exists) is passed in, so every rule is a plain function that tests can call.

pub mod disks;
pub mod lifecycle;
pub mod name;
pub mod network;
pub mod spec;
pub mod units;

pub use disks::{attach_disk, detach_disk, disk_node_name, validate_disks};
pub use lifecycle::{
    after_exit, check_action, settled_state, state_after_exit, ExitKind, ProcessState,
    RestartDecision,
};
pub use name::{is_terminal_control, validate_name, validate_text};
pub use spec::{apply_edit, spec_from_create, validate_spec, HostCapacity};
pub use units::parse_memory_mib;
