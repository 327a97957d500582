//! Errors of the CLI and how they are shown and turned into exit codes.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::client::ClientError;

/// Exit code for a bad command line (clap uses the same).
pub const EXIT_USAGE: i32 = 2;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line makes sense to clap but not to us.
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// Writing to the terminal or stdout failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// An operation the daemon reports as failed; `code` is its class (a conflict or quota
    /// refusal found while it ran exits 4, as when refused at once).
    #[error("operation {id} failed: {message}")]
    OperationFailed {
        id: String,
        code: vessel_api::ErrorCode,
        message: String,
    },
    /// An operation that was cancelled (Ctrl-C, or `vessel operation cancel`).
    #[error("operation {id} was cancelled; nothing was kept")]
    Cancelled { id: String },
}

impl CliError {
    pub fn usage(message: impl Into<String>, hint: Option<&str>) -> Self {
        CliError::Usage {
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        CliError::Io {
            what: what.into(),
            source,
        }
    }

    /// The process exit code: the API error's class, 7 for an unreachable daemon, 2 for usage.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Client(err) => err.exit_code(),
            CliError::Usage { .. } => EXIT_USAGE,
            CliError::Io { .. } => 1,
            CliError::OperationFailed { code, .. } => code.exit_code(),
            // As a shell reports a command stopped by Ctrl-C.
            CliError::Cancelled { .. } => 130,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::Client(err) => err.hint(),
            CliError::Usage { hint, .. } => hint.clone(),
            CliError::Io { .. } => None,
            CliError::OperationFailed { id, .. } => {
                Some(format!("see `vessel operation show {id}` for details"))
            }
            CliError::Cancelled { .. } => None,
        }
    }

    /// The lines printed to stderr: `error: ...` with the chain of causes, then `hint: ...`.
    pub fn render(&self) -> String {
        let mut text = format!("error: {self}");
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text.push('\n');
        if let Some(hint) = self.hint() {
            text.push_str(&format!("hint: {hint}\n"));
        }
        text
    }

    /// Prints the error to stderr.
    pub fn report(&self) {
        let _ = io::stderr().write_all(self.render().as_bytes());
    }
}

/// Turns a numeric exit code into an `ExitCode`, clamping out-of-range values to 1.
pub fn exit_code(code: i32) -> ExitCode {
    u8::try_from(code).map_or(ExitCode::FAILURE, ExitCode::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{parse_error_body, Unreachable};
    use std::path::PathBuf;
    use vessel_api::{ApiError, ErrorCode};

    fn api(code: ErrorCode) -> CliError {
        CliError::Client(ClientError::Api {
            status: code.http_status(),
            error: ApiError::new(code, "m"),
        })
    }

    #[test]
    fn api_error_codes_map_to_their_exit_codes() {
        assert_eq!(api(ErrorCode::InvalidArgument).exit_code(), 2);
        assert_eq!(api(ErrorCode::PayloadTooLarge).exit_code(), 2);
        assert_eq!(api(ErrorCode::NotFound).exit_code(), 3);
        assert_eq!(api(ErrorCode::AlreadyExists).exit_code(), 4);
        assert_eq!(api(ErrorCode::Conflict).exit_code(), 4);
        assert_eq!(api(ErrorCode::OperationFailed).exit_code(), 5);
        assert_eq!(api(ErrorCode::Timeout).exit_code(), 6);
        assert_eq!(api(ErrorCode::Internal).exit_code(), 1);
    }

    #[test]
    fn error_body_becomes_message_hint_and_exit_code() {
        let body = br#"{"error":{"code":"not_found","message":"VM 'web9' does not exist","hint":"list VMs with `vessel vm list`"}}"#;
        let error = parse_error_body(body).unwrap();
        let err = CliError::Client(ClientError::Api { status: 404, error });
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.render(),
            "error: VM 'web9' does not exist\nhint: list VMs with `vessel vm list`\n"
        );
    }

    #[test]
    fn unreachable_daemon_is_exit_7_and_names_the_socket() {
        for reason in [
            Unreachable::Missing,
            Unreachable::Refused,
            Unreachable::PermissionDenied,
        ] {
            let permission = matches!(reason, Unreachable::PermissionDenied);
            let err = CliError::Client(ClientError::Unreachable {
                socket: PathBuf::from("/tmp/x.sock"),
                reason,
            });
            assert_eq!(err.exit_code(), 7);
            let text = err.render();
            assert!(text.contains("/tmp/x.sock"), "{text}");
            if permission {
                assert!(text.contains("permission denied"), "{text}");
            } else {
                assert!(text.contains("vessel daemon"), "{text}");
                assert!(text.contains("VESSEL_SOCKET"), "{text}");
            }
        }
    }

    #[test]
    fn exit_codes_outside_u8_become_failure() {
        assert_eq!(exit_code(3), ExitCode::from(3));
        assert_eq!(exit_code(-1), ExitCode::FAILURE);
        assert_eq!(exit_code(300), ExitCode::FAILURE);
    }
}
