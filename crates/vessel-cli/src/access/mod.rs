//! `vessel user ...`, `vessel token ...`, `vessel project ...`, `vessel audit ...`: who may do
//! what, how much, and what they did. One file a noun; the argument parsers they share are here.

mod audit;
mod project;
mod token;
mod user;

use vessel_api::Grant;

pub(crate) use self::audit::run_audit;
pub use self::audit::AuditCommand;
pub(crate) use self::project::run_project;
pub use self::project::ProjectCommand;
pub(crate) use self::token::run_token;
pub use self::token::TokenCommand;
pub(crate) use self::user::run_user;
pub use self::user::UserCommand;

/// `PROJECT=ROLE` (or `ROLE`) on the command line.
pub(crate) fn grant_parser(text: &str) -> Result<Grant, String> {
    Grant::parse(text)
}

/// Roles as `project=role,...`, or `-` for none.
pub(crate) fn grants(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "-".into();
    }
    grants
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds in `30d`, `12h`, `15m`, `90s` (or a bare number of seconds).
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .len(),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30d, 12h, 15m or 90s"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
