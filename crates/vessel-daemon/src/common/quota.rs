//! How a feature tells the quota check what a project holds of it. The features call the check
//! (`access::projects::reserve`) when they create or grow something, so the check cannot call
//! them back by name; each registers a [`Counter`] at start instead (`lib.rs`).

use futures::future::BoxFuture;
use vessel_api::{ApiError, Usage};
use vessel_store::Store;

/// What one feature holds in a project: its part of the usage, and how many volumes (or
/// images) among them, which keep the project from being deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Holdings {
    pub usage: Usage,
    pub volumes: u64,
}

impl Holdings {
    /// Usage that holds no volumes.
    pub fn of(usage: Usage) -> Holdings {
        Holdings { usage, volumes: 0 }
    }
}

/// How a feature counts what a project holds of it, from the store.
pub type Counter = for<'a> fn(&'a dyn Store, &'a str) -> BoxFuture<'a, Result<Holdings, ApiError>>;
