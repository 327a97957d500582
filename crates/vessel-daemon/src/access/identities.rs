//! Users, API tokens and client certificates, as kept in the store:
//!
//! - `auth/users/<name>`: [`UserRecord`] (name, grants)
//! - `auth/tokens/<id>`: [`vessel_auth::token::TokenRecord`] (a SHA-256 digest, never the secret)
//! - `auth/certs/<sha256>`: [`CertRecord`] (the user a client certificate was issued to)
//!
//! Deleting a user deletes its tokens and certificates in the same transaction.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vessel_api::{
    ApiError, CreateTokenRequest, CreateUserRequest, CreatedToken, ErrorCode, Grant,
    IssueCertRequest, IssuedCert, TokenInfo, User,
};
use vessel_auth::token::{Token, TokenError, TokenRecord};
use vessel_auth::Identity;
use vessel_store::{Compare, Op, Store, Txn};

use crate::access::tls::TlsMaterial;
use crate::common::errors::{internal, store_error};
use crate::vm::model::{decode, encode, now_ms};

/// Users, tokens and certificates all live under this prefix.
const AUTH_PREFIX: &str = "auth/";
pub const USERS_PREFIX: &str = "auth/users/";
pub const TOKENS_PREFIX: &str = "auth/tokens/";
pub const CERTS_PREFIX: &str = "auth/certs/";

fn user_key(name: &str) -> String {
    format!("{USERS_PREFIX}{name}")
}

fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

fn cert_key(fingerprint: &str) -> String {
    format!("{CERTS_PREFIX}{fingerprint}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub name: String,
    pub grants: Vec<Grant>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRecord {
    pub user: String,
    pub fingerprint: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// Signed-in identities by token id and certificate fingerprint, so that a remote request does
/// not read the store twice. The daemon is the only writer of `auth/` (one daemon per data dir),
/// and every write clears the cache. A generation counter keeps a sign-in that read the store
/// before such a write from putting what it read back after the clear.
#[derive(Default)]
pub struct AuthCache {
    inner: parking_lot::Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    generation: u64,
    tokens: std::collections::HashMap<String, (TokenRecord, Identity)>,
    certs: std::collections::HashMap<String, (CertRecord, Identity)>,
}

/// More entries than this and the cache starts over (tokens are few; this bounds memory).
const CACHE_MAX: usize = 10_000;

impl AuthCache {
    fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Forgets everything; called after every write of users, tokens or certificates.
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.generation += 1;
        inner.tokens.clear();
        inner.certs.clear();
    }

    fn token(&self, id: &str) -> Option<(TokenRecord, Identity)> {
        self.inner.lock().tokens.get(id).cloned()
    }

    fn cert(&self, fingerprint: &str) -> Option<(CertRecord, Identity)> {
        self.inner.lock().certs.get(fingerprint).cloned()
    }

    fn put_token(&self, generation: u64, record: TokenRecord, identity: Identity) {
        let mut inner = self.inner.lock();
        if inner.generation == generation {
            if inner.tokens.len() >= CACHE_MAX {
                inner.tokens.clear();
            }
            inner.tokens.insert(record.id.clone(), (record, identity));
        }
    }

    fn put_cert(&self, generation: u64, record: CertRecord, identity: Identity) {
        let mut inner = self.inner.lock();
        if inner.generation == generation {
            if inner.certs.len() >= CACHE_MAX {
                inner.certs.clear();
            }
            inner
                .certs
                .insert(record.fingerprint.clone(), (record, identity));
        }
    }
}

/// Why a sign-in failed; the client only ever sees "unauthenticated" with a generic reason.
#[derive(Debug)]
pub enum AuthFailure {
    Token(TokenError),
    UnknownCertificate,
    UnknownUser(String),
    Store(ApiError),
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthFailure::Token(e) => write!(f, "{e}"),
            AuthFailure::UnknownCertificate => {
                f.write_str("the client certificate is not (or no longer) issued to any user")
            }
            AuthFailure::UnknownUser(u) => write!(f, "user {u:?} no longer exists"),
            AuthFailure::Store(e) => write!(f, "{e}"),
        }
    }
}

async fn load_user(store: &dyn Store, name: &str) -> Result<Option<UserRecord>, ApiError> {
    match store.get(&user_key(name)).await.map_err(store_error)? {
        Some(kv) => Ok(Some(decode(&kv.key, &kv.value).map_err(internal)?)),
        None => Ok(None),
    }
}

fn identity_of(user: UserRecord) -> Identity {
    Identity {
        name: user.name,
        grants: user.grants,
    }
}

/// What a signed-in caller's credential rests on: the store records whose deletion or change
/// ends it (its user, its token or certificate) and when it expires. A request is checked when
/// it comes; a long-lived stream ends when the credential does ([`revoked`]).
#[derive(Debug, Clone, Default)]
pub struct Credential {
    keys: Vec<String>,
    expires_ms: Option<u64>,
}

impl Credential {
    fn token(record: &TokenRecord) -> Credential {
        Credential {
            keys: vec![user_key(&record.user), token_key(&record.id)],
            expires_ms: record.expires_ms,
        }
    }

    fn cert(record: &CertRecord) -> Credential {
        Credential {
            keys: vec![user_key(&record.user), cert_key(&record.fingerprint)],
            expires_ms: Some(record.expires_ms),
        }
    }
}

/// Resolves when the credential ends: its user or token or certificate is deleted or changed
/// (a changed user may have lost grants: the client signs in again and gets what it has now),
/// it expires, or the store cannot be watched. Never resolves for a credential that rests on
/// nothing (the unix socket's root).
pub async fn revoked(store: Arc<dyn Store>, credential: Credential) {
    if credential.keys.is_empty() && credential.expires_ms.is_none() {
        return std::future::pending().await;
    }
    let expiry = async {
        match credential.expires_ms {
            Some(at) => {
                let left = at.saturating_sub(now_ms());
                tokio::time::sleep(std::time::Duration::from_millis(left)).await
            }
            None => std::future::pending().await,
        }
    };
    let changed = async {
        let Ok(revision) = store.revision().await else {
            return;
        };
        let Ok(mut watch) = store.watch(AUTH_PREFIX, revision + 1).await else {
            return;
        };
        // Deleted between the sign-in and the watch: gone already.
        for key in &credential.keys {
            if !matches!(store.get(key).await, Ok(Some(_))) {
                return;
            }
        }
        loop {
            match watch.next().await {
                Ok(event) if credential.keys.contains(&event.kv.key) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = expiry => {}
        () = changed => {}
    }
}

/// The identity behind a bearer token, and what it rests on. The digest and the expiry are
/// checked every time, also for a cached record.
pub async fn authenticate_token(
    store: &dyn Store,
    cache: &AuthCache,
    text: &str,
) -> Result<(Identity, Credential), AuthFailure> {
    let token = Token::parse(text).map_err(AuthFailure::Token)?;
    if let Some((record, identity)) = cache.token(&token.id) {
        record.check(&token, now_ms()).map_err(AuthFailure::Token)?;
        return Ok((identity, Credential::token(&record)));
    }
    let generation = cache.generation();
    let kv = store
        .get(&token_key(&token.id))
        .await
        .map_err(|e| AuthFailure::Store(store_error(e)))?
        .ok_or(AuthFailure::Token(TokenError::Invalid))?;
    let record: TokenRecord =
        decode(&kv.key, &kv.value).map_err(|e| AuthFailure::Store(internal(e)))?;
    record.check(&token, now_ms()).map_err(AuthFailure::Token)?;
    let user = load_user(store, &record.user)
        .await
        .map_err(AuthFailure::Store)?
        .ok_or_else(|| AuthFailure::UnknownUser(record.user.clone()))?;
    let identity = identity_of(user);
    let identity = if record.scope.is_empty() {
        identity
    } else {
        identity.restrict(&record.scope)
    };
    let credential = Credential::token(&record);
    cache.put_token(generation, record, identity.clone());
    Ok((identity, credential))
}

/// The identity behind a client certificate (already verified against the CA by rustls), and
/// what it rests on.
pub async fn authenticate_cert(
    store: &dyn Store,
    cache: &AuthCache,
    fingerprint: &str,
) -> Result<(Identity, Credential), AuthFailure> {
    if let Some((record, identity)) = cache.cert(fingerprint) {
        if now_ms() >= record.expires_ms {
            return Err(AuthFailure::UnknownCertificate);
        }
        return Ok((identity, Credential::cert(&record)));
    }
    let generation = cache.generation();
    let kv = store
        .get(&cert_key(fingerprint))
        .await
        .map_err(|e| AuthFailure::Store(store_error(e)))?
        .ok_or(AuthFailure::UnknownCertificate)?;
    let record: CertRecord =
        decode(&kv.key, &kv.value).map_err(|e| AuthFailure::Store(internal(e)))?;
    if now_ms() >= record.expires_ms {
        return Err(AuthFailure::UnknownCertificate);
    }
    let user = load_user(store, &record.user)
        .await
        .map_err(AuthFailure::Store)?
        .ok_or_else(|| AuthFailure::UnknownUser(record.user.clone()))?;
    let identity = identity_of(user);
    let credential = Credential::cert(&record);
    cache.put_cert(generation, record, identity.clone());
    Ok((identity, credential))
}

// ---- what the routes do (`routes.rs` holds the handlers) ----

fn user_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("user {name:?} does not exist"))
        .with_hint("list users with `vessel user list`")
}

async fn user_view(store: &dyn Store, record: UserRecord) -> Result<User, ApiError> {
    let (certs, _) = store.list(CERTS_PREFIX).await.map_err(store_error)?;
    let mut certificates = Vec::new();
    for kv in certs {
        let cert: CertRecord = decode(&kv.key, &kv.value).map_err(internal)?;
        if cert.user == record.name {
            certificates.push(cert.fingerprint);
        }
    }
    Ok(User {
        name: record.name,
        grants: record.grants,
        created_at_ms: record.created_ms,
        certificates,
    })
}

fn check_grants(grants: &[Grant]) -> Result<(), ApiError> {
    for grant in grants {
        if grant.project != vessel_auth::ALL_PROJECTS {
            vessel_auth::validate_project_name(&grant.project).map_err(ApiError::invalid)?;
        }
    }
    Ok(())
}

pub async fn list_users(store: &dyn Store) -> Result<Vec<User>, ApiError> {
    let (kvs, _) = store.list(USERS_PREFIX).await.map_err(store_error)?;
    let mut out = Vec::new();
    for kv in kvs {
        out.push(user_view(store, decode(&kv.key, &kv.value).map_err(internal)?).await?);
    }
    Ok(out)
}

/// Records a new user; a taken name changes nothing.
pub async fn create_user(
    store: &dyn Store,
    cache: &AuthCache,
    req: CreateUserRequest,
) -> Result<User, ApiError> {
    vessel_auth::validate_user_name(&req.name).map_err(ApiError::invalid)?;
    if req.name == vessel_auth::ROOT {
        return Err(ApiError::invalid(
            "root is the built-in identity of the unix socket; choose another name",
        ));
    }
    check_grants(&req.grants)?;
    let record = UserRecord {
        name: req.name.clone(),
        grants: req.grants,
        created_ms: now_ms(),
    };
    let txn = Txn::new()
        .when(Compare::Missing(user_key(&req.name)))
        .then(Op::Put(user_key(&req.name), encode(&record)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(ApiError::new(
            ErrorCode::AlreadyExists,
            format!("user {:?} already exists", req.name),
        ));
    }
    cache.clear();
    user_view(store, record).await
}

pub async fn get_user(store: &dyn Store, name: &str) -> Result<User, ApiError> {
    let record = load_user(store, name)
        .await?
        .ok_or_else(|| user_not_found(name))?;
    user_view(store, record).await
}

/// Deletes a user with its tokens and certificates, in one transaction.
pub async fn delete_user(store: &dyn Store, cache: &AuthCache, name: &str) -> Result<(), ApiError> {
    let kv = store
        .get(&user_key(name))
        .await
        .map_err(store_error)?
        .ok_or_else(|| user_not_found(name))?;
    let mut txn = Txn::new()
        .when(Compare::ModRevision(user_key(name), kv.mod_revision))
        .then(Op::Delete(user_key(name)));
    for token in tokens(store).await? {
        if token.user == name {
            txn = txn.then(Op::Delete(token_key(&token.id)));
        }
    }
    let (certs, _) = store.list(CERTS_PREFIX).await.map_err(store_error)?;
    for kv in certs {
        let cert: CertRecord = decode(&kv.key, &kv.value).map_err(internal)?;
        if cert.user == name {
            txn = txn.then(Op::Delete(kv.key));
        }
    }
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(ApiError::conflict(format!(
            "user {name:?} changed meanwhile; try again"
        )));
    }
    cache.clear();
    Ok(())
}

/// Issues a client certificate to a user, signed by the daemon's CA.
pub async fn issue_cert(
    store: &dyn Store,
    cache: &AuthCache,
    tls: Option<&TlsMaterial>,
    name: &str,
    req: IssueCertRequest,
) -> Result<IssuedCert, ApiError> {
    load_user(store, name)
        .await?
        .ok_or_else(|| user_not_found(name))?;
    let Some(tls) = tls else {
        return Err(ApiError::conflict(
            "the remote API is off, so there is no CA to issue certificates with",
        )
        .with_hint("start the daemon with --listen ADDR (or `listen` in its config)"));
    };
    let days = req.days.unwrap_or(365).clamp(1, 3650);
    let cert = tls
        .issue_client_cert(name, days)
        .map_err(|e| ApiError::internal(format!("cannot issue a certificate: {e:#}")))?;
    let record = CertRecord {
        user: name.to_string(),
        fingerprint: cert.fingerprint.clone(),
        created_ms: now_ms(),
        expires_ms: now_ms() + u64::from(days) * 86_400_000,
    };
    let txn = Txn::new()
        .when(Compare::Exists(user_key(name)))
        .then(Op::Put(cert_key(&cert.fingerprint), encode(&record)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(user_not_found(name));
    }
    cache.clear();
    Ok(IssuedCert {
        user: name.to_string(),
        fingerprint: cert.fingerprint,
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_pem: tls.ca_pem.clone(),
    })
}

async fn tokens(store: &dyn Store) -> Result<Vec<TokenRecord>, ApiError> {
    let (kvs, _) = store.list(TOKENS_PREFIX).await.map_err(store_error)?;
    kvs.iter()
        .map(|kv| decode(&kv.key, &kv.value).map_err(internal))
        .collect()
}

fn token_info(record: TokenRecord) -> TokenInfo {
    TokenInfo {
        id: record.id,
        user: record.user,
        description: record.description,
        created_at_ms: record.created_ms,
        expires_at_ms: record.expires_ms,
        scope: record.scope,
    }
}

pub async fn list_tokens(store: &dyn Store) -> Result<Vec<TokenInfo>, ApiError> {
    Ok(tokens(store).await?.into_iter().map(token_info).collect())
}

/// Makes a token for a user; its secret is in the answer only, the store keeps its digest.
pub async fn create_token(
    store: &dyn Store,
    cache: &AuthCache,
    req: CreateTokenRequest,
) -> Result<CreatedToken, ApiError> {
    check_grants(&req.scope)?;
    vessel_core::validate_text("the token description", &req.description, 256)
        .map_err(ApiError::invalid)?;
    let token = Token::generate().map_err(|e| ApiError::internal(e.to_string()))?;
    let now = now_ms();
    let record = TokenRecord {
        id: token.id.clone(),
        user: req.user.clone(),
        description: req.description,
        digest: token.digest(),
        created_ms: now,
        expires_ms: req
            .expires_in_secs
            .map(|secs| now.saturating_add(secs.saturating_mul(1000))),
        scope: req.scope,
    };
    let txn = Txn::new()
        .when(Compare::Exists(user_key(&req.user)))
        .when(Compare::Missing(token_key(&token.id)))
        .then(Op::Put(token_key(&token.id), encode(&record)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(user_not_found(&req.user));
    }
    cache.clear();
    Ok(CreatedToken {
        token: token_info(record),
        secret: token.reveal(),
    })
}

pub async fn revoke_token(store: &dyn Store, cache: &AuthCache, id: &str) -> Result<(), ApiError> {
    let txn = Txn::new()
        .when(Compare::Exists(token_key(id)))
        .then(Op::Delete(token_key(id)));
    if !store.txn(txn).await.map_err(store_error)?.succeeded {
        return Err(ApiError::not_found(format!("token {id:?} does not exist"))
            .with_hint("list tokens with `vessel token list`"));
    }
    cache.clear();
    Ok(())
}

#[cfg(test)]
mod revocation_tests {
    use super::*;
    use std::time::Duration;

    fn credential() -> Credential {
        Credential {
            keys: vec![user_key("carol"), token_key("t1")],
            expires_ms: None,
        }
    }

    async fn store_with_carol() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(vessel_store::SqliteStore::open(&dir.path().join("s.db")).unwrap());
        for key in [user_key("carol"), token_key("t1"), user_key("dave")] {
            store.put(&key, b"{}".to_vec()).await.unwrap();
        }
        (dir, store)
    }

    #[tokio::test]
    async fn a_stream_credential_ends_when_its_token_goes_but_not_for_others_changes() {
        let (_dir, store) = store_with_carol().await;
        let ended = tokio::spawn(revoked(Arc::clone(&store), credential()));
        // Another user's change does not end it.
        store
            .put(&user_key("dave"), b"{\"x\":1}".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!ended.is_finished());
        store
            .txn(Txn::new().then(Op::Delete(token_key("t1"))))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("ends when the token is revoked")
            .unwrap();
    }

    #[tokio::test]
    async fn a_credential_already_gone_or_expired_ends_at_once_and_root_never_does() {
        let (_dir, store) = store_with_carol().await;
        store
            .txn(Txn::new().then(Op::Delete(user_key("carol"))))
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            revoked(Arc::clone(&store), credential()),
        )
        .await
        .expect("a deleted user's credential is over");
        let (_dir, store) = store_with_carol().await;
        let expired = Credential {
            expires_ms: Some(now_ms().saturating_sub(1)),
            ..credential()
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            revoked(Arc::clone(&store), expired),
        )
        .await
        .expect("an expired credential is over");
        let root = tokio::time::timeout(
            Duration::from_millis(200),
            revoked(store, Credential::default()),
        )
        .await;
        assert!(root.is_err(), "root's credential never ends");
    }
}
