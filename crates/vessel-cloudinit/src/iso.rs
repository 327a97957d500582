//! A minimal ISO 9660 (ECMA-119) writer: one root directory holding a few small regular files,
//! with Rock Ridge (RRIP 1.10 over SUSP) and Joliet names, which is all a NoCloud seed needs.
//!
//! Why both name extensions: plain ISO 9660 level-1 names are upper-case 8.3 (`USER_DAT.;1`), but
//! cloud-init looks for exactly `user-data`. Linux's isofs prefers Rock Ridge names (its `NM`
//! entries) and falls back to Joliet (UCS-2 names, case preserved); Windows and other readers that
//! know only Joliet get the right names too. This is what `genisoimage -joliet -rock` produces.
//!
//! Layout (2048-byte logical sectors), fixed because the tree is fixed (one directory):
//!
//! | sector | content |
//! |---|---|
//! | 0-15 | system area (zeros) |
//! | 16 | Primary Volume Descriptor |
//! | 17 | Supplementary Volume Descriptor (Joliet, UCS-2 level 3) |
//! | 18 | Volume Descriptor Set Terminator |
//! | 19, 20 | primary path table, L (little-endian) and M (big-endian) |
//! | 21, 22 | Joliet path table, L and M |
//! | 23 | SUSP continuation area: the Rock Ridge `ER` entry (too long for the `.` record) |
//! | 24.. | primary root directory (records with Rock Ridge entries) |
//! | then | Joliet root directory |
//! | then | file contents, each from a sector boundary |

use std::collections::HashSet;

/// Logical sector (block) size. ECMA-119 allows others, but every reader expects 2048.
pub(crate) const SECTOR: usize = 2048;

const PVD_SECTOR: u32 = 16;
const JOLIET_SVD_SECTOR: u32 = 17;
const TERMINATOR_SECTOR: u32 = 18;
const PATH_TABLE_L: u32 = 19;
const PATH_TABLE_M: u32 = 20;
const JOLIET_PATH_TABLE_L: u32 = 21;
const JOLIET_PATH_TABLE_M: u32 = 22;
const CONTINUATION_SECTOR: u32 = 23;
const ROOT_DIR_SECTOR: u32 = 24;

/// Rock Ridge file modes. Files are readable by root only: user-data may hold secrets, and
/// cloud-init reads the seed as root. The directory is listable (names are not secret).
const FILE_MODE: u32 = 0o100_400;
const DIR_MODE: u32 = 0o040_555;

/// The extension identifier, descriptor and source of RRIP 1.10, as the RRIP specification
/// defines them; readers identify Rock Ridge by the identifier (Linux switches from Joliet to
/// Rock Ridge names only when it finds an `ER` entry in the root's `.` record).
const RRIP_ID: &[u8] = b"RRIP_1991A";
const RRIP_DESCRIPTOR: &[u8] =
    b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
const RRIP_SOURCE: &[u8] = b"PLEASE CONTACT DISC PUBLISHER FOR SPECIFICATION SOURCE.  SEE PUBLISHER IDENTIFIER IN PRIMARY VOLUME DESCRIPTOR FOR CONTACT INFORMATION.";

/// `RR` entry flags (RRIP 1.10): which Rock Ridge entries the record carries. Linux stops reading
/// a record's entries when `RR` is present but lacks the flag of what it is looking for.
const RR_PX: u8 = 1;
const RR_NM: u8 = 8;

/// A file to put in the root directory. `name` is the exact (Rock Ridge / Joliet) name.
pub(crate) struct IsoFile<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

/// A UTC date and time, for the volume descriptors and directory records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timestamp {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Timestamp {
    /// Converts seconds since the Unix epoch (UTC) to a civil date (proleptic Gregorian), by the
    /// usual days-to-civil arithmetic over 400-year eras; avoids a date crate for one conversion.
    pub(crate) fn from_unix(secs: u64) -> Timestamp {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Timestamp {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The 7-byte form of directory records (ECMA-119 9.1.5): years since 1900, then month, day,
    /// hour, minute, second, and the offset from GMT in 15-minute units (0: we write UTC).
    fn dir_record_form(&self) -> [u8; 7] {
        let years = (self.year - 1900).clamp(0, 255) as u8;
        [
            years,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// The 17-byte form of volume descriptors (ECMA-119 8.4.26.1): `YYYYMMDDHHMMSScc` in ASCII
    /// digits (cc: hundredths) and the GMT offset byte.
    fn volume_form(&self) -> [u8; 17] {
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.clamp(0, 9999),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(text.as_bytes());
        out
    }
}

/// "Not specified" date of volume descriptors: sixteen ASCII zeros and a zero offset.
const UNSPECIFIED_DATE: [u8; 17] = *b"0000000000000000\0";

/// Builds the image. The caller keeps names unique and few (they must all fit in the root
/// directory records; a handful of short names takes a fraction of one sector).
pub(crate) fn build(volume_id: &str, files: &[IsoFile<'_>], now: Timestamp) -> Vec<u8> {
    let date = now.dir_record_form();

    // Primary names: ISO 9660 level 1 (8.3, upper case), sorted as ECMA-119 9.3 requires.
    let mut primary: Vec<(Vec<u8>, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (level1_name(f.name).into_bytes(), i))
        .collect();
    primary.sort();
    debug_assert_eq!(
        primary.iter().map(|(n, _)| n).collect::<HashSet<_>>().len(),
        files.len(),
        "level-1 names must be unique"
    );
    // Joliet names: UCS-2 big-endian, without a `;1` version (as genisoimage writes them: some
    // readers show the version as part of the name); sorted by their code units.
    let mut joliet: Vec<(Vec<u8>, usize)> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (ucs2be(f.name), i))
        .collect();
    joliet.sort();

    // Record lengths do not depend on extent locations, so size the directories with a first
    // pass at location 0, then lay out, then write for real.
    let zero_extents = vec![(0u32, 0u32); files.len()];
    let rr_dir_len = pack(&primary_records(
        files,
        &primary,
        (0, 0),
        &zero_extents,
        &date,
        0,
    ))
    .len();
    let joliet_dir_len = pack(&joliet_records(&joliet, (0, 0), &zero_extents, &date)).len();
    let rr_dir = (ROOT_DIR_SECTOR, rr_dir_len as u32);
    let joliet_dir = (ROOT_DIR_SECTOR + sectors(rr_dir_len), joliet_dir_len as u32);

    let mut next = joliet_dir.0 + sectors(joliet_dir_len);
    let extents: Vec<(u32, u32)> = files
        .iter()
        .map(|f| {
            let at = next;
            next += sectors(f.data.len());
            (at, f.data.len() as u32)
        })
        .collect();
    let total_sectors = next;

    let er = er_entry();
    let rr_dir_bytes = pack(&primary_records(
        files,
        &primary,
        rr_dir,
        &extents,
        &date,
        er.len() as u32,
    ));
    let joliet_dir_bytes = pack(&joliet_records(&joliet, joliet_dir, &extents, &date));
    debug_assert_eq!(rr_dir_bytes.len(), rr_dir_len);
    debug_assert_eq!(joliet_dir_bytes.len(), joliet_dir_len);

    let mut img = vec![0u8; total_sectors as usize * SECTOR];
    let put = |img: &mut Vec<u8>, sector: u32, bytes: &[u8]| {
        let at = sector as usize * SECTOR;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(
        &mut img,
        PVD_SECTOR,
        &volume_descriptor(Descriptor::Primary, volume_id, total_sectors, rr_dir, now),
    );
    put(
        &mut img,
        JOLIET_SVD_SECTOR,
        &volume_descriptor(
            Descriptor::Joliet,
            volume_id,
            total_sectors,
            joliet_dir,
            now,
        ),
    );
    put(&mut img, TERMINATOR_SECTOR, &terminator());
    put(&mut img, PATH_TABLE_L, &path_table(rr_dir.0, false));
    put(&mut img, PATH_TABLE_M, &path_table(rr_dir.0, true));
    put(
        &mut img,
        JOLIET_PATH_TABLE_L,
        &path_table(joliet_dir.0, false),
    );
    put(
        &mut img,
        JOLIET_PATH_TABLE_M,
        &path_table(joliet_dir.0, true),
    );
    put(&mut img, CONTINUATION_SECTOR, &er);
    put(&mut img, rr_dir.0, &rr_dir_bytes);
    put(&mut img, joliet_dir.0, &joliet_dir_bytes);
    for (file, (at, _)) in files.iter().zip(&extents) {
        put(&mut img, *at, file.data);
    }
    img
}

/// Sectors needed for `len` bytes.
fn sectors(len: usize) -> u32 {
    len.div_ceil(SECTOR) as u32
}

/// Both-byte-order 32-bit field (ECMA-119 7.3.3): little-endian then big-endian.
fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

/// Both-byte-order 16-bit field (ECMA-119 7.2.3).
fn both16(v: u16) -> [u8; 4] {
    let mut out = [0u8; 4];
    out[..2].copy_from_slice(&v.to_le_bytes());
    out[2..].copy_from_slice(&v.to_be_bytes());
    out
}

/// ISO 9660 level-1 identifier: at most 8 d-characters, a dot, at most 3, then `;1`. Anything
/// outside `A-Z 0-9 _` becomes `_` (so `user-data` is `USER_DAT.;1`). Only readers without Rock
/// Ridge and Joliet see these names.
fn level1_name(name: &str) -> String {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let map = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| match c.to_ascii_uppercase() {
                c @ ('A'..='Z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .take(max)
            .collect()
    };
    format!("{}.{};1", map(base, 8), map(ext, 3))
}

/// UCS-2 big-endian, as Joliet stores names and identifiers. Our names are ASCII.
fn ucs2be(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// One directory record (ECMA-119 9.1): fixed 33 bytes, the identifier, a pad byte when the
/// identifier length is even, then the System Use area (SUSP entries), padded to an even length.
fn dir_record(
    id: &[u8],
    (extent, size): (u32, u32),
    is_dir: bool,
    date: &[u8; 7],
    system_use: &[u8],
) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(extent));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(date);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1)); // volume sequence number
    r[32] = id.len() as u8;
    r.extend_from_slice(id);
    if id.len() % 2 == 0 {
        r.push(0);
    }
    r.extend_from_slice(system_use);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    assert!(r.len() <= 255, "directory record too long: {}", r.len());
    r[0] = r.len() as u8;
    r
}

/// Packs directory records into sectors: a record never crosses a sector boundary (ECMA-119
/// 6.8.1.1); the rest of a sector is zero, which readers take as "continue at the next sector".
fn pack(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(r);
    }
    out.resize(sectors(out.len()) as usize * SECTOR, 0);
    out
}

/// A SUSP entry: signature, length, version 1, data.
fn susp(sig: &[u8; 2], data: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(4 + data.len());
    e.extend_from_slice(sig);
    e.push((4 + data.len()) as u8);
    e.push(1);
    e.extend_from_slice(data);
    e
}

/// `PX` (RRIP 1.10 form, without the serial number): mode, links, uid, gid; owner root.
fn px(mode: u32, links: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(32);
    d.extend_from_slice(&both32(mode));
    d.extend_from_slice(&both32(links));
    d.extend_from_slice(&both32(0));
    d.extend_from_slice(&both32(0));
    susp(b"PX", &d)
}

/// `ER`: declares the Rock Ridge extension. It lives in the continuation area because with its
/// descriptor and source texts it is longer than a directory record can be (255 bytes).
fn er_entry() -> Vec<u8> {
    let mut d = vec![
        RRIP_ID.len() as u8,
        RRIP_DESCRIPTOR.len() as u8,
        RRIP_SOURCE.len() as u8,
        1, // extension version
    ];
    d.extend_from_slice(RRIP_ID);
    d.extend_from_slice(RRIP_DESCRIPTOR);
    d.extend_from_slice(RRIP_SOURCE);
    susp(b"ER", &d)
}

/// The primary root directory: `.` (with `SP`, which announces SUSP and must come first, then
/// `RR`, `PX` and a `CE` pointing at the `ER` entry), `..` (`RR`, `PX`; the root is its own
/// parent), then each file with `RR`, `PX` and `NM` (its real name).
fn primary_records(
    files: &[IsoFile<'_>],
    sorted: &[(Vec<u8>, usize)],
    dir: (u32, u32),
    extents: &[(u32, u32)],
    date: &[u8; 7],
    er_len: u32,
) -> Vec<Vec<u8>> {
    let mut dot_su = susp(b"SP", &[0xBE, 0xEF, 0]);
    dot_su.extend(susp(b"RR", &[RR_PX]));
    dot_su.extend(px(DIR_MODE, 2));
    let mut ce = Vec::with_capacity(24);
    ce.extend_from_slice(&both32(CONTINUATION_SECTOR));
    ce.extend_from_slice(&both32(0));
    ce.extend_from_slice(&both32(er_len));
    dot_su.extend(susp(b"CE", &ce));

    let mut dotdot_su = susp(b"RR", &[RR_PX]);
    dotdot_su.extend(px(DIR_MODE, 2));

    let mut records = vec![
        dir_record(&[0], dir, true, date, &dot_su),
        dir_record(&[1], dir, true, date, &dotdot_su),
    ];
    for (id, i) in sorted {
        let mut su = susp(b"RR", &[RR_PX | RR_NM]);
        su.extend(px(FILE_MODE, 1));
        let mut nm = vec![0u8]; // flags: the whole name, in this one entry
        nm.extend_from_slice(files[*i].name.as_bytes());
        su.extend(susp(b"NM", &nm));
        records.push(dir_record(id, extents[*i], false, date, &su));
    }
    records
}

/// The Joliet root directory: the same files (same extents), UCS-2 names, no SUSP.
fn joliet_records(
    sorted: &[(Vec<u8>, usize)],
    dir: (u32, u32),
    extents: &[(u32, u32)],
    date: &[u8; 7],
) -> Vec<Vec<u8>> {
    let mut records = vec![
        dir_record(&[0], dir, true, date, &[]),
        dir_record(&[1], dir, true, date, &[]),
    ];
    for (id, i) in sorted {
        records.push(dir_record(id, extents[*i], false, date, &[]));
    }
    records
}

/// A path table with the root directory only (ECMA-119 9.4): identifier length 1, no extended
/// attributes, the extent, parent directory number 1 (itself), identifier 0x00, pad byte.
fn path_table(root_extent: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![1u8, 0];
    if big_endian {
        t.extend_from_slice(&root_extent.to_be_bytes());
        t.extend_from_slice(&1u16.to_be_bytes());
    } else {
        t.extend_from_slice(&root_extent.to_le_bytes());
        t.extend_from_slice(&1u16.to_le_bytes());
    }
    t.extend_from_slice(&[0, 0]);
    t
}

/// Size in bytes of the path tables written by [`path_table`].
const PATH_TABLE_SIZE: u32 = 10;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Descriptor {
    Primary,
    Joliet,
}

/// A Primary (ECMA-119 8.4) or Joliet Supplementary (8.5) Volume Descriptor. They differ in the
/// type byte, the escape sequences that mark Joliet, the text encoding of identifiers, and which
/// root directory and path tables they point at.
fn volume_descriptor(
    kind: Descriptor,
    volume_id: &str,
    total_sectors: u32,
    root: (u32, u32),
    now: Timestamp,
) -> Vec<u8> {
    let joliet = kind == Descriptor::Joliet;
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    // Text fields: space-padded ASCII, or UCS-2 big-endian padded with UCS-2 spaces for Joliet.
    let text = |d: &mut Vec<u8>, range: std::ops::Range<usize>, value: &str| {
        let field = &mut d[range];
        if joliet {
            for pair in field.chunks_mut(2) {
                pair[0] = 0;
                if pair.len() == 2 {
                    pair[1] = b' ';
                }
            }
            let encoded = ucs2be(value);
            let n = encoded.len().min(field.len() & !1);
            field[..n].copy_from_slice(&encoded[..n]);
        } else {
            field.fill(b' ');
            let n = value.len().min(field.len());
            field[..n].copy_from_slice(&value.as_bytes()[..n]);
        }
    };
    text(&mut d, 8..40, "LINUX"); // system identifier
    text(&mut d, 40..72, volume_id);
    d[80..88].copy_from_slice(&both32(total_sectors));
    if joliet {
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1)); // volume set size
    d[124..128].copy_from_slice(&both16(1)); // volume sequence number
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(PATH_TABLE_SIZE));
    let (l, m) = if joliet {
        (JOLIET_PATH_TABLE_L, JOLIET_PATH_TABLE_M)
    } else {
        (PATH_TABLE_L, PATH_TABLE_M)
    };
    d[140..144].copy_from_slice(&l.to_le_bytes());
    d[148..152].copy_from_slice(&m.to_be_bytes());
    // The root directory record: 34 bytes, identifier 0x00, no System Use area.
    d[156..190].copy_from_slice(&dir_record(&[0], root, true, &now.dir_record_form(), &[]));
    text(&mut d, 190..318, ""); // volume set
    text(&mut d, 318..446, ""); // publisher
    text(&mut d, 446..574, ""); // data preparer
    text(&mut d, 574..702, "VESSEL CLOUD-INIT SEED"); // application
    text(&mut d, 702..739, ""); // copyright file
    text(&mut d, 739..776, ""); // abstract file
    text(&mut d, 776..813, ""); // bibliographic file
    d[813..830].copy_from_slice(&now.volume_form()); // creation
    d[830..847].copy_from_slice(&now.volume_form()); // modification
    d[847..864].copy_from_slice(&UNSPECIFIED_DATE); // expiration
    d[864..881].copy_from_slice(&UNSPECIFIED_DATE); // effective
    d[881] = 1; // file structure version
    d
}

/// Volume Descriptor Set Terminator (ECMA-119 8.3).
fn terminator() -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = 255;
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_to_civil() {
        let t = Timestamp::from_unix(0);
        assert_eq!((t.year, t.month, t.day, t.hour), (1970, 1, 1, 0));
        // 2024-02-29T23:59:58Z, a leap day.
        let t = Timestamp::from_unix(1_709_251_198);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 2, 29, 23, 59, 58)
        );
        // 2000-03-01T00:00:00Z, the day after a 400-year leap day.
        let t = Timestamp::from_unix(951_868_800);
        assert_eq!((t.year, t.month, t.day), (2000, 3, 1));
        assert_eq!(&t.volume_form()[..16], b"2000030100000000");
    }

    #[test]
    fn level1_names_are_upper_case_8_3() {
        assert_eq!(level1_name("user-data"), "USER_DAT.;1");
        assert_eq!(level1_name("meta-data"), "META_DAT.;1");
        assert_eq!(level1_name("network-config"), "NETWORK_.;1");
        assert_eq!(level1_name("vendor-data"), "VENDOR_D.;1");
        assert_eq!(level1_name("a.b.conf"), "A_B.CON;1");
    }

    #[test]
    fn records_never_cross_sectors() {
        let records: Vec<Vec<u8>> = (0..40).map(|_| vec![1u8; 100]).collect();
        let packed = pack(&records);
        // 20 records of 100 bytes fit in a sector (2000 bytes), the 21st starts the next one.
        assert_eq!(packed.len(), 2 * SECTOR);
        assert_eq!(packed[2000..SECTOR], [0u8; 48]);
        assert_eq!(packed[SECTOR], 1);
    }
}
