//! Test helpers: network namespaces the tests create and delete themselves, and TCP probes run
//! inside them. Nothing here touches the machine's own namespace.

#![allow(dead_code)]

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether the tests can run; prints why not.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: needs root (network namespaces)");
    }
    root
}

/// Runs `f` on a fresh thread that first moves into a new, empty network namespace; everything
/// created there vanishes with the thread.
pub fn in_new_netns<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership; the flag is valid.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        run_async(f)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn run_async<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(role: &str) -> Self {
        let name = format!(
            "vnt{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a shell command inside the namespace; panics with its output if it fails.
    pub fn sh(&self, cmd: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An open fd of the namespace, e.g. for [`vessel_net::Netlink::move_to_netns`].
    pub fn file(&self) -> std::fs::File {
        std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap()
    }

    /// Runs async `f` on a thread inside this namespace.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let file = self.file();
        std::thread::spawn(move || {
            // SAFETY: `file` is an open network-namespace fd; setns only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            run_async(f)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// A listening TCP socket in this namespace (the kernel completes handshakes without
    /// `accept`, so holding it is enough for probes).
    pub fn listen(&self, port: u16) -> TcpListener {
        self.run(move || async move {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).unwrap()
        })
    }

    /// Tries a TCP connection from this namespace, optionally from a given source address.
    pub fn connect(&self, to: Ipv4Addr, port: u16, from: Option<Ipv4Addr>) -> Reach {
        self.run(move || async move { probe(to, port, from).await })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What a TCP probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    Connected,
    Refused,
    TimedOut,
}

async fn probe(to: Ipv4Addr, port: u16, from: Option<Ipv4Addr>) -> Reach {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(from) = from {
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))
            .unwrap();
    }
    let target = SocketAddr::V4(SocketAddrV4::new(to, port));
    match tokio::time::timeout(Duration::from_millis(1500), socket.connect(target)).await {
        Ok(Ok(_)) => Reach::Connected,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Ok(Err(e)) => panic!("connect to {target}: {e}"),
        Err(_) => Reach::TimedOut,
    }
}

/// Runs `ip args...` in the caller's namespace (only for `ip netns add/del`).
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?} failed");
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds a "guest": namespace `guest` gets `eth0` with `addr`/24 (and `mac`), whose veth peer
/// `port` is enslaved to `bridge` in `host`, like a VM's tap.
pub fn add_guest(host: &Ns, bridge: &str, port: &str, guest: &Ns, addr: &str, mac: &str) {
    host.sh(&format!(
        "ip link add {port} type veth peer name eth0 netns {g} && ip link set {port} master {bridge} && ip link set {port} up",
        g = guest.name
    ));
    guest.sh(&format!(
        "ip link set eth0 address {mac} && ip addr add {addr}/24 dev eth0 && ip link set eth0 up"
    ));
}
