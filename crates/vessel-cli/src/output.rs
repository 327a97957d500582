//! What every noun's rendering shares: the output format, JSON, plain tables with control
//! characters escaped, sizes and times for people. Pure functions; printing is done by the
//! callers (`Context`), and each noun's own tables live next to its command.

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{presets, CellAlignment, ColumnConstraint, ContentArrangement, Table};
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables and messages.
    #[default]
    Table,
    /// The API's JSON, pretty-printed, for scripts (e.g. piped into jq).
    Json,
}

/// Pretty JSON with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("API types serialize to JSON");
    text.push('\n');
    text
}

/// A table in the style of `docker ps`: no borders, a plain header row, columns separated by
/// spaces, never wrapped (so that `grep` and `awk` see one row per line).
pub(crate) fn plain_table(header: Option<&[&str]>) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if let Some(header) = header {
        table.set_header(header.iter().copied());
    }
    table
}

/// A table's text with the columns packed, control characters escaped (see [`escape`]).
pub(crate) fn finish(table: Table) -> String {
    finish_aligned(table, &[])
}

/// [`finish`], with the columns `right` aligned right (numbers).
pub(crate) fn finish_aligned(table: Table, right: &[usize]) -> String {
    let mut table = escaped(&table);
    for &index in right {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let columns = table.column_count();
    for (index, column) in table.column_iter_mut().enumerate() {
        let right = if index + 1 == columns { 0 } else { 3 };
        column.set_padding((0, right));
        column.set_constraint(ColumnConstraint::ContentWidth);
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// A table as comfy-table draws it, with control characters escaped: for tables that keep
/// comfy-table's own spacing.
pub(crate) fn render(table: &Table) -> String {
    format!("{}\n", escaped(table))
}

/// A copy of `table` (a [`plain_table`]) whose cells have their control characters escaped.
/// Names cannot hold any, but much of what tables show is text from elsewhere (audit records
/// keep what a request sent, error messages, event texts): a newline there would forge a row,
/// an escape sequence would rewrite the terminal.
fn escaped(table: &Table) -> Table {
    let cells = |row: &comfy_table::Row| -> Vec<String> {
        row.cell_iter()
            .map(|cell| escape(&cell.content()))
            .collect()
    };
    let mut out = plain_table(None);
    if let Some(header) = table.header() {
        out.set_header(cells(header));
    }
    for row in table.row_iter() {
        out.add_row(cells(row));
    }
    out
}

/// `text` with every character that could steer a terminal ([`vessel_core::is_terminal_control`])
/// written as an escape: `\n`, `\r`, `\t`, else `\u{1b}`. A backslash stays as it is.
pub fn escape(text: &str) -> String {
    if !text.chars().any(vessel_core::is_terminal_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if vessel_core::is_terminal_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// A two-column key/value table without a header.
pub(crate) fn key_values(rows: Vec<(&str, String)>) -> String {
    let mut table = plain_table(None);
    for (key, value) in rows {
        table.add_row(vec![key.to_string(), value]);
    }
    finish(table)
}

pub use vessel_core::units::format_size_bytes as format_bytes;

/// A size in MiB the way users write it: `256M`, `1G`, `1536M`, `2T`.
pub fn format_mib(mib: u64) -> String {
    const GIB: u64 = 1024;
    const TIB: u64 = 1024 * 1024;
    if mib != 0 && mib % TIB == 0 {
        format!("{}T", mib / TIB)
    } else if mib != 0 && mib % GIB == 0 {
        format!("{}G", mib / GIB)
    } else {
        format!("{mib}M")
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// How long ago a moment was: `12s ago`, `3m ago`, `5h ago`, `4d ago`.
pub fn format_age(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(at_ms) / 1000;
    if now_ms < at_ms || secs == 0 {
        "just now".into()
    } else if secs < 60 {
        format!("{secs}s ago")
    } else if secs < 3600 {
        format!("{}m ago", secs / 60)
    } else if secs < 48 * 3600 {
        format!("{}h ago", secs / 3600)
    } else {
        format!("{}d ago", secs / 86400)
    }
}

/// A moment as its age and its UTC date: `3m ago (2026-03-21 10:22:03 UTC)`.
pub fn format_time(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        return "-".into();
    }
    format!("{} ({})", format_age(at_ms, now_ms), format_utc(at_ms))
}

/// `2026-03-21 10:22:03 UTC`.
pub fn format_utc(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration for people: `850ms`, `2.4s`, `3m12s`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let secs = ms / 1000;
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// `-` for a value that is not set.
pub(crate) fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// `yes` or `no`.
pub(crate) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// The items joined by `separator`, or `-` when there are none.
pub(crate) fn list_or_dash(items: &[String], separator: &str) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(separator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_escape_control_characters_so_no_row_can_be_forged() {
        let mut table = plain_table(Some(&["NAME", "RESULT"]));
        table.add_row(vec![
            "web\n1   ok\u{1b}[2J".to_string(),
            "denied: 401\u{202e}".to_string(),
        ]);
        table.add_row(vec!["plain".to_string(), "tab\there\r".to_string()]);
        let text = finish(table);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}') && !text.contains('\r'));
        assert!(text.contains("web\\n1   ok\\u{1b}[2J"), "{text}");
        assert!(text.contains("tab\\there\\r"), "{text}");
        assert_eq!(escape("C:\\path ok"), "C:\\path ok");
    }

    #[test]
    fn memory_is_written_in_the_largest_whole_unit() {
        assert_eq!(format_mib(256), "256M");
        assert_eq!(format_mib(1024), "1G");
        assert_eq!(format_mib(1536), "1536M");
        assert_eq!(format_mib(4096), "4G");
        assert_eq!(format_mib(1024 * 1024), "1T");
        assert_eq!(format_mib(0), "0M");
    }

    #[test]
    fn ages_are_short_and_human() {
        let now = 10_000_000_000;
        assert_eq!(format_age(now, now), "just now");
        assert_eq!(format_age(now + 5000, now), "just now");
        assert_eq!(format_age(now - 12_000, now), "12s ago");
        assert_eq!(format_age(now - 180_000, now), "3m ago");
        assert_eq!(format_age(now - 5 * 3_600_000, now), "5h ago");
        assert_eq!(format_age(now - 4 * 86_400_000, now), "4d ago");
        assert_eq!(format_age(0, now), "-");
    }

    #[test]
    fn utc_dates_are_correct() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    }
}
