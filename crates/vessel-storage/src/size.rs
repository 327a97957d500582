//! Disk sizes as users write them (`20G`, `512M`, `1T`, bytes) and as people read them.
//!
//! The parser lives in `vessel_core::units` next to the memory-size parser, so that the CLI, the API
//! validation and the storage layer agree on what `20G` means; this module re-exports it.

pub use vessel_core::units::{format_size_bytes, parse_size_bytes};

/// qemu-img rounds a qcow2 size up to a whole sector and raw images are used in sectors; refusing
/// other sizes keeps the size the user asked for and the size they get the same.
pub const SECTOR_SIZE: u64 = 512;

/// Checks that a volume size is usable: non-zero and a whole number of 512-byte sectors.
pub fn check_volume_size(bytes: u64) -> Result<(), String> {
    if bytes == 0 {
        return Err("a volume size must be larger than 0; give e.g. 20G".to_string());
    }
    if bytes % SECTOR_SIZE != 0 {
        return Err(format!(
            "a volume size must be a multiple of {SECTOR_SIZE} bytes, but {bytes} is not; \
             round it, e.g. to {}",
            bytes.next_multiple_of(SECTOR_SIZE)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_partial_sector_sizes_are_refused() {
        assert!(check_volume_size(0).unwrap_err().contains("larger than 0"));
        assert!(check_volume_size(1000).unwrap_err().contains("1024"));
        assert!(check_volume_size(parse_size_bytes("20G").unwrap()).is_ok());
    }
}
