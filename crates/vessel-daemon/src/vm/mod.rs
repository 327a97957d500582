//! Virtual machines: their routes, request logic, store records, the in-memory view, the controller and the per-VM worker, consoles, snapshots, disks, cloud-init and the guest agent.

pub mod agent_cache;
pub mod cloud_init;
pub mod console;
pub mod console_http;
pub mod controller;
pub mod disks;
pub mod guest;
pub mod model;
pub mod provision;
pub mod routes;
pub mod service;
pub mod snapshot_quota;
pub mod snapshots;
pub mod view;
pub mod worker;
