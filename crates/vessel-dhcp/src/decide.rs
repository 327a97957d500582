//! What the server answers to a request: pure, so every rule is unit-tested without sockets.
//!
//! Bindings are static (the daemon's IPAM assigned every NIC its address before the VM
//! started), so there is no pool and no lease table: a known MAC always gets its bound address,
//! and an unknown MAC gets silence. Silence rather than a NAK matters: several servers may share
//! one L2 segment, each knowing different MACs, and a NAK from the wrong one would undo the
//! right one's lease.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::packet::{DhcpMessage, DhcpOptions, MessageType, BOOTREPLY, BOOTREQUEST};

/// The address bound to one MAC, and the name the VM should take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// What a server tells every client on its network (the checked form of `ServerConfig`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    /// The server's address on the bridge; sent as server id (option 54).
    pub server_ip: Ipv4Addr,
    pub subnet_mask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub mtu: Option<u16>,
}

/// Where a reply goes (always to UDP port 68).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255 out of the server's interface: the client has no address yet.
    Broadcast,
    /// The client's own address (it set ciaddr: renewing, or INFORM).
    Unicast(Ipv4Addr),
}

/// A reply and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub message: DhcpMessage,
    pub destination: Destination,
}

/// Why a message gets no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// `op` is not BOOTREQUEST (e.g. another server's reply seen on the bridge).
    NotARequest,
    /// No option 53: plain BOOTP, not served.
    NoMessageType,
    /// A message type only servers send.
    ServerMessage(MessageType),
    /// Not Ethernet (htype 1, hlen 6): bindings are keyed by MAC.
    NotEthernet { htype: u8, hlen: u8 },
    /// Came through a relay agent; this server serves only its own bridge.
    Relayed(Ipv4Addr),
    /// No binding for this MAC: another server's client, or a NIC Vessel does not manage.
    UnknownClient([u8; 6]),
    /// A REQUEST for a lease offered by another server.
    OtherServer(Ipv4Addr),
    /// The client gave its address back; bindings are static, so nothing changes.
    Released { mac: [u8; 6], ip: Ipv4Addr },
    /// The client found its bound address in use by someone else: an address conflict.
    Declined { mac: [u8; 6], ip: Option<Ipv4Addr> },
}

/// The server's answer to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Reply(Reply),
    Ignore(Ignored),
}

/// Formats a MAC the way `ip link` shows it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotARequest => write!(f, "not a BOOTREQUEST"),
            Self::NoMessageType => write!(f, "no DHCP message type (plain BOOTP is not served)"),
            Self::ServerMessage(t) => write!(f, "{t} is a server's message"),
            Self::NotEthernet { htype, hlen } => {
                write!(f, "hardware type {htype}/length {hlen} is not Ethernet")
            }
            Self::Relayed(giaddr) => write!(f, "relayed by {giaddr}; relays are not served"),
            Self::UnknownClient(mac) => write!(f, "no binding for MAC {}", format_mac(mac)),
            Self::OtherServer(id) => write!(f, "client chose server {id}"),
            Self::Released { mac, ip } => {
                write!(f, "{} released {ip} (binding kept)", format_mac(mac))
            }
            Self::Declined { mac, ip } => match ip {
                Some(ip) => write!(
                    f,
                    "{} declined {ip}: another host on the network uses that address",
                    format_mac(mac)
                ),
                None => write!(f, "{} declined its address", format_mac(mac)),
            },
        }
    }
}

/// Decides the reply to `req` (see the module docs for the policy).
pub fn decide(
    req: &DhcpMessage,
    params: &ServerParams,
    bindings: &HashMap<[u8; 6], Binding>,
) -> Decision {
    match check_request(req, bindings) {
        Ok((kind, mac, binding)) => decide_known(req, kind, mac, binding, params),
        Err(ignored) => Decision::Ignore(ignored),
    }
}

/// The checks every message passes before its type matters: a client's DHCP message from an
/// Ethernet MAC on this bridge that has a binding.
fn check_request<'a>(
    req: &DhcpMessage,
    bindings: &'a HashMap<[u8; 6], Binding>,
) -> Result<(MessageType, [u8; 6], &'a Binding), Ignored> {
    if req.op != BOOTREQUEST {
        return Err(Ignored::NotARequest);
    }
    let kind = req.options.message_type.ok_or(Ignored::NoMessageType)?;
    if matches!(
        kind,
        MessageType::Offer | MessageType::Ack | MessageType::Nak
    ) {
        return Err(Ignored::ServerMessage(kind));
    }
    let mac = req.mac().ok_or(Ignored::NotEthernet {
        htype: req.htype,
        hlen: req.hlen,
    })?;
    if !req.giaddr.is_unspecified() {
        return Err(Ignored::Relayed(req.giaddr));
    }
    let binding = bindings.get(&mac).ok_or(Ignored::UnknownClient(mac))?;
    Ok((kind, mac, binding))
}

fn decide_known(
    req: &DhcpMessage,
    kind: MessageType,
    mac: [u8; 6],
    binding: &Binding,
    params: &ServerParams,
) -> Decision {
    match kind {
        MessageType::Discover => {
            Decision::Reply(lease_reply(req, MessageType::Offer, binding, params))
        }
        MessageType::Request => decide_request(req, binding, params),
        MessageType::Inform => Decision::Reply(inform_reply(req, binding, params)),
        MessageType::Release => Decision::Ignore(Ignored::Released {
            mac,
            ip: req.ciaddr,
        }),
        MessageType::Decline => Decision::Ignore(Ignored::Declined {
            mac,
            ip: req.options.requested_ip,
        }),
        // Filtered by check_request; kept total rather than unreachable!() (never panic on input).
        MessageType::Offer | MessageType::Ack | MessageType::Nak => {
            Decision::Ignore(Ignored::ServerMessage(kind))
        }
    }
}

/// REQUEST: ACK if the address asked for (option 50, else ciaddr when renewing) is the bound
/// one, NAK otherwise; silence if the client chose another server.
fn decide_request(req: &DhcpMessage, binding: &Binding, params: &ServerParams) -> Decision {
    if let Some(id) = req.options.server_id {
        if id != params.server_ip {
            return Decision::Ignore(Ignored::OtherServer(id));
        }
    }
    let asked = req
        .options
        .requested_ip
        .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
    match asked {
        Some(ip) if ip == binding.ip => {
            Decision::Reply(lease_reply(req, MessageType::Ack, binding, params))
        }
        Some(ip) => Decision::Reply(nak(
            req,
            params,
            format!("address {ip} is not bound to this client"),
        )),
        None => Decision::Reply(nak(
            req,
            params,
            "DHCPREQUEST names no address (neither option 50 nor ciaddr)".into(),
        )),
    }
}

/// The reply header: everything a reply copies from its request (RFC 2131 table 3).
fn reply_header(req: &DhcpMessage, kind: MessageType, params: &ServerParams) -> DhcpMessage {
    DhcpMessage {
        op: BOOTREPLY,
        htype: req.htype,
        hlen: req.hlen,
        hops: 0,
        xid: req.xid,
        secs: 0,
        flags: req.flags,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: req.giaddr,
        chaddr: req.chaddr,
        options: DhcpOptions {
            message_type: Some(kind),
            server_id: Some(params.server_ip),
            ..DhcpOptions::default()
        },
    }
}

/// The network configuration every OFFER and ACK carries.
fn config_options(o: &mut DhcpOptions, binding: &Binding, params: &ServerParams) {
    o.subnet_mask = Some(params.subnet_mask);
    o.routers = params.router.into_iter().collect();
    o.dns_servers = params.dns.clone();
    o.domain_name = params.domain.clone();
    o.mtu = params.mtu;
    o.hostname = binding.hostname.clone();
}

/// Where OFFER and ACK go: unicast to a client that already has its address, else broadcast.
/// (Unicast to yiaddr before the client has it would need a hand-made ARP entry; broadcast
/// reaches it just as well on one bridge.)
fn destination(req: &DhcpMessage) -> Destination {
    if req.ciaddr.is_unspecified() {
        Destination::Broadcast
    } else {
        Destination::Unicast(req.ciaddr)
    }
}

fn lease_reply(
    req: &DhcpMessage,
    kind: MessageType,
    binding: &Binding,
    params: &ServerParams,
) -> Reply {
    let mut message = reply_header(req, kind, params);
    message.yiaddr = binding.ip;
    if kind == MessageType::Ack {
        message.ciaddr = req.ciaddr;
    }
    let o = &mut message.options;
    o.lease_secs = Some(params.lease_secs);
    // RFC 2131 4.4.5 defaults: T1 = 0.5 and T2 = 0.875 of the lease.
    o.renewal_secs = Some(params.lease_secs / 2);
    o.rebinding_secs = Some((u64::from(params.lease_secs) * 7 / 8) as u32);
    config_options(o, binding, params);
    Reply {
        message,
        destination: destination(req),
    }
}

/// INFORM: the client configured its address itself and wants the rest; no yiaddr, no lease
/// times (RFC 2131 3.4).
fn inform_reply(req: &DhcpMessage, binding: &Binding, params: &ServerParams) -> Reply {
    let mut message = reply_header(req, MessageType::Ack, params);
    message.ciaddr = req.ciaddr;
    config_options(&mut message.options, binding, params);
    Reply {
        message,
        destination: destination(req),
    }
}

/// NAK: always broadcast, since the client's idea of its address is wrong (RFC 2131 4.3.2).
fn nak(req: &DhcpMessage, params: &ServerParams, reason: String) -> Reply {
    let mut message = reply_header(req, MessageType::Nak, params);
    message.options.message = Some(reason);
    Reply {
        message,
        destination: Destination::Broadcast,
    }
}
