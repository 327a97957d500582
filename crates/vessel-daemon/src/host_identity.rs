//! This daemon's host name: the name its host-local objects are keyed by in the store
//! (`pools/<host>/...`, see ARCHITECTURE.md's store layout). Chosen at the data dir's first
//! start (`--host-name` / `host_name`, else the system hostname) and kept in `<data_dir>/host`,
//! so that it stays the same when the system hostname changes: a cluster's store must never see
//! one host's pools and keys turn into another host's.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

/// The file in the data dir that names the host.
const HOST_FILE: &str = "host";

/// The host name of the data dir: the one recorded there, or (at first start) `requested`, else
/// the system hostname, which is then recorded. A `requested` name that differs from the
/// recorded one is refused: the store's keys already carry the recorded one.
pub fn resolve(data_dir: &Path, requested: Option<&str>) -> anyhow::Result<String> {
    let file = data_dir.join(HOST_FILE);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let recorded = text.trim().to_string();
            check("the host name recorded in the data dir", &recorded).with_context(|| {
                format!(
                    "{} is damaged; write the host's name into it",
                    file.display()
                )
            })?;
            if let Some(wanted) = requested.filter(|wanted| *wanted != recorded) {
                anyhow::bail!(
                    "this data dir ({}) belongs to host {recorded:?}, not {wanted:?}: the host name is fixed at the first start, and the store's pools and volume keys are recorded under it; start with --host-name {recorded} (or host_name = \"{recorded}\"), or leave the setting out",
                    data_dir.display()
                );
            }
            Ok(recorded)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = match requested {
                Some(name) => {
                    check("--host-name", name)?;
                    name.to_string()
                }
                None => {
                    let system = system_hostname();
                    check("the system hostname", &system).context(
                        "give this host a name of its own with --host-name NAME (or host_name in the config file)",
                    )?;
                    system
                }
            };
            record(&file, &name)?;
            tracing::info!(host = %name, "this host's name is recorded in {}", file.display());
            Ok(name)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn check(what: &str, name: &str) -> anyhow::Result<()> {
    vessel_core::validate_name("host", name).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// The kernel's hostname.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Written whole or not at all (a temporary file renamed over), so a crash never leaves a
/// half-written name that the next start would take.
fn record(file: &Path, name: &str) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut out =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    out.write_all(format!("{name}\n").as_bytes())?;
    out.sync_all()?;
    std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_name_is_kept_and_another_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve(dir.path(), Some("alpha")).unwrap(), "alpha");
        // Later starts: the same name, given or not.
        assert_eq!(resolve(dir.path(), None).unwrap(), "alpha");
        assert_eq!(resolve(dir.path(), Some("alpha")).unwrap(), "alpha");
        let err = resolve(dir.path(), Some("beta")).unwrap_err().to_string();
        assert!(err.contains("belongs to host \"alpha\""), "{err}");
        assert!(err.contains("--host-name alpha"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(HOST_FILE)).unwrap(),
            "alpha\n"
        );
    }

    #[test]
    fn without_a_name_the_system_hostname_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let name = resolve(dir.path(), None).unwrap();
        assert_eq!(name, system_hostname());
        assert_eq!(resolve(dir.path(), None).unwrap(), name);
    }

    #[test]
    fn a_bad_name_is_refused_and_nothing_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path(), Some("a/b")).unwrap_err().to_string();
        assert!(err.contains("--host-name"), "{err}");
        assert!(!dir.path().join(HOST_FILE).exists());
    }
}
