//! What every feature uses and that knows no feature: errors, operation failures. Nothing here imports the rest of the crate.

pub mod errors;
pub mod events;
pub mod op_error;
pub mod quota;
pub mod records;
