//! Who may do what: the security middleware, identities, projects and quotas, TLS, connection limits, refusal records, file modes.

pub mod caller;
pub mod file_modes;
pub mod identities;
pub mod limits;
pub mod projects;
pub mod refusals;
#[cfg(test)]
pub(crate) mod route_table;
pub mod routes;
pub mod security;
pub mod targets;
pub mod tls;
