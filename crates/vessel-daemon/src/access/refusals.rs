//! Refused requests, recorded compactly: anyone can send requests that are refused (no
//! credentials, a bad token, a forbidden route), and each one used to become an audit record
//! with whatever path the client chose. Now each address (with each identity) gets
//! [`RECORDED_PER_WINDOW`] records a minute; further refusals in that minute are counted, and
//! one summary record says how many there were. The fields of every record are clipped
//! ([`clip`]), so a record's size does not depend on what the client sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vessel_audit::AuditEntry;

/// The window refusals are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Refusals of one address and identity recorded one by one per window.
pub const RECORDED_PER_WINDOW: u32 = 20;
/// Windows tracked at once; beyond that, refusals from new addresses share one window (so a
/// client with many addresses cannot grow this map, nor the log, without bound).
const MAX_WINDOWS: usize = 10_000;
const OVERFLOW: &str = "other addresses";

#[derive(Debug)]
struct Window {
    started: Instant,
    started_ms: u64,
    recorded: u32,
    suppressed: u32,
}

/// The refusal windows, keyed by (address without port, identity).
#[derive(Debug, Default)]
pub struct Refusals {
    windows: HashMap<(String, String), Window>,
}

impl Refusals {
    /// Whether a refusal from `source` (an address with its port, or `unix`) by `identity`
    /// should be recorded: `None` if it is only counted; otherwise `Some`, with the summary of
    /// the previous window of that address if refusals were counted in it.
    pub fn admit(&mut self, source: &str, identity: &str) -> Option<Option<AuditEntry>> {
        self.admit_at(source, identity, Instant::now(), now_ms())
    }

    fn admit_at(
        &mut self,
        source: &str,
        identity: &str,
        now: Instant,
        now_ms: u64,
    ) -> Option<Option<AuditEntry>> {
        let mut host = host_of(source);
        if self.windows.len() >= MAX_WINDOWS
            && !self
                .windows
                .contains_key(&(host.clone(), identity.to_string()))
        {
            self.windows.retain(|_, w| now - w.started < WINDOW);
            if self.windows.len() >= MAX_WINDOWS {
                host = OVERFLOW.to_string();
            }
        }
        let key = (host, identity.to_string());
        let fresh = Window {
            started: now,
            started_ms: now_ms,
            recorded: 0,
            suppressed: 0,
        };
        let window = self.windows.entry(key.clone()).or_insert(fresh);
        let mut summary = None;
        if now - window.started >= WINDOW {
            summary = summarize(&key, window);
            *window = Window {
                started: now,
                started_ms: now_ms,
                recorded: 0,
                suppressed: 0,
            };
        }
        if window.recorded < RECORDED_PER_WINDOW {
            window.recorded += 1;
            Some(summary)
        } else {
            window.suppressed += 1;
            None
        }
    }

    /// Summaries of the windows that have ended (every window with `all`), which are then
    /// forgotten.
    pub fn flush(&mut self, all: bool) -> Vec<AuditEntry> {
        self.flush_at(all, Instant::now())
    }

    fn flush_at(&mut self, all: bool, now: Instant) -> Vec<AuditEntry> {
        let mut out = Vec::new();
        self.windows.retain(|key, window| {
            if !all && now - window.started < WINDOW {
                return true;
            }
            out.extend(summarize(key, window));
            false
        });
        out
    }
}

fn summarize((host, identity): &(String, String), window: &Window) -> Option<AuditEntry> {
    (window.suppressed > 0).then(|| AuditEntry {
        at_ms: window.started_ms,
        identity: identity.clone(),
        source: host.clone(),
        action: "audit.refusals".into(),
        target: "-".into(),
        result: format!(
            "denied: {} more refused requests from {host} in the {} s from this record's time \
             were counted, not recorded one by one (the first {RECORDED_PER_WINDOW} were)",
            window.suppressed,
            WINDOW.as_secs()
        ),
    })
}

/// `1.2.3.4:5678` to `1.2.3.4`, `[::1]:80` to `::1`; anything else as it is.
fn host_of(source: &str) -> String {
    match source.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => source.to_string(),
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), saying how much was cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...(+{} bytes)", &text[..end], text.len() - end)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_share_then_one_summary() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        for port in 0..RECORDED_PER_WINDOW {
            let source = format!("10.0.0.1:{}", 1000 + port);
            assert_eq!(r.admit_at(&source, "-", t0, 0), Some(None));
        }
        for _ in 0..280 {
            assert_eq!(r.admit_at("10.0.0.1:9", "-", t0, 0), None);
        }
        // Another address, and another identity at the same address, have shares of their own.
        assert_eq!(r.admit_at("10.0.0.2:9", "-", t0, 0), Some(None));
        assert_eq!(r.admit_at("10.0.0.1:9", "alice", t0, 0), Some(None));
        // The next window starts with the summary of the last one.
        let later = t0 + WINDOW;
        let Some(Some(summary)) = r.admit_at("10.0.0.1:9", "-", later, 60_000) else {
            panic!("the window should have ended with a summary");
        };
        assert_eq!(summary.source, "10.0.0.1");
        assert!(summary.result.contains("280 more refused"), "{summary:?}");
        // Nothing was suppressed in the other windows: flushing them writes nothing.
        assert!(r.flush_at(false, later + WINDOW).is_empty());
        assert!(r.windows.is_empty());
    }

    #[test]
    fn flushing_writes_the_counted_refusals_of_ended_windows() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        for _ in 0..RECORDED_PER_WINDOW + 5 {
            r.admit_at("[::1]:4000", "-", t0, 7);
        }
        assert!(r.flush_at(false, t0).is_empty(), "the window is still open");
        let summaries = r.flush_at(true, t0);
        assert_eq!(summaries.len(), 1);
        assert_eq!(
            (summaries[0].at_ms, summaries[0].source.as_str()),
            (7, "::1")
        );
        assert!(summaries[0].result.contains("5 more"));
    }

    #[test]
    fn fields_are_clipped_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        let long = "/v1/".to_string() + &"é".repeat(10_000);
        let clipped = clip(&long, 256);
        assert!(clipped.len() < 256 + 20, "{}", clipped.len());
        assert!(clipped.ends_with("bytes)"), "{clipped}");
    }
}
