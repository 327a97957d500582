//! Why an operation failed, as a code and a message. Most failures are the operation failing
//! (`operation_failed`, 500); a quota refusal or a conflict that the worker (or a host
//! operation) finds keeps its own code, so a request that lost a race while it waited is
//! answered 409 like one refused at once, and the CLI exits 4. The code is recorded in the
//! operation (`error_code`) beside the message.

use vessel_api::{ApiError, ErrorCode, Operation};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub code: ErrorCode,
    pub message: String,
}

impl OpError {
    /// The operation could not be done (QEMU, a file, the store): `operation_failed`, 500.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::OperationFailed, message)
    }

    /// The VM is not in a state that allows this, or another request got there first: 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// The request's arguments do not fit the VM as it is now: 400.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// Something the operation needs no longer exists: 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The operation waited for something that did not happen in time: 504.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }

    /// Writes the failure into the operation's record.
    pub fn record(self, operation: &mut Operation) {
        operation.error = Some(self.message);
        operation.error_code = Some(self.code);
    }
}

impl From<String> for OpError {
    fn from(message: String) -> Self {
        OpError {
            code: ErrorCode::OperationFailed,
            message,
        }
    }
}

impl From<&str> for OpError {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

/// An API error keeps its code (internal errors become the operation failing).
impl From<ApiError> for OpError {
    fn from(e: ApiError) -> Self {
        let code = match e.code {
            ErrorCode::Internal => ErrorCode::OperationFailed,
            code => code,
        };
        OpError {
            code,
            message: e.message,
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refusal_keeps_its_code_and_plain_failures_are_operation_failed() {
        let quota: OpError = ApiError::new(ErrorCode::QuotaExceeded, "over").into();
        let mut op: Operation = serde_json::from_value(serde_json::json!({
            "id": "x", "vm": "a", "action": "edit", "status": "failed", "created_at_ms": 1
        }))
        .unwrap();
        assert_eq!(
            op.error_code(),
            ErrorCode::OperationFailed,
            "a record without a code"
        );
        quota.record(&mut op);
        assert_eq!(op.error_code(), ErrorCode::QuotaExceeded);
        assert_eq!(op.failure("edit of VM a").code.http_status(), 409);
        assert_eq!(op.failure("edit of VM a").message, "edit of VM a: over");
        let plain: OpError = "QEMU crashed".into();
        assert_eq!(plain.code, ErrorCode::OperationFailed);
        let internal: OpError = ApiError::internal("disk full").into();
        assert_eq!(internal.code, ErrorCode::OperationFailed);
    }
}
