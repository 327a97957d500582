//! Networks: their records, addresses and MACs (service), routes, and the host side (bridges, taps, firewall, DHCP).

pub mod host;
pub mod host_state;
pub mod routes;
pub mod service;
