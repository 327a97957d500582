//! Running iproute2/nftables tools with clear errors.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::{Error, Result};

/// Runs `program args...`, feeding `stdin` if given; returns stdout. A missing program gives
/// [`Error::ToolMissing`] with the package to install.
pub(crate) async fn run(
    program: &'static str,
    hint: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => Error::ToolMissing { program, hint },
        _ => Error::Spawn { program, source },
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|source| Error::Spawn { program, source })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn { program, source })?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            status: out
                .status
                .code()
                .map_or_else(|| "killed".to_string(), |c| c.to_string()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
