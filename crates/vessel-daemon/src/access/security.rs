//! Authentication, authorization and auditing of every request: one middleware in front of
//! every route, on every listener.
//!
//! 1. Who: the unix socket is the built-in `root` (admin everywhere). A TLS client shows a
//!    bearer token (`Authorization: Bearer vsl_...`) or a client certificate issued by the
//!    daemon's CA. Anything else is 401. Repeated failures from one address are 429 for a
//!    while; a valid credential from that address still passes. Over TLS, a connection counts
//!    for the identity of its first request, and streams are held per identity (`limits.rs`).
//! 2. May they: the route's row in [`vessel_auth::ROUTES`] names the permission and where the
//!    project comes from (the VM, the image, the body's `project`, the host). No row: denied
//!    (except for host admins, root included, whose requests fall through to the router's own
//!    404). Denied is 403, naming the missing permission; a denied request never reaches the
//!    handler.
//! 3. Audit: every mutating request (after it ran, with its result) and every denied one
//!    (401, 403, 429; reads refused as malformed, 400 and 413) is appended to the hash-chained
//!    audit log before the answer goes out. A 4xx is recorded as `denied: ...`, a 5xx as
//!    `error: ...`. Refusals are recorded compactly: fields clipped, and past a share per
//!    address and minute only counted, then summarized in one record (`refusals.rs`).
//!
//! The project of the object a route names is asked of the feature that owns it
//! (`targets.rs`); lists are filtered by the features that make them, with the caller's
//! [`vessel_auth::Visibility`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use vessel_api::{ApiError, ErrorCode, MAX_BODY_BYTES};
use vessel_audit::{AuditEntry, AuditLog};
use vessel_auth::routes::{lookup, Matched, Target};
use vessel_auth::{Identity, Permission, Scope, DEFAULT_PROJECT};

pub use crate::access::caller::{permission_denied, Caller};
use crate::access::tls::{Peer, TlsMaterial};
use crate::api::HttpError;
use crate::ctx::Ctx;
use crate::ctx::Service;

/// Failed sign-ins one address may make per window; after that its failures are answered 429
/// (a valid credential from it still passes).
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// What the middleware shares.
pub struct Security {
    pub ctx: Arc<Ctx>,
    pub audit: AuditLog,
    pub tls: Option<TlsMaterial>,
    pub auth_cache: crate::access::identities::AuthCache,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    refusals: Mutex<crate::access::refusals::Refusals>,
    /// Connections and held streams per address and identity (the TLS listener's limits).
    pub limits: Arc<crate::access::limits::Limits>,
}

impl Security {
    pub fn new(ctx: Arc<Ctx>, audit: AuditLog, tls: Option<TlsMaterial>) -> Security {
        Security {
            ctx,
            audit,
            tls,
            auth_cache: Default::default(),
            failures: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Default::default()),
            limits: Default::default(),
        }
    }

    fn blocked(&self, ip: IpAddr) -> bool {
        let failures = self.failures.lock();
        failures
            .get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn failed(&self, ip: IpAddr) {
        let mut failures = self.failures.lock();
        // Bounded: forget expired windows before the map can grow without end.
        if failures.len() > 10_000 {
            failures.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

/// Opens the audit log (its signing key `audit.key` is made at first start, 0600; the public
/// key goes to `audit.pub` for offline verification) and, if the remote API is on, the TLS
/// material.
pub async fn open(ctx: Arc<Ctx>, config: &crate::Config) -> anyhow::Result<Arc<Security>> {
    use anyhow::Context as _;
    let key_path = config.data_dir.join("audit.key");
    let key = vessel_audit::AuditKey::load_or_create(&key_path)
        .with_context(|| format!("cannot load the audit key {}", key_path.display()))?;
    let public = format!("{}\n", key.public_key_hex());
    std::fs::write(config.data_dir.join("audit.pub"), public).context("cannot write audit.pub")?;
    let audit = AuditLog::open(
        Arc::clone(&ctx.store),
        key,
        vessel_audit::AuditOptions::default(),
    )
    .await
    .context("cannot open the audit log")?;
    let tls = match config.listen {
        Some(_) => Some(TlsMaterial::load_or_create(
            &config.data_dir.join("tls"),
            &config.tls_names,
        )?),
        None => None,
    };
    let sec = Arc::new(Security::new(ctx, audit, tls));
    sec.prune_audit(config.audit_retention).await;
    tokio::spawn(housekeeping(Arc::downgrade(&sec), config.audit_retention));
    Ok(sec)
}

/// Once a minute: the summaries of refusals that were counted instead of recorded; once an
/// hour: audit retention. Ends with the daemon.
async fn housekeeping(sec: std::sync::Weak<Security>, retention: vessel_audit::Retention) {
    let mut tick = tokio::time::interval(crate::access::refusals::WINDOW);
    tick.tick().await;
    for round in 1u64.. {
        tick.tick().await;
        let Some(sec) = sec.upgrade() else { return };
        sec.flush_refusals(false).await;
        if round % 60 == 0 {
            sec.prune_audit(retention).await;
        }
    }
}

impl Security {
    /// Applies the audit retention policy; a failure is logged (the log stays whole).
    async fn prune_audit(&self, retention: vessel_audit::Retention) {
        match self.audit.prune(retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "audit retention pruned the oldest records"),
            Err(e) => tracing::warn!(error = %e, "could not apply the audit retention policy"),
        }
    }

    /// Appends the summaries of refusal windows that have ended (all of them with `all`).
    async fn flush_refusals(&self, all: bool) {
        let summaries = self.refusals.lock().flush(all);
        for entry in summaries {
            self.append_audit(entry).await;
        }
    }

    async fn append_audit(&self, entry: AuditEntry) {
        if let Err(e) = self.audit.append(entry).await {
            tracing::error!(error = %e, "could not append to the audit log");
        }
    }
}

/// Gives the unix socket (mode 0660) to `group`, so that its members may use it.
pub fn set_socket_group(path: &std::path::Path, group: &str) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(group)
        .map_err(|_| anyhow::anyhow!("socket_group {group:?} contains a NUL byte"))?;
    // SAFETY: all-zero bytes are a valid `group` (null pointers, zero gid) for getgrnam_r to fill.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and `buf` is as long as said.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        anyhow::bail!("socket_group {group:?} is not a group on this host; create it (groupadd {group}) or remove the setting");
    }
    let path_c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: path_c is a valid NUL-terminated path; -1 (as uid_t) leaves the owner unchanged.
    let rc = unsafe { libc::chown(path_c.as_ptr(), u32::MAX, entry.gr_gid) };
    if rc != 0 {
        anyhow::bail!(
            "cannot give {} to group {group:?}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// The bound TLS listener and its configuration.
pub struct Remote {
    pub listener: tokio::net::TcpListener,
    pub config: Arc<rustls::ServerConfig>,
    pub limits: Arc<crate::access::limits::Limits>,
}

/// Binds the remote API's address, if it is on.
pub async fn bind_remote(config: &crate::Config, sec: &Security) -> anyhow::Result<Option<Remote>> {
    use anyhow::Context as _;
    let (Some(addr), Some(tls)) = (config.listen, sec.tls.as_ref()) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        %addr,
        ca_fingerprint = %tls.ca_fingerprint,
        "remote API (TLS) listening; clients check this CA fingerprint"
    );
    Ok(Some(Remote {
        listener,
        config: Arc::clone(&tls.server_config),
        limits: Arc::clone(&sec.limits),
    }))
}

/// Every route (the API's and access's own), behind the security middleware.
pub fn app(api: axum::Router, sec: Arc<Security>) -> axum::Router {
    let own = crate::access::routes::router()
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::clone(&sec));
    api.merge(own)
        .layer(axum::middleware::from_fn_with_state(sec, middleware))
}

/// The OpenAPI paths of access's own routes, added to the API's document.
pub fn extend_openapi(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    doc.merge(crate::access::routes::AccessApi::openapi());
}

impl Security {
    /// Writes what is queued in the audit log and signs its newest record.
    pub async fn close(&self) {
        self.flush_refusals(true).await;
        if let Err(e) = self.audit.checkpoint().await {
            tracing::warn!(error = %e, "could not checkpoint the audit log at shutdown");
        }
    }
}

fn error_response(e: ApiError) -> Response {
    HttpError(e).into_response()
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message).with_hint(
        "sign in with `vessel remote add NAME https://HOST:PORT` and a token from `vessel token create`",
    )
}

/// The middleware: authenticate, authorize, run, audit.
pub async fn middleware(State(sec): State<Arc<Security>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(peer) = req.extensions().get::<Peer>().cloned() else {
        // Every listener tags its requests; a request without a tag came from somewhere we
        // do not know, so it is nobody.
        return error_response(unauthenticated("the request came from an unknown listener"));
    };
    let source = peer.source();
    let matched = lookup(method.as_str(), &path);
    let action = matched
        .as_ref()
        .map(|m| action_name(method.as_str(), m.route.path))
        .unwrap_or_else(|| format!("{method} {path}"));
    let audit = Audit {
        sec: &sec,
        source: source.clone(),
        action,
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let caller = match authenticate(&sec, &peer, bearer.as_deref()).await {
        Ok(caller) => caller,
        Err(e) => {
            audit.denied("-", &path, &e).await;
            return error_response(e);
        }
    };
    // TLS connections count for their identity from its first request (the unix socket has
    // no such limits: it stays usable whatever remote clients do).
    if let Some(connection) = req
        .extensions()
        .get::<Arc<crate::access::limits::Connection>>()
    {
        if let Err(message) = connection.sign_in(&caller.identity.name) {
            let e = ApiError::new(ErrorCode::TooManyRequests, message);
            audit.denied(&caller.identity.name, &path, &e).await;
            return error_response(e);
        }
    }
    let authorized = match authorize(&sec, &caller, matched.as_ref(), req).await {
        Ok((req, target)) => check_host_files(&sec, &caller, matched.as_ref(), req)
            .await
            .map(|req| (req, target)),
        Err(e) => Err(e),
    };
    let (req, target) = match authorized {
        Ok(ok) => ok,
        Err(e) => {
            audit.denied(&caller.identity.name, &path, &e).await;
            return error_response(e);
        }
    };
    let mutating = !matches!(method, Method::GET | Method::HEAD);
    let mut req = req;
    req.extensions_mut().insert(caller.clone());
    let mut stream = None;
    if matches!(peer, Peer::Tls { .. }) && holds_stream(&req) {
        match sec.limits.stream(&caller.identity.name) {
            // A console session outlives its response: the handler keeps the slot.
            Ok(slot) if req.headers().contains_key(header::UPGRADE) => {
                req.extensions_mut().insert(Arc::new(slot));
            }
            Ok(slot) => stream = Some(slot),
            Err(message) => {
                let e = ApiError::new(ErrorCode::TooManyRequests, message);
                audit.denied(&caller.identity.name, &path, &e).await;
                return error_response(e);
            }
        }
    }
    let response = next.run(req).await;
    if let Some(slot) = stream {
        return response.map(|body| Body::new(crate::access::limits::HeldStream::new(body, slot)));
    }
    // Reads are audited only when refused as malformed (the 401/403/429 cases were above).
    if !mutating && !matches!(response.status().as_u16(), 400 | 413) {
        return response;
    }
    let (response, result) = outcome(response).await;
    audit.record(&caller.identity.name, &target, result).await;
    response
}

/// Whether the request keeps its connection for a stream: `?follow=true` (events, console log)
/// or an upgrade (the console).
fn holds_stream(req: &Request) -> bool {
    let follows = req.uri().query().is_some_and(|q| {
        crate::api::Params::any(q)
            .flag("follow", false)
            .unwrap_or(false)
    });
    req.method() == Method::GET && (follows || req.headers().contains_key(header::UPGRADE))
}

/// The audit context of one request.
struct Audit<'a> {
    sec: &'a Security,
    source: String,
    action: String,
}

impl Audit<'_> {
    /// A refused request: recorded, unless its address (and identity) already had its share of
    /// records this minute; then it is only counted, and one summary record says how many.
    async fn denied(&self, identity: &str, target: &str, e: &ApiError) {
        let admitted = self.sec.refusals.lock().admit(&self.source, identity);
        let Some(summary) = admitted else {
            return;
        };
        if let Some(summary) = summary {
            self.sec.append_audit(summary).await;
        }
        let status = e.code.http_status();
        self.record(identity, target, format!("denied: {status} {}", e.message))
            .await;
    }

    /// Records what was asked and how it ended. Fields that echo the request are clipped: the
    /// audit log keeps what happened, not whatever bytes a caller chose to send.
    async fn record(&self, identity: &str, target: &str, result: String) {
        use crate::access::refusals::clip;
        let entry = AuditEntry::now(
            clip(identity, 128),
            self.source.clone(),
            clip(&self.action, 256),
            clip(target, 256),
            clip(&result, 512),
        );
        self.sec.append_audit(entry).await;
    }
}

/// `vms.start` for `POST /v1/vms/{name}/start`: the resource words of the template and a verb.
pub fn action_name(method: &str, template: &str) -> String {
    const VERBS: &[&str] = &[
        "start", "stop", "kill", "reboot", "pause", "resume", "revert", "resize", "clone",
        "export", "cancel", "rotate", "verify", "imports", "certs", "quota",
    ];
    let parts: Vec<&str> = template
        .trim_start_matches("/v1/")
        .trim_start_matches('/')
        .split('/')
        .filter(|p| !p.starts_with('{'))
        .collect();
    let last_is_param = template.ends_with('}');
    let (resource, verb) = match parts.split_last() {
        Some((last, rest)) if VERBS.contains(last) && !last_is_param && !rest.is_empty() => {
            (rest.join("."), Some(*last))
        }
        _ => (parts.join("."), None),
    };
    let verb = match (method, verb) {
        (_, Some(v)) => v.to_string(),
        ("GET", None) if last_is_param => "get".into(),
        ("GET", None) => "list".into(),
        ("POST", None) => "create".into(),
        ("PUT", None) => "set".into(),
        ("PATCH", None) => "edit".into(),
        ("DELETE", None) => "delete".into(),
        (other, None) => other.to_ascii_lowercase(),
    };
    format!("{resource}.{verb}")
}

async fn authenticate(
    sec: &Security,
    peer: &Peer,
    bearer: Option<&str>,
) -> Result<Caller, ApiError> {
    let (addr, client_cert) = match peer {
        Peer::Unix => {
            return Ok(Caller {
                identity: Identity::root(),
                source: peer.source(),
                method: "unix",
                credential: Default::default(),
            })
        }
        Peer::Tls { addr, client_cert } => (addr, client_cert),
    };
    let ip = addr.ip();
    // A blocked address still has its credentials checked: a valid one passes, so that users
    // sharing an address (a NAT, a jump host) with someone failing are never locked out.
    // Secrets are 256-bit random, so the limit is not what stops guessing; it keeps a failing
    // client's noise down (429 without counting further).
    let blocked = sec.blocked(ip);
    let refuse = |e: ApiError| {
        if blocked {
            too_many_failures(ip)
        } else {
            sec.failed(ip);
            e
        }
    };
    let store = sec.ctx.store.as_ref();
    let result = match (bearer, client_cert) {
        (Some(token), _) => {
            crate::access::identities::authenticate_token(store, &sec.auth_cache, token)
                .await
                .map(|(id, credential)| (id, credential, "token"))
        }
        (None, Some(fp)) => {
            crate::access::identities::authenticate_cert(store, &sec.auth_cache, fp)
                .await
                .map(|(id, credential)| (id, credential, "certificate"))
        }
        (None, None) => {
            return Err(refuse(unauthenticated(
                "no credentials: send a bearer token or a client certificate",
            )));
        }
    };
    match result {
        Ok((identity, credential, method)) => Ok(Caller {
            identity,
            source: peer.source(),
            method,
            credential,
        }),
        Err(crate::access::identities::AuthFailure::Store(e)) => Err(e),
        Err(failure) => {
            tracing::info!(%addr, reason = %failure, "sign-in refused");
            Err(refuse(unauthenticated(failure.to_string())))
        }
    }
}

fn too_many_failures(ip: IpAddr) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyRequests,
        format!("too many failed sign-ins from {ip}; wait a minute and try again"),
    )
    .with_hint("a valid token or client certificate is still accepted from this address")
}

/// Checks the route's permission; returns the request (its body re-attached if it was read
/// for the project) and the audit target.
async fn authorize(
    sec: &Security,
    caller: &Caller,
    matched: Option<&Matched>,
    req: Request,
) -> Result<(Request, String), ApiError> {
    let path = req.uri().path().to_string();
    let Some(matched) = matched else {
        // Not in the permission table. Root's request goes on to the router (which answers 404
        // or 405); everybody else is refused, so a new route is closed until it has a row.
        if caller
            .identity
            .check(Permission::HostAdmin, Scope::Host)
            .is_ok()
        {
            return Ok((req, path));
        }
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "{} {path} has no entry in the permission table, so it is denied",
                req.method()
            ),
        ));
    };
    let Some(permission) = matched.route.permission else {
        return Ok((req, path));
    };
    // A caller with the permission on the host has it in every project: no need to look up the
    // target's project (that lookup waits for the VM view to catch up with the store).
    let everywhere = caller.identity.check(permission, Scope::Host).is_ok();
    let (req, resolved) = resolve(sec, matched, req, everywhere).await?;
    let Resolved {
        project,
        public,
        target,
    } = resolved;
    // An object in a project the caller may not read is, to that caller, missing: checked as
    // a lookup of a missing object (the permission in any project), then answered with the
    // handler's own 404. A 403 for an existing object and a 404 for a missing one would tell
    // that it exists. Everyone sees a public image, so a refused change of one is a 403.
    let hidden = match project.as_deref() {
        Some(p) => !public && !may_see(&caller.identity, matched.route.target, p),
        None => false,
    };
    let project = if hidden { None } else { project };
    let scope = match (matched.route.target, project.as_deref()) {
        (Target::Host, _) => Scope::Host,
        (_, Some(project)) => Scope::Project(project),
        (_, None) => Scope::AnyProject,
    };
    caller
        .identity
        .check(permission, scope)
        .map_err(permission_denied)?;
    match hidden
        .then(|| crate::access::targets::not_found(matched))
        .flatten()
    {
        Some(e) => Err(e),
        None => Ok((req, target)),
    }
}

/// Whether the caller may know that an object of `target`'s kind in `project` exists: it may
/// read such objects there.
fn may_see(identity: &Identity, target: Target, project: &str) -> bool {
    // Projects, bodies of creates: what they name is the request's own.
    target
        .read_permission()
        .is_none_or(|read| identity.check(read, Scope::Project(project)).is_ok())
}

/// Checks the request's fields that name host files (`vessel_auth::host_files`): each needs
/// `host.files` or a file inside an allow-listed directory. Returns the request with its body
/// put back.
async fn check_host_files(
    sec: &Security,
    caller: &Caller,
    matched: Option<&Matched>,
    req: Request,
) -> Result<Request, ApiError> {
    use vessel_auth::host_files::{named_files, HOST_FIELDS};
    let Some(m) = matched else { return Ok(req) };
    let route = m.route;
    let has_fields = HOST_FIELDS
        .iter()
        .any(|f| f.method == route.method && f.path == route.path);
    let holds = caller
        .identity
        .check(Permission::HostFiles, Scope::Host)
        .is_ok();
    if !has_fields || holds {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = read_limited(body).await?;
    // A body that is not JSON names nothing; the handler refuses it.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        for (field, path) in named_files(route.method, route.path, &value) {
            crate::storage::host_paths::authorize(&sec.ctx.config, &caller.identity, field, path)?;
        }
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// What a request acts on, as the middleware needs it.
struct Resolved {
    /// The project (`None`: no single one, or an object that does not exist).
    project: Option<String>,
    /// A public image: everyone may know it exists.
    public: bool,
    /// The audit target: the path, plus the name of what a create makes.
    target: String,
}

impl Resolved {
    fn new(project: Option<String>, target: String) -> Resolved {
        Resolved {
            project,
            public: false,
            target,
        }
    }
}

/// The project a request acts on and its audit target; the request comes back with its body
/// put back if it was read.
async fn resolve(
    sec: &Security,
    matched: &Matched,
    req: Request,
    everywhere: bool,
) -> Result<(Request, Resolved), ApiError> {
    let path = req.uri().path().to_string();
    match matched.route.target {
        Target::Host | Target::Any if creates(matched) => {
            let (req, _, target) = peek_body(req, path).await?;
            Ok((req, Resolved::new(None, target)))
        }
        Target::Host | Target::Any => Ok((req, Resolved::new(None, path))),
        Target::Project => {
            let project = matched.param("name").map(str::to_string);
            Ok((req, Resolved::new(project, path)))
        }
        Target::Body => {
            let (req, project, target) = peek_body(req, path).await?;
            Ok((req, Resolved::new(Some(project), target)))
        }
        Target::Vm | Target::Image | Target::Volume | Target::Network | Target::Operation
            if everywhere =>
        {
            Ok((req, Resolved::new(None, path)))
        }
        Target::Vm | Target::Image | Target::Volume | Target::Network | Target::Operation => {
            let service = Service {
                ctx: Arc::clone(&sec.ctx),
            };
            let owner = crate::access::targets::owner(&service, matched).await?;
            let public = owner.as_ref().is_some_and(|o| o.public);
            let project = match owner {
                // A public image is read from any project (deleting it needs a host admin).
                Some(o) if o.public && matched.route.method == "GET" => None,
                found => found.map(|o| o.project),
            };
            Ok((
                req,
                Resolved {
                    project,
                    public,
                    target: path,
                },
            ))
        }
    }
}

/// Whether the route creates something named in its body (`POST /v1/users`...).
fn creates(matched: &Matched) -> bool {
    matched.route.method == "POST" && action_name("POST", matched.route.path).ends_with(".create")
}

/// Reads the body for its `project` and `name`; returns the request with the body put back,
/// the project, and the audit target (the path, plus the name of what is created).
async fn peek_body(req: Request, path: String) -> Result<(Request, String, String), ApiError> {
    let (parts, body) = req.into_parts();
    let bytes = read_limited(body).await?;
    let (project, name) = body_project(&bytes);
    let target = match name {
        Some(name) => format!("{path}/{name}"),
        None => path,
    };
    Ok((
        Request::from_parts(parts, Body::from(bytes)),
        project,
        target,
    ))
}

/// Reads a body up to the API's limit (the handler would refuse a larger one anyway).
async fn read_limited(body: Body) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Err(e) => Err(ApiError::invalid(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// The `project` (default `default`) and `name` of a JSON body. A body that is not JSON is
/// left for the handler to refuse; its project is then `default`.
pub fn body_project(bytes: &[u8]) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Peek {
        project: Option<String>,
        name: Option<String>,
    }
    match serde_json::from_slice::<Peek>(bytes) {
        Ok(peek) => (
            peek.project.unwrap_or_else(|| DEFAULT_PROJECT.to_string()),
            peek.name,
        ),
        Err(_) => (DEFAULT_PROJECT.to_string(), None),
    }
}

/// The audit result of a response; error bodies (small JSON) are read for their message.
async fn outcome(response: Response) -> (Response, String) {
    let status = response.status();
    if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
        return (response, "ok".into());
    }
    let (parts, body) = response.into_parts();
    let bytes = read_limited(body).await.unwrap_or_default();
    let message = serde_json::from_slice::<vessel_api::ErrorBody>(&bytes)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
    // A 4xx is the request refused (bad input, no permission, over quota, conflict): nothing
    // was changed. A 5xx is the daemon failing while carrying it out.
    let kind = if status.is_client_error() {
        "denied"
    } else {
        "error"
    };
    let result = format!("{kind}: {} {message}", status.as_u16());
    (Response::from_parts(parts, Body::from(bytes)), result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_named_after_their_routes() {
        assert_eq!(action_name("POST", "/v1/vms/{name}/start"), "vms.start");
        assert_eq!(action_name("POST", "/v1/vms"), "vms.create");
        assert_eq!(action_name("DELETE", "/v1/vms/{name}"), "vms.delete");
        assert_eq!(action_name("PATCH", "/v1/vms/{name}"), "vms.edit");
        assert_eq!(action_name("GET", "/v1/vms"), "vms.list");
        assert_eq!(action_name("GET", "/v1/vms/{name}"), "vms.get");
        assert_eq!(
            action_name("POST", "/v1/vms/{name}/snapshots"),
            "vms.snapshots.create"
        );
        assert_eq!(
            action_name("POST", "/v1/vms/{name}/snapshots/{snapshot}/revert"),
            "vms.snapshots.revert"
        );
        assert_eq!(
            action_name("PUT", "/v1/projects/{name}/quota"),
            "projects.quota"
        );
        assert_eq!(
            action_name("POST", "/v1/host/master-key/rotate"),
            "host.master-key.rotate"
        );
        assert_eq!(action_name("GET", "/metrics"), "metrics.list");
    }

    #[test]
    fn the_socket_goes_to_an_existing_group_and_an_unknown_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"").unwrap();
        set_socket_group(&path, "root").unwrap();
        let err = set_socket_group(&path, "no-such-group-xyz").unwrap_err();
        assert!(err.to_string().contains("groupadd"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_body_yields_a_project_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = body_project(&bytes);
        }
    }

    #[test]
    fn a_follow_or_an_upgrade_holds_a_stream() {
        let get = |uri: &str| {
            Request::builder()
                .method("GET")
                .uri(uri)
                .body(Body::empty())
                .unwrap()
        };
        assert!(holds_stream(&get("/v1/events?follow")));
        assert!(holds_stream(&get("/v1/events?vm=a&follow=1")));
        assert!(holds_stream(&get("/v1/vms/a/console/log?follow=true")));
        assert!(!holds_stream(&get("/v1/events?follow=false")));
        assert!(!holds_stream(&get("/v1/events?followers=true")));
        assert!(!holds_stream(&get("/v1/events")));
        let mut upgrade = get("/v1/vms/a/console");
        upgrade
            .headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(holds_stream(&upgrade));
    }

    #[test]
    fn the_body_names_the_project_or_default() {
        assert_eq!(
            body_project(br#"{"name":"a","project":"dev"}"#),
            ("dev".into(), Some("a".into()))
        );
        assert_eq!(body_project(b"{}"), ("default".into(), None));
        assert_eq!(body_project(b"not json"), ("default".into(), None));
    }
}
