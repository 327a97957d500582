//! Checks the seed image with independent, widely used readers: `isoinfo` (genisoimage) lists
//! and extracts the files through Rock Ridge and through Joliet, and `blkid` (util-linux), which
//! is how cloud-init finds the seed in the guest, must report an iso9660 file system labelled
//! `cidata`. Each check is skipped, with a message, when its tool is absent (CI installs
//! genisoimage through scripts/install-deps.sh).

use std::path::Path;
use std::process::Command;

use vessel_cloudinit::{write_seed_image, MetaData, SeedFiles};

fn files() -> SeedFiles {
    SeedFiles {
        user_data: Some(b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo external']\n".to_vec()),
        meta_data: MetaData {
            instance_id: "iid-external-1".into(),
            local_hostname: "external-test".into(),
        },
        network_config: Some(b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec()),
        vendor_data: Some(b"#cloud-config\nbootcmd: [true]\n".to_vec()),
    }
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install genisoimage / util-linux)");
    }
    found
}

fn run(cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn image(dir: &Path) -> String {
    let path = dir.join("seed.iso");
    write_seed_image(&files(), &path).unwrap();
    path.to_str().unwrap().to_string()
}

/// `isoinfo -f` lists paths; with `-R` from Rock Ridge, with `-J` from Joliet, plain from the
/// ISO 9660 level-1 names.
fn listing(img: &str, mode: Option<&str>) -> Vec<String> {
    let mut args = vec!["-i", img, "-f"];
    args.extend(mode);
    let mut names: Vec<String> = String::from_utf8(run("isoinfo", &args))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

#[test]
fn isoinfo_reads_rock_ridge_and_joliet_names_and_contents() {
    if !have("isoinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let want = [
        "/meta-data",
        "/network-config",
        "/user-data",
        "/vendor-data",
    ];
    assert_eq!(listing(&img, Some("-R")), want);
    assert_eq!(listing(&img, Some("-J")), want);
    assert_eq!(
        listing(&img, None),
        [
            "/META_DAT.;1",
            "/NETWORK_.;1",
            "/USER_DAT.;1",
            "/VENDOR_D.;1"
        ]
    );

    let f = files();
    let expected: [(&str, Vec<u8>); 4] = [
        ("/user-data", f.user_data.clone().unwrap()),
        (
            "/meta-data",
            b"instance-id: \"iid-external-1\"\nlocal-hostname: \"external-test\"\n".to_vec(),
        ),
        ("/network-config", f.network_config.clone().unwrap()),
        ("/vendor-data", f.vendor_data.clone().unwrap()),
    ];
    for (path, content) in &expected {
        for mode in ["-R", "-J"] {
            let got = run("isoinfo", &["-i", &img, mode, "-x", path]);
            assert_eq!(&got, content, "{path} via {mode}");
        }
    }

    // The volume identifier as isoinfo reports it from the primary descriptor.
    let header = String::from_utf8(run("isoinfo", &["-i", &img, "-d"])).unwrap();
    assert!(header.contains("Volume id: cidata"), "{header}");
    assert!(
        header.contains("Rock Ridge signatures version 1 found"),
        "{header}"
    );
    assert!(header.contains("Joliet with UCS level 3 found"), "{header}");

    // The Rock Ridge long listing shows the modes (files readable by root only).
    let long = String::from_utf8(run("isoinfo", &["-i", &img, "-R", "-l"])).unwrap();
    let user_data_line = long
        .lines()
        .find(|l| l.trim_end().ends_with(" user-data"))
        .unwrap_or_else(|| panic!("no user-data in {long}"));
    assert!(user_data_line.contains("-r--------"), "{user_data_line}");
}

#[test]
fn blkid_sees_an_iso9660_labelled_cidata() {
    if !have("blkid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    // -p: probe the file directly, no cache. cloud-init runs `blkid -t LABEL=cidata` in the guest.
    let out = String::from_utf8(run("blkid", &["-p", "-o", "export", &img])).unwrap();
    assert!(out.lines().any(|l| l == "TYPE=iso9660"), "{out}");
    assert!(out.lines().any(|l| l == "LABEL=cidata"), "{out}");
}
