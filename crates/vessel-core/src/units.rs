//! Sizes as users write them.

/// Parses a memory size into MiB: `256M`, `256MiB`, `1G`, `1.5G`, `2GiB`, `524288K`; a bare
/// number means MiB. Sizes must be whole MiB.
pub fn parse_memory_mib(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("memory size {text:?} does not start with a number; write e.g. 256M or 2G")
    })?;
    let kib_per_unit: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "k" | "kb" | "kib" => 1.0,
        "" | "m" | "mb" | "mib" => 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use K, M, G or T"
            ))
        }
    };
    let kib = value * kib_per_unit;
    if !kib.is_finite() || kib < 0.0 || kib > (u64::MAX / 2) as f64 {
        return Err(format!("memory size {text:?} is out of range"));
    }
    let kib = kib.round() as u64;
    if kib % 1024 != 0 {
        return Err(format!("memory size {text:?} is not a whole number of MiB"));
    }
    Ok(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_spellings_parse() {
        assert_eq!(parse_memory_mib("256M"), Ok(256));
        assert_eq!(parse_memory_mib("256MiB"), Ok(256));
        assert_eq!(parse_memory_mib("256"), Ok(256));
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert_eq!(parse_memory_mib("1.5g"), Ok(1536));
        assert_eq!(parse_memory_mib("524288K"), Ok(512));
    }

    #[test]
    fn nonsense_is_rejected() {
        assert!(parse_memory_mib("").is_err());
        assert!(parse_memory_mib("lots").is_err());
        assert!(parse_memory_mib("12X")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_memory_mib("1000K")
            .unwrap_err()
            .contains("whole number"));
    }
}
