//! Master key files, wrapping, rotation and volume keys.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use vessel_secrets::{
    volume_aad, Keyring, MasterKey, SecretError, VolumeKey, WrappedSecret, WRAPPED_SECRET_VERSION,
};

fn key_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("master.key")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_wrapped_secret_round_trips_and_serializes() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::load_or_create(&key_path(&dir)).unwrap();
    let aad = volume_aad("default", "web");
    let wrapped = master.wrap(b"the secret", &aad).unwrap();
    assert_eq!(wrapped.version, WRAPPED_SECRET_VERSION);
    assert_eq!(&wrapped.key_id, master.id());

    let json = serde_json::to_string(&wrapped).unwrap();
    assert!(!json.contains("the secret"), "{json}");
    let back: WrappedSecret = serde_json::from_str(&json).unwrap();
    assert_eq!(back, wrapped);
    assert_eq!(
        master.unwrap(&back, &aad).unwrap().as_slice(),
        b"the secret"
    );

    let again = master.wrap(b"the secret", &aad).unwrap();
    assert_ne!(again.nonce, wrapped.nonce, "every wrap takes a fresh nonce");
    assert_ne!(again.ciphertext, wrapped.ciphertext);
}

#[test]
fn a_secret_moved_to_another_owner_does_not_unwrap() {
    let master = MasterKey::generate().unwrap();
    let wrapped = master.wrap(b"k", &volume_aad("default", "web")).unwrap();
    let err = master
        .unwrap(&wrapped, &volume_aad("default", "db"))
        .unwrap_err();
    assert!(matches!(err, SecretError::NotAuthentic { .. }), "{err:?}");
    assert!(err.to_string().contains("volume:default/db"), "{err}");
}

#[test]
fn a_tampered_secret_does_not_unwrap() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let master = MasterKey::generate().unwrap();
    let aad = b"owner";
    let wrapped = master.wrap(b"0123456789abcdef", aad).unwrap();

    let mut bytes = b64.decode(&wrapped.ciphertext).unwrap();
    bytes[3] ^= 1;
    let flipped = WrappedSecret {
        ciphertext: b64.encode(&bytes),
        ..wrapped.clone()
    };
    assert!(matches!(
        master.unwrap(&flipped, aad),
        Err(SecretError::NotAuthentic { .. })
    ));

    let mut nonce = b64.decode(&wrapped.nonce).unwrap();
    nonce[0] ^= 1;
    let renonced = WrappedSecret {
        nonce: b64.encode(&nonce),
        ..wrapped.clone()
    };
    assert!(matches!(
        master.unwrap(&renonced, aad),
        Err(SecretError::NotAuthentic { .. })
    ));

    let cut = WrappedSecret {
        ciphertext: b64.encode(&bytes[..8]),
        ..wrapped.clone()
    };
    assert!(master.unwrap(&cut, aad).is_err());

    let future = WrappedSecret {
        version: 2,
        ..wrapped.clone()
    };
    assert!(matches!(
        master.unwrap(&future, aad),
        Err(SecretError::UnsupportedVersion(2))
    ));

    let garbage = WrappedSecret {
        nonce: "not base64!".into(),
        ..wrapped
    };
    assert!(matches!(
        master.unwrap(&garbage, aad),
        Err(SecretError::MalformedSecret(_))
    ));
}

#[test]
fn another_master_key_names_the_key_it_would_need() {
    let a = MasterKey::generate().unwrap();
    let b = MasterKey::generate().unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(a.id().as_str().len(), 16);
    let wrapped = a.wrap(b"x", b"o").unwrap();
    let err = b.unwrap(&wrapped, b"o").unwrap_err();
    match &err {
        SecretError::WrongKey { needed, available } => {
            assert_eq!(needed, a.id());
            assert_eq!(available, &[b.id().clone()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(a.id().as_str()), "{err}");

    // Claiming another key id does not get a blob past the check either.
    let relabelled = WrappedSecret {
        key_id: b.id().clone(),
        ..wrapped
    };
    assert!(matches!(
        b.unwrap(&relabelled, b"o"),
        Err(SecretError::NotAuthentic { .. })
    ));
}

#[test]
fn the_key_file_is_created_once_with_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("master.key");
    let first = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()) & 0o077, 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), 32);
    let second = MasterKey::load_or_create(&path).unwrap();
    assert_eq!(
        first.id(),
        second.id(),
        "an existing key is loaded, not replaced"
    );
    let names: Vec<_> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["master.key"], "no temporary file is left");

    let wrapped = first.wrap(b"s", b"o").unwrap();
    assert_eq!(second.unwrap(&wrapped, b"o").unwrap().as_slice(), b"s");
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    MasterKey::load_or_create(&path).unwrap();
    for bad in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SecretError::InsecurePermissions { mode, .. } if mode == bad),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 600 {}", path.display())),
            "{text}"
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    MasterKey::load(&path).expect("owner-only read is fine");
}

#[test]
fn a_truncated_or_oversized_key_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    for len in [0usize, 16, 31, 33, 64] {
        fs::write(&path, vec![7u8; len]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = MasterKey::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, SecretError::MalformedKeyFile { .. }),
            "{len}: {err:?}"
        );
        assert!(err.to_string().contains("exactly 32 bytes"), "{err}");
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            len as u64,
            "a bad key file is never overwritten"
        );
    }
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert!(MasterKey::load_or_create(&path).is_err());
}

#[test]
fn rotation_rewraps_every_secret_and_old_blobs_name_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let mut ring = Keyring::load_or_create(&path).unwrap();
    let old_id = ring.current().id().clone();
    let key = VolumeKey::generate().unwrap();
    let stored = vec![
        ("web", ring.wrap_volume_key("default", "web", &key).unwrap()),
        ("db", ring.wrap_volume_key("default", "db", &key).unwrap()),
    ];
    let old_blob = stored[0].1.clone();

    let mut rewrapped = Vec::new();
    ring.rotate(|ring| -> Result<(), SecretError> {
        for (name, blob) in &stored {
            assert!(ring.needs_rewrap(blob));
            rewrapped.push((*name, ring.rewrap(blob, &volume_aad("default", name))?));
        }
        Ok(())
    })
    .unwrap();

    let new_id = ring.current().id().clone();
    assert_ne!(new_id, old_id);
    assert!(ring.pending().is_none());
    assert!(!Keyring::pending_path(&path).exists());
    assert_eq!(mode(&path), 0o600);

    // A fresh load (a restart) sees only the new key; re-wrapped blobs open, old ones do not.
    let reloaded = Keyring::load_or_create(&path).unwrap();
    assert_eq!(reloaded.current().id(), &new_id);
    for (name, blob) in &rewrapped {
        assert_eq!(&blob.key_id, &new_id);
        let back = reloaded.unwrap_volume_key("default", name, blob).unwrap();
        assert_eq!(back.expose_bytes(), key.expose_bytes());
    }
    let err = reloaded
        .unwrap_volume_key("default", "web", &old_blob)
        .unwrap_err();
    assert!(
        matches!(&err, SecretError::WrongKey { needed, .. } if *needed == old_id),
        "{err:?}"
    );
    assert!(err.to_string().contains(old_id.as_str()), "{err}");
}

#[test]
fn an_interrupted_rotation_keeps_both_keys_and_resumes_with_the_same_pending_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let mut ring = Keyring::load_or_create(&path).unwrap();
    let old_id = ring.current().id().clone();
    let a = ring.wrap(b"a", b"a").unwrap();
    let b = ring.wrap(b"b", b"b").unwrap();

    // The re-wrap pass fails after storing one blob: the process "dies" here.
    let mut a_new = None;
    let err = ring
        .rotate(|ring| -> Result<(), SecretError> {
            a_new = Some(ring.rewrap(&a, b"a")?);
            Err(SecretError::NoRotation)
        })
        .unwrap_err();
    assert!(matches!(err, SecretError::NoRotation));
    let a_new = a_new.unwrap();
    let pending_id = a_new.key_id.clone();
    assert_eq!(
        MasterKey::load(&path).unwrap().id(),
        &old_id,
        "the key file is untouched until the rotation finishes"
    );
    assert_eq!(mode(&Keyring::pending_path(&path)), 0o600);
    drop(ring);

    // A restart loads both keys: old and re-wrapped blobs all unwrap, and new secrets are
    // wrapped by the pending key.
    let mut ring = Keyring::load_or_create(&path).unwrap();
    assert_eq!(ring.current().id(), &old_id);
    assert_eq!(ring.pending().unwrap().id(), &pending_id);
    assert_eq!(ring.unwrap(&a_new, b"a").unwrap().as_slice(), b"a");
    assert_eq!(ring.unwrap(&b, b"b").unwrap().as_slice(), b"b");
    assert_eq!(ring.wrap(b"c", b"c").unwrap().key_id, pending_id);
    assert!(!ring.needs_rewrap(&a_new) && ring.needs_rewrap(&b));

    // Resuming uses the same pending key, so the blob re-wrapped before the crash stays valid.
    assert_eq!(ring.begin_rotation().unwrap().id(), &pending_id);
    let b_new = ring.rewrap(&b, b"b").unwrap();
    assert_eq!(ring.rewrap(&a_new, b"a").unwrap(), a_new);
    ring.finish_rotation().unwrap();
    let ring = Keyring::load_or_create(&path).unwrap();
    assert_eq!(ring.current().id(), &pending_id);
    assert_eq!(ring.unwrap(&a_new, b"a").unwrap().as_slice(), b"a");
    assert_eq!(ring.unwrap(&b_new, b"b").unwrap().as_slice(), b"b");
}

#[test]
fn rewrap_outside_a_rotation_and_a_lost_current_key_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    let mut ring = Keyring::load_or_create(&path).unwrap();
    let blob = ring.wrap(b"x", b"o").unwrap();
    assert!(matches!(
        ring.rewrap(&blob, b"o"),
        Err(SecretError::NoRotation)
    ));
    assert!(matches!(
        ring.finish_rotation(),
        Err(SecretError::NoRotation)
    ));

    ring.begin_rotation().unwrap();
    fs::remove_file(&path).unwrap();
    let err = Keyring::load_or_create(&path).unwrap_err();
    assert!(
        matches!(err, SecretError::PendingWithoutCurrent { .. }),
        "{err:?}"
    );
    assert!(
        !path.exists(),
        "no new key is made up in place of a lost one"
    );
}

#[test]
fn stale_temporary_key_files_are_removed_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = key_path(&dir);
    fs::write(
        dir.path().join(".master.key.tmp-0011223344556677"),
        [1u8; 5],
    )
    .unwrap();
    fs::write(dir.path().join("unrelated"), b"keep").unwrap();
    Keyring::load_or_create(&path).unwrap();
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["master.key", "unrelated"]);
}

#[test]
fn keys_never_print() {
    let key = VolumeKey::generate().unwrap();
    assert_eq!(format!("{key:?}"), "VolumeKey(<redacted>)");
    assert_eq!(format!("{key:#?}"), "VolumeKey(<redacted>)");
    let master = MasterKey::generate().unwrap();
    let shown = format!("{master:?}");
    assert!(
        shown.contains("<redacted>") && shown.contains(master.id().as_str()),
        "{shown}"
    );
    assert!(!shown.contains(&format!("{:?}", key.expose_bytes())));
}

#[test]
fn volume_keys_are_random_32_bytes_with_a_base64_luks_passphrase() {
    let a = VolumeKey::generate().unwrap();
    let b = VolumeKey::generate().unwrap();
    assert_ne!(a.expose_bytes(), b.expose_bytes());
    let pass = a.luks_passphrase();
    assert_eq!(pass.len(), 44);
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(pass.as_bytes())
        .unwrap();
    assert_eq!(decoded.as_slice(), a.expose_bytes());
    assert!(matches!(
        VolumeKey::from_bytes(&[0u8; 31]),
        Err(SecretError::KeyLength {
            expected: 32,
            got: 31
        })
    ));
    assert_eq!(
        VolumeKey::from_bytes(a.expose_bytes())
            .unwrap()
            .expose_bytes(),
        a.expose_bytes()
    );
}
