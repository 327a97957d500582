//! Network namespaces made by tests: a daemon run inside one keeps its bridges, taps and
//! firewall rules there, away from the machine's own namespace (host-facts).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// A network namespace made for one test, deleted (with everything in it) when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("vt-{}-{tag}", std::process::id());
        // A namespace of that name is left over only if a test process of the same pid died.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command in the namespace; panics if it fails.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Waits until something inside the namespace accepts TCP connections on `addr` (e.g. a
    /// daemon's TLS listener, bound after its unix socket); panics after 30 s.
    pub fn await_tcp(&self, addr: &str) {
        let path = format!("/run/netns/{}", self.0);
        let addr = addr.to_string();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(&addr).is_err() {
                assert!(Instant::now() < deadline, "nothing listens on {addr}");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .join()
        .expect("the listener did not come up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a command; panics if it fails; returns its output.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
