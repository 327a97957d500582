//! Passing secrets to child processes through pipes.

use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use vessel_secrets::{SecretPipe, VolumeKey};

/// The inode of the pipe open as `fd` in this process, if `fd` is a pipe.
fn pipe_inode(fd: RawFd) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    link.to_str()?.starts_with("pipe:").then(|| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino()
    })
}

#[test]
fn the_child_reads_the_secret_from_its_fd_and_the_parent_closes_it() {
    let pipe = SecretPipe::new("sec0", b"s3cret bytes").unwrap();
    let fd = pipe.fd();
    assert!(fd > 2);
    let inode = pipe_inode(fd).expect("the read end is open");
    assert_eq!(pipe.path(), format!("/dev/fd/{fd}"));
    assert_eq!(
        pipe.object_arg(),
        format!("secret,id=sec0,file=/dev/fd/{fd},format=raw")
    );

    let mut cmd = Command::new("cat");
    cmd.arg(pipe.path());
    pipe.pass_to(&mut cmd);
    let out = cmd.output().unwrap();
    drop(cmd);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"s3cret bytes");
    assert_ne!(
        pipe_inode(fd),
        Some(inode),
        "the parent's copy of the read end is closed with the Command"
    );
}

#[test]
fn other_children_do_not_inherit_the_pipe() {
    let pipe = SecretPipe::new("sec0", b"x").unwrap();
    let out = Command::new("cat").arg(pipe.path()).output().unwrap();
    assert!(
        !out.status.success(),
        "a child it was not passed to cannot open it"
    );
}

#[test]
fn works_with_a_tokio_command() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let key = VolumeKey::generate().unwrap();
        let pipe = SecretPipe::for_volume_key("disk0", &key).unwrap();
        let mut cmd = tokio::process::Command::new("cat");
        cmd.arg(pipe.path());
        pipe.pass_to(cmd.as_std_mut());
        let out = cmd.output().await.unwrap();
        assert_eq!(out.stdout, key.luks_passphrase().as_bytes());
    });
}

#[test]
fn bad_ids_and_oversized_secrets_are_refused() {
    for id in ["", "0sec", "sec,file=/etc/passwd", "a b"] {
        assert!(SecretPipe::new(id, b"x").is_err(), "{id:?}");
    }
    assert!(SecretPipe::new("ok-id_1.x", b"x").is_ok());
    assert!(SecretPipe::new("big", &vec![0u8; 4097]).is_err());
    assert!(SecretPipe::new("max", &vec![0u8; 4096]).is_ok());
}
