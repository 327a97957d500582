//! Storage: pools, volumes, images, volume keys, who owns each volume (the disk quota), long host operations (imports, exports, full clones) and the host files a request may name.

pub mod copy;
pub mod host_ops;
pub mod host_paths;
pub mod images;
pub mod keys;
pub mod ownership;
pub mod pools;
pub mod routes;
pub mod volumes;
