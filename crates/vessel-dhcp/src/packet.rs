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
