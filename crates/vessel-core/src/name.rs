//! Names of VMs (and later volumes, networks): they become file names, socket paths and QEMU
//! `-name` values, so they must be safe in all of those.

/// Longest name we accept. 63 keeps names valid as DNS labels and hostnames.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a user-given object name and says what is wrong with it.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty; give a name such as 'web1'"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.'))
    {
        let shown = if bad.is_control() {
            format!("{:?}", bad)
        } else {
            format!("'{bad}'")
        };
        return Err(format!(
            "{kind} name {name:?} contains {shown}; use only letters, digits, '-', '_' and '.'"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{kind} name {name:?} must start with a letter or a digit"
        ));
    }
    if name.contains("..") {
        return Err(format!("{kind} name {name:?} must not contain '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_accepted() {
        for name in ["web1", "a", "db-2.prod", "x_y", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(validate_name("VM", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn unsafe_names_are_rejected_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("a/b", "'/'"),
            ("..", "start with"),
            ("a..b", "'..'"),
            ("tab\there", "'\\t'"),
            ("new\nline", "'\\n'"),
            ("-flag", "start with"),
            ("sp ace", "' '"),
            ("ünï", "'ü'"),
        ];
        for (name, expected) in cases {
            let err = validate_name("VM", name).unwrap_err();
            assert!(err.contains(expected), "{name:?}: {err}");
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name("VM", &long)
            .unwrap_err()
            .contains("limit is 63"));
    }
}
