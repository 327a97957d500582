//! Times `/metrics` rendering for 200 VMs with 4 disks and 2 NICs each (target: <= 20 ms).
//!
//! `cargo run --release -p vessel-metrics --example render [vms] [runs]`

use std::time::{Duration, Instant};

use vessel_metrics::{prometheus, synthetic};

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let vm_count = args.next().unwrap_or(200);
    let runs = args.next().unwrap_or(100).max(1);
    let vms = synthetic::vms(vm_count, 4, 2);
    let host = synthetic::host(&vms);

    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let text = prometheus::render(&host, &vms, None);
        times.push(t.elapsed());
        bytes = std::hint::black_box(text).len();
    }
    times.sort();
    let lines = prometheus::render(&host, &vms, None).lines().count();
    println!(
        "render {vm_count} VMs (4 disks, 2 NICs each): {bytes} bytes, {lines} lines; \
         median {:.3} ms, min {:.3} ms, max {:.3} ms over {runs} runs",
        ms(times[runs / 2]),
        ms(times[0]),
        ms(times[runs - 1]),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
