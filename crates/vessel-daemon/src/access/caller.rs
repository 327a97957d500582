//! Who is asking: what the security middleware hands to the routes that need the caller, and
//! the refusal of a missing permission. Its own file so that every feature's routes can use it
//! without depending on the middleware, which depends on every feature.

use vessel_api::{ApiError, ErrorCode};
use vessel_auth::Identity;

/// The authenticated caller of a request, for handlers that need it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub source: String,
    /// `unix`, `token` or `certificate`.
    pub method: &'static str,
    /// What the sign-in rests on: a stream ends when it does (`identities::revoked`).
    pub credential: crate::access::identities::Credential,
}

/// The 403 of a missing permission (it names the permission, the place and the role held).
pub fn permission_denied(denied: vessel_auth::Denied) -> ApiError {
    ApiError::new(ErrorCode::PermissionDenied, denied.to_string()).with_hint(
        "ask an admin for a role that grants it (`vessel user create --grant PROJECT=ROLE`)",
    )
}
