//! Storage commands: pools, the volumes in them, images.

pub mod image;
pub mod pool;
pub mod volume;
