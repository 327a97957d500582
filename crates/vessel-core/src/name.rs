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

/// Characters that change how a terminal shows the text after them: C0 and C1 controls
/// (newline, ESC...), DEL, and the Unicode bidirectional overrides and isolates, which can make
/// a line read differently from its bytes. Names and free text refuse them; the CLI escapes
/// them in what it prints.
pub fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks a free-text field (a token's description...): at most `max` bytes, no control
/// characters.
pub fn validate_text(what: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "{what} is {} bytes long; the limit is {max}",
            text.len()
        ));
    }
    if let Some(bad) = text.chars().find(|c| is_terminal_control(*c)) {
        return Err(format!(
            "{what} contains the control character {:?}; use printable text only",
            bad
        ));
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
        let err = validate_name("VM", "evil\n\u{1b}[31mroot").unwrap_err();
        assert!(err.contains("'\\n'") && !err.contains('\u{1b}'), "{err}");
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name("VM", &long)
            .unwrap_err()
            .contains("limit is 63"));
    }

    #[test]
    fn free_text_refuses_terminal_controls() {
        assert_eq!(
            validate_text("description", "CI deploy key (ops)", 256),
            Ok(())
        );
        for bad in [
            "a\nb",
            "\u{1b}[2J",
            "tab\t",
            "del\u{7f}",
            "\u{9b}31m",
            "rtl\u{202e}txt",
        ] {
            let err = validate_text("description", bad, 256).unwrap_err();
            assert!(err.contains("control character"), "{bad:?}: {err}");
        }
        assert!(validate_text("description", &"x".repeat(257), 256)
            .unwrap_err()
            .contains("limit is 256"));
    }
}
