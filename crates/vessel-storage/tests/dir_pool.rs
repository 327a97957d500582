//! The directory pool against the real qemu-img.

mod common;

use std::time::Duration;

use common::*;
use vessel_storage::{CloneMode, DirPool, Format, PoolError, StoragePool, VolumeSpec};

const MIB: u64 = 1 << 20;

async fn pool(dir: &tempfile::TempDir) -> DirPool {
    DirPool::open("default", dir.path(), qemu_img())
        .await
        .unwrap()
}

fn linked(name: &str, backing: &str, size: Option<u64>) -> VolumeSpec {
    VolumeSpec {
        name: name.to_string(),
        format: Format::Qcow2,
        size,
        backing: Some(backing.to_string()),
    }
}

#[tokio::test]
async fn created_volumes_are_listed_with_format_sizes_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("data", Format::Raw, 8 * MIB))
        .await
        .unwrap();
    pool.create_volume(&VolumeSpec::new("root", Format::Qcow2, 64 * MIB))
        .await
        .unwrap();

    let volumes = pool.list_volumes().await.unwrap();
    let summary: Vec<_> = volumes
        .iter()
        .map(|v| (v.name.as_str(), v.format, v.virtual_size))
        .collect();
    assert_eq!(
        summary,
        [
            ("data", Format::Raw, 8 * MIB),
            ("root", Format::Qcow2, 64 * MIB)
        ]
    );
    assert_eq!(volumes[1].path, dir.path().join("root.qcow2"));
    assert!(volumes[1].allocated_size > 0 && volumes[1].allocated_size < MIB);
    assert_eq!(
        pool.volume_path("data").await.unwrap(),
        dir.path().join("data.raw")
    );
    assert_eq!(
        files_in(dir.path()),
        ["data.raw", "root.qcow2"],
        "no temporary files remain"
    );
}

#[tokio::test]
async fn creating_a_volume_whose_name_exists_fails_in_any_format() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("disk", Format::Qcow2, MIB))
        .await
        .unwrap();

    for format in Format::ALL {
        let err = pool
            .create_volume(&VolumeSpec::new("disk", format, 2 * MIB))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains("already exists"), "{err}");
    }
    assert_eq!(
        pool.volume("disk").await.unwrap().virtual_size,
        MIB,
        "untouched"
    );
}

#[tokio::test]
async fn names_that_could_escape_the_pool_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    for name in ["../escape", "a/b", "..", "bad\nname", "", ".hidden"] {
        let err = pool
            .create_volume(&VolumeSpec::new(name, Format::Raw, MIB))
            .await
            .unwrap_err();
        assert!(
            matches!(err, PoolError::InvalidName(_)),
            "{name:?}: {err:?}"
        );
        assert!(matches!(
            pool.delete_volume(name).await,
            Err(PoolError::InvalidName(_))
        ));
    }
    assert!(files_in(dir.path()).is_empty());
    assert!(files_in(dir.path().parent().unwrap())
        .iter()
        .all(|f| !f.starts_with("escape")));
}

#[tokio::test]
async fn a_linked_clone_records_its_backing_volume_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("debian", Format::Qcow2, 32 * MIB))
        .await
        .unwrap();
    let mut percents = Vec::new();
    let clone = pool
        .clone_volume("debian", "web1", CloneMode::Linked, &mut |p| {
            percents.push(p)
        })
        .await
        .unwrap();

    assert_eq!(clone.format, Format::Qcow2);
    assert_eq!(clone.virtual_size, 32 * MIB);
    assert_eq!(clone.backing_volume.as_deref(), Some("debian"));
    assert_eq!(clone.backing_chain.len(), 1);
    assert_eq!(clone.backing_chain[0].path, dir.path().join("debian.qcow2"));
    assert_eq!(percents, [100.0]);

    // A linked clone may be larger than its base (`--disk-size 20G` on a small image).
    let big = pool
        .create_volume(&linked("web2", "debian", Some(64 * MIB)))
        .await
        .unwrap();
    assert_eq!(big.virtual_size, 64 * MIB);
    let err = pool
        .create_volume(&linked("web3", "debian", Some(MIB)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("smaller than its backing volume"),
        "{err}"
    );
}

#[tokio::test]
async fn a_linked_clone_names_its_backing_file_relative_to_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("base", Format::Raw, MIB))
        .await
        .unwrap();
    let clone = pool
        .create_volume(&linked("child", "base", None))
        .await
        .unwrap();

    let info = qemu_img()
        .info(&clone.path, Some(Format::Qcow2))
        .await
        .unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("base.raw"));
    assert_eq!(info.backing_format, Some(Format::Raw));
}

#[tokio::test]
async fn a_full_clone_copies_the_data_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let base = pool
        .create_volume(&VolumeSpec::new("base", Format::Qcow2, 16 * MIB))
        .await
        .unwrap();
    guest_write(&base.path, Format::Qcow2, 0x77, 0, 8 * MIB);

    let mut percents = Vec::new();
    let copy = pool
        .clone_volume("base", "copy", CloneMode::Full, &mut |p| percents.push(p))
        .await
        .unwrap();

    assert_eq!(copy.backing_volume, None);
    assert!(copy.backing_chain.is_empty());
    assert_eq!(percents.last(), Some(&100.0));
    assert_eq!(
        guest_bytes(&copy.path, Format::Qcow2),
        guest_bytes(&base.path, Format::Qcow2)
    );
    pool.delete_volume("base")
        .await
        .expect("a full copy does not depend on its source");
}

#[tokio::test]
async fn deleting_a_backing_volume_is_refused_and_names_its_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("image", Format::Qcow2, 4 * MIB))
        .await
        .unwrap();
    pool.create_volume(&linked("vm-b", "image", None))
        .await
        .unwrap();
    pool.create_volume(&linked("vm-a", "image", None))
        .await
        .unwrap();
    pool.create_volume(&linked("vm-a-snap", "vm-a", None))
        .await
        .unwrap();

    let err = pool.delete_volume("image").await.unwrap_err();
    match &err {
        PoolError::InUse { dependents, .. } => assert_eq!(dependents, &["vm-a", "vm-b"]),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(err.to_string().contains("vm-a, vm-b"), "{err}");
    assert!(
        pool.volume("image").await.is_ok(),
        "the image is still there"
    );

    pool.delete_volume("vm-a-snap").await.unwrap();
    pool.delete_volume("vm-a").await.unwrap();
    pool.delete_volume("vm-b").await.unwrap();
    pool.delete_volume("image").await.unwrap();
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn a_create_that_qemu_img_rejects_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    for format in Format::ALL {
        // qemu-img 7.2 leaves an empty file behind when a raw create fails; the pool must not.
        let err = pool
            .create_volume(&VolumeSpec::new("huge", format, 1 << 62))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::QemuImg(_)), "{err:?}");
        assert!(err.to_string().contains("too large"), "{err}");
    }
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
    assert!(pool.list_volumes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_create_on_a_missing_backing_volume_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let err = pool
        .create_volume(&linked("orphan", "no-such-image", None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::NotFound { ref name, .. } if name == "no-such-image"),
        "{err:?}"
    );
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn bad_sizes_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    for size in [0, 1000] {
        let err = pool
            .create_volume(&VolumeSpec::new("odd", Format::Qcow2, size))
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::InvalidRequest(_)), "{err:?}");
    }
    let err = pool
        .create_volume(&VolumeSpec {
            size: None,
            ..VolumeSpec::new("nosize", Format::Raw, 0)
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a size"), "{err}");
    assert!(files_in(dir.path()).is_empty());
}

#[tokio::test]
async fn resize_grows_a_volume_and_refuses_to_shrink_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("disk", Format::Raw, 8 * MIB))
        .await
        .unwrap();

    let grown = pool.resize_volume("disk", 16 * MIB, false).await.unwrap();
    assert_eq!(grown.virtual_size, 16 * MIB);
    let err = pool
        .resize_volume("disk", 4 * MIB, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing to shrink"), "{err}");
    let shrunk = pool.resize_volume("disk", 4 * MIB, true).await.unwrap();
    assert_eq!(shrunk.virtual_size, 4 * MIB);
}

#[tokio::test]
async fn shrinking_a_volume_that_linked_clones_depend_on_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    pool.create_volume(&VolumeSpec::new("image", Format::Qcow2, 8 * MIB))
        .await
        .unwrap();
    pool.create_volume(&linked("vm", "image", None))
        .await
        .unwrap();

    let err = pool
        .resize_volume("image", 4 * MIB, true)
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::InUse { .. }), "{err:?}");
    assert_eq!(pool.volume("image").await.unwrap().virtual_size, 8 * MIB);
}

#[tokio::test]
async fn a_raw_volume_holding_a_qcow2_header_stays_raw() {
    // A guest can write anything to its raw disk, including a qcow2 header naming a host file as
    // backing file; the pool must keep treating the volume as raw.
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let raw = pool
        .create_volume(&VolumeSpec::new("guest", Format::Raw, 4 * MIB))
        .await
        .unwrap();
    let evil = dir.path().join("evil.tmp");
    qemu_img()
        .create(
            &evil,
            Format::Qcow2,
            Some(MIB),
            Some((std::path::Path::new("/etc/hostname"), Format::Raw)),
        )
        .await
        .unwrap();
    let header = std::fs::read(&evil).unwrap();
    std::fs::remove_file(&evil).unwrap();
    let mut disk = std::fs::read(&raw.path).unwrap();
    disk[..header.len()].copy_from_slice(&header);
    std::fs::write(&raw.path, disk).unwrap();

    let info = pool.volume("guest").await.unwrap();
    assert_eq!(info.format, Format::Raw);
    assert_eq!(info.virtual_size, 4 * MIB);
    assert!(info.backing_chain.is_empty());
}

#[tokio::test]
async fn capacity_reports_the_filesystem_space() {
    let dir = tempfile::tempdir().unwrap();
    let usage = pool(&dir).await.capacity().await.unwrap();
    assert!(usage.total > 0);
    assert!(usage.used <= usage.total);
    assert!(usage.available <= usage.total - usage.used);
}

#[tokio::test]
async fn temporary_files_left_by_a_crash_are_removed_when_the_pool_opens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".vessel-tmp-1234.qcow2"), b"half a volume").unwrap();
    std::fs::write(dir.path().join("keep.raw"), vec![0u8; 512]).unwrap();

    let pool = pool(&dir).await;

    assert_eq!(files_in(dir.path()), ["keep.raw"]);
    assert_eq!(pool.list_volumes().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_cancelled_full_clone_kills_qemu_img_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let base = pool
        .create_volume(&VolumeSpec::new("base", Format::Raw, 256 * MIB))
        .await
        .unwrap();
    guest_write(&base.path, Format::Raw, 0x33, 0, 256 * MIB);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut report = move |p: f64| {
        let _ = tx.send(p);
    };
    {
        let mut clone = Box::pin(pool.clone_volume("base", "copy", CloneMode::Full, &mut report));
        tokio::select! {
            result = &mut clone => panic!("the clone finished before it could be cancelled: {result:?}"),
            _ = rx.recv() => {}
        }
    }

    let needle = dir.path().to_string_lossy().into_owned();
    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(&needle)
            .is_empty()),
        "qemu-img still runs"
    );
    assert_eq!(files_in(dir.path()), ["base.raw"]);
}
