use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable class of an API error; the HTTP status follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range (400).
    InvalidArgument,
    /// The named object does not exist (404).
    NotFound,
    /// An object with that name already exists (409).
    AlreadyExists,
    /// The object is in a state that does not allow the action (409).
    Conflict,
    /// The request body is larger than the daemon accepts (413).
    PayloadTooLarge,
    /// The operation ran and failed; the message says why (500).
    OperationFailed,
    /// The daemon hit an unexpected internal error (500).
    Internal,
    /// The operation did not finish in time (504).
    Timeout,
    /// No credentials, or wrong, expired or revoked ones (401).
    Unauthenticated,
    /// The caller is known but lacks the permission the message names (403).
    PermissionDenied,
    /// The request would take a project over a quota; the message names the limit and the
    /// usage (409).
    QuotaExceeded,
    /// Too many failed sign-ins from this address; wait and try again (429).
    TooManyRequests,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::QuotaExceeded => 409,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::OperationFailed | ErrorCode::Internal => 500,
            ErrorCode::Timeout => 504,
        }
    }

    /// Process exit code the CLI uses for this class of error, so scripts can tell them apart.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::InvalidArgument | ErrorCode::PayloadTooLarge => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::AlreadyExists | ErrorCode::Conflict | ErrorCode::QuotaExceeded => 4,
            ErrorCode::Unauthenticated
            | ErrorCode::PermissionDenied
            | ErrorCode::TooManyRequests => 8,
            ErrorCode::OperationFailed => 5,
            ErrorCode::Timeout => 6,
            ErrorCode::Internal => 1,
        }
    }
}

/// An error as the API returns it: what went wrong and, where we know, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The body of every non-2xx response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}
