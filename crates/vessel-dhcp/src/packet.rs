//! The DHCPv4 message (RFC 2131 header, RFC 2132 options): parsing and encoding, no IO.
//!
//! One type, [`DhcpMessage`], serves both directions: the server parses requests and encodes
//! replies, and a client (the tests' own) encodes requests and parses replies. Parsing never
//! panics: every length is checked against the buffer, and anything that does not add up is a
//! [`ParseError`] naming what was wrong.

use std::net::Ipv4Addr;

/// UDP port DHCP servers listen on.
pub const SERVER_PORT: u16 = 67;
/// UDP port DHCP clients listen on.
pub const CLIENT_PORT: u16 = 68;
/// Marks the start of DHCP options (RFC 2131 3); a message without it is plain BOOTP.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The fixed BOOTP header: op .. file.
pub const HEADER_LEN: usize = 236;
/// Header plus magic cookie: the shortest message that can be DHCP.
pub const MIN_LEN: usize = HEADER_LEN + 4;
/// BOOTP relay agents and old clients drop anything shorter (RFC 1542 2.1), so replies are
/// padded to this.
pub const BOOTP_MIN_LEN: usize = 300;
/// The largest message every client must accept (RFC 2131 2: 576-byte IP datagram minus IP and
/// UDP headers). Replies stay within it unless the client announces more (option 57).
pub const DEFAULT_MAX_LEN: usize = 576 - 28;
/// The largest message accepted or sent: a 1500-byte Ethernet frame minus IP and UDP headers.
/// Nothing legitimate on a Vessel bridge is bigger; bigger input is rejected, not parsed.
pub const MAX_PACKET_LEN: usize = 1500 - 28;

/// `op` of a client's message.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a server's message.
pub const BOOTREPLY: u8 = 2;
/// `htype` of Ethernet (ARP hardware type 1), the only kind a Vessel bridge carries.
pub const HTYPE_ETHERNET: u8 = 1;
/// The broadcast bit of `flags`: the client cannot receive unicast before it has an address.
pub const FLAG_BROADCAST: u16 = 0x8000;

mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const MTU: u8 = 26;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// Option 53, the kind of DHCP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    /// The type for a wire value, `None` for values RFC 2132 does not define.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Discover => "DHCPDISCOVER",
            Self::Offer => "DHCPOFFER",
            Self::Request => "DHCPREQUEST",
            Self::Decline => "DHCPDECLINE",
            Self::Ack => "DHCPACK",
            Self::Nak => "DHCPNAK",
            Self::Release => "DHCPRELEASE",
            Self::Inform => "DHCPINFORM",
        };
        f.write_str(name)
    }
}

/// Why bytes are not a DHCP message we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {len} bytes is shorter than the {MIN_LEN}-byte DHCP minimum (BOOTP header and magic cookie)")]
    TooShort { len: usize },
    #[error("message of {len} bytes is longer than the {MAX_PACKET_LEN} bytes a DHCP message on an Ethernet bridge can have")]
    TooLong { len: usize },
    #[error("hardware address length {hlen} exceeds the 16-byte chaddr field")]
    BadHardwareLength { hlen: u8 },
    #[error("no DHCP magic cookie after the BOOTP header (plain BOOTP is not served)")]
    NoMagicCookie,
    #[error("option {code} at byte {offset} runs past the end of the message")]
    TruncatedOption { code: u8, offset: usize },
    #[error("option {code} has length {len}, which its format does not allow")]
    BadOptionLength { code: u8, len: usize },
    #[error("unknown DHCP message type {0} (option 53 must be 1..=8)")]
    UnknownMessageType(u8),
}

/// The options Vessel reads or writes. Others are skipped when parsing; option overload (52) is
/// ignored, so options hidden in `sname`/`file` are not seen (no Vessel client uses it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpOptions {
    /// 53.
    pub message_type: Option<MessageType>,
    /// 54: which server the message is from, or (in a REQUEST) which server the client chose.
    pub server_id: Option<Ipv4Addr>,
    /// 50: the address a client asks for (REQUEST in SELECTING and INIT-REBOOT state).
    pub requested_ip: Option<Ipv4Addr>,
    /// 51.
    pub lease_secs: Option<u32>,
    /// 58 (T1).
    pub renewal_secs: Option<u32>,
    /// 59 (T2).
    pub rebinding_secs: Option<u32>,
    /// 1.
    pub subnet_mask: Option<Ipv4Addr>,
    /// 3.
    pub routers: Vec<Ipv4Addr>,
    /// 57: the largest message the client accepts.
    pub max_message_size: Option<u16>,
    /// 61: opaque; bindings are keyed by chaddr, so it is only logged.
    pub client_id: Option<Vec<u8>>,
    /// 55: the options the client asks for. Replies carry every configured option anyway.
    pub parameter_list: Vec<u8>,
    /// 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// 26.
    pub mtu: Option<u16>,
    /// 15.
    pub domain_name: Option<String>,
    /// 12 (not UTF-8 bytes are replaced when parsing).
    pub hostname: Option<String>,
    /// 56: a human-readable reason, sent with a NAK.
    pub message: Option<String>,
}

/// A DHCP message: the BOOTP header fields and the decoded options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpMessage {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub options: DhcpOptions,
}

/// An encoded message and the options that did not fit into the size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Codes of options left out, in the order they were dropped; empty when all fit.
    pub omitted: Vec<u8>,
}

impl DhcpMessage {
    /// A client message from an Ethernet MAC, with the broadcast flag set (the client has no
    /// address yet). Used by clients; the server only builds replies.
    pub fn client(message_type: MessageType, mac: [u8; 6], xid: u32) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        DhcpMessage {
            op: BOOTREQUEST,
            htype: HTYPE_ETHERNET,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: FLAG_BROADCAST,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: DhcpOptions {
                message_type: Some(message_type),
                ..DhcpOptions::default()
            },
        }
    }

    /// The client's Ethernet MAC, or `None` if the hardware is not Ethernet (htype 1, hlen 6):
    /// bindings are keyed by MAC, so nothing else can be served.
    pub fn mac(&self) -> Option<[u8; 6]> {
        if self.htype != HTYPE_ETHERNET || self.hlen != 6 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.chaddr[..6]);
        Some(mac)
    }

    /// Parses a message as received in one UDP datagram.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < MIN_LEN {
            return Err(ParseError::TooShort { len: buf.len() });
        }
        if buf.len() > MAX_PACKET_LEN {
            return Err(ParseError::TooLong { len: buf.len() });
        }
        let hlen = buf[2];
        if hlen > 16 {
            return Err(ParseError::BadHardwareLength { hlen });
        }
        if buf[HEADER_LEN..MIN_LEN] != MAGIC_COOKIE {
            return Err(ParseError::NoMagicCookie);
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&buf[28..44]);
        Ok(DhcpMessage {
            op: buf[0],
            htype: buf[1],
            hlen,
            hops: buf[3],
            xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            secs: u16::from_be_bytes([buf[8], buf[9]]),
            flags: u16::from_be_bytes([buf[10], buf[11]]),
            ciaddr: ip_at(buf, 12),
            yiaddr: ip_at(buf, 16),
            siaddr: ip_at(buf, 20),
            giaddr: ip_at(buf, 24),
            chaddr,
            options: decode_options(&split_options(&buf[MIN_LEN..])?)?,
        })
    }

    /// Encodes the message, at most `max_len` bytes (raised to [`BOOTP_MIN_LEN`], lowered to
    /// [`MAX_PACKET_LEN`]) and at least [`BOOTP_MIN_LEN`] (padded). Options are written in
    /// order of importance; one that does not fit is left out and named in `omitted`, so a long
    /// domain or DNS list can cost a client that option but never the lease itself.
    pub fn encode(&self, max_len: usize) -> Encoded {
        let max_len = max_len.clamp(BOOTP_MIN_LEN, MAX_PACKET_LEN);
        let mut bytes = Vec::with_capacity(max_len);
        bytes.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        bytes.extend_from_slice(&self.xid.to_be_bytes());
        bytes.extend_from_slice(&self.secs.to_be_bytes());
        bytes.extend_from_slice(&self.flags.to_be_bytes());
        for ip in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            bytes.extend_from_slice(&ip.octets());
        }
        bytes.extend_from_slice(&self.chaddr);
        bytes.resize(HEADER_LEN, 0); // sname and file: empty
        bytes.extend_from_slice(&MAGIC_COOKIE);

        let mut omitted = Vec::new();
        for (code, data) in option_list(&self.options) {
            // One byte stays free for END.
            if data.len() > 255 || bytes.len() + 2 + data.len() + 1 > max_len {
                omitted.push(code);
                continue;
            }
            bytes.push(code);
            bytes.push(data.len() as u8);
            bytes.extend_from_slice(&data);
        }
        bytes.push(code::END);
        if bytes.len() < BOOTP_MIN_LEN {
            bytes.resize(BOOTP_MIN_LEN, code::PAD);
        }
        Encoded { bytes, omitted }
    }
}

fn ip_at(buf: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[at], buf[at + 1], buf[at + 2], buf[at + 3])
}

/// Splits the option area into (code, data) pairs. Repeated codes are concatenated (RFC 3396),
/// which is how long options are split. Stops at END or at the end of the buffer (some clients
/// omit END); an option whose length runs past the buffer is an error.
fn split_options(area: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ParseError> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while i < area.len() {
        let code = area[i];
        match code {
            code::PAD => i += 1,
            code::END => break,
            _ => {
                let offset = MIN_LEN + i;
                let len = *area
                    .get(i + 1)
                    .ok_or(ParseError::TruncatedOption { code, offset })?
                    as usize;
                let data = area
                    .get(i + 2..i + 2 + len)
                    .ok_or(ParseError::TruncatedOption { code, offset })?;
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some((_, existing)) => existing.extend_from_slice(data),
                    None => out.push((code, data.to_vec())),
                }
                i += 2 + len;
            }
        }
    }
    Ok(out)
}

fn decode_options(raw: &[(u8, Vec<u8>)]) -> Result<DhcpOptions, ParseError> {
    let mut o = DhcpOptions::default();
    for (code, data) in raw {
        let code = *code;
        match code {
            code::MESSAGE_TYPE => {
                let value = fixed::<1>(code, data)?[0];
                o.message_type =
                    Some(MessageType::from_u8(value).ok_or(ParseError::UnknownMessageType(value))?);
            }
            code::SERVER_ID => o.server_id = Some(fixed::<4>(code, data)?.into()),
            code::REQUESTED_IP => o.requested_ip = Some(fixed::<4>(code, data)?.into()),
            code::SUBNET_MASK => o.subnet_mask = Some(fixed::<4>(code, data)?.into()),
            code::LEASE_TIME => o.lease_secs = Some(u32::from_be_bytes(fixed(code, data)?)),
            code::RENEWAL_TIME => o.renewal_secs = Some(u32::from_be_bytes(fixed(code, data)?)),
            code::REBINDING_TIME => o.rebinding_secs = Some(u32::from_be_bytes(fixed(code, data)?)),
            code::MAX_MESSAGE_SIZE => {
                o.max_message_size = Some(u16::from_be_bytes(fixed(code, data)?))
            }
            code::MTU => o.mtu = Some(u16::from_be_bytes(fixed(code, data)?)),
            code::ROUTER => o.routers = ip_list(code, data)?,
            code::DNS => o.dns_servers = ip_list(code, data)?,
            code::PARAMETER_LIST => o.parameter_list = data.clone(),
            code::CLIENT_ID => o.client_id = Some(data.clone()),
            code::HOSTNAME => o.hostname = text(data),
            code::DOMAIN_NAME => o.domain_name = text(data),
            code::MESSAGE => o.message = text(data),
            _ => {}
        }
    }
    Ok(o)
}

fn fixed<const N: usize>(code: u8, data: &[u8]) -> Result<[u8; N], ParseError> {
    data.try_into().map_err(|_| ParseError::BadOptionLength {
        code,
        len: data.len(),
    })
}

fn ip_list(code: u8, data: &[u8]) -> Result<Vec<Ipv4Addr>, ParseError> {
    if data.is_empty() || data.len() % 4 != 0 {
        return Err(ParseError::BadOptionLength {
            code,
            len: data.len(),
        });
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect())
}

/// A text option; trailing NULs (some clients send C strings) are dropped, an empty one is none.
fn text(data: &[u8]) -> Option<String> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    (end > 0).then(|| String::from_utf8_lossy(&data[..end]).into_owned())
}

/// The options to encode, most important first (see [`DhcpMessage::encode`]).
fn option_list(o: &DhcpOptions) -> Vec<(u8, Vec<u8>)> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut put = |code: u8, data: Option<Vec<u8>>| {
        if let Some(data) = data {
            out.push((code, data));
        }
    };
    let ip = |ip: Option<Ipv4Addr>| ip.map(|ip| ip.octets().to_vec());
    let u32v = |v: Option<u32>| v.map(|v| v.to_be_bytes().to_vec());
    let list =
        |ips: &[Ipv4Addr]| (!ips.is_empty()).then(|| ips.iter().flat_map(|i| i.octets()).collect());
    let bytes = |b: &Option<String>| b.as_ref().map(|s| s.as_bytes().to_vec());

    put(code::MESSAGE_TYPE, o.message_type.map(|t| vec![t as u8]));
    put(code::SERVER_ID, ip(o.server_id));
    put(code::REQUESTED_IP, ip(o.requested_ip));
    put(code::LEASE_TIME, u32v(o.lease_secs));
    put(code::RENEWAL_TIME, u32v(o.renewal_secs));
    put(code::REBINDING_TIME, u32v(o.rebinding_secs));
    put(code::SUBNET_MASK, ip(o.subnet_mask));
    put(code::ROUTER, list(&o.routers));
    put(code::MESSAGE, bytes(&o.message));
    put(
        code::MAX_MESSAGE_SIZE,
        o.max_message_size.map(|v| v.to_be_bytes().to_vec()),
    );
    put(code::CLIENT_ID, o.client_id.clone());
    put(
        code::PARAMETER_LIST,
        (!o.parameter_list.is_empty()).then(|| o.parameter_list.clone()),
    );
    put(code::DNS, list(&o.dns_servers));
    put(code::MTU, o.mtu.map(|v| v.to_be_bytes().to_vec()));
    put(code::HOSTNAME, bytes(&o.hostname));
    put(code::DOMAIN_NAME, bytes(&o.domain_name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A DISCOVER written byte by byte (not with `encode`), shaped like busybox udhcpc's.
    fn hand_built_discover() -> Vec<u8> {
        let mut b = vec![1, 1, 6, 0]; // op, htype, hlen, hops
        b.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // xid
        b.extend_from_slice(&[0, 3, 0x80, 0]); // secs 3, flags: broadcast
        b.extend_from_slice(&[0; 16]); // ciaddr yiaddr siaddr giaddr
        b.extend_from_slice(&MAC);
        b.resize(HEADER_LEN, 0);
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(&[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        b.extend_from_slice(&[0, 0]); // pads between options
        b.extend_from_slice(&[50, 4, 10, 0, 0, 7]);
        b.extend_from_slice(&[57, 2, 0x02, 0x40]); // 576
        b.extend_from_slice(&[55, 4, 1, 3, 6, 15]);
        b.extend_from_slice(&[12, 4, b'v', b'm', b'1', 0]); // C string
        b.extend_from_slice(&[224, 2, 9, 9]); // unknown option: skipped
        b.push(255);
        b.resize(300, 0);
        b
    }

    fn full_reply() -> DhcpMessage {
        let mut m = DhcpMessage::client(MessageType::Ack, MAC, 7);
        m.op = BOOTREPLY;
        m.yiaddr = Ipv4Addr::new(10, 0, 0, 7);
        m.options = DhcpOptions {
            message_type: Some(MessageType::Ack),
            server_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
            requested_ip: None,
            lease_secs: Some(3600),
            renewal_secs: Some(1800),
            rebinding_secs: Some(3150),
            subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            routers: vec![Ipv4Addr::new(10, 0, 0, 1)],
            max_message_size: None,
            client_id: None,
            parameter_list: vec![],
            dns_servers: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            mtu: Some(1450),
            domain_name: Some("lab.example".into()),
            hostname: Some("vm7".into()),
            message: None,
        };
        m
    }

    #[test]
    fn parses_a_hand_built_discover() {
        let m = DhcpMessage::parse(&hand_built_discover()).unwrap();
        assert_eq!(m.op, BOOTREQUEST);
        assert_eq!(m.xid, 0xdeadbeef);
        assert_eq!(m.secs, 3);
        assert_eq!(m.flags, FLAG_BROADCAST);
        assert_eq!(m.mac(), Some(MAC));
        let o = &m.options;
        assert_eq!(o.message_type, Some(MessageType::Discover));
        assert_eq!(o.requested_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(o.max_message_size, Some(576));
        assert_eq!(o.parameter_list, vec![1, 3, 6, 15]);
        assert_eq!(
            o.client_id.as_deref(),
            Some(&[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
        );
        assert_eq!(o.hostname.as_deref(), Some("vm1"));
        assert_eq!(o.server_id, None);
    }

    #[test]
    fn encodes_the_wire_layout_byte_by_byte() {
        let e = full_reply().encode(DEFAULT_MAX_LEN);
        let b = &e.bytes;
        assert!(e.omitted.is_empty());
        assert!(b.len() >= BOOTP_MIN_LEN && b.len() <= DEFAULT_MAX_LEN);
        assert_eq!(&b[..4], &[2, 1, 6, 0]);
        assert_eq!(&b[4..8], &[0, 0, 0, 7]);
        assert_eq!(&b[10..12], &[0x80, 0]);
        assert_eq!(&b[16..20], &[10, 0, 0, 7]); // yiaddr
        assert_eq!(&b[28..34], &MAC);
        assert!(b[44..HEADER_LEN].iter().all(|&x| x == 0)); // chaddr tail, sname, file
        assert_eq!(&b[HEADER_LEN..MIN_LEN], &MAGIC_COOKIE);
        assert_eq!(&b[240..243], &[53, 1, 5]);
        assert_eq!(&b[243..249], &[54, 4, 10, 0, 0, 1]);
        assert_eq!(&b[249..255], &[51, 4, 0, 0, 0x0e, 0x10]);
        // END, then only padding.
        let last = b.iter().rposition(|&x| x != 0).unwrap();
        assert_eq!(b[last], 255);
    }

    #[test]
    fn round_trips_every_option() {
        let m = full_reply();
        assert_eq!(
            DhcpMessage::parse(&m.encode(DEFAULT_MAX_LEN).bytes).unwrap(),
            m
        );
        let mut c = DhcpMessage::client(MessageType::Request, MAC, 9);
        c.options.requested_ip = Some(Ipv4Addr::new(10, 0, 0, 7));
        c.options.client_id = Some(vec![1, 2, 3]);
        c.options.parameter_list = vec![1, 3];
        c.options.max_message_size = Some(1400);
        c.options.message = Some("why".into());
        assert_eq!(DhcpMessage::parse(&c.encode(0).bytes).unwrap(), c);
    }

    #[test]
    fn short_messages_are_rejected() {
        let full = hand_built_discover();
        for len in 0..MIN_LEN {
            assert_eq!(
                DhcpMessage::parse(&full[..len]),
                Err(ParseError::TooShort { len })
            );
        }
    }

    #[test]
    fn every_truncation_parses_or_fails_cleanly() {
        let full = hand_built_discover();
        for len in MIN_LEN..=full.len() {
            match DhcpMessage::parse(&full[..len]) {
                Ok(_) | Err(ParseError::TruncatedOption { .. }) => {}
                Err(e) => panic!("length {len}: unexpected {e}"),
            }
        }
        // Cut inside the client id option: its length byte promises more than there is.
        let cut = MIN_LEN + 3 + 4;
        assert_eq!(
            DhcpMessage::parse(&full[..cut]),
            Err(ParseError::TruncatedOption {
                code: 61,
                offset: MIN_LEN + 3
            })
        );
        // Cut right after a code byte: no length byte.
        assert!(matches!(
            DhcpMessage::parse(&full[..MIN_LEN + 4]),
            Err(ParseError::TruncatedOption { code: 61, .. })
        ));
    }

    #[test]
    fn oversized_messages_are_rejected() {
        let mut big = hand_built_discover();
        big.resize(MAX_PACKET_LEN, 0);
        assert!(
            DhcpMessage::parse(&big).is_ok(),
            "padding up to the limit is fine"
        );
        big.push(0);
        assert_eq!(
            DhcpMessage::parse(&big),
            Err(ParseError::TooLong {
                len: MAX_PACKET_LEN + 1
            })
        );
        let huge = vec![0xffu8; 65_535];
        assert!(matches!(
            DhcpMessage::parse(&huge),
            Err(ParseError::TooLong { .. })
        ));
    }

    #[test]
    fn header_problems_are_named() {
        let mut b = hand_built_discover();
        b[HEADER_LEN] = 0;
        assert_eq!(DhcpMessage::parse(&b), Err(ParseError::NoMagicCookie));
        let mut b = hand_built_discover();
        b[2] = 17;
        assert_eq!(
            DhcpMessage::parse(&b),
            Err(ParseError::BadHardwareLength { hlen: 17 })
        );
        // A 16-byte hardware address is legal (but not a MAC).
        let mut b = hand_built_discover();
        b[1] = 6;
        b[2] = 16;
        assert_eq!(DhcpMessage::parse(&b).unwrap().mac(), None);
    }

    fn with_options(options: &[u8]) -> Vec<u8> {
        let mut b = hand_built_discover();
        b.truncate(MIN_LEN);
        b.extend_from_slice(options);
        b
    }

    #[test]
    fn option_lengths_are_checked() {
        for (opts, code, len) in [
            (&[53u8, 2, 1, 1][..], 53, 2),
            (&[53, 0][..], 53, 0),
            (&[54, 3, 1, 2, 3][..], 54, 3),
            (&[50, 5, 1, 2, 3, 4, 5][..], 50, 5),
            (&[51, 2, 0, 1][..], 51, 2),
            (&[57, 1, 9][..], 57, 1),
            (&[3, 5, 1, 2, 3, 4, 5][..], 3, 5),
            (&[6, 0][..], 6, 0),
        ] {
            assert_eq!(
                DhcpMessage::parse(&with_options(opts)),
                Err(ParseError::BadOptionLength { code, len }),
                "{opts:?}"
            );
        }
        assert_eq!(
            DhcpMessage::parse(&with_options(&[53, 1, 9])),
            Err(ParseError::UnknownMessageType(9))
        );
        assert_eq!(
            DhcpMessage::parse(&with_options(&[53, 1, 0])),
            Err(ParseError::UnknownMessageType(0))
        );
    }

    #[test]
    fn option_area_edge_cases() {
        // No END: accepted up to the end of the buffer.
        let m = DhcpMessage::parse(&with_options(&[53, 1, 3])).unwrap();
        assert_eq!(m.options.message_type, Some(MessageType::Request));
        // Nothing after the cookie at all.
        let m = DhcpMessage::parse(&with_options(&[])).unwrap();
        assert_eq!(m.options, DhcpOptions::default());
        // Garbage after END is not read.
        let m = DhcpMessage::parse(&with_options(&[53, 1, 1, 255, 53, 200, 7])).unwrap();
        assert_eq!(m.options.message_type, Some(MessageType::Discover));
        // A split option is joined (RFC 3396).
        let m =
            DhcpMessage::parse(&with_options(&[12, 2, b'a', b'b', 53, 1, 1, 12, 1, b'c'])).unwrap();
        assert_eq!(m.options.hostname.as_deref(), Some("abc"));
        // Overload (52) is ignored; an empty or all-NUL text is none; bad UTF-8 is replaced.
        let m = DhcpMessage::parse(&with_options(&[52, 1, 3, 12, 0, 15, 2, 0, 0, 56, 1, 0xff]))
            .unwrap();
        assert_eq!(m.options.hostname, None);
        assert_eq!(m.options.domain_name, None);
        assert_eq!(m.options.message.as_deref(), Some("\u{fffd}"));
        // A list of addresses.
        let m = DhcpMessage::parse(&with_options(&[6, 8, 1, 1, 1, 1, 8, 8, 8, 8])).unwrap();
        assert_eq!(
            m.options.dns_servers,
            vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
        );
    }

    #[test]
    fn encode_leaves_out_what_does_not_fit_but_never_the_lease() {
        let mut m = full_reply();
        m.options.domain_name = Some("d".repeat(200));
        m.options.hostname = Some("h".repeat(200));
        let e = m.encode(DEFAULT_MAX_LEN);
        assert!(e.bytes.len() <= DEFAULT_MAX_LEN);
        assert_eq!(e.omitted, vec![code::DOMAIN_NAME]);
        let back = DhcpMessage::parse(&e.bytes).unwrap();
        assert_eq!(back.options.hostname, m.options.hostname);
        assert_eq!(back.options.lease_secs, Some(3600));
        assert_eq!(back.options.subnet_mask, m.options.subnet_mask);
        // A client that accepts more gets everything.
        let e = m.encode(1000);
        assert!(e.omitted.is_empty());
        assert_eq!(DhcpMessage::parse(&e.bytes).unwrap(), m);
        // An option longer than 255 bytes cannot be encoded in one piece: left out.
        m.options.hostname = Some("h".repeat(256));
        assert_eq!(m.encode(MAX_PACKET_LEN).omitted, vec![code::HOSTNAME]);
        // A limit below the BOOTP minimum is raised to it: the essentials still fit.
        let e = full_reply().encode(10);
        assert_eq!(e.bytes.len(), BOOTP_MIN_LEN);
        assert!(!e.omitted.contains(&code::LEASE_TIME));
    }

    /// xorshift64*: a deterministic stream of "random" bytes, no dependency needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let valid = hand_built_discover();
        for round in 0..50_000 {
            let mut b = if round % 2 == 0 {
                let len = (rng.next() % 700) as usize;
                let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if b.len() >= MIN_LEN && round % 4 == 0 {
                    b[HEADER_LEN..MIN_LEN].copy_from_slice(&MAGIC_COOKIE);
                }
                b
            } else {
                valid.clone()
            };
            // Flip a few bytes, mostly in the option area where the lengths are.
            for _ in 0..(rng.next() % 6) {
                if b.is_empty() {
                    break;
                }
                let at = if rng.next() % 4 == 0 {
                    (rng.next() as usize) % b.len()
                } else {
                    MIN_LEN.min(b.len() - 1)
                        + (rng.next() as usize) % (b.len() - MIN_LEN.min(b.len() - 1))
                };
                b[at] = rng.next() as u8;
            }
            if let Ok(m) = DhcpMessage::parse(&b) {
                // Whatever parses can be encoded and parsed again.
                let e = m.encode(MAX_PACKET_LEN);
                assert!(DhcpMessage::parse(&e.bytes).is_ok());
            }
        }
    }
}
