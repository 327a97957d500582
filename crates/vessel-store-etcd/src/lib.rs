//! [`EtcdStore`]: Vessel's [`Store`] on etcd v3, the store of a cluster.
//!
//! The model of [`vessel_store`] is etcd's own, so most calls map one to one: keys, revisions,
//! compare-and-swap transactions, prefix watches, leases. What this crate adds:
//! - a **namespace**: every key is stored under a prefix (`/vessel/` by default), so that Vessel
//!   can share an etcd with others; keys come back without it;
//! - **paged listing** at one revision, so a large prefix never exceeds a gRPC message limit and is
//!   still one consistent snapshot;
//! - a **watch that survives connection loss**: a task pumps etcd's stream into a bounded channel
//!   and, when the stream breaks (a member restarts, the network blips), re-creates it from the
//!   first revision it has not delivered. If etcd compacted that revision meanwhile, the watch ends
//!   with [`StoreError::Compacted`] so the consumer re-lists: a change is never silently skipped.
//!
//! etcd-specific behaviour relied on (checked by the conformance suite against a real etcd):
//! a transaction that changes nothing does not advance the revision; `mod_revision == 0` holds for
//! a missing key; a watch's creation response precedes its events; keep-alive of an expired lease
//! answers TTL 0.

mod error;
mod watch;

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions,
    DeleteOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn as EtcdTxn, TxnOp,
};
use vessel_store::{
    validate_key, validate_lease_ttl, validate_prefix, validate_watch, Compare, KeyValue, LeaseId,
    Op, Store, StoreError, Txn, TxnResult, Watch,
};

use crate::error::{backend, from_etcd};

/// How many keys one page of a listing holds. A page of 1 KiB values stays far below gRPC's
/// 4 MiB message limit even with values near [`vessel_store::MAX_VALUE_BYTES`]... unless many
/// are that large, which is why the limit is a count and the message limit is raised too.
const LIST_PAGE_KEYS: i64 = 500;
/// The largest gRPC message accepted from etcd: a page of values at their maximum size.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Client certificates and CA for etcd over TLS.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM of the CA that signed the etcd members' certificates.
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key of this client, for etcd's `--client-cert-auth`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to check in the members' certificates, if it is not the endpoint's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key is a secret: never print it.
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.client.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members, e.g. `http://10.0.0.1:2379`; `https://` with [`EtcdTls`].
    pub endpoints: Vec<String>,
    /// The prefix under which Vessel keeps its keys.
    pub namespace: String,
    pub tls: Option<EtcdTls>,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails (a member that lost its quorum does not
    /// answer; the caller must see an error, not hang).
    pub request_timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            namespace: "/vessel/".into(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`Store`] on etcd. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (one read), so a wrong address or an etcd that
    /// is down is reported here, with the endpoints named.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Backend(
                "no etcd endpoint given: name at least one client URL, e.g. http://10.0.0.1:2379"
                    .into(),
            ));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(tls) = &options.tls {
            connect = connect.with_tls(tls_options(tls));
        }
        let shown = options.endpoints.join(", ");
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|err| backend(format!("cannot connect to etcd at {shown}"), err))?;
        let store = Self {
            client,
            namespace: options.namespace,
        };
        store.revision().await.map_err(|err| {
            StoreError::Backend(format!("etcd at {shown} does not answer: {err}"))
        })?;
        Ok(store)
    }

    fn full(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.namespace.len() + key.len());
        full.extend_from_slice(self.namespace.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    fn kv_of(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: strip_namespace(&self.namespace, kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        })
    }

    fn txn_op(&self, op: &Op) -> TxnOp {
        match op {
            Op::Put(key, value) => TxnOp::put(self.full(key), value.clone(), None),
            Op::PutWithLease(key, value, lease) => TxnOp::put(
                self.full(key),
                value.clone(),
                Some(PutOptions::new().with_lease(*lease)),
            ),
            Op::Delete(key) => TxnOp::delete(self.full(key), None),
            Op::DeletePrefix(prefix) => TxnOp::delete(
                self.full(prefix),
                Some(DeleteOptions::new().with_range(prefix_end(&self.full(prefix)))),
            ),
        }
    }

    fn compare(&self, compare: &Compare) -> EtcdCompare {
        match compare {
            // etcd compares a missing key as if all its revisions were 0, as the trait wants.
            Compare::ModRevision(key, revision) => {
                EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *revision)
            }
            Compare::Exists(key) => EtcdCompare::version(self.full(key), CompareOp::Greater, 0),
            Compare::Missing(key) => EtcdCompare::version(self.full(key), CompareOp::Equal, 0),
            Compare::Value(key, value) => {
                EtcdCompare::value(self.full(key), CompareOp::Equal, value.clone())
            }
        }
    }
}

fn first_lease(txn: &Txn) -> LeaseId {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            Op::PutWithLease(_, _, lease) => Some(*lease),
            _ => None,
        })
        .unwrap_or(0)
}

fn tls_options(tls: &EtcdTls) -> TlsOptions {
    let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
    if let Some((cert, key)) = &tls.client {
        options = options.identity(Identity::from_pem(cert, key));
    }
    if let Some(domain) = &tls.domain {
        options = options.domain_name(domain.clone());
    }
    options
}

/// The key without the namespace. A key that is not UTF-8 was written by someone else.
fn strip_namespace(namespace: &str, key: &[u8]) -> Result<String, StoreError> {
    let rest = key.strip_prefix(namespace.as_bytes()).ok_or_else(|| {
        StoreError::Backend(format!(
            "etcd returned a key outside the namespace {namespace:?}"
        ))
    })?;
    String::from_utf8(rest.to_vec()).map_err(|_| {
        StoreError::Backend(format!(
            "etcd holds a key under {namespace:?} that is not UTF-8; Vessel writes only UTF-8 keys"
        ))
    })
}

/// The smallest key greater than every key that starts with `prefix` (etcd's range end for a
/// prefix); `[0]` means "to the end of the keyspace" for an empty prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let response = self
            .client
            .kv_client()
            .get(self.full(key), None)
            .await
            .map_err(|err| from_etcd(format!("get {key:?}"), err))?;
        response.kvs().first().map(|kv| self.kv_of(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        validate_prefix(prefix)?;
        let what = || format!("list prefix {prefix:?}");
        let start = self.full(prefix);
        let end = prefix_end(&start);
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut kvs = Vec::new();
        let mut from = start;
        // Every page after the first reads at the first page's revision: one snapshot, however
        // many writes happen while it is read.
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE_KEYS);
            if revision != 0 {
                options = options.with_revision(revision);
            }
            let response = kv
                .get(from.clone(), Some(options))
                .await
                .map_err(|err| from_etcd(what(), err))?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for item in response.kvs() {
                kvs.push(self.kv_of(item)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok((kvs, revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        let compares: Vec<EtcdCompare> = txn.compares.iter().map(|c| self.compare(c)).collect();
        let success: Vec<TxnOp> = txn.success.iter().map(|op| self.txn_op(op)).collect();
        let failure: Vec<TxnOp> = txn.failure.iter().map(|op| self.txn_op(op)).collect();
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(success)
            .or_else(failure);
        let response = self.client.kv_client().txn(request).await.map_err(|err| {
            match from_etcd("transaction".into(), err) {
                // etcd does not say which lease; a transaction names few, and the first is the
                // one a caller can act on.
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(first_lease(&txn)),
                other => other,
            }
        })?;
        Ok(TxnResult {
            succeeded: response.succeeded(),
            revision: response.header().map_or(0, |h| h.revision()),
        })
    }

    async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, StoreError> {
        validate_watch(prefix, start_revision)?;
        let stream = watch::EtcdWatch::start(
            self.client.clone(),
            self.namespace.clone(),
            self.full(prefix),
            start_revision,
        )
        .await?;
        Ok(Watch::new(stream))
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        // A count-only read of the namespace: the answer's header carries the store revision.
        let options = GetOptions::new()
            .with_range(prefix_end(self.namespace.as_bytes()))
            .with_count_only();
        let response = self
            .client
            .kv_client()
            .get(self.namespace.as_bytes().to_vec(), Some(options))
            .await
            .map_err(|err| from_etcd("read the revision".into(), err))?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let result = self
            .client
            .kv_client()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await;
        match result.map_err(|err| from_etcd(format!("compact to {revision}"), err)) {
            Ok(_) => Ok(()),
            // Compacting to an already compacted revision does nothing, as the trait says.
            Err(StoreError::Compacted { .. }) => Ok(()),
            Err(StoreError::InvalidRevision { reason, .. }) => Err(StoreError::InvalidRevision {
                requested: revision,
                reason,
            }),
            Err(err) => Err(err),
        }
    }

    async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseId, StoreError> {
        validate_lease_ttl(ttl_secs)?;
        let response = self
            .client
            .lease_client()
            .grant(ttl_secs, None)
            .await
            .map_err(|err| from_etcd("grant a lease".into(), err))?;
        if !response.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd refused a lease: {}",
                response.error()
            )));
        }
        Ok(response.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        let what = || format!("keep lease {lease:x} alive");
        let failed = |err| match err {
            // The client reads the stream's first answer itself and reports a lease etcd no
            // longer has (TTL 0) as this error.
            etcd_client::Error::LeaseKeepAliveError(_) => StoreError::LeaseNotFound(lease),
            err => match from_etcd(what(), err) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                other => other,
            },
        };
        // Opening the stream renews once, but the client keeps that answer's TTL to itself: a
        // second renewal on the same stream tells it (it is the lease's granted TTL).
        let (mut keeper, mut answers) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(failed)?;
        keeper.keep_alive().await.map_err(failed)?;
        let answer =
            answers.message().await.map_err(failed)?.ok_or_else(|| {
                StoreError::Backend(format!("{}: etcd closed the stream", what()))
            })?;
        if answer.ttl() <= 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(answer.ttl())
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.client
            .lease_client()
            .revoke(lease)
            .await
            .map_err(
                |err| match from_etcd(format!("revoke lease {lease:x}"), err) {
                    StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                    other => other,
                },
            )?;
        Ok(())
    }

    async fn lease_time_to_live(&self, lease: LeaseId) -> Result<Option<i64>, StoreError> {
        let response = self
            .client
            .lease_client()
            .time_to_live(lease, None)
            .await
            .map_err(|err| from_etcd(format!("read lease {lease:x}"), err))?;
        // etcd answers -1 for a lease it does not have.
        Ok((response.ttl() > 0).then_some(response.ttl()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_exactly_the_prefixed_keys() {
        assert_eq!(prefix_end(b"/vessel/vms/"), b"/vessel/vms0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), [0]);
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }

    #[test]
    fn keys_come_back_without_the_namespace() {
        assert_eq!(strip_namespace("/v/", b"/v/vms/a").unwrap(), "vms/a");
        assert!(strip_namespace("/v/", b"/other/a").is_err());
        assert!(strip_namespace("/v/", b"/v/\xff").is_err());
    }
}
