//! A small IPv4 prefix type (address + prefix length), enough for subnets of VM networks.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::{Error, Result};

/// An IPv4 network in CIDR notation. The address is kept as given (so `10.0.0.1/24` can name
/// both a host address and its subnet); [`Ipv4Cidr::network`] gives the masked form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// `addr/prefix`; fails if `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self> {
        if prefix > 32 {
            return Err(Error::InvalidCidr {
                input: format!("{addr}/{prefix}"),
                reason: "the prefix length must be 0..=32",
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The address as given.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a number (`/24` -> `0xffffff00`).
    pub fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p)),
        }
    }

    /// The same prefix with the host bits cleared.
    pub fn network(&self) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let mask = self.mask() & other.mask();
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidCidr {
            input: s.to_string(),
            reason,
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("the `/prefix` part is missing"))?;
        let addr = addr
            .parse::<Ipv4Addr>()
            .map_err(|_| invalid("the address is not a dotted IPv4 address"))?;
        if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the prefix length must be a number 0..=32"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length must be a number 0..=32"))?;
        Self::new(addr, prefix).map_err(|_| invalid("the prefix length must be a number 0..=32"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        assert_eq!(c("10.50.0.1/24").to_string(), "10.50.0.1/24");
        assert_eq!(c("10.50.0.1/24").network().to_string(), "10.50.0.0/24");
        assert_eq!(c("0.0.0.0/0").mask(), 0);
        assert_eq!(c("1.2.3.4/32").mask(), u32::MAX);
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for s in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+1",
            "x/8",
        ] {
            assert!(s.parse::<Ipv4Cidr>().is_err(), "{s} was accepted");
        }
    }

    #[test]
    fn contains_and_overlaps() {
        assert!(c("10.50.0.0/24").contains("10.50.0.255".parse().unwrap()));
        assert!(!c("10.50.0.0/24").contains("10.50.1.0".parse().unwrap()));
        assert!(c("10.0.0.0/8").overlaps(&c("10.50.0.0/24")));
        assert!(c("10.50.0.0/24").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.50.0.0/24").overlaps(&c("10.50.1.0/24")));
        assert!(c("0.0.0.0/0").overlaps(&c("192.168.1.0/24")));
    }
}
