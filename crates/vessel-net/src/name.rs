//! Interface names: checked before they reach the kernel, `tc` or an nft script.

use crate::{Error, Result};

/// The kernel's IFNAMSIZ minus the terminating NUL.
pub const IFNAME_MAX: usize = 15;

/// Checks that `name` is a valid Linux interface name that is also safe to put into an nft
/// script or a `tc` command line unquoted: 1..=15 bytes of `[a-zA-Z0-9_.-]`, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > IFNAME_MAX {
        return invalid("it is longer than 15 bytes (the kernel's IFNAMSIZ)");
    }
    if name == "." || name == ".." {
        return invalid("`.` and `..` are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return invalid("only letters, digits, `_`, `.` and `-` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["a", "vt-0123456789ab", "br_0.1", "eth0"] {
            validate_ifname(name).unwrap();
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "0123456789abcdef",
            "tap\"x",
            "é",
        ] {
            assert!(validate_ifname(name).is_err(), "{name:?} was accepted");
        }
    }
}
