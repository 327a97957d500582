//! The qemu-img wrapper against the real qemu-img.

mod common;

use std::time::Duration;

use common::*;
use vessel_storage::{detect_format, ConvertJob, Format, QemuImg, QemuImgError};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn info_of_a_new_raw_image_reports_format_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "disk.raw");
    let q = qemu_img();
    q.create(&path, Format::Raw, Some(8 * MIB), None)
        .await
        .unwrap();

    let info = q.info(&path, Some(Format::Raw)).await.unwrap();
    assert_eq!(info.format, Format::Raw);
    assert_eq!(info.virtual_size, 8 * MIB);
    assert!(info.actual_size.is_some());
    assert_eq!(info.backing_file, None);
    assert!(!info.encrypted && !info.dirty && !info.corrupt);
}

#[tokio::test]
async fn info_of_a_new_qcow2_image_reports_format_and_size_without_being_told_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "disk.qcow2");
    let q = qemu_img();
    q.create(&path, Format::Qcow2, Some(64 * MIB), None)
        .await
        .unwrap();

    assert_eq!(detect_format(&path).await.unwrap(), Format::Qcow2);
    let info = q.info(&path, None).await.unwrap();
    assert_eq!(info.format, Format::Qcow2);
    assert_eq!(info.virtual_size, 64 * MIB);
    assert_eq!(info.cluster_size, Some(65536));
    assert!(
        info.actual_size.unwrap() < MIB,
        "a new qcow2 is thin: {info:?}"
    );
}

#[tokio::test]
async fn a_linked_clone_shows_its_backing_file_in_info_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let base = path_in(&dir, "base.raw");
    let clone = path_in(&dir, "clone.qcow2");
    let q = qemu_img();
    q.create(&base, Format::Raw, Some(4 * MIB), None)
        .await
        .unwrap();
    q.create(&clone, Format::Qcow2, None, Some((&base, Format::Raw)))
        .await
        .unwrap();

    let info = q.info(&clone, Some(Format::Qcow2)).await.unwrap();
    assert_eq!(
        info.virtual_size,
        4 * MIB,
        "size comes from the backing file"
    );
    assert_eq!(info.backing_path.as_deref(), Some(base.as_path()));
    assert_eq!(info.backing_format, Some(Format::Raw));

    let chain = q.backing_chain(&clone, Some(Format::Qcow2)).await.unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].path, base);
    assert_eq!(chain[1].format, Format::Raw);
}

#[tokio::test]
async fn writes_to_a_linked_clone_do_not_change_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let base = path_in(&dir, "base.qcow2");
    let clone = path_in(&dir, "clone.qcow2");
    let q = qemu_img();
    q.create(&base, Format::Qcow2, Some(4 * MIB), None)
        .await
        .unwrap();
    guest_write(&base, Format::Qcow2, 0x11, 0, MIB);
    q.create(&clone, Format::Qcow2, None, Some((&base, Format::Qcow2)))
        .await
        .unwrap();
    let base_file_before = std::fs::read(&base).unwrap();

    guest_write(&clone, Format::Qcow2, 0xab, 512 * 1024, 64 * 1024);

    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_file_before,
        "the base file's bytes changed"
    );
    let base_view = guest_bytes(&base, Format::Qcow2);
    let clone_view = guest_bytes(&clone, Format::Qcow2);
    assert!(base_view[512 * 1024..576 * 1024].iter().all(|b| *b == 0x11));
    assert!(clone_view[512 * 1024..576 * 1024]
        .iter()
        .all(|b| *b == 0xab));
    assert_eq!(
        clone_view[..512 * 1024],
        base_view[..512 * 1024],
        "unwritten data comes from the base"
    );
}

#[tokio::test]
async fn convert_reports_increasing_progress_that_ends_at_100() {
    let dir = tempfile::tempdir().unwrap();
    let src = path_in(&dir, "src.raw");
    let dst = path_in(&dir, "dst.qcow2");
    let q = qemu_img();
    q.create(&src, Format::Raw, Some(64 * MIB), None)
        .await
        .unwrap();
    guest_write(&src, Format::Raw, 0x5a, 0, 48 * MIB);

    let mut seen = Vec::new();
    let job = ConvertJob::new(&src, Format::Raw, &dst, Format::Qcow2);
    q.convert(&job, |p| seen.push(p)).await.unwrap();

    assert!(seen.len() > 2, "expected several updates, got {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "not increasing: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&100.0));
    assert_eq!(
        guest_bytes(&dst, Format::Qcow2),
        guest_bytes(&src, Format::Raw)
    );
}

#[tokio::test]
async fn compressed_convert_makes_a_smaller_qcow2_with_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = path_in(&dir, "src.raw");
    let dst = path_in(&dir, "dst.qcow2");
    let q = qemu_img();
    q.create(&src, Format::Raw, Some(8 * MIB), None)
        .await
        .unwrap();
    guest_write(&src, Format::Raw, 0x5a, 0, 8 * MIB);

    let mut job = ConvertJob::new(&src, Format::Raw, &dst, Format::Qcow2);
    job.compress = true;
    q.convert(&job, |_| {}).await.unwrap();

    assert!(std::fs::metadata(&dst).unwrap().len() < MIB);
    assert_eq!(
        guest_bytes(&dst, Format::Qcow2),
        guest_bytes(&src, Format::Raw)
    );
}

#[tokio::test]
async fn resize_grows_and_refuses_to_shrink_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "disk.qcow2");
    let q = qemu_img();
    q.create(&path, Format::Qcow2, Some(16 * MIB), None)
        .await
        .unwrap();

    q.resize(&path, Format::Qcow2, 32 * MIB, false)
        .await
        .unwrap();
    assert_eq!(q.info(&path, None).await.unwrap().virtual_size, 32 * MIB);

    let err = q
        .resize(&path, Format::Qcow2, 8 * MIB, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, QemuImgError::ShrinkRefused { current, requested, .. }
        if current == 32 * MIB && requested == 8 * MIB)
    );
    assert!(err.to_string().contains("shrink=true"), "{err}");
    assert_eq!(q.info(&path, None).await.unwrap().virtual_size, 32 * MIB);

    q.resize(&path, Format::Qcow2, 8 * MIB, true).await.unwrap();
    assert_eq!(q.info(&path, None).await.unwrap().virtual_size, 8 * MIB);
}

#[tokio::test]
async fn check_of_a_healthy_qcow2_is_clean_and_raw_has_nothing_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "disk.qcow2");
    let raw = path_in(&dir, "disk.raw");
    let q = qemu_img();
    q.create(&path, Format::Qcow2, Some(4 * MIB), None)
        .await
        .unwrap();
    q.create(&raw, Format::Raw, Some(4 * MIB), None)
        .await
        .unwrap();

    let report = q.check(&path, Format::Qcow2).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(report.image_end_offset.is_some());
    assert!(matches!(
        q.check(&raw, Format::Raw).await,
        Err(QemuImgError::Unsupported { .. })
    ));
}

#[tokio::test]
async fn measure_reports_what_a_copy_needs() {
    let dir = tempfile::tempdir().unwrap();
    let src = path_in(&dir, "src.raw");
    let q = qemu_img();
    q.create(&src, Format::Raw, Some(16 * MIB), None)
        .await
        .unwrap();
    guest_write(&src, Format::Raw, 0x5a, 0, 4 * MIB);

    let m = q.measure(&src, Format::Raw, Format::Qcow2).await.unwrap();
    assert!(m.required >= 4 * MIB && m.required < 16 * MIB, "{m:?}");
    assert!(m.fully_allocated >= 16 * MIB, "{m:?}");
}

#[tokio::test]
async fn validate_accepts_a_healthy_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "good.qcow2");
    let q = qemu_img();
    q.create(&path, Format::Qcow2, Some(4 * MIB), None)
        .await
        .unwrap();
    guest_write(&path, Format::Qcow2, 0x42, 0, MIB);

    let info = q.validate_image(&path).await.unwrap();
    assert_eq!(info.format, Format::Qcow2);
}

#[tokio::test]
async fn validate_rejects_a_qcow2_cut_in_half() {
    let dir = tempfile::tempdir().unwrap();
    let full = path_in(&dir, "full.qcow2");
    let cut = path_in(&dir, "cut.qcow2");
    let q = qemu_img();
    q.create(&full, Format::Qcow2, Some(64 * MIB), None)
        .await
        .unwrap();
    guest_write(&full, Format::Qcow2, 0x42, 0, 2 * MIB);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let err = q.validate_image(&cut).await.unwrap_err();
    assert!(matches!(err, QemuImgError::InvalidImage { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("cut.qcow2") && message.contains("truncated"),
        "{message}"
    );
}

#[tokio::test]
async fn validate_rejects_a_qcow2_whose_header_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let full = path_in(&dir, "full.qcow2");
    let cut = path_in(&dir, "stub.qcow2");
    let q = qemu_img();
    q.create(&full, Format::Qcow2, Some(4 * MIB), None)
        .await
        .unwrap();
    std::fs::write(&cut, &std::fs::read(&full).unwrap()[..100]).unwrap();

    let err = q.validate_image(&cut).await.unwrap_err();
    assert!(matches!(err, QemuImgError::InvalidImage { .. }), "{err:?}");
    assert!(err.to_string().contains("header too short"), "{err}");
}

#[tokio::test]
async fn validate_rejects_a_text_file_named_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "notes.qcow2");
    std::fs::write(&path, "these are not the bytes you are looking for\n").unwrap();

    let err = qemu_img().validate_image(&path).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, QemuImgError::InvalidImage { .. }), "{err:?}");
    assert!(
        message.contains("notes.qcow2") && message.contains("not a qcow2 image"),
        "{message}"
    );
}

#[tokio::test]
async fn validate_rejects_a_text_file_that_claims_to_be_raw() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "page.img");
    std::fs::write(&path, "<html>404 Not Found</html>\n").unwrap();

    let err = qemu_img().validate_image(&path).await.unwrap_err();
    assert!(err.to_string().contains("multiple of 512"), "{err}");
}

#[tokio::test]
async fn validate_rejects_an_image_with_a_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = path_in(&dir, "base.raw");
    let overlay = path_in(&dir, "overlay.qcow2");
    let q = qemu_img();
    q.create(&base, Format::Raw, Some(MIB), None).await.unwrap();
    q.create(&overlay, Format::Qcow2, None, Some((&base, Format::Raw)))
        .await
        .unwrap();

    let err = q.validate_image(&overlay).await.unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
}

#[tokio::test]
async fn a_failed_create_reports_qemu_img_stderr_and_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_in(&dir, "huge.qcow2");
    let err = qemu_img()
        .create(&path, Format::Qcow2, Some(1 << 62), None)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, QemuImgError::Failed { op: "create", .. }),
        "{err:?}"
    );
    assert!(message.contains("too large"), "{message}");
    assert!(message.contains("qemu-img create"), "{message}");
    assert!(
        !message.contains("qemu-img: "),
        "prefix is stripped: {message}"
    );
}

#[tokio::test]
async fn a_missing_qemu_img_binary_gives_an_install_hint() {
    let q = QemuImg::with_program("/nonexistent/qemu-img");
    let err = q.version().await.unwrap_err();
    assert!(matches!(err, QemuImgError::NotInstalled { .. }));
    assert!(
        err.to_string().contains("apt-get install qemu-utils"),
        "{err}"
    );
}

#[tokio::test]
async fn version_names_qemu_img() {
    assert!(qemu_img()
        .version()
        .await
        .unwrap()
        .starts_with("qemu-img version"));
}

#[tokio::test]
async fn dropping_a_convert_future_kills_qemu_img() {
    let dir = tempfile::tempdir().unwrap();
    let src = path_in(&dir, "src.raw");
    let dst = path_in(&dir, "dropped-target.qcow2");
    let q = qemu_img();
    q.create(&src, Format::Raw, Some(16 * MIB), None)
        .await
        .unwrap();
    guest_write(&src, Format::Raw, 0x5a, 0, 16 * MIB);
    // 1 MiB/s keeps qemu-img busy for about 16 s, far longer than the test.
    let mut job = ConvertJob::new(&src, Format::Raw, &dst, Format::Qcow2);
    job.rate_limit = Some(MIB);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut convert = Box::pin(q.convert(&job, move |p| {
        let _ = tx.send(p);
    }));
    tokio::select! {
        result = &mut convert => panic!("convert finished before it could be cancelled: {result:?}"),
        _ = rx.recv() => {}
    }
    let needle = dst.to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&needle).len(),
        1,
        "qemu-img is running"
    );

    drop(convert);

    assert!(
        eventually(Duration::from_secs(5), || processes_mentioning(&needle)
            .is_empty()),
        "qemu-img still runs after the future was dropped"
    );
}
