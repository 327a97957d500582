//! What operators watch: the event list and stream, statistics sampling and metrics.

pub mod events;
pub mod routes;
pub mod sampler;
pub mod samples;
