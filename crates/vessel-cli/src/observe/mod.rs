//! Commands that watch the daemon and its host: events, statistics (`vessel top`), host.

pub mod event;
pub mod host;
pub mod stats;
