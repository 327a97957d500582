//! Imports one file into a directory pool and prints how long it took, as JSON (for
//! `bench/import.py`).
//!
//! Usage: `import FILE POOL_DIR [NAME]`. The pool directory is created if needed; the volume is
//! deleted again afterwards so the example can run repeatedly.

use std::path::PathBuf;
use std::time::Instant;

use vessel_storage::{DirPool, ImportOptions, ImportPhase, ImportSource, QemuImg, StoragePool};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: import FILE POOL_DIR [NAME]");
        std::process::exit(2);
    };
    let name = args.next().unwrap_or_else(|| "bench-import".to_string());
    let pool = DirPool::open("bench", PathBuf::from(dir), QemuImg::new()).await?;

    let start = Instant::now();
    let mut copied_at = None;
    let imported = pool
        .import_volume(
            &name,
            ImportSource::File(PathBuf::from(file)),
            &ImportOptions::default(),
            &mut |p| {
                if p.phase == ImportPhase::Verifying && copied_at.is_none() {
                    copied_at = Some(start.elapsed());
                }
            },
        )
        .await?;
    let total = start.elapsed();
    pool.delete_volume(&name).await?;

    let copy = copied_at.unwrap_or(total);
    let report = serde_json::json!({
        "bytes": imported.source_bytes,
        "sha256": imported.sha256,
        "format": imported.info.format,
        "seconds": total.as_secs_f64(),
        "copy_seconds": copy.as_secs_f64(),
    });
    println!("{report}");
    Ok(())
}
