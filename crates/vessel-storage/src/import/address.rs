//! Which addresses a URL import may connect to (server-side request forgery).
//!
//! A download started by a caller who may not name host files must not reach the daemon's own
//! services (loopback), the cloud metadata service (link-local 169.254.169.254), or the private
//! networks behind the host. [`UrlPolicy`] says what is allowed; the HTTP client checks every
//! address a host name resolves to (and connects only to the checked ones: no second lookup),
//! every redirect hop, and literal addresses in URLs. Proxies from the environment are not used,
//! so the connection goes where the check looked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 or IPv6 network, `10.1.0.0/16` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let bad = || format!("{text:?} is not a network such as 10.1.0.0/16 or fd00::/8");
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// What an address is, when it is not a public unicast address: the words of refusals.
pub fn non_public_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(ip) => v4_kind(ip),
        IpAddr::V6(ip) => v6_kind(ip),
    }
}

fn v4_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_link_local() => "link-local (cloud metadata services live here)",
        _ if ip.is_private() => "private (RFC 1918)",
        _ if a == 100 && (64..128).contains(&b) => "shared (CGNAT, RFC 6598)",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() || a >= 240 => "reserved",
        _ if a == 192 && b == 0 && ip.octets()[2] == 0 => "IETF protocol assignments",
        _ if ip.is_documentation() => "documentation",
        _ if a == 198 && (b == 18 || b == 19) => "benchmarking",
        _ => return None,
    })
}

fn v6_kind(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_multicast() => "multicast",
        _ if first & 0xfe00 == 0xfc00 => "private (unique local, fc00::/7)",
        _ if first & 0xffc0 == 0xfe80 => "link-local",
        _ if first & 0xffc0 == 0xfec0 => "site-local",
        _ if first == 0x2001 && ip.segments()[1] == 0x0db8 => "documentation",
        // NAT64 and 6to4 embed IPv4 addresses that were not checked.
        _ if first == 0x0064 && ip.segments()[1] == 0xff9b => "NAT64",
        _ if first == 0x2002 => "6to4",
        _ if ip.segments()[..5] == [0; 5] => "IPv4-compatible",
        _ => return None,
    })
}

/// Which addresses a download may connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Any address at all (host admins).
    any: bool,
    /// Private and other non-public addresses too (`import_allow_private = true`).
    private: bool,
    /// Non-public networks allowed besides public addresses (`import_allow_cidrs`).
    allowed: Vec<IpNet>,
}

impl Default for UrlPolicy {
    fn default() -> Self {
        UrlPolicy::anywhere()
    }
}

impl UrlPolicy {
    /// No restriction: the caller may reach the host's own networks anyway (host admins).
    pub fn anywhere() -> UrlPolicy {
        UrlPolicy {
            any: true,
            private: true,
            allowed: Vec::new(),
        }
    }

    /// Public unicast addresses only.
    pub fn public_only() -> UrlPolicy {
        UrlPolicy {
            any: false,
            private: false,
            allowed: Vec::new(),
        }
    }

    /// From the daemon's settings: `allow_private`, or some networks named in `cidrs`.
    pub fn new(allow_private: bool, cidrs: &[String]) -> Result<UrlPolicy, String> {
        Ok(UrlPolicy {
            any: false,
            private: allow_private,
            allowed: cidrs
                .iter()
                .map(|c| IpNet::parse(c))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_anywhere(&self) -> bool {
        self.any
    }

    /// `Err` says why the address may not be reached (without anything from the server).
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let Some(kind) = non_public_kind(ip) else {
            return Ok(());
        };
        if self.any || self.private || self.allowed.iter().any(|n| n.contains(ip)) {
            return Ok(());
        }
        Err(format!(
            "{ip} is a {kind} address, which imports may not reach; use a URL of a public \
             server, or ask a host admin to import it (or to allow the network with \
             import_allow_cidrs in the daemon's configuration)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let policy = UrlPolicy::public_only();
        for refused in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(policy.check(ip(refused)).is_err(), "{refused}");
        }
        for allowed in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(policy.check(ip(allowed)).is_ok(), "{allowed}");
        }
        assert!(UrlPolicy::anywhere().check(ip("127.0.0.1")).is_ok());
        assert!(UrlPolicy::new(true, &[])
            .unwrap()
            .check(ip("10.0.0.1"))
            .is_ok());
    }

    #[test]
    fn allowed_networks_open_exactly_those_addresses() {
        let policy = UrlPolicy::new(false, &["10.1.0.0/16".into(), "fd12::/16".into()]).unwrap();
        assert!(policy.check(ip("10.1.200.3")).is_ok());
        assert!(policy.check(ip("10.2.0.1")).is_err());
        assert!(policy.check(ip("fd12::5")).is_ok());
        assert!(policy.check(ip("fd13::5")).is_err());
        assert!(policy.check(ip("127.0.0.1")).is_err());
        assert!(UrlPolicy::new(false, &["10.0.0.0/33".into()]).is_err());
        assert!(UrlPolicy::new(false, &["nonsense".into()]).is_err());
        let err = UrlPolicy::public_only()
            .check(ip("169.254.169.254"))
            .unwrap_err();
        assert!(err.contains("link-local"), "{err}");
    }
}
