//! Parsing `qemu-img convert -p` progress.
//!
//! qemu-img 7.2 prints progress to stdout even when stdout is not a terminal, as
//! `"    (12.00/100%)\r"`: the percentage with two decimals, each update ended by a carriage return,
//! and a final `"\r\n"` after `(100.00/100%)`. Updates arrive in arbitrary chunks, so the parser
//! keeps the unfinished tail between reads.

/// Turns chunks of progress output into percentages.
#[derive(Debug, Default)]
pub(crate) struct ProgressParser {
    pending: Vec<u8>,
}

impl ProgressParser {
    /// Feeds a chunk; returns the percentages of the updates it completed.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<f64> {
        self.pending.extend_from_slice(chunk);
        let mut found = Vec::new();
        while let Some(end) = self.pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if let Some(percent) = parse_update(&line[..line.len() - 1]) {
                found.push(percent);
            }
        }
        found
    }
}

/// Parses one update, `(NN.NN/100%)` with any surrounding blanks.
fn parse_update(line: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(line).ok()?.trim();
    let number = text.strip_prefix('(')?.strip_suffix("/100%)")?;
    let percent: f64 = number.trim().parse().ok()?;
    (0.0..=100.0).contains(&percent).then_some(percent)
}

/// Passes only increasing percentages on, so that a caller's progress bar never moves backwards.
pub(crate) struct MonotonicProgress<F> {
    callback: F,
    last: Option<f64>,
}

impl<F: FnMut(f64)> MonotonicProgress<F> {
    pub(crate) fn new(callback: F) -> Self {
        Self {
            callback,
            last: None,
        }
    }

    pub(crate) fn report(&mut self, percent: f64) {
        if self.last.is_none_or(|last| percent > last) {
            self.last = Some(percent);
            (self.callback)(percent);
        }
    }

    /// Called on success: a finished job always ends at 100, even if qemu-img's last update was
    /// lost or rounded.
    pub(crate) fn finish(&mut self) {
        self.report(100.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_split_across_chunks_are_parsed() {
        let mut parser = ProgressParser::default();
        assert_eq!(parser.feed(b"    (0.00/100%)\r    (12."), vec![0.0]);
        assert_eq!(parser.feed(b"50/100%)\r"), vec![12.5]);
        assert_eq!(
            parser.feed(b"    (100.00/100%)\r\n"),
            vec![100.0],
            "the trailing newline is not an update"
        );
    }

    #[test]
    fn other_output_is_ignored() {
        let mut parser = ProgressParser::default();
        assert!(parser
            .feed(b"Formatting 'x', fmt=qcow2\n(abc/100%)\r")
            .is_empty());
    }

    #[test]
    fn progress_only_moves_forward_and_ends_at_100() {
        let mut seen = Vec::new();
        let mut progress = MonotonicProgress::new(|p| seen.push(p));
        for p in [0.0, 10.0, 10.0, 5.0, 50.0] {
            progress.report(p);
        }
        progress.finish();
        progress.finish();
        assert_eq!(seen, vec![0.0, 10.0, 50.0, 100.0]);
    }
}
