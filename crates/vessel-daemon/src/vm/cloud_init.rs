//! cloud-init for VMs: the user's data is kept wrapped by the master key in the store (it may
//! hold passwords and keys); at each start the daemon builds the NoCloud seed image from it in
//! the VM's private run directory, QEMU opens it, and the file is removed once the VM runs.

use std::path::{Path, PathBuf};

use vessel_cloudinit::{MetaData, SeedFiles};
use vessel_secrets::WrappedSecret;

use crate::ctx::Ctx;
use crate::vm::model::{cloud_init_key, decode, CloudInitData, VmRecord};

/// Binds a VM's sealed cloud-init data to the VM, so it cannot be moved to another.
pub fn aad(vm: &str) -> Vec<u8> {
    format!("cloudinit:{vm}").into_bytes()
}

/// The guest's hostname from the VM's name: VM names may hold '_' and '.', hostnames may not.
pub fn hostname_for(vm: &str) -> String {
    let name: String = vm
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = name.trim_matches('-');
    if trimmed.is_empty() {
        "vessel-vm".into()
    } else {
        trimmed.to_string()
    }
}

/// The instance-id: stable for the VM's life (cloud-init runs its first-boot work once per id),
/// new when a VM of the same name is made again.
pub fn instance_id(vm: &VmRecord) -> String {
    format!("{}-{}", vm.spec.name, vm.created_at_ms)
}

/// Writes the VM's seed image into `run_dir` and returns its path, or `None` when the VM has no
/// cloud-init data.
pub async fn write_seed(
    ctx: &Ctx,
    vm: &VmRecord,
    run_dir: &Path,
) -> Result<Option<PathBuf>, String> {
    if !vm.spec.cloud_init {
        return Ok(None);
    }
    let name = &vm.spec.name;
    let kv = ctx
        .store
        .get(&cloud_init_key(name))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("VM {name} has cloud-init enabled but its data is missing"))?;
    let sealed: WrappedSecret = decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
    let plain = ctx
        .keyring
        .read()
        .await
        .unwrap(&sealed, &aad(name))
        .map_err(|e| format!("cannot open VM {name}'s cloud-init data: {e}"))?;
    let data: CloudInitData = serde_json::from_slice(&plain).map_err(|e| e.to_string())?;
    let files = SeedFiles {
        user_data: data.user_data.map(String::into_bytes),
        meta_data: MetaData {
            instance_id: instance_id(vm),
            local_hostname: hostname_for(name),
        },
        network_config: data.network_config.map(String::into_bytes),
        vendor_data: None,
    };
    std::fs::create_dir_all(run_dir).map_err(|e| e.to_string())?;
    let path = run_dir.join("cidata.iso");
    vessel_cloudinit::write_seed_image(&files, &path).map_err(|e| e.to_string())?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_valid_labels() {
        assert_eq!(hostname_for("web1"), "web1");
        assert_eq!(hostname_for("db_1.prod"), "db-1-prod");
        assert_eq!(hostname_for("_x_"), "x");
        assert_eq!(hostname_for(&"a".repeat(70)).len(), 63);
    }
}
