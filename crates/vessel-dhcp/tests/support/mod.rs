//! What the network tests share: a private network namespace per test, bridges with a veth
//! "VM" port, a minimal DHCP client on real sockets, and busybox for the third-party client.
//!
//! Every test runs on its own thread that first leaves the machine's namespace with
//! `unshare(CLONE_NEWNET)`: the "host" namespace, with the bridges and the servers. Each VM NIC
//! is a veth whose far end is moved into a namespace of its own, as a VM is a host of its own:
//! in one namespace the client would send from the server's own address (Linux picks a source
//! address from any interface when the sending one has none) and the server would drop that
//! as a martian. The kernel deletes the namespaces, and the links in them, when the thread, its
//! processes and the `Netns` handles are gone. Only 10.77.0.0/16 is used, and nothing leaves
//! the namespaces.

#![allow(dead_code)] // Not every test binary uses every helper.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use vessel_dhcp::packet::{CLIENT_PORT, MAX_PACKET_LEN, SERVER_PORT};
use vessel_dhcp::{Binding, Bindings, DhcpMessage, MessageType, ServerConfig};

/// How long a test waits for a reply that should come (generous: the machine is shared).
pub const REPLY_WAIT: Duration = Duration::from_secs(5);

/// Runs `test` on a fresh thread in a new, empty network namespace, on a current-thread tokio
/// runtime created inside it (so every socket and child process is in that namespace too).
pub fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        enter_new_netns();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn enter_new_netns() {
    // SAFETY: unshare takes no pointers and touches no memory of ours; CLONE_NEWNET moves only
    // the calling thread (and what it creates from now on) into a new network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!(
            "cannot create a network namespace: {} (these tests need root or CAP_SYS_ADMIN; \
             they never touch the machine's own network)",
            io::Error::last_os_error()
        );
    }
}

/// A network namespace, kept alive by an open handle to it.
#[derive(Debug)]
pub struct Netns(File);

impl Netns {
    /// A new, empty namespace (made on a helper thread, so the caller's stays as it is).
    pub fn new() -> Netns {
        std::thread::spawn(|| {
            enter_new_netns();
            Netns::current()
        })
        .join()
        .expect("creating a network namespace")
    }

    /// The calling thread's namespace.
    pub fn current() -> Netns {
        Netns(File::open("/proc/thread-self/ns/net").expect("open /proc/thread-self/ns/net"))
    }

    /// A path `ip ... netns PATH` accepts.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.0.as_raw_fd())
    }

    /// Runs `f` with the calling thread in this namespace, then moves it back. Sockets made
    /// and processes spawned inside stay in this namespace.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let back = Netns::current();
        set_netns(&self.0);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        set_netns(&back.0);
        result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

fn set_netns(ns: &File) {
    // SAFETY: setns only reads the fd, which `ns` keeps open for the duration of the call; it
    // changes the network namespace of the calling thread alone.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
}

/// Runs `ip ARGS` (iproute2) and fails the test with its stderr if it fails.
pub fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("cannot run `ip` (install iproute2)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the links are operationally up in `ns` (default: the caller's). Until then a
/// new link drops what is sent through it: the kernel attaches its transmit queue only when
/// the (rate-limited, up to a second late) link-watch work sees the carrier. Each change is
/// awaited with `ip monitor`; the state is also checked every 100 ms in case a change came
/// before the monitor was listening.
async fn wait_up(ns: Option<&Netns>, devs: &[&str]) {
    let spawn = || {
        tokio::process::Command::new("ip")
            .args(["-o", "monitor", "link"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("ip monitor link")
    };
    let mut monitor = match ns {
        Some(ns) => ns.enter(spawn),
        None => spawn(),
    };
    let mut events = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        monitor.stdout.take().unwrap(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let up = |dev: &&str| {
            let out = Command::new("ip")
                .args(["-br", "link", "show", "dev", dev])
                .output()
                .expect("ip link show");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                == Some("UP")
        };
        let all_up = match ns {
            Some(ns) => ns.enter(|| devs.iter().all(up)),
            None => devs.iter().all(up),
        };
        if all_up {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "links {devs:?} not up within 10 s"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), events.next_line()).await;
    }
}

/// One managed network: bridge `br<n>` with 10.77.<n>.1/24, and a veth pair whose far end
/// `cl<n>`, in a namespace of its own, plays the VM's NIC.
#[derive(Debug)]
pub struct Lan {
    pub n: u8,
    /// The VM's side.
    pub client_ns: Netns,
    pub bridge: String,
    pub client_if: String,
    pub client_mac: [u8; 6],
    pub server_ip: Ipv4Addr,
}

impl Lan {
    /// Creates the network and returns once every link in it is operationally up.
    pub async fn create(n: u8) -> Lan {
        let lan = Lan {
            n,
            client_ns: Netns::new(),
            bridge: format!("br{n}"),
            client_if: format!("cl{n}"),
            client_mac: [0x02, 0, 0, 0, n, 0x10],
            server_ip: Ipv4Addr::new(10, 77, n, 1),
        };
        let (br, cl) = (&lan.bridge, &lan.client_if);
        let mac = vessel_dhcp::decide::format_mac(&lan.client_mac);
        ip(&format!("link add {br} type bridge"));
        ip(&format!(
            "link add bp{n} type veth peer name {cl} address {mac}"
        ));
        ip(&format!("link set bp{n} master {br}"));
        ip(&format!("addr add {}/24 dev {br}", lan.server_ip));
        ip(&format!("link set {cl} netns {}", lan.client_ns.path()));
        ip(&format!("link set {br} up"));
        ip(&format!("link set bp{n} up"));
        lan.in_client(|| ip(&format!("link set {cl} up")));
        wait_up(None, &[br, &format!("bp{n}")]).await;
        wait_up(Some(&lan.client_ns), &[cl]).await;
        lan
    }

    /// Runs `f` in the VM's namespace.
    pub fn in_client<T>(&self, f: impl FnOnce() -> T) -> T {
        self.client_ns.enter(f)
    }

    /// A client on the VM's NIC, bound to `local`:68.
    pub fn client(&self, local: Ipv4Addr) -> Client {
        self.in_client(|| Client::bind(&self.client_if, local))
    }

    /// The address the tests bind to the client's MAC.
    pub fn bound_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.n, 10)
    }

    /// A server configuration with every optional setting used.
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            ifname: self.bridge.clone(),
            server_ip: self.server_ip,
            prefix_len: 24,
            router: Some(self.server_ip),
            dns: vec![
                Ipv4Addr::new(10, 77, self.n, 2),
                Ipv4Addr::new(10, 77, self.n, 3),
            ],
            domain: Some("vessel.test".into()),
            lease_secs: 3600,
            mtu: Some(1400),
        }
    }

    /// Bindings with the client's MAC bound to [`Lan::bound_ip`] under `hostname`.
    pub fn bindings(&self, hostname: &str) -> Bindings {
        HashMap::from([(
            self.client_mac,
            Binding {
                ip: self.bound_ip(),
                hostname: Some(hostname.into()),
            },
        )])
    }
}

/// A minimal DHCP client: a UDP socket on port 68 bound to one interface, like the server's.
pub struct Client {
    socket: UdpSocket,
}

impl Client {
    /// Binds `local:68` on `ifname` (0.0.0.0 before the client has an address).
    pub fn bind(ifname: &str, local: Ipv4Addr) -> Client {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        socket.bind_device(Some(ifname.as_bytes())).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_broadcast(true).unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
            .bind(&SocketAddrV4::new(local, CLIENT_PORT).into())
            .unwrap_or_else(|e| panic!("client bind {local}:68 on {ifname}: {e}"));
        Client {
            socket: UdpSocket::from_std(socket.into()).unwrap(),
        }
    }

    /// Sends raw bytes to `to`:67.
    pub async fn send_raw(&self, bytes: &[u8], to: Ipv4Addr) {
        self.socket
            .send_to(bytes, SocketAddrV4::new(to, SERVER_PORT))
            .await
            .unwrap_or_else(|e| panic!("sending {} bytes to {to}:67: {e}", bytes.len()));
    }

    pub async fn send(&self, message: &DhcpMessage, to: Ipv4Addr) {
        self.send_raw(&message.encode(0).bytes, to).await;
    }

    /// The next reply with this `xid`, or `None` after `within`. Datagrams that are not
    /// replies to this transaction are skipped.
    pub async fn recv(&self, xid: u32, within: Duration) -> Option<DhcpMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        loop {
            let (len, _) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .expect("client recv");
            if let Ok(m) = DhcpMessage::parse(&buf[..len]) {
                if m.xid == xid && m.op == vessel_dhcp::packet::BOOTREPLY {
                    return Some(m);
                }
            }
        }
    }

    /// The next reply to any transaction, or `None` after `within`.
    pub async fn recv_any(&self, within: Duration) -> Option<DhcpMessage> {
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        let (len, _) = tokio::time::timeout(within, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .expect("client recv");
        Some(DhcpMessage::parse(&buf[..len]).expect("server sent an unparsable reply"))
    }

    /// Sends `message` to `to` and returns the reply, failing the test if none comes.
    pub async fn exchange(&self, message: &DhcpMessage, to: Ipv4Addr) -> DhcpMessage {
        self.send(message, to).await;
        self.recv(message.xid, REPLY_WAIT).await.unwrap_or_else(|| {
            panic!(
                "no reply to {:?} xid {:#x} within {REPLY_WAIT:?}",
                message.options.message_type, message.xid
            )
        })
    }

    /// Proves that `message` gets no reply without waiting for a timeout: sends it, then
    /// `sentinel` (which must get one). The server handles datagrams in order, so a reply to
    /// `message` would arrive first; the first reply must be the sentinel's.
    pub async fn expect_no_reply(&self, message: &DhcpMessage, sentinel: &DhcpMessage) {
        assert_ne!(message.xid, sentinel.xid);
        self.send(message, Ipv4Addr::BROADCAST).await;
        self.send(sentinel, Ipv4Addr::BROADCAST).await;
        let first = self
            .recv_any(REPLY_WAIT)
            .await
            .expect("no reply to the sentinel");
        assert_eq!(
            first.xid, sentinel.xid,
            "{:?} xid {:#x} got a reply: {first:?}",
            message.options.message_type, message.xid
        );
    }
}

pub fn discover(mac: [u8; 6], xid: u32) -> DhcpMessage {
    DhcpMessage::client(MessageType::Discover, mac, xid)
}

/// A REQUEST as sent in SELECTING state: server id and requested address.
pub fn request(mac: [u8; 6], xid: u32, server: Ipv4Addr, ip: Ipv4Addr) -> DhcpMessage {
    let mut m = DhcpMessage::client(MessageType::Request, mac, xid);
    m.options.server_id = Some(server);
    m.options.requested_ip = Some(ip);
    m
}

/// busybox, for its `udhcpc`: `$VESSEL_BUSYBOX`, `busybox` on PATH, or the one inside the test
/// guest's initramfs (scripts/build-test-guest.sh, which scripts/test.sh runs before the tests),
/// unpacked once under the target directory.
pub fn busybox() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(find_busybox).clone()
}

fn find_busybox() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VESSEL_BUSYBOX") {
        return Some(PathBuf::from(p));
    }
    let on_path = Command::new("busybox")
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if on_path.is_ok_and(|s| s.success()) {
        return Some(PathBuf::from("busybox"));
    }
    let guest_dir = std::env::var_os("VESSEL_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vessel/test-guest"))
        })?;
    let initramfs = guest_dir.join("initramfs.img");
    initramfs
        .is_file()
        .then(|| unpack_busybox(&initramfs))
        .flatten()
}

/// `gzip -dc initramfs.img | cpio -id bin/busybox`, once, into the target's temp dir: unpacked
/// into a directory of this process, then renamed into place (another test process may race).
fn unpack_busybox(initramfs: &Path) -> Option<PathBuf> {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let cache = tmp.join("vessel-dhcp-busybox");
    let path = cache.join("bin/busybox");
    if path.is_file() {
        return Some(path);
    }
    let staging = tmp.join(format!("vessel-dhcp-busybox.{}", std::process::id()));
    std::fs::create_dir_all(&staging).ok()?;
    let mut gzip = Command::new("gzip")
        .arg("-dc")
        .arg(initramfs)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let cpio = Command::new("cpio")
        .args(["-id", "--quiet", "bin/busybox"])
        .current_dir(&staging)
        .stdin(gzip.stdout.take()?)
        .status()
        .ok()?;
    let _ = gzip.wait();
    let unpacked = cpio.success() && staging.join("bin/busybox").is_file();
    if unpacked && std::fs::rename(&staging, &cache).is_ok() {
        return Some(path);
    }
    let _ = std::fs::remove_dir_all(&staging);
    path.is_file().then_some(path)
}

/// Fails the test unless busybox is found or `VESSEL_SKIP_UDHCPC=1` asks to skip.
pub fn busybox_or_skip() -> Option<PathBuf> {
    if let Some(p) = busybox() {
        return Some(p);
    }
    if std::env::var("VESSEL_SKIP_UDHCPC").as_deref() == Ok("1") {
        eprintln!("busybox not found; udhcpc test skipped because VESSEL_SKIP_UDHCPC=1");
        return None;
    }
    panic!(
        "busybox (for udhcpc) not found: build the test guest (scripts/build-test-guest.sh), \
         install busybox-static, or set VESSEL_BUSYBOX=/path/to/busybox; \
         VESSEL_SKIP_UDHCPC=1 skips this test"
    );
}
