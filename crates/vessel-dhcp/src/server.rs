//! The DHCP server task: one UDP socket on port 67 bound to one bridge, answering with
//! [`decide`] from the bindings the daemon publishes on a watch channel.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::decide::{decide, Binding, Decision, Destination, Ignored, ServerParams};
use crate::packet::{
    DhcpMessage, MessageType, CLIENT_PORT, DEFAULT_MAX_LEN, MAX_PACKET_LEN, SERVER_PORT,
};

/// The bindings of one network: MAC -> address. The daemon sends a new map whenever a NIC is
/// added, removed or readdressed; the server reads the latest map for every message.
pub type Bindings = HashMap<[u8; 6], Binding>;

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
const IFNAME_MAX: usize = 15;
/// Most DNS servers sent: more would crowd the 548-byte reply every client must accept.
const DNS_MAX: usize = 8;

/// How to run the server of one managed network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The bridge the network's VMs are on. The server only sees and sends on it.
    pub ifname: String,
    /// The server's address on the bridge (must already be assigned to it: replies take their
    /// source address from the interface).
    pub server_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub mtu: Option<u16>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid DHCP server configuration for {ifname}: {reason}")]
    InvalidConfig { ifname: String, reason: String },
    #[error("cannot bind DHCP port 67 on {ifname}: no such network interface (create the bridge before its DHCP server)")]
    NoSuchInterface { ifname: String },
    #[error("cannot bind DHCP port 67 on {ifname}: address in use (is dnsmasq or another DHCP server running on this bridge?)")]
    AddrInUse { ifname: String },
    #[error("cannot bind DHCP port 67 on {ifname}: permission denied (the daemon needs root, or CAP_NET_BIND_SERVICE and CAP_NET_RAW)")]
    PermissionDenied { ifname: String },
    #[error("cannot set up the DHCP socket on {ifname}: {step}: {source}")]
    Socket {
        ifname: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Counters of one server since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams read from the socket.
    pub received: u64,
    /// Datagrams that were not a usable DHCP message.
    pub malformed: u64,
    /// Messages that got no reply (unknown MAC, another server's lease, RELEASE, ...).
    pub ignored: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    /// Replies that could not be sent.
    pub send_errors: u64,
}

impl Stats {
    /// Replies sent.
    pub fn served(&self) -> u64 {
        self.offers + self.acks + self.naks
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    offers: AtomicU64,
    acks: AtomicU64,
    naks: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            received: get(&self.received),
            malformed: get(&self.malformed),
            ignored: get(&self.ignored),
            offers: get(&self.offers),
            acks: get(&self.acks),
            naks: get(&self.naks),
            send_errors: get(&self.send_errors),
        }
    }
}

impl ServerConfig {
    /// Checks the configuration and derives what the protocol needs from it.
    pub fn params(&self) -> Result<ServerParams, Error> {
        let invalid = |reason: String| Error::InvalidConfig {
            ifname: self.ifname.clone(),
            reason,
        };
        check_ifname(&self.ifname).map_err(invalid)?;
        if !(1..=30).contains(&self.prefix_len) {
            return Err(invalid(format!(
                "prefix length /{} leaves no room for clients (use /1 to /30)",
                self.prefix_len
            )));
        }
        if self.server_ip.is_unspecified() || self.server_ip.is_broadcast() {
            return Err(invalid(format!(
                "server address {} cannot identify a server",
                self.server_ip
            )));
        }
        if self.lease_secs < 60 {
            return Err(invalid(format!(
                "lease time {} s is too short (at least 60 s; clients renew at half of it)",
                self.lease_secs
            )));
        }
        if self.dns.len() > DNS_MAX {
            return Err(invalid(format!(
                "{} DNS servers given, at most {DNS_MAX} are sent",
                self.dns.len()
            )));
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(invalid(format!(
                    "MTU {mtu} is below 68, the smallest IPv4 allows"
                )));
            }
        }
        if let Some(domain) = &self.domain {
            check_domain(domain).map_err(invalid)?;
        }
        Ok(ServerParams {
            server_ip: self.server_ip,
            subnet_mask: Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix_len))),
            router: self.router,
            dns: self.dns.clone(),
            domain: self.domain.clone(),
            lease_secs: self.lease_secs,
            mtu: self.mtu,
        })
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a Linux interface name (1-{IFNAME_MAX} bytes, no '/', whitespace or NUL)"
        ))
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() <= 253 && domain.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "domain {domain:?} is not a DNS name (dot-separated labels of letters, digits and '-', at most 253 bytes)"
        ))
    }
}

/// Starts DHCP servers.
#[derive(Debug)]
pub struct DhcpServer;

impl DhcpServer {
    /// Binds port 67 on `config.ifname` and serves `bindings` until the handle is dropped or
    /// shut down. Must be called inside a tokio runtime. Errors after start (a failed send,
    /// a malformed message) are logged with `tracing` and counted, never fatal.
    pub fn spawn(
        config: ServerConfig,
        bindings: watch::Receiver<Bindings>,
    ) -> Result<DhcpHandle, Error> {
        let params = config.params()?;
        let socket = bind_socket(&config.ifname)?;
        let counters = Arc::new(Counters::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let server = Server {
            socket,
            ifname: config.ifname.clone(),
            params,
            bindings,
            counters: counters.clone(),
        };
        tracing::info!(ifname = %config.ifname, server_ip = %config.server_ip, "DHCP server started");
        let task = tokio::spawn(server.run(stop_rx));
        Ok(DhcpHandle {
            ifname: config.ifname,
            counters,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running server. Dropping it stops the server (the socket closes once the runtime drops
/// the aborted task); [`DhcpHandle::shutdown`] stops it and waits until the port is released.
pub struct DhcpHandle {
    ifname: String,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DhcpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpHandle")
            .field("ifname", &self.ifname)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DhcpHandle {
    /// The interface served.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Stops the server and returns once its socket is closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!(ifname = %self.ifname, "DHCP server task panicked: {e}");
                }
            }
        }
    }
}

impl Drop for DhcpHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The socket: SO_BINDTODEVICE before bind, so that binding 0.0.0.0:67 only claims this
/// interface; SO_REUSEADDR, so that the servers of several bridges share port 67 in one
/// namespace; SO_BROADCAST, for replies to clients that have no address yet.
fn bind_socket(ifname: &str) -> Result<UdpSocket, Error> {
    let step = |step: &'static str| {
        move |source: io::Error| Error::Socket {
            ifname: ifname.to_string(),
            step,
            source,
        }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(step("creating the socket"))?;
    socket
        .bind_device(Some(ifname.as_bytes()))
        .map_err(|e| bind_error(ifname, "SO_BINDTODEVICE", e))?;
    socket
        .set_reuse_address(true)
        .map_err(step("SO_REUSEADDR"))?;
    socket.set_broadcast(true).map_err(step("SO_BROADCAST"))?;
    socket.set_nonblocking(true).map_err(step("O_NONBLOCK"))?;
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT);
    socket
        .bind(&addr.into())
        .map_err(|e| bind_error(ifname, "bind", e))?;
    UdpSocket::from_std(socket.into()).map_err(step("registering with tokio"))
}

fn bind_error(ifname: &str, step: &'static str, source: io::Error) -> Error {
    let ifname = ifname.to_string();
    // What SO_BINDTODEVICE returns for an interface name that does not exist.
    if source.raw_os_error() == Some(libc::ENODEV) {
        return Error::NoSuchInterface { ifname };
    }
    match source.kind() {
        io::ErrorKind::AddrInUse => Error::AddrInUse { ifname },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied { ifname },
        _ => Error::Socket {
            ifname,
            step,
            source,
        },
    }
}

struct Server {
    socket: UdpSocket,
    ifname: String,
    params: ServerParams,
    bindings: watch::Receiver<Bindings>,
    counters: Arc<Counters>,
}

impl Server {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        // One byte more than the largest message accepted: a longer datagram is cut to
        // MAX_PACKET_LEN + 1 bytes and then rejected by the parser as too long.
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        loop {
            let received = tokio::select! {
                _ = &mut stop => break,
                r = self.socket.recv_from(&mut buf) => r,
            };
            match received {
                Ok((len, peer)) => self.handle(&buf[..len], peer).await,
                Err(e) => {
                    tracing::warn!(ifname = %self.ifname, "DHCP receive failed: {e}");
                    // Do not spin on an error that repeats (e.g. the bridge went away).
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::info!(ifname = %self.ifname, "DHCP server stopped");
    }

    async fn handle(&self, datagram: &[u8], peer: SocketAddr) {
        Counters::bump(&self.counters.received);
        let request = match DhcpMessage::parse(datagram) {
            Ok(m) => m,
            Err(e) => {
                Counters::bump(&self.counters.malformed);
                tracing::debug!(ifname = %self.ifname, %peer, "malformed DHCP message: {e}");
                return;
            }
        };
        // The latest bindings, read per message and released before any await.
        let decision = decide(&request, &self.params, &self.bindings.borrow());
        match decision {
            Decision::Ignore(why) => {
                Counters::bump(&self.counters.ignored);
                log_ignored(&self.ifname, request.xid, &why);
            }
            Decision::Reply(reply) => {
                let max_len = request
                    .options
                    .max_message_size
                    .map_or(DEFAULT_MAX_LEN, |m| usize::from(m).saturating_sub(28))
                    .max(DEFAULT_MAX_LEN);
                self.send(&reply.message, reply.destination, max_len).await;
            }
        }
    }

    async fn send(&self, message: &DhcpMessage, destination: Destination, max_len: usize) {
        let encoded = message.encode(max_len);
        if !encoded.omitted.is_empty() {
            tracing::warn!(ifname = %self.ifname, omitted = ?encoded.omitted,
                "DHCP reply too long for the client: options left out (shorten the domain or DNS list)");
        }
        let to_ip = match destination {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(ip) => ip,
        };
        let to = SocketAddrV4::new(to_ip, CLIENT_PORT);
        let kind = message.options.message_type;
        match self.socket.send_to(&encoded.bytes, to).await {
            Ok(_) => {
                let counter = match kind {
                    Some(MessageType::Offer) => &self.counters.offers,
                    Some(MessageType::Nak) => &self.counters.naks,
                    _ => &self.counters.acks,
                };
                Counters::bump(counter);
                tracing::debug!(ifname = %self.ifname, xid = message.xid, %to,
                    yiaddr = %message.yiaddr, "sent {}", kind.map_or("reply".into(), |k| k.to_string()));
            }
            Err(e) => {
                Counters::bump(&self.counters.send_errors);
                tracing::warn!(ifname = %self.ifname, %to, "cannot send DHCP reply: {e}");
            }
        }
    }
}

/// Unknown MACs are normal on a shared segment (debug); an address conflict is not (warn).
fn log_ignored(ifname: &str, xid: u32, why: &Ignored) {
    match why {
        Ignored::Declined { .. } => tracing::warn!(%ifname, xid, "DHCPDECLINE: {why}"),
        Ignored::Released { .. } => tracing::info!(%ifname, xid, "DHCPRELEASE: {why}"),
        _ => tracing::debug!(%ifname, xid, "DHCP message ignored: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            ifname: "vb-net1".into(),
            server_ip: Ipv4Addr::new(10, 8, 0, 1),
            prefix_len: 24,
            router: None,
            dns: vec![],
            domain: Some("vessel.internal".into()),
            lease_secs: 3600,
            mtu: None,
        }
    }

    fn invalid(c: ServerConfig) -> String {
        match c.params() {
            Err(e @ Error::InvalidConfig { .. }) => e.to_string(),
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn subnet_mask_comes_from_the_prefix() {
        for (prefix, mask) in [
            (24, Ipv4Addr::new(255, 255, 255, 0)),
            (30, Ipv4Addr::new(255, 255, 255, 252)),
            (16, Ipv4Addr::new(255, 255, 0, 0)),
            (1, Ipv4Addr::new(128, 0, 0, 0)),
        ] {
            let c = ServerConfig {
                prefix_len: prefix,
                ..config()
            };
            assert_eq!(c.params().unwrap().subnet_mask, mask);
        }
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        for p in [0, 31, 32, 33] {
            let msg = invalid(ServerConfig {
                prefix_len: p,
                ..config()
            });
            assert!(
                msg.contains("vb-net1") && msg.contains("/1 to /30"),
                "{msg}"
            );
        }
        for name in ["", "a-name-too-long-x", "a/b", "a b", ".."] {
            let msg = invalid(ServerConfig {
                ifname: name.into(),
                ..config()
            });
            assert!(msg.contains("interface name"), "{msg}");
        }
        for domain in ["", "a..b", "-a.b", "a_b", &"x".repeat(64)] {
            let msg = invalid(ServerConfig {
                domain: Some(domain.into()),
                ..config()
            });
            assert!(msg.contains("not a DNS name"), "{msg}");
        }
        let msg = invalid(ServerConfig {
            lease_secs: 10,
            ..config()
        });
        assert!(msg.contains("at least 60"), "{msg}");
        let msg = invalid(ServerConfig {
            dns: vec![Ipv4Addr::new(1, 1, 1, 1); 9],
            ..config()
        });
        assert!(msg.contains("at most 8"), "{msg}");
        let msg = invalid(ServerConfig {
            mtu: Some(67),
            ..config()
        });
        assert!(msg.contains("68"), "{msg}");
        let msg = invalid(ServerConfig {
            server_ip: Ipv4Addr::UNSPECIFIED,
            ..config()
        });
        assert!(msg.contains("0.0.0.0"), "{msg}");
    }

    #[test]
    fn bind_errors_say_how_to_fix_them() {
        let e = bind_error(
            "vb-net1",
            "bind",
            io::Error::from_raw_os_error(libc::EADDRINUSE),
        );
        assert_eq!(
            e.to_string(),
            "cannot bind DHCP port 67 on vb-net1: address in use (is dnsmasq or another DHCP \
             server running on this bridge?)"
        );
        let e = bind_error(
            "vb-x",
            "SO_BINDTODEVICE",
            io::Error::from_raw_os_error(libc::ENODEV),
        );
        assert!(matches!(e, Error::NoSuchInterface { .. }), "{e}");
        assert!(e.to_string().contains("create the bridge"));
        let e = bind_error("vb-x", "bind", io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    }
}
