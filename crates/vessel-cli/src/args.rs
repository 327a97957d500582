//! Arguments and argument handling several nouns share: `--no-wait`, paths given on the
//! command line (made absolute here, since the daemon runs elsewhere), sources that are a file
//! or a URL.

use std::path::{Component, Path, PathBuf};

use clap::Args;

use crate::CliError;

/// Don't wait for the operation.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Return at once with the operation's id instead of waiting for it to finish.
    ///
    /// Follow the operation with `vessel operation show ID`.
    #[arg(long)]
    pub no_wait: bool,
}

/// Makes a path given on the command line absolute against `cwd`, dropping `.` components.
/// `..` is kept: resolving it without the file system could change the meaning with symlinks.
pub fn absolute_path(path: &Path, cwd: &Path) -> Result<String, CliError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let cleaned: PathBuf = joined
        .components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect();
    cleaned.into_os_string().into_string().map_err(|raw| {
        CliError::usage(
            format!("the path {raw:?} is not valid UTF-8"),
            Some("rename the file or link to it from a UTF-8 path"),
        )
    })
}

pub(crate) fn optional_path(
    path: &Option<PathBuf>,
    cwd: &Path,
) -> Result<Option<String>, CliError> {
    path.as_deref().map(|p| absolute_path(p, cwd)).transpose()
}

pub(crate) fn current_dir() -> Result<PathBuf, CliError> {
    std::env::current_dir().map_err(|err| {
        CliError::io(
            "cannot read the current directory to make relative paths absolute",
            err,
        )
    })
}

/// A path given on the command line, made absolute against the current directory.
pub(crate) fn absolute_from_cwd(path: &Path) -> Result<String, CliError> {
    absolute_path(path, &current_dir()?)
}

/// An import source: a URL as given, or a file path made absolute.
pub(crate) fn source_arg(source: &str) -> Result<String, CliError> {
    if source.contains("://") {
        return Ok(source.to_string());
    }
    absolute_from_cwd(Path::new(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_absolute_without_dot_components() {
        let cwd = Path::new("/home/a");
        assert_eq!(
            absolute_path(Path::new("./x/./y.img"), cwd).unwrap(),
            "/home/a/x/y.img"
        );
        assert_eq!(
            absolute_path(Path::new("../b"), cwd).unwrap(),
            "/home/a/../b"
        );
        assert_eq!(absolute_path(Path::new("/srv/z"), cwd).unwrap(), "/srv/z");
    }

    #[test]
    fn import_sources_keep_urls_and_make_files_absolute() {
        let url = "https://example.org/debian.qcow2";
        assert_eq!(source_arg(url).unwrap(), url);
        let file = source_arg("disk.qcow2").unwrap();
        assert!(
            file.starts_with('/') && file.ends_with("/disk.qcow2"),
            "{file}"
        );
    }
}
