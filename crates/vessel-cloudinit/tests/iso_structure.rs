//! Reads the seed image back with a minimal ISO 9660 reader written here from the specifications
//! (ECMA-119, SUSP, RRIP, Joliet), independent of the crate's writer: it checks the descriptors,
//! both byte orders of every both-endian field, the path tables, the Rock Ridge names and modes,
//! the Joliet names, and the file contents.

use std::collections::BTreeMap;

use vessel_cloudinit::{build_seed_image, MetaData, SeedFiles};

const SECTOR: usize = 2048;

fn files() -> SeedFiles {
    SeedFiles {
        user_data: Some(b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo hi']\n".to_vec()),
        meta_data: MetaData {
            instance_id: "iid-structure-1".into(),
            local_hostname: "seed-test".into(),
        },
        network_config: Some(b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n".to_vec()),
        vendor_data: Some(b"#cloud-config\nbootcmd: [true]\n".to_vec()),
    }
}

const META: &[u8] = b"instance-id: \"iid-structure-1\"\nlocal-hostname: \"seed-test\"\n";

/// A both-endian 32-bit field; panics if the two halves disagree.
fn both32(b: &[u8]) -> u32 {
    let le = u32::from_le_bytes(b[..4].try_into().unwrap());
    let be = u32::from_be_bytes(b[4..8].try_into().unwrap());
    assert_eq!(le, be, "both-endian field halves differ");
    le
}

fn both16(b: &[u8]) -> u16 {
    let le = u16::from_le_bytes(b[..2].try_into().unwrap());
    let be = u16::from_be_bytes(b[2..4].try_into().unwrap());
    assert_eq!(le, be, "both-endian field halves differ");
    le
}

fn sector(img: &[u8], n: u32) -> &[u8] {
    &img[n as usize * SECTOR..(n as usize + 1) * SECTOR]
}

#[derive(Debug)]
struct Record {
    id: Vec<u8>,
    extent: u32,
    size: u32,
    is_dir: bool,
    system_use: Vec<u8>,
}

/// Walks a directory extent: records never cross a sector; a zero length byte means "next
/// sector".
fn read_dir(img: &[u8], extent: u32, size: u32) -> Vec<Record> {
    assert_eq!(size as usize % SECTOR, 0, "directory size is whole sectors");
    let data = &img[extent as usize * SECTOR..extent as usize * SECTOR + size as usize];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let len = data[pos] as usize;
        if len == 0 {
            pos = (pos / SECTOR + 1) * SECTOR;
            continue;
        }
        assert!(
            pos % SECTOR + len <= SECTOR,
            "record at {pos} crosses a sector"
        );
        let r = &data[pos..pos + len];
        let id_len = r[32] as usize;
        let id = r[33..33 + id_len].to_vec();
        let su_start = 33 + id_len + (1 - id_len % 2);
        assert_eq!(both16(&r[28..32]), 1, "volume sequence number");
        out.push(Record {
            id,
            extent: both32(&r[2..10]),
            size: both32(&r[10..18]),
            is_dir: r[25] & 2 != 0,
            system_use: r[su_start..].to_vec(),
        });
        pos += len;
    }
    out
}

/// Splits a System Use area into (signature, version, data) entries.
fn susp_entries(mut su: &[u8]) -> Vec<([u8; 2], u8, Vec<u8>)> {
    let mut out = Vec::new();
    while su.len() >= 4 {
        let len = su[2] as usize;
        assert!(len >= 4 && len <= su.len(), "bad SUSP entry length {len}");
        out.push(([su[0], su[1]], su[3], su[4..len].to_vec()));
        su = &su[len..];
    }
    // At most one pad byte may remain.
    assert!(
        su.len() <= 1 && su.iter().all(|b| *b == 0),
        "trailing {su:?}"
    );
    out
}

fn file_data<'a>(img: &'a [u8], r: &Record) -> &'a [u8] {
    let start = r.extent as usize * SECTOR;
    &img[start..start + r.size as usize]
}

/// Decodes a volume descriptor's root record, path tables and identifiers.
struct Volume {
    volume_id: String,
    root_extent: u32,
    root_size: u32,
}

fn read_volume(img: &[u8], sec: u32, joliet: bool) -> Volume {
    let d = sector(img, sec);
    assert_eq!(&d[1..6], b"CD001");
    assert_eq!(d[6], 1, "descriptor version");
    assert_eq!(d[881], 1, "file structure version");
    assert_eq!(
        both32(&d[80..88]) as usize * SECTOR,
        img.len(),
        "volume space size"
    );
    assert_eq!(both16(&d[128..132]) as usize, SECTOR, "logical block size");
    assert_eq!(both16(&d[120..124]), 1);
    let raw_id = &d[40..72];
    let volume_id = if joliet {
        assert_eq!(&d[88..91], b"%/E", "Joliet UCS-2 level 3 escape");
        let units: Vec<u16> = raw_id
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).unwrap().trim_end().to_string()
    } else {
        String::from_utf8(raw_id.to_vec())
            .unwrap()
            .trim_end()
            .to_string()
    };
    // Root directory record in the descriptor.
    let root = &d[156..190];
    assert_eq!(root[0], 34);
    assert_eq!(root[32], 1);
    assert_eq!(root[33], 0);
    assert!(root[25] & 2 != 0);
    let root_extent = both32(&root[2..10]);
    let root_size = both32(&root[10..18]);

    // Path tables: one entry (the root), the L table little-endian and the M one big-endian.
    let pt_size = both32(&d[132..140]) as usize;
    assert_eq!(pt_size, 10);
    let l = u32::from_le_bytes(d[140..144].try_into().unwrap());
    let m = u32::from_be_bytes(d[148..152].try_into().unwrap());
    let lt = &sector(img, l)[..pt_size];
    let mt = &sector(img, m)[..pt_size];
    assert_eq!((lt[0], lt[1], lt[8]), (1, 0, 0));
    assert_eq!(
        u32::from_le_bytes(lt[2..6].try_into().unwrap()),
        root_extent
    );
    assert_eq!(u16::from_le_bytes(lt[6..8].try_into().unwrap()), 1);
    assert_eq!(
        u32::from_be_bytes(mt[2..6].try_into().unwrap()),
        root_extent
    );
    assert_eq!(u16::from_be_bytes(mt[6..8].try_into().unwrap()), 1);

    Volume {
        volume_id,
        root_extent,
        root_size,
    }
}

/// The files of the primary tree by Rock Ridge name, with their PX modes; checks the `.` record's
/// SP / CE -> ER chain on the way.
fn rock_ridge_files(img: &[u8]) -> BTreeMap<String, (Vec<u8>, u32, String)> {
    let vol = read_volume(img, 16, false);
    assert_eq!(sector(img, 16)[0], 1, "primary descriptor type");
    assert_eq!(vol.volume_id, "cidata");
    let records = read_dir(img, vol.root_extent, vol.root_size);
    assert_eq!(records[0].id, [0]);
    assert_eq!(records[1].id, [1]);
    assert!(records[0].is_dir && records[1].is_dir);
    assert_eq!(records[0].extent, vol.root_extent);

    // `.`: SP first (SUSP 5.3), and a CE leading to the ER naming RRIP.
    let dot = susp_entries(&records[0].system_use);
    assert_eq!(dot[0].0, *b"SP");
    assert_eq!(dot[0].2, [0xBE, 0xEF, 0]);
    let ce = dot.iter().find(|e| &e.0 == b"CE").expect("CE in '.'");
    let (ce_block, ce_off, ce_len) = (
        both32(&ce.2[0..8]),
        both32(&ce.2[8..16]),
        both32(&ce.2[16..24]),
    );
    let cont = &img[ce_block as usize * SECTOR + ce_off as usize..][..ce_len as usize];
    let er = susp_entries(cont);
    assert_eq!(er[0].0, *b"ER");
    let (len_id, len_des, len_src) = (er[0].2[0] as usize, er[0].2[1] as usize, er[0].2[2]);
    assert_eq!(&er[0].2[4..4 + len_id], b"RRIP_1991A");
    assert!(len_des > 0 && len_src > 0);
    let dir_px = dot.iter().find(|e| &e.0 == b"PX").expect("PX in '.'");
    assert_eq!(both32(&dir_px.2[0..8]), 0o040555);

    let mut out = BTreeMap::new();
    let mut previous_id: Option<Vec<u8>> = None;
    for r in &records[2..] {
        assert!(!r.is_dir);
        // ECMA-119 9.3: records sorted by identifier.
        if let Some(prev) = &previous_id {
            assert!(prev < &r.id, "records not sorted");
        }
        previous_id = Some(r.id.clone());
        let iso_name = String::from_utf8(r.id.clone()).unwrap();
        assert!(
            iso_name.ends_with(";1")
                && iso_name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"_.;1".contains(&b)),
            "ISO level-1 name {iso_name:?}"
        );
        let entries = susp_entries(&r.system_use);
        let nm: Vec<u8> = entries
            .iter()
            .filter(|e| &e.0 == b"NM")
            .flat_map(|e| {
                assert_eq!(e.2[0], 0, "NM flags");
                e.2[1..].to_vec()
            })
            .collect();
        let px = entries.iter().find(|e| &e.0 == b"PX").expect("PX");
        let rr = entries.iter().find(|e| &e.0 == b"RR").expect("RR");
        assert_eq!(rr.2[0] & 0x09, 0x09, "RR flags announce PX and NM");
        let mode = both32(&px.2[0..8]);
        out.insert(
            String::from_utf8(nm).unwrap(),
            (file_data(img, r).to_vec(), mode, iso_name),
        );
    }
    out
}

fn joliet_files(img: &[u8]) -> BTreeMap<String, Vec<u8>> {
    assert_eq!(sector(img, 17)[0], 2, "supplementary descriptor type");
    let vol = read_volume(img, 17, true);
    assert_eq!(vol.volume_id, "cidata");
    let records = read_dir(img, vol.root_extent, vol.root_size);
    assert_eq!(
        (records[0].id.as_slice(), records[1].id.as_slice()),
        (&[0u8][..], &[1u8][..])
    );
    records[2..]
        .iter()
        .map(|r| {
            assert!(r.system_use.is_empty(), "Joliet records carry no SUSP");
            let units: Vec<u16> =
                r.id.chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            let name = String::from_utf16(&units).unwrap();
            assert!(!name.contains(';'), "Joliet name {name:?} has a version");
            (name, file_data(img, r).to_vec())
        })
        .collect()
}

#[test]
fn descriptors_and_layout() {
    let img = build_seed_image(&files()).unwrap();
    assert_eq!(img.len() % SECTOR, 0);
    assert!(img[..16 * SECTOR].iter().all(|b| *b == 0), "system area");
    // Descriptor set: primary, Joliet, terminator.
    assert_eq!(sector(&img, 18)[0], 255);
    assert_eq!(&sector(&img, 18)[1..6], b"CD001");
    // Small: a few dozen sectors.
    assert!(img.len() < 64 * SECTOR, "{} bytes", img.len());
}

#[test]
fn rock_ridge_names_modes_and_contents() {
    let f = files();
    let img = build_seed_image(&f).unwrap();
    let got = rock_ridge_files(&img);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["meta-data", "network-config", "user-data", "vendor-data"]
    );
    assert_eq!(got["user-data"].0, f.user_data.unwrap());
    assert_eq!(got["meta-data"].0, META);
    assert_eq!(got["network-config"].0, f.network_config.unwrap());
    assert_eq!(got["vendor-data"].0, f.vendor_data.unwrap());
    for (name, (_, mode, _)) in &got {
        assert_eq!(*mode, 0o100400, "{name} mode");
    }
    assert_eq!(got["user-data"].2, "USER_DAT.;1");
}

#[test]
fn joliet_names_and_contents() {
    let f = files();
    let img = build_seed_image(&f).unwrap();
    let got = joliet_files(&img);
    let rr: BTreeMap<String, Vec<u8>> = rock_ridge_files(&img)
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    assert_eq!(got, rr);
}

#[test]
fn without_user_data_an_empty_user_data_file_is_written() {
    // cloud-init's NoCloud requires both user-data and meta-data to exist.
    let mut f = files();
    f.user_data = None;
    f.network_config = None;
    f.vendor_data = None;
    let img = build_seed_image(&f).unwrap();
    let got = rock_ridge_files(&img);
    let names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(names, ["meta-data", "user-data"]);
    assert!(got["user-data"].0.is_empty());
    assert_eq!(got["meta-data"].0, META);
}

#[test]
fn large_files_span_sectors_and_do_not_overlap() {
    let mut f = files();
    let mut user_data = b"#cloud-config\n".to_vec();
    // Not a multiple of the sector size, with a pattern that shows misplaced sectors.
    user_data.extend((0..60_001u32).map(|i| b'a' + (i % 26) as u8));
    f.user_data = Some(user_data.clone());
    let img = build_seed_image(&f).unwrap();
    let got = rock_ridge_files(&img);
    assert_eq!(got["user-data"].0, user_data);
    assert_eq!(got["meta-data"].0, META);
    assert_eq!(got["vendor-data"].0, f.vendor_data.unwrap());
}
