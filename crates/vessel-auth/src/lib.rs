//! Who may do what in Vessel. Pure: no IO, no clock (callers pass the time), so every rule is
//! tested alone.
//!
//! - [`Role`] and [`Permission`]: three roles per project (admin, operator, viewer) and the
//!   permissions each one grants.
//! - [`routes`]: ONE table that maps every API route (method and path template) to the
//!   permission it needs and to where the project of its target comes from. A route that is
//!   not in the table is denied ([`routes::lookup`] answers `None`).
//! - [`Identity`]: a caller with its grants (project, role); `*` is every project and the host.
//! - [`token`]: API tokens `vsl_<id>_<secret>`: 256 random bits shown once, stored as a SHA-256
//!   digest only, compared in constant time.
//! - [`host_files`]: the request fields that name files on the daemon's host or URLs it
//!   fetches (they need `host.files`, or an allow-listed directory).
//! - [`Visibility`]: which projects' objects a caller may see in a list (the one rule of
//!   every list).
//! - [`quota`]: per-project limits and the check that a request stays within them.

pub mod host_files;
mod identity;
pub mod quota;
mod role;
pub mod routes;
pub mod token;
mod visibility;

pub use identity::{Denied, Grant, Identity, Scope, ALL_PROJECTS, DEFAULT_PROJECT, ROOT};
pub use quota::{Quota, QuotaExceeded, Usage};
pub use role::{Permission, Role};
pub use routes::{lookup, Route, Target, ROUTES};
pub use visibility::Visibility;

/// Checks a project name: like other Vessel names, 1-63 of `a-z 0-9 -`, not starting with `-`.
pub fn validate_project_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "project name {name:?} is invalid: use 1-63 characters a-z, 0-9 and -, not starting with -"
        ))
    }
}

/// Checks a user name: the same rules as project names.
pub fn validate_user_name(name: &str) -> Result<(), String> {
    validate_project_name(name)
        .map_err(|_| format!("user name {name:?} is invalid: use 1-63 characters a-z, 0-9 and -, not starting with -"))
}
