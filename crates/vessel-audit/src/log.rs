//! [`AuditLog`]: appends with group commit on a [`Store`], and periodic signed checkpoints.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use vessel_store::{Compare, Op, Store, StoreError, Txn};

use crate::{
    checkpoint_key, decode, encode, hex, record_key, AuditEntry, AuditError, AuditKey, AuditRecord,
    Checkpoint, Hash, Header, Pruned, CHECKPOINTS_PREFIX, HEADER_KEY, HEAD_KEY, PRUNED_KEY,
};

/// How often a log re-reads the head and retries a batch that lost a race with another writer
/// before giving up. Each lost race means another writer made progress; the random backoff between
/// attempts keeps a busy writer from starving this one (without it, the other writer's next commit
/// lands between our head read and our retry again and again).
const MAX_ATTEMPTS: u32 = 32;

/// Tuning of an [`AuditLog`]; `Default` is what the daemon uses.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// A new log writes a signed checkpoint for every record whose seq is a multiple of this.
    /// Stored in the (signed) header, so an existing log keeps the interval it was created with and
    /// a verifier can tell a deleted checkpoint from one that was never made.
    pub checkpoint_every: u64,
    /// The most records in one store transaction. Bounded because the store checks a
    /// transaction's keys pairwise, and because one huge transaction delays every waiter in it.
    pub max_batch: usize,
    /// How many appends may wait for the writer before `append` itself waits (backpressure).
    pub queue: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            max_batch: 512,
            queue: 8192,
        }
    }
}

/// The newest record's seq and hash (`seq` 0 and the genesis value for an empty log). Kept in its
/// own key so that opening a log and the compare-and-swap of a batch need not list the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    #[serde(with = "hex::serde32")]
    hash: Hash,
}

type Reply<T> = oneshot::Sender<Result<T, AuditError>>;

enum Request {
    Append(AuditEntry, Reply<u64>),
    Checkpoint(Reply<Option<Checkpoint>>),
    /// Prune every record up to this seq.
    Prune(u64, Reply<u64>),
}

/// How much of the log to keep. Each limit that is set prunes: records older than `keep_days`,
/// and records beyond the newest `keep_records`. `Default` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_days: Option<u64>,
    pub keep_records: Option<u64>,
}

impl Retention {
    pub fn keeps_everything(&self) -> bool {
        self.keep_days.is_none() && self.keep_records.is_none()
    }
}

/// An open audit log. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct AuditLog {
    requests: mpsc::Sender<Request>,
    writer: JoinHandle<()>,
    store: Arc<dyn Store>,
    header: Header,
    public_key_hex: String,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("log_id", &hex::encode(&self.header.log_id))
            .finish()
    }
}

impl AuditLog {
    /// Opens the log in `store`, creating it (header and empty head) if there is none, and starts
    /// its writer task. Must be called inside a Tokio runtime.
    ///
    /// Fails if the log was created with another key: its checkpoints could then not be verified
    /// with one public key, so a key change needs a deliberate rotation (not done yet).
    pub async fn open(
        store: Arc<dyn Store>,
        key: AuditKey,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let header = load_or_create_header(store.as_ref(), &key, &options).await?;
        if header.key_id != key.key_id() {
            return Err(AuditError::WrongKey {
                expected: key.key_id().to_owned(),
                found: header.key_id,
            });
        }
        if !header.signature_is_valid(&key.public_key()) {
            return Err(AuditError::Malformed {
                key: HEADER_KEY.into(),
                reason: "its signature does not verify with the audit key".into(),
            });
        }
        let (head, head_rev) = read_head(store.as_ref()).await?;
        let public_key_hex = key.public_key_hex();
        let (requests, inbox) = mpsc::channel(options.queue.max(1));
        let writer = Writer {
            store: store.clone(),
            key,
            log_id: header.log_id,
            checkpoint_every: header.checkpoint_every.max(1),
            max_batch: options.max_batch.max(1),
            head,
            head_rev,
        };
        let writer = tokio::spawn(writer.run(inbox));
        Ok(Self {
            requests,
            writer,
            store,
            header,
            public_key_hex,
        })
    }

    /// Appends one entry; returns its seq once the store has committed it.
    pub async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        self.ask(|reply| Request::Append(entry, reply)).await
    }

    /// Signs the newest record now (with whatever is queued before it); `None` for an empty log.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AuditError> {
        self.ask(Request::Checkpoint).await
    }

    /// Sends the writer a request and waits for its answer.
    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, AuditError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Deletes the records (and checkpoints) `retention` does not keep, and signs where the
    /// retained chain starts ([`crate::Pruned`]). Returns how many records were deleted.
    pub async fn prune(&self, retention: Retention) -> Result<u64, AuditError> {
        if retention.keeps_everything() {
            return Ok(0);
        }
        let store = self.store.as_ref();
        let (head, _) = read_head(store).await?;
        let pruned = read_pruned(store).await?.map_or(0, |p| p.seq);
        let mut cut = 0;
        if let Some(keep) = retention.keep_records {
            cut = cut.max(head.seq.saturating_sub(keep));
        }
        if let Some(days) = retention.keep_days {
            let before = crate::now_ms().saturating_sub(days.saturating_mul(86_400_000));
            cut = cut.max(last_before(store, pruned, head.seq, before).await?);
        }
        if cut <= pruned {
            return Ok(0);
        }
        self.ask(|reply| Request::Prune(cut, reply)).await
    }

    /// Records matching `filter` (see [`crate::list`]).
    pub async fn list(&self, filter: &crate::ListFilter) -> Result<Vec<AuditRecord>, AuditError> {
        crate::list(self.store.as_ref(), filter).await
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The public key that verifies this log's checkpoints, as 64 hex digits.
    pub fn public_key_hex(&self) -> &str {
        &self.public_key_hex
    }

    /// Stops accepting appends, lets the writer finish what is queued, and waits for it.
    pub async fn shutdown(self) {
        drop(self.requests);
        let _ = self.writer.await;
    }
}

async fn load_or_create_header(
    store: &dyn Store,
    key: &AuditKey,
    options: &AuditOptions,
) -> Result<Header, AuditError> {
    if let Some(kv) = store.get(HEADER_KEY).await? {
        return decode(HEADER_KEY, &kv.value);
    }
    let mut log_id = [0u8; 16];
    crate::random_bytes(&mut log_id)?;
    let mut header = Header {
        version: 1,
        log_id,
        created_ms: crate::now_ms(),
        checkpoint_every: options.checkpoint_every.max(1),
        key_id: key.key_id().to_owned(),
        signature: [0; 64],
    };
    header.signature = key.sign(&header.signed_message());
    let head = Head {
        seq: 0,
        hash: header.genesis(),
    };
    // Header and head are created together and only if there is no header, so two daemons
    // starting at once agree on one log id.
    let txn = Txn::new()
        .when(Compare::Missing(HEADER_KEY.into()))
        .then(Op::Put(HEADER_KEY.into(), encode(&header)))
        .then(Op::Put(HEAD_KEY.into(), encode(&head)));
    if store.txn(txn).await?.succeeded {
        return Ok(header);
    }
    let kv = store.get(HEADER_KEY).await?.ok_or(AuditError::NoHeader)?;
    decode(HEADER_KEY, &kv.value)
}

/// Where the retained chain starts, if anything was pruned.
pub(crate) async fn read_pruned(store: &dyn Store) -> Result<Option<Pruned>, AuditError> {
    match store.get(PRUNED_KEY).await? {
        Some(kv) => Ok(Some(decode(PRUNED_KEY, &kv.value)?)),
        None => Ok(None),
    }
}

/// The newest seq in `(after, last]` whose record is older than `before_ms` (`after` if none).
/// Records are stamped in seq order (give or take a group commit), so a binary search does.
async fn last_before(
    store: &dyn Store,
    after: u64,
    last: u64,
    before_ms: u64,
) -> Result<u64, AuditError> {
    let (mut lo, mut hi) = (after, last);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let key = record_key(mid);
        let Some(kv) = store.get(&key).await? else {
            return Ok(lo);
        };
        let record: AuditRecord = decode(&key, &kv.value)?;
        if record.at_ms < before_ms {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

async fn read_head(store: &dyn Store) -> Result<(Head, i64), AuditError> {
    let kv = store.get(HEAD_KEY).await?.ok_or(AuditError::Malformed {
        key: HEAD_KEY.into(),
        reason: "missing while the header exists".into(),
    })?;
    Ok((decode(HEAD_KEY, &kv.value)?, kv.mod_revision))
}

/// The single task that writes: it owns the head, so seqs and links are assigned in one place.
struct Writer {
    store: Arc<dyn Store>,
    key: AuditKey,
    log_id: [u8; 16],
    checkpoint_every: u64,
    max_batch: usize,
    head: Head,
    /// The head key's mod_revision as of our last read or write: the compare-and-swap point.
    head_rev: i64,
}

/// Why a batch failed; fanned out to every waiter of the batch.
enum BatchError {
    Store(StoreError),
    Contended,
}

impl BatchError {
    fn to_audit(&self) -> AuditError {
        match self {
            BatchError::Store(e) => AuditError::Store(e.clone()),
            BatchError::Contended => AuditError::Contended(MAX_ATTEMPTS),
        }
    }
}

/// What one committed batch produced.
struct Committed {
    seqs: Vec<u64>,
    manual_checkpoint: Option<Checkpoint>,
}

impl Writer {
    async fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        // Group commit: while one transaction is in flight, new requests queue up in the channel;
        // the next transaction takes all of them (up to max_batch), so commits are shared.
        while let Some(first) = inbox.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match inbox.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.serve(batch).await;
        }
    }

    async fn serve(&mut self, batch: Vec<Request>) {
        let mut entries = Vec::new();
        let mut append_replies = Vec::new();
        let mut checkpoint_replies = Vec::new();
        let mut prunes = Vec::new();
        for request in batch {
            match request {
                Request::Append(entry, reply) => {
                    entries.push(entry);
                    append_replies.push(reply);
                }
                Request::Checkpoint(reply) => checkpoint_replies.push(reply),
                Request::Prune(cut, reply) => prunes.push((cut, reply)),
            }
        }
        for (cut, reply) in prunes {
            let _ = reply.send(self.prune(cut).await);
        }
        let wants_checkpoint = !checkpoint_replies.is_empty();
        match self.commit(entries, wants_checkpoint).await {
            Ok(done) => {
                for (reply, seq) in append_replies.into_iter().zip(done.seqs) {
                    let _ = reply.send(Ok(seq));
                }
                for reply in checkpoint_replies {
                    let _ = reply.send(Ok(done.manual_checkpoint.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.to_audit(), "audit batch failed");
                for reply in append_replies {
                    let _ = reply.send(Err(e.to_audit()));
                }
                for reply in checkpoint_replies {
                    let _ = reply.send(Err(e.to_audit()));
                }
            }
        }
    }

    async fn commit(
        &mut self,
        entries: Vec<AuditEntry>,
        wants_checkpoint: bool,
    ) -> Result<Committed, BatchError> {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let (txn, last, manual_checkpoint) = self.build(&entries, wants_checkpoint);
            let result = self.store.txn(txn).await.map_err(BatchError::Store)?;
            if result.succeeded {
                let first = self.head.seq + 1;
                self.head = last;
                self.head_rev = result.revision;
                return Ok(Committed {
                    seqs: (first..=last.seq).collect(),
                    manual_checkpoint,
                });
            }
            // Another writer moved the head: continue the chain from where it is now.
            let (head, rev) = read_head(self.store.as_ref()).await.map_err(|e| match e {
                AuditError::Store(e) => BatchError::Store(e),
                other => BatchError::Store(StoreError::Backend(other.to_string())),
            })?;
            tracing::debug!(ours = self.head.seq, theirs = head.seq, "audit head moved");
            self.head = head;
            self.head_rev = rev;
        }
        Err(BatchError::Contended)
    }

    /// The transaction that appends `entries` after the current head, the new head, and the
    /// checkpoint asked for by `checkpoint()` callers, if any.
    fn build(
        &self,
        entries: &[AuditEntry],
        wants_checkpoint: bool,
    ) -> (Txn, Head, Option<Checkpoint>) {
        let mut txn = Txn::new().when(Compare::ModRevision(HEAD_KEY.into(), self.head_rev));
        let mut head = self.head;
        if !entries.is_empty() {
            // Belt and braces to the head compare: the first new key must not exist yet.
            txn = txn.when(Compare::Missing(record_key(head.seq + 1)));
        }
        let mut last_checkpointed = None;
        for entry in entries {
            let record = AuditRecord::chain(head.seq + 1, entry.clone(), head.hash);
            head = Head {
                seq: record.seq,
                hash: record.hash,
            };
            txn = txn.then(Op::Put(record_key(record.seq), encode(&record)));
            if record.seq % self.checkpoint_every == 0 {
                let checkpoint = self.sign(head);
                txn = txn.then(Op::Put(checkpoint_key(head.seq), encode(&checkpoint)));
                last_checkpointed = Some(checkpoint);
            }
        }
        let mut manual = None;
        if wants_checkpoint && head.seq > 0 {
            manual = match last_checkpointed {
                Some(c) if c.seq == head.seq => Some(c),
                _ => {
                    let checkpoint = self.sign(head);
                    txn = txn.then(Op::Put(checkpoint_key(head.seq), encode(&checkpoint)));
                    Some(checkpoint)
                }
            };
        }
        txn = txn.then(Op::Put(HEAD_KEY.into(), encode(&head)));
        (txn, head, manual)
    }

    /// Deletes records up to `cut` in transactions of at most `max_batch` records, each with the
    /// signed statement of where the chain now starts, so that a crash between them leaves a
    /// log that verifies.
    async fn prune(&mut self, cut: u64) -> Result<u64, AuditError> {
        let store = self.store.as_ref();
        let mut done = read_pruned(store).await?.map_or(0, |p| p.seq);
        let start = done;
        let (checkpoint_kvs, _) = store.list(CHECKPOINTS_PREFIX).await?;
        while done < cut.min(self.head.seq) {
            let end = (done + self.max_batch as u64).min(cut);
            let key = record_key(end);
            let kv = store
                .get(&key)
                .await?
                .ok_or_else(|| AuditError::Malformed {
                    key: key.clone(),
                    reason: "missing, so the log cannot be pruned past it".into(),
                })?;
            let record: AuditRecord = decode(&key, &kv.value)?;
            let message = Pruned::signed_message(&self.log_id, end, &record.hash);
            let marker = Pruned {
                seq: end,
                hash: record.hash,
                at_ms: crate::now_ms(),
                key_id: self.key.key_id().to_owned(),
                signature: self.key.sign(&message),
            };
            let mut txn = Txn::new().then(Op::Put(PRUNED_KEY.into(), encode(&marker)));
            for seq in done + 1..=end {
                txn = txn.then(Op::Delete(record_key(seq)));
            }
            for kv in &checkpoint_kvs {
                let seq = kv.key[CHECKPOINTS_PREFIX.len()..].parse::<u64>().ok();
                if seq.is_some_and(|seq| seq > done && seq <= end) {
                    txn = txn.then(Op::Delete(kv.key.clone()));
                }
            }
            store.txn(txn).await?;
            done = end;
        }
        Ok(done - start)
    }

    fn sign(&self, head: Head) -> Checkpoint {
        let message = Checkpoint::signed_message(&self.log_id, head.seq, &head.hash);
        Checkpoint {
            seq: head.seq,
            hash: head.hash,
            at_ms: crate::now_ms(),
            key_id: self.key.key_id().to_owned(),
            signature: self.key.sign(&message),
        }
    }
}

/// A random wait before retry `attempt` (1-based), up to 1 ms doubled per attempt, capped at 64 ms.
fn backoff(attempt: u32) -> std::time::Duration {
    let cap_us = 1000u64 << attempt.min(6);
    let mut r = [0u8; 8];
    // Without randomness, wait the full cap: slower but still correct.
    let r = match crate::random_bytes(&mut r) {
        Ok(()) => u64::from_le_bytes(r) % cap_us,
        Err(_) => cap_us,
    };
    std::time::Duration::from_micros(r)
}
