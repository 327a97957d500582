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
    /// Boxed: a reply is a few hundred bytes, an ignored message a few.
    Reply(Box<Reply>),
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
        MessageType::Discover => Decision::Reply(Box::new(lease_reply(
            req,
            MessageType::Offer,
            binding,
            params,
        ))),
        MessageType::Request => decide_request(req, binding, params),
        MessageType::Inform => Decision::Reply(Box::new(inform_reply(req, binding, params))),
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
        Some(ip) if ip == binding.ip => Decision::Reply(Box::new(lease_reply(
            req,
            MessageType::Ack,
            binding,
            params,
        ))),
        Some(ip) => Decision::Reply(Box::new(nak(
            req,
            params,
            format!("address {ip} is not bound to this client"),
        ))),
        None => Decision::Reply(Box::new(nak(
            req,
            params,
            "DHCPREQUEST names no address (neither option 50 nor ciaddr)".into(),
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::FLAG_BROADCAST;

    const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const STRANGER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const BOUND: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 20);

    fn params() -> ServerParams {
        ServerParams {
            server_ip: SERVER,
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(SERVER),
            dns: vec![Ipv4Addr::new(10, 9, 0, 2)],
            domain: Some("vessel.internal".into()),
            lease_secs: 3600,
            mtu: Some(1450),
        }
    }

    fn bindings() -> HashMap<[u8; 6], Binding> {
        HashMap::from([(
            KNOWN,
            Binding {
                ip: BOUND,
                hostname: Some("web-1".into()),
            },
        )])
    }

    fn msg(kind: MessageType, mac: [u8; 6]) -> DhcpMessage {
        DhcpMessage::client(kind, mac, 0x1234)
    }

    fn reply(req: &DhcpMessage) -> Reply {
        match decide(req, &params(), &bindings()) {
            Decision::Reply(r) => *r,
            Decision::Ignore(why) => panic!("ignored: {why}"),
        }
    }

    fn ignored(req: &DhcpMessage) -> Ignored {
        match decide(req, &params(), &bindings()) {
            Decision::Ignore(why) => why,
            Decision::Reply(r) => panic!("unexpected reply {r:?}"),
        }
    }

    #[test]
    fn discover_from_a_known_mac_gets_an_offer_of_its_binding() {
        let r = reply(&msg(MessageType::Discover, KNOWN));
        assert_eq!(r.destination, Destination::Broadcast);
        let m = &r.message;
        assert_eq!(m.op, BOOTREPLY);
        assert_eq!(
            (m.xid, m.flags, m.mac()),
            (0x1234, FLAG_BROADCAST, Some(KNOWN))
        );
        assert_eq!(m.yiaddr, BOUND);
        assert_eq!(m.ciaddr, Ipv4Addr::UNSPECIFIED);
        let o = &m.options;
        assert_eq!(o.message_type, Some(MessageType::Offer));
        assert_eq!(o.server_id, Some(SERVER));
        assert_eq!(o.lease_secs, Some(3600));
        assert_eq!(o.renewal_secs, Some(1800));
        assert_eq!(o.rebinding_secs, Some(3150));
        assert_eq!(o.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(o.routers, vec![SERVER]);
        assert_eq!(o.dns_servers, vec![Ipv4Addr::new(10, 9, 0, 2)]);
        assert_eq!(o.domain_name.as_deref(), Some("vessel.internal"));
        assert_eq!(o.hostname.as_deref(), Some("web-1"));
        assert_eq!(o.mtu, Some(1450));
    }

    #[test]
    fn unknown_macs_get_silence_never_a_nak() {
        for kind in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
            MessageType::Release,
        ] {
            let mut m = msg(kind, STRANGER);
            m.options.requested_ip = Some(BOUND);
            assert_eq!(ignored(&m), Ignored::UnknownClient(STRANGER));
        }
    }

    #[test]
    fn request_for_the_bound_address_is_acked() {
        // SELECTING: server id and requested address.
        let mut m = msg(MessageType::Request, KNOWN);
        m.options.server_id = Some(SERVER);
        m.options.requested_ip = Some(BOUND);
        let r = reply(&m);
        assert_eq!(r.destination, Destination::Broadcast);
        assert_eq!(r.message.options.message_type, Some(MessageType::Ack));
        assert_eq!(r.message.yiaddr, BOUND);
        assert_eq!(r.message.options.lease_secs, Some(3600));
        // INIT-REBOOT: no server id.
        m.options.server_id = None;
        assert_eq!(
            reply(&m).message.options.message_type,
            Some(MessageType::Ack)
        );
    }

    #[test]
    fn renewal_is_acked_by_unicast_to_ciaddr() {
        let mut m = msg(MessageType::Request, KNOWN);
        m.ciaddr = BOUND;
        m.flags = 0;
        let r = reply(&m);
        assert_eq!(r.destination, Destination::Unicast(BOUND));
        assert_eq!(r.message.options.message_type, Some(MessageType::Ack));
        assert_eq!((r.message.ciaddr, r.message.yiaddr), (BOUND, BOUND));
    }

    #[test]
    fn request_for_another_address_is_naked() {
        let wrong = Ipv4Addr::new(10, 9, 0, 99);
        for server_id in [Some(SERVER), None] {
            let mut m = msg(MessageType::Request, KNOWN);
            m.options.server_id = server_id;
            m.options.requested_ip = Some(wrong);
            let r = reply(&m);
            assert_eq!(r.destination, Destination::Broadcast);
            let n = &r.message;
            assert_eq!(n.options.message_type, Some(MessageType::Nak));
            assert_eq!(n.options.server_id, Some(SERVER));
            assert_eq!(n.yiaddr, Ipv4Addr::UNSPECIFIED);
            assert_eq!(n.options.lease_secs, None);
            assert_eq!(n.options.subnet_mask, None);
            assert!(n.options.message.as_deref().unwrap().contains("10.9.0.99"));
        }
        // Renewing a wrong address (ciaddr only) is NAKed too, and broadcast.
        let mut m = msg(MessageType::Request, KNOWN);
        m.ciaddr = wrong;
        let r = reply(&m);
        assert_eq!(r.message.options.message_type, Some(MessageType::Nak));
        assert_eq!(r.destination, Destination::Broadcast);
        // No address at all.
        let r = reply(&msg(MessageType::Request, KNOWN));
        assert_eq!(r.message.options.message_type, Some(MessageType::Nak));
    }

    #[test]
    fn request_to_another_server_is_ignored() {
        let other = Ipv4Addr::new(10, 9, 0, 254);
        let mut m = msg(MessageType::Request, KNOWN);
        m.options.server_id = Some(other);
        m.options.requested_ip = Some(Ipv4Addr::new(10, 9, 0, 99));
        assert_eq!(ignored(&m), Ignored::OtherServer(other));
    }

    #[test]
    fn release_and_decline_get_no_reply() {
        let mut m = msg(MessageType::Release, KNOWN);
        m.ciaddr = BOUND;
        assert_eq!(
            ignored(&m),
            Ignored::Released {
                mac: KNOWN,
                ip: BOUND
            }
        );
        let mut m = msg(MessageType::Decline, KNOWN);
        m.options.requested_ip = Some(BOUND);
        let why = ignored(&m);
        assert_eq!(
            why,
            Ignored::Declined {
                mac: KNOWN,
                ip: Some(BOUND)
            }
        );
        assert!(why.to_string().contains("another host"), "{why}");
    }

    #[test]
    fn inform_gets_an_ack_without_address_or_lease() {
        let mut m = msg(MessageType::Inform, KNOWN);
        m.ciaddr = BOUND;
        let r = reply(&m);
        assert_eq!(r.destination, Destination::Unicast(BOUND));
        let a = &r.message;
        assert_eq!(a.options.message_type, Some(MessageType::Ack));
        assert_eq!(a.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.ciaddr, BOUND);
        assert_eq!(
            (
                a.options.lease_secs,
                a.options.renewal_secs,
                a.options.rebinding_secs
            ),
            (None, None, None)
        );
        assert_eq!(a.options.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(a.options.dns_servers, vec![Ipv4Addr::new(10, 9, 0, 2)]);
    }

    #[test]
    fn what_is_not_a_client_message_for_this_bridge_is_ignored() {
        let mut m = msg(MessageType::Discover, KNOWN);
        m.op = BOOTREPLY;
        assert_eq!(ignored(&m), Ignored::NotARequest);
        for kind in [MessageType::Offer, MessageType::Ack, MessageType::Nak] {
            assert_eq!(ignored(&msg(kind, KNOWN)), Ignored::ServerMessage(kind));
        }
        let mut m = msg(MessageType::Discover, KNOWN);
        m.options.message_type = None;
        assert_eq!(ignored(&m), Ignored::NoMessageType);
        let mut m = msg(MessageType::Discover, KNOWN);
        m.htype = 6;
        assert_eq!(ignored(&m), Ignored::NotEthernet { htype: 6, hlen: 6 });
        let mut m = msg(MessageType::Discover, KNOWN);
        m.giaddr = Ipv4Addr::new(10, 1, 1, 1);
        assert_eq!(ignored(&m), Ignored::Relayed(Ipv4Addr::new(10, 1, 1, 1)));
    }

    #[test]
    fn optional_settings_are_left_out_when_unset() {
        let p = ServerParams {
            router: None,
            dns: vec![],
            domain: None,
            mtu: None,
            lease_secs: u32::MAX,
            ..params()
        };
        let b = HashMap::from([(
            KNOWN,
            Binding {
                ip: BOUND,
                hostname: None,
            },
        )]);
        let Decision::Reply(r) = decide(&msg(MessageType::Discover, KNOWN), &p, &b) else {
            panic!("no offer");
        };
        let o = &r.message.options;
        assert!(o.routers.is_empty() && o.dns_servers.is_empty());
        assert_eq!(
            (o.domain_name.as_ref(), o.hostname.as_ref(), o.mtu),
            (None, None, None)
        );
        // An infinite lease (0xffffffff) does not overflow T1/T2.
        assert_eq!(o.lease_secs, Some(u32::MAX));
        assert_eq!(o.renewal_secs, Some(u32::MAX / 2));
        assert_eq!(o.rebinding_secs, Some((u64::from(u32::MAX) * 7 / 8) as u32));
    }

    #[test]
    fn macs_are_formatted_like_ip_link() {
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:ab:cd:ef"
        );
    }
}
