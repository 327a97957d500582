//! Verification: what is wrong with a log, record by record.
//!
//! How each kind of tampering shows, and how [`verify`] tells them apart:
//!
//! - **Edited**: a record's stored hash is not the hash of its content. (The next record still
//!   links to the stored hash, so a plain edit breaks nothing else and is reported once.) If the
//!   editor also recomputed the record's hash, its successor's `prev_hash` no longer links to it
//!   while the successor itself is confirmed by *its* successor: reported as `Edited` of the
//!   record before the break.
//! - **Deleted**: a gap in the seqs (`after_seq`, then `missing`). Reported for any gap, linked or
//!   not: a linked gap means the chain was recomputed after renumbering, still a deletion.
//! - **Inserted**: a second record with a seq that already exists (the one its successor links to
//!   is the genuine one; every other is inserted), or a record whose `prev_hash` does not link to
//!   the record before it and that its successor does not confirm either.
//! - **Reordered**: records whose storage order (key order) disagrees with their seqs. Verification
//!   then continues in seq order, where the swapped records link correctly, so a pure swap is
//!   reported as exactly one `Reordered { seq_a, seq_b }`. Records displaced in longer cycles
//!   (one record moved far away) are reported as `Moved`.
//! - **Checkpoints**: each must carry a valid signature by the given key over (log id, seq, hash),
//!   else `BadCheckpointSignature`; its hash must equal the record at its seq, else
//!   `CheckpointMismatch` (a chain rewritten consistently, hashes and all, after some point);
//!   every multiple of the header's interval up to the newest record must have one, else
//!   `MissingCheckpoint`; a checkpoint beyond the newest record means the newest records were
//!   deleted: `Truncated`.
//!
//! - **Pruned**: after retention pruned the oldest records, a signed [`Pruned`] statement names
//!   the last pruned seq and its hash; the chain is walked from there. A bad signature is
//!   `BadPrunedSignature` (and the chain is then walked from the start, so every missing record
//!   shows as deleted); a record at or below the pruned seq is `Inserted`.
//!
//! What cannot be detected from the data alone, by anyone who can write the database:
//! - deleting the newest records after the last checkpoint (and that checkpoint's successors are
//!   not due yet): the remaining chain is a valid shorter log. Only a head kept elsewhere catches
//!   it: pass the newest checkpoint the daemon exported (or printed) in `checkpoints` and a
//!   shorter log is reported `Truncated`;
//! - rewriting or appending records after the last checkpoint with recomputed hashes: only
//!   signatures bind content to the key, and the tail has none yet;
//! - rewriting everything with recomputed hashes *and* re-signed checkpoints: that needs the
//!   signing key, which is why the key file is private; a verifier given the public key out of
//!   band then sees every checkpoint's signature fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use ed25519_dalek::VerifyingKey;
use vessel_store::Store;

use crate::{
    decode, key_id, AuditError, AuditRecord, Checkpoint, Hash, Header, Pruned, CHECKPOINTS_PREFIX,
    HEADER_KEY, HEAD_KEY, PRUNED_KEY, RECORDS_PREFIX,
};

/// One thing wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Issue {
    /// The record's content does not match its hash (or its hash was recomputed and no longer
    /// matches what the next record committed to).
    Edited { seq: u64 },
    /// Records `missing` are gone; the log goes on after `after_seq` (0: from the start).
    Deleted { after_seq: u64, missing: Range<u64> },
    /// A record that is not part of the chain: a duplicate seq, or one that links to nothing.
    Inserted { seq: u64 },
    /// Two records were swapped: each one is stored where the other belongs.
    Reordered { seq_a: u64, seq_b: u64 },
    /// A record is stored out of seq order (moved, not a plain swap).
    Moved { seq: u64 },
    /// The checkpoint at `seq` is not signed by the given key for this log.
    BadCheckpointSignature { seq: u64 },
    /// A validly signed checkpoint's hash differs from the record at `seq`: the chain was
    /// rewritten after `rewritten_after` (the last checkpoint that still matches; 0 if none).
    CheckpointMismatch { seq: u64, rewritten_after: u64 },
    /// No checkpoint at `seq`, although one is written for every multiple of the interval.
    MissingCheckpoint { seq: u64 },
    /// A validly signed checkpoint names `checkpoint_seq`, but the log ends at `last_seq`.
    Truncated { last_seq: u64, checkpoint_seq: u64 },
    /// The head key says the log reaches `head_seq`, but it ends at `last_seq` (unsigned evidence:
    /// a careful attacker fixes the head too).
    HeadAhead { head_seq: u64, last_seq: u64 },
    /// The header is not signed by the given key (log id or interval changed, or another key).
    BadHeaderSignature,
    /// The statement of what retention pruned is not signed by the given key for this log.
    BadPrunedSignature { seq: u64 },
    /// A stored value that does not decode.
    Unreadable { key: String },
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Issue::Edited { seq } => write!(f, "record {seq} was edited"),
            Issue::Deleted { after_seq, missing } if missing.end - missing.start == 1 => {
                write!(
                    f,
                    "record {} was deleted (after {after_seq})",
                    missing.start
                )
            }
            Issue::Deleted { after_seq, missing } => write!(
                f,
                "records {}..={} were deleted (after {after_seq})",
                missing.start,
                missing.end - 1
            ),
            Issue::Inserted { seq } => write!(f, "a forged record was inserted at seq {seq}"),
            Issue::Reordered { seq_a, seq_b } => {
                write!(f, "records {seq_a} and {seq_b} were swapped")
            }
            Issue::Moved { seq } => write!(f, "record {seq} is stored out of order"),
            Issue::BadCheckpointSignature { seq } => {
                write!(f, "checkpoint {seq} has a bad signature")
            }
            Issue::CheckpointMismatch {
                seq,
                rewritten_after,
            } => write!(
                f,
                "checkpoint {seq} does not match record {seq}: records after {rewritten_after} \
                 were rewritten"
            ),
            Issue::MissingCheckpoint { seq } => write!(f, "checkpoint {seq} was deleted"),
            Issue::Truncated {
                last_seq,
                checkpoint_seq,
            } => write!(
                f,
                "the log ends at {last_seq}, but checkpoint {checkpoint_seq} was signed: the \
                 newest records were deleted"
            ),
            Issue::HeadAhead { head_seq, last_seq } => write!(
                f,
                "the log ends at {last_seq}, but its head says {head_seq}: the newest records \
                 were deleted"
            ),
            Issue::BadHeaderSignature => write!(f, "the log header has a bad signature"),
            Issue::BadPrunedSignature { seq } => write!(
                f,
                "the statement that records up to {seq} were pruned has a bad signature"
            ),
            Issue::Unreadable { key } => write!(f, "{key} does not decode"),
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// Highest seq read (0 for an empty log).
    pub last_seq: u64,
    /// Checkpoints with a valid signature.
    pub valid_checkpoints: u64,
    /// The newest validly signed checkpoint that matches its record: everything up to it is
    /// pinned by the key; records after it are protected by the chain only.
    pub last_verified_checkpoint: u64,
    /// What is wrong, in seq order of discovery; empty for an intact log.
    pub issues: Vec<Issue>,
    /// Records up to this seq were pruned by retention (0: none); the chain starts after it.
    pub pruned_through: u64,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.issues.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} records (last seq {}), {} valid checkpoints, signed up to seq {}",
            self.records, self.last_seq, self.valid_checkpoints, self.last_verified_checkpoint
        )?;
        if self.pruned_through > 0 {
            writeln!(
                f,
                "records up to {} were pruned by retention (signed)",
                self.pruned_through
            )?;
        }
        if self.issues.is_empty() {
            return writeln!(f, "OK: no tampering found");
        }
        for issue in &self.issues {
            writeln!(f, "TAMPERED: {issue}")?;
        }
        Ok(())
    }
}

/// Verifies a log: `records` in storage (key) order, `checkpoints` in any order (add an
/// externally kept checkpoint to catch truncation of the newest records), against `public_key`.
pub fn verify(
    header: &Header,
    records: impl IntoIterator<Item = AuditRecord>,
    checkpoints: impl IntoIterator<Item = Checkpoint>,
    public_key: &VerifyingKey,
) -> VerifyReport {
    verify_retained(header, None, records, checkpoints, public_key)
}

/// [`verify`] of a log whose oldest records retention may have pruned (`pruned`: the signed
/// statement of where the retained chain starts).
pub fn verify_retained(
    header: &Header,
    pruned: Option<&Pruned>,
    records: impl IntoIterator<Item = AuditRecord>,
    checkpoints: impl IntoIterator<Item = Checkpoint>,
    public_key: &VerifyingKey,
) -> VerifyReport {
    let mut report = VerifyReport::default();
    let mut start = (0, header.genesis());
    match pruned {
        Some(p) if p.signature_is_valid(&header.log_id, public_key) => {
            start = (p.seq, p.hash);
            report.pruned_through = p.seq;
        }
        Some(p) => report.issues.push(Issue::BadPrunedSignature { seq: p.seq }),
        None => {}
    }
    // Records at or below the pruned seq were deleted with the statement, in one transaction:
    // one that is there was put there.
    let (stored, leftover): (Vec<AuditRecord>, Vec<AuditRecord>) =
        records.into_iter().partition(|r| r.seq > start.0);
    report
        .issues
        .extend(leftover.iter().map(|r| Issue::Inserted { seq: r.seq }));
    report.records = stored.len() as u64;
    report.last_seq = stored.iter().map(|r| r.seq).max().unwrap_or(start.0);
    if header.key_id != key_id(public_key) || !header.signature_is_valid(public_key) {
        report.issues.push(Issue::BadHeaderSignature);
    }

    // Seq order (stable, so duplicates keep their storage order).
    let mut order: Vec<usize> = (0..stored.len()).collect();
    order.sort_by_key(|&i| (stored[i].seq, i));
    report.issues.extend(order_issues(&stored, &order));

    let sorted: Vec<&AuditRecord> = order.iter().map(|&i| &stored[i]).collect();
    let genuine = walk_chain(&sorted, start, &mut report.issues);

    // Checkpoints of pruned records have nothing left to pin.
    check_checkpoints(
        header,
        checkpoints
            .into_iter()
            .filter(|c| c.seq > start.0)
            .collect(),
        &genuine,
        public_key,
        &mut report,
    );
    report
}

/// Reorderings: records whose storage position differs from their seq-order position. `order[k]`
/// is the storage index of the record that belongs at position `k`; the cycles of that
/// permutation are the moves. A 2-cycle is a swap; in longer cycles, the records off the longest
/// increasing run of seqs are the ones that moved.
fn order_issues(stored: &[AuditRecord], order: &[usize]) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut seen = vec![false; order.len()];
    let mut in_run: Option<Vec<bool>> = None;
    for start in 0..order.len() {
        if seen[start] || order[start] == start {
            continue;
        }
        let mut cycle = Vec::new();
        let mut k = start;
        while !seen[k] {
            seen[k] = true;
            cycle.push(k);
            k = order[k];
        }
        if let [a, b] = cycle[..] {
            let (x, y) = (stored[a].seq, stored[b].seq);
            issues.push(Issue::Reordered {
                seq_a: x.min(y),
                seq_b: x.max(y),
            });
        } else {
            let run = in_run.get_or_insert_with(|| longest_increasing(stored));
            cycle.sort_unstable();
            for k in cycle {
                if !run[k] {
                    issues.push(Issue::Moved { seq: stored[k].seq });
                }
            }
        }
    }
    issues
}

/// Marks the records on one longest strictly increasing run of seqs (in storage order).
fn longest_increasing(stored: &[AuditRecord]) -> Vec<bool> {
    // Patience sorting: tails[l] is the index ending the best run of length l + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut parent = vec![usize::MAX; stored.len()];
    for (i, record) in stored.iter().enumerate() {
        let at = tails.partition_point(|&t| stored[t].seq < record.seq);
        if at > 0 {
            parent[i] = tails[at - 1];
        }
        if at == tails.len() {
            tails.push(i);
        } else {
            tails[at] = i;
        }
    }
    let mut marked = vec![false; stored.len()];
    let mut k = tails.last().copied().unwrap_or(usize::MAX);
    while k != usize::MAX {
        marked[k] = true;
        k = parent[k];
    }
    marked
}

/// Walks the records in seq order, reporting edits, gaps, duplicates and broken links. Returns the
/// genuine record's hash for each seq (the one the chain goes through), for the checkpoint checks.
fn walk_chain(
    sorted: &[&AuditRecord],
    start: (u64, Hash),
    issues: &mut Vec<Issue>,
) -> BTreeMap<u64, Hash> {
    let groups: Vec<&[&AuditRecord]> = sorted.chunk_by(|a, b| a.seq == b.seq).collect();
    let mut genuine = BTreeMap::new();
    let (mut tip_seq, mut tip_hash) = start;
    let first_seq = start.0;
    // Whether the tip was already reported as edited (so a recomputed-hash edit is not reported
    // twice).
    let mut tip_reported = false;
    for (g, group) in groups.iter().enumerate() {
        let next = groups.get(g + 1).filter(|n| n[0].seq == group[0].seq + 1);
        let confirms =
            |r: &AuditRecord| next.is_some_and(|n| n.iter().any(|x| x.prev_hash == r.hash));
        // Of several records with one seq, the genuine one is the one its successor links to,
        // else the one that links to its predecessor.
        let pick = group
            .iter()
            .position(|r| confirms(r))
            .or_else(|| {
                group
                    .iter()
                    .position(|r| r.prev_hash == tip_hash && r.hash_is_valid())
            })
            .unwrap_or(0);
        for (i, r) in group.iter().enumerate() {
            if i != pick {
                issues.push(Issue::Inserted { seq: r.seq });
            }
        }
        let r = group[pick];
        let expected = tip_seq + 1;
        let mut reported = false;
        if !r.hash_is_valid() {
            issues.push(Issue::Edited { seq: r.seq });
            reported = true;
        }
        if r.seq > expected {
            issues.push(Issue::Deleted {
                after_seq: tip_seq,
                missing: expected..r.seq,
            });
        } else if r.prev_hash != tip_hash && !reported {
            if tip_seq > first_seq && confirms(r) {
                // r fits its successor, so the predecessor is the one that changed: it was
                // rewritten with a recomputed hash.
                if !tip_reported {
                    issues.push(Issue::Edited { seq: tip_seq });
                }
            } else {
                issues.push(Issue::Inserted { seq: r.seq });
                reported = true;
            }
        }
        genuine.insert(r.seq, r.hash);
        tip_seq = r.seq;
        tip_hash = r.hash;
        tip_reported = reported;
    }
    genuine
}

fn check_checkpoints(
    header: &Header,
    mut checkpoints: Vec<Checkpoint>,
    genuine: &BTreeMap<u64, Hash>,
    public_key: &VerifyingKey,
    report: &mut VerifyReport,
) {
    checkpoints.sort_by_key(|c| c.seq);
    let expected_key = key_id(public_key);
    let mut present = BTreeSet::new();
    let mut last_good = 0;
    let mut truncated_at = None;
    for c in &checkpoints {
        present.insert(c.seq);
        if c.key_id != expected_key || !c.signature_is_valid(&header.log_id, public_key) {
            report
                .issues
                .push(Issue::BadCheckpointSignature { seq: c.seq });
            continue;
        }
        report.valid_checkpoints += 1;
        match genuine.get(&c.seq) {
            Some(hash) if *hash == c.hash => last_good = c.seq,
            Some(_) => report.issues.push(Issue::CheckpointMismatch {
                seq: c.seq,
                rewritten_after: last_good,
            }),
            None if c.seq > report.last_seq => truncated_at = Some(c.seq),
            // Inside the log: the gap is already reported as a deletion.
            None => {}
        }
    }
    report.last_verified_checkpoint = last_good;
    if let Some(checkpoint_seq) = truncated_at {
        report.issues.push(Issue::Truncated {
            last_seq: report.last_seq,
            checkpoint_seq,
        });
    }
    let every = header.checkpoint_every.max(1);
    let mut seq = (report.pruned_through / every + 1) * every;
    while seq <= report.last_seq {
        if !present.contains(&seq) {
            report.issues.push(Issue::MissingCheckpoint { seq });
        }
        seq += every;
    }
}

/// Reads the log from `store` and verifies it: what `vessel audit verify` runs, in the daemon or
/// offline on a copy of the data dir (open the copy with `SqliteStore::open`; the copy must
/// include the database's `-wal` file, or be taken with the daemon stopped).
pub async fn verify_store(
    store: &dyn Store,
    public_key: &VerifyingKey,
) -> Result<VerifyReport, AuditError> {
    let header_kv = store.get(HEADER_KEY).await?.ok_or(AuditError::NoHeader)?;
    let header: Header = decode(HEADER_KEY, &header_kv.value)?;
    let mut unreadable = Vec::new();
    let (record_kvs, _) = store.list(RECORDS_PREFIX).await?;
    let mut records = Vec::with_capacity(record_kvs.len());
    for kv in record_kvs {
        match decode::<AuditRecord>(&kv.key, &kv.value) {
            Ok(r) => records.push(r),
            Err(_) => unreadable.push(Issue::Unreadable { key: kv.key }),
        }
    }
    let (checkpoint_kvs, _) = store.list(CHECKPOINTS_PREFIX).await?;
    let mut checkpoints = Vec::with_capacity(checkpoint_kvs.len());
    for kv in checkpoint_kvs {
        match decode::<Checkpoint>(&kv.key, &kv.value) {
            Ok(c) => checkpoints.push(c),
            Err(_) => unreadable.push(Issue::Unreadable { key: kv.key }),
        }
    }
    let head_seq = match store.get(HEAD_KEY).await? {
        Some(kv) => match decode::<serde_json::Value>(HEAD_KEY, &kv.value) {
            Ok(v) => v.get("seq").and_then(|s| s.as_u64()),
            Err(_) => None,
        },
        None => None,
    };
    let pruned = match crate::log::read_pruned(store).await {
        Ok(pruned) => pruned,
        Err(_) => {
            unreadable.push(Issue::Unreadable {
                key: PRUNED_KEY.into(),
            });
            None
        }
    };
    let mut report = verify_retained(&header, pruned.as_ref(), records, checkpoints, public_key);
    if let Some(head_seq) = head_seq.filter(|&h| h > report.last_seq) {
        report.issues.push(Issue::HeadAhead {
            head_seq,
            last_seq: report.last_seq,
        });
    }
    report.issues.extend(unreadable);
    Ok(report)
}
