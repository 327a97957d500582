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

/// Parses a disk size into bytes: `20G`, `512M`, `1T`, `1.5G`, `10GiB`, `4096`; a bare number
/// means bytes. Units are binary (K = 1024), the way qemu-img reads them. Integer arithmetic, so
/// `1.5G` is exact and a size that is not a whole number of bytes is refused instead of rounded.
pub fn parse_size_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier = size_unit_multiplier(unit).ok_or_else(|| {
        format!(
            "unknown size unit {:?} in {text:?}; use K, M, G, T or P (binary), or a number of bytes",
            unit.trim()
        )
    })?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let not_a_number =
        || format!("disk size {text:?} does not start with a number; write e.g. 20G or 512M");
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(not_a_number());
    }
    let out_of_range = || format!("disk size {text:?} is out of range");
    let whole: u128 = parse_digits(whole).ok_or_else(out_of_range)?;
    let scale = 10u128
        .checked_pow(u32::try_from(fraction.len()).map_err(|_| out_of_range())?)
        .ok_or_else(out_of_range)?;
    let fraction: u128 = parse_digits(fraction).ok_or_else(out_of_range)?;
    let scaled = whole
        .checked_mul(scale)
        .and_then(|v| v.checked_add(fraction))
        .and_then(|v| v.checked_mul(multiplier))
        .ok_or_else(out_of_range)?;
    if scaled % scale != 0 {
        return Err(format!(
            "disk size {text:?} is not a whole number of bytes; use a smaller unit"
        ));
    }
    u64::try_from(scaled / scale).map_err(|_| out_of_range())
}

fn size_unit_multiplier(unit: &str) -> Option<u128> {
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return None,
    };
    Some(1u128 << shift)
}

/// Empty means zero (for `.5G`); `None` when the digits overflow.
fn parse_digits(digits: &str) -> Option<u128> {
    if digits.is_empty() {
        return Some(0);
    }
    digits.parse().ok()
}

/// Formats a byte count for people: the largest binary unit that keeps the number at least 1,
/// exact when it divides evenly (`20 GiB`), else with one decimal (`1.5 GiB`).
pub fn format_size_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = None;
    let mut divisor = 1u64;
    for (i, name) in UNITS.iter().enumerate() {
        let next = 1u64 << (10 * (i + 1));
        if bytes < next {
            break;
        }
        unit = Some(*name);
        divisor = next;
    }
    match unit {
        None => format!("{bytes} B"),
        Some(name) if bytes % divisor == 0 => format!("{} {name}", bytes / divisor),
        Some(name) => format!("{:.1} {name}", bytes as f64 / divisor as f64),
    }
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

    #[test]
    fn disk_sizes_parse_to_bytes() {
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert_eq!(parse_size_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_size_bytes("20G"), Ok(20 << 30));
        assert_eq!(parse_size_bytes("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size_bytes("1T"), Ok(1 << 40));
        assert_eq!(parse_size_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size_bytes(" 64 K "), Ok(65536));
        assert_eq!(parse_size_bytes(".5K"), Ok(512));
    }

    #[test]
    fn bad_disk_sizes_are_rejected_with_a_reason() {
        assert!(parse_size_bytes("").unwrap_err().contains("number"));
        assert!(parse_size_bytes("G").unwrap_err().contains("number"));
        assert!(parse_size_bytes("1.2.3G").unwrap_err().contains("number"));
        assert!(parse_size_bytes("12X")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size_bytes("1.1")
            .unwrap_err()
            .contains("whole number of bytes"));
        assert!(parse_size_bytes("16384P")
            .unwrap_err()
            .contains("out of range"));
        assert!(
            parse_size_bytes("99999999999999999999999999999999999999999")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn disk_sizes_format_for_people() {
        assert_eq!(format_size_bytes(0), "0 B");
        assert_eq!(format_size_bytes(512), "512 B");
        assert_eq!(format_size_bytes(20 << 30), "20 GiB");
        assert_eq!(format_size_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_size_bytes(u64::MAX), "16.0 EiB");
    }
}
