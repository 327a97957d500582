//! Times sampling one process with 4 threads from /proc, as the daemon samples a QEMU with its
//! vCPU threads (target: <= 1 ms, so 50 VMs every 5 s stay within 1% of a core).
//!
//! `cargo run --release -p vessel-metrics --example sample [iterations]`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use vessel_metrics::ProcFs;

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number"))
        .unwrap_or(1000)
        .max(1);

    // Four idle threads stand in for vCPU threads.
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, tx) = (stop.clone(), tx.clone());
            std::thread::spawn(move || {
                // SAFETY: gettid has no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        })
        .collect();
    let tids: Vec<u32> = (0..4).map(|_| rx.recv().unwrap()).collect();
    let pid = std::process::id();

    let mut fs = ProcFs::new();
    let mut sample = fs.process(pid, &tids).expect("sample own process");
    let t = Instant::now();
    for _ in 0..iterations {
        sample = std::hint::black_box(fs.process(pid, &tids).expect("sample own process"));
    }
    let per_sample = t.elapsed() / iterations;

    let t = Instant::now();
    let host_runs = 100;
    for _ in 0..host_runs {
        std::hint::black_box(fs.host().expect("sample host"));
    }
    let per_host = t.elapsed() / host_runs;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let us = per_sample.as_secs_f64() * 1e6;
    println!(
        "process sample (stat + 4 x (task stat + schedstat) = 9 files): mean {us:.1} µs over \
         {iterations} runs; rss {} MiB, {} threads",
        sample.rss_bytes >> 20,
        sample.num_threads
    );
    println!(
        "50 VMs every 5 s: {:.4}% of one core",
        us * 50.0 / 5e6 * 100.0
    );
    println!(
        "host sample (stat, meminfo, loadavg, diskstats, net/dev): mean {:.1} µs over {host_runs} runs",
        per_host.as_secs_f64() * 1e6
    );
}
