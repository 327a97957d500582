//! Links, addresses, routes and VXLAN forwarding entries over rtnetlink.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures_util::{StreamExt, TryStreamExt};
use netlink_packet_core::{
    ErrorMessage, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkIfb, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::cidr::Ipv4Cidr;
use crate::name::validate_ifname;
use crate::{Error, Result};

/// The IANA VXLAN port, the default of [`VxlanConfig::port`].
pub const VXLAN_PORT: u16 = 4789;

/// What [`Netlink::links_with_prefix`] and [`Netlink::link`] tell about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// The hardware address; `None` for links without one.
    pub mac: Option<[u8; 6]>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// The index of the bridge (or other controller) it is enslaved to.
    pub master: Option<u32>,
}

/// A VXLAN link for one virtual network, with head-end replication to a list of peers (no
/// multicast needed in the underlay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanConfig {
    pub name: String,
    pub vni: u32,
    /// UDP destination port; [`VXLAN_PORT`] unless the underlay needs another.
    pub port: u16,
    /// Source address of the outer packets; the kernel picks one by route when `None`.
    pub local: Option<Ipv4Addr>,
    /// The underlay device (name) to send through.
    pub underlay: Option<String>,
    /// MTU of the VXLAN link; the kernel subtracts the 50-byte overhead from the underlay's when
    /// `None`.
    pub mtu: Option<u32>,
}

impl VxlanConfig {
    /// A VXLAN link with the defaults (port 4789, kernel-chosen source and device).
    pub fn new(name: &str, vni: u32) -> Self {
        Self {
            name: name.to_string(),
            vni,
            port: VXLAN_PORT,
            local: None,
            underlay: None,
            mtu: None,
        }
    }
}

/// A netlink connection bound to the network namespace of the thread that called
/// [`Netlink::connect`]; every request acts in that namespace, whichever thread awaits it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its driver
    /// on the current tokio runtime (so this must be called inside one).
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::NetlinkSocket)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Creates a bridge (up), optionally with an MTU.
    pub async fn create_bridge(&self, name: &str, mtu: Option<u32>) -> Result<()> {
        validate_ifname(name)?;
        let mut builder = LinkBridge::new(name);
        if let Some(mtu) = mtu {
            builder = builder.mtu(check_mtu(mtu)?);
        }
        let what = format!("create bridge {name}");
        self.add_link(name, builder.build(), &what).await
    }

    /// Creates a VXLAN link (down: enslave it, then set it up). MAC learning stays on so that
    /// unicast to a known remote MAC goes to that peer only; the all-zeros FDB entries added by
    /// [`Netlink::add_vxlan_peer`] carry broadcast, unknown unicast and multicast to every peer.
    pub async fn create_vxlan(&self, cfg: &VxlanConfig) -> Result<()> {
        validate_ifname(&cfg.name)?;
        if cfg.vni == 0 || cfg.vni >= 1 << 24 {
            return Err(Error::InvalidValue {
                what: "VXLAN VNI (1..=16777215)",
                value: u64::from(cfg.vni),
            });
        }
        let mut builder = LinkVxlan::new(&cfg.name, cfg.vni).port(cfg.port);
        if let Some(local) = cfg.local {
            builder = builder.local(local);
        }
        if let Some(dev) = &cfg.underlay {
            builder = builder.dev(self.index(dev).await?);
        }
        if let Some(mtu) = cfg.mtu {
            builder = builder.mtu(check_mtu(mtu)?);
        }
        let what = format!("create vxlan {} (vni {})", cfg.name, cfg.vni);
        self.add_link(&cfg.name, builder.build(), &what).await
    }

    /// Creates a veth pair `name` <-> `peer`, both in this namespace and down.
    pub async fn create_veth(&self, name: &str, peer: &str) -> Result<()> {
        validate_ifname(name)?;
        validate_ifname(peer)?;
        let what = format!("create veth {name} <-> {peer}");
        self.add_link(name, LinkVeth::new(name, peer).build(), &what)
            .await
    }

    /// Creates an IFB device (up): the target that a tap's ingress traffic is redirected to so
    /// that it can be shaped like egress traffic (see [`crate::tc`]).
    pub async fn create_ifb(&self, name: &str) -> Result<()> {
        validate_ifname(name)?;
        let what = format!("create ifb {name}");
        self.add_link(name, LinkIfb::new(name).up().build(), &what)
            .await
    }

    /// Moves `name` into the network namespace `netns` (e.g. an open `/run/netns/X` or
    /// `/proc/PID/ns/net`). The link keeps its name there.
    pub async fn move_to_netns(&self, name: &str, netns: &impl AsRawFd) -> Result<()> {
        let index = self.index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let what = format!("move {name} to another network namespace");
        check(self.handle.link().set(msg).execute().await, &what, name)
    }

    /// Deletes a link (a bridge, a VXLAN or a veth with its peer).
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let index = self.index(name).await?;
        let what = format!("delete link {name}");
        check(self.handle.link().del(index).execute().await, &what, name)
    }

    /// Sets a link administratively up or down.
    pub async fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let index = self.index(name).await?;
        let builder = LinkUnspec::new_with_index(index);
        let msg = if up { builder.up() } else { builder.down() }.build();
        let what = format!("set {name} {}", if up { "up" } else { "down" });
        check(self.handle.link().set(msg).execute().await, &what, name)
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let index = self.index(name).await?;
        let msg = LinkUnspec::new_with_index(index)
            .mtu(check_mtu(mtu)?)
            .build();
        let what = format!("set mtu {mtu} on {name}");
        check(self.handle.link().set(msg).execute().await, &what, name)
    }

    /// Enslaves `port` (a tap, veth or VXLAN link) to `bridge`, or frees it when `bridge` is
    /// `None`.
    pub async fn set_master(&self, port: &str, bridge: Option<&str>) -> Result<()> {
        let index = self.index(port).await?;
        let builder = LinkUnspec::new_with_index(index);
        let msg = match bridge {
            Some(bridge) => builder.controller(self.index(bridge).await?),
            None => builder.nocontroller(),
        }
        .build();
        let what = format!("set master of {port} to {}", bridge.unwrap_or("none"));
        check(self.handle.link().set(msg).execute().await, &what, port)
    }

    /// Adds `addr` (address and prefix, e.g. `10.50.0.1/24`) to a link. Adding an address the
    /// link already has is not an error.
    pub async fn add_address(&self, name: &str, addr: Ipv4Cidr) -> Result<()> {
        let index = self.index(name).await?;
        let res = self
            .handle
            .address()
            .add(index, addr.addr().into(), addr.prefix())
            .replace()
            .execute()
            .await;
        check(res, &format!("add address {addr} to {name}"), name)
    }

    /// The IPv4 addresses of a link.
    pub async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Cidr>> {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        let index = self.index(name).await?;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg: AddressMessage = msg.map_err(|e| netlink_error(e, "list addresses", name))?;
            for attr in &msg.attributes {
                if let AddressAttribute::Address(std::net::IpAddr::V4(ip)) = attr {
                    out.push(Ipv4Cidr::new(*ip, msg.header.prefix_len)?);
                }
            }
        }
        Ok(out)
    }

    /// The link called `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        validate_ifname(name)?;
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if errno(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(netlink_error(e, "get link", name)),
        }
    }

    /// Whether a link with index `index` exists.
    pub async fn index_exists(&self, index: u32) -> Result<bool> {
        let mut stream = self.handle.link().get().match_index(index).execute();
        match stream.try_next().await {
            Ok(found) => Ok(found.is_some()),
            Err(rtnetlink::Error::NetlinkError(e)) if errno(&e) == libc::ENODEV => Ok(false),
            Err(e) => Err(netlink_error(e, "get link", &index.to_string())),
        }
    }

    /// Whether a link called `name` exists.
    pub async fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.link(name).await?.is_some())
    }

    /// The index of link `name`.
    pub async fn index(&self, name: &str) -> Result<u32> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    /// All links whose name starts with `prefix`: the daemon names its links with a prefix of
    /// its own and compares this list with its records to remove orphans.
    pub async fn links_with_prefix(&self, prefix: &str) -> Result<Vec<LinkInfo>> {
        let mut stream = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| netlink_error(e, "list links", prefix))?;
            let info = link_info(&msg);
            if info.name.starts_with(prefix) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Adds the FDB entry `00:00:00:00:00:00 dst <peer>` to a VXLAN link, as
    /// `bridge fdb append 00:00:00:00:00:00 dev <vxlan> dst <peer>` does: every broadcast,
    /// unknown-unicast and multicast frame is then sent to that peer too (head-end
    /// replication). Appending a peer that is already listed is not an error.
    pub async fn add_vxlan_peer(&self, vxlan: &str, peer: Ipv4Addr) -> Result<()> {
        let index = self.index(vxlan).await?;
        let mut req =
            NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_message(index, peer)));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let what = format!("add vxlan peer {peer} to {vxlan}");
        self.request(req, &what, libc::EEXIST).await
    }

    /// Removes the all-zeros FDB entry for `peer` from a VXLAN link, and every MAC the link
    /// learned behind that peer (otherwise unicast to those MACs would keep crossing the tunnel
    /// until the entries age out). Removing one that is not there is not an error.
    pub async fn remove_vxlan_peer(&self, vxlan: &str, peer: Ipv4Addr) -> Result<()> {
        let index = self.index(vxlan).await?;
        let mut macs = self.fdb_macs_towards(index, vxlan, peer).await?;
        if !macs.contains(&[0; 6]) {
            macs.push([0; 6]);
        }
        for mac in macs {
            let mut msg = fdb_message(index, peer);
            msg.attributes[0] = NeighbourAttribute::LinkLayerAddress(mac.to_vec());
            let mut req = NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(msg));
            req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
            let what = format!("remove vxlan peer {peer} from {vxlan}");
            self.request(req, &what, libc::ENOENT).await?;
        }
        Ok(())
    }

    /// The MACs of a VXLAN link's FDB entries whose destination is `peer`.
    async fn fdb_macs_towards(
        &self,
        index: u32,
        vxlan: &str,
        peer: Ipv4Addr,
    ) -> Result<Vec<[u8; 6]>> {
        Ok(self
            .fdb(index, vxlan)
            .await?
            .into_iter()
            .filter(|(_, dst)| *dst == Some(peer))
            .map(|(mac, _)| mac)
            .collect())
    }

    /// The peers that a VXLAN link replicates broadcast traffic to (its all-zeros FDB entries).
    pub async fn vxlan_peers(&self, vxlan: &str) -> Result<Vec<Ipv4Addr>> {
        let index = self.index(vxlan).await?;
        Ok(self
            .fdb(index, vxlan)
            .await?
            .into_iter()
            .filter(|(mac, _)| *mac == [0; 6])
            .filter_map(|(_, dst)| dst)
            .collect())
    }

    /// The FDB entries of the link with `index` (named `vxlan`, for errors): each entry's MAC and
    /// its IPv4 destination, if it has one.
    async fn fdb(&self, index: u32, vxlan: &str) -> Result<Vec<([u8; 6], Option<Ipv4Addr>)>> {
        let mut stream = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| netlink_error(e, "list fdb", vxlan))?;
            if msg.header.ifindex != index {
                continue;
            }
            let mac = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
                _ => None,
            });
            if let Some(mac) = mac {
                out.push((mac, fdb_destination(&msg)));
            }
        }
        Ok(out)
    }

    /// Whether any IPv4 route of this namespace (any table) covers an address of `subnet`, so
    /// the daemon can refuse a VM network that would collide with what the host already
    /// reaches. Default routes (`0.0.0.0/0`) are ignored: everything "overlaps" them.
    pub async fn subnet_overlaps_route(&self, subnet: Ipv4Cidr) -> Result<Option<Ipv4Cidr>> {
        Ok(self
            .ipv4_routes()
            .await?
            .into_iter()
            .find(|route| route.prefix() > 0 && route.overlaps(&subnet)))
    }

    /// The destinations of the IPv4 routes of every table (main, local, others).
    pub async fn ipv4_routes(&self) -> Result<Vec<Ipv4Cidr>> {
        let mut msg: RouteMessage = RouteMessageBuilder::<Ipv4Addr>::new().build();
        msg.header.table = 0; // RT_TABLE_UNSPEC: all tables
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(|e| netlink_error(e, "list routes", "-"))?;
            let dst = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let dst = dst.unwrap_or(Ipv4Addr::UNSPECIFIED);
            out.push(Ipv4Cidr::new(dst, msg.header.destination_prefix_length)?);
        }
        Ok(out)
    }

    async fn add_link(&self, name: &str, msg: LinkMessage, what: &str) -> Result<()> {
        match self.handle.link().add(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if errno(&e) == libc::EEXIST => {
                Err(Error::LinkExists(name.to_string()))
            }
            res => check(res, what, name),
        }
    }

    /// Sends a raw request and waits for its acknowledgement; the errno `benign` (the wanted
    /// state already holds) counts as success.
    async fn request(
        &self,
        req: NetlinkMessage<RouteNetlinkMessage>,
        what: &str,
        benign: i32,
    ) -> Result<()> {
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req).map_err(|e| Error::NetlinkOther {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(e) = reply.payload {
                match errno(&e) {
                    0 => {}
                    n if n == benign => return Ok(()),
                    _ => return Err(nl_err(e, what)),
                }
            }
        }
        Ok(())
    }
}

/// The remote (tunnel endpoint) of a VXLAN FDB entry.
fn fdb_destination(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // Bridge-family entries carry the destination as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
            <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from)
        }
        _ => None,
    })
}

fn fdb_message(index: u32, peer: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            peer,
        )));
    msg
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Address(mac) => info.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::Controller(index) => info.master = Some(*index),
            _ => {}
        }
    }
    info
}

fn check_mtu(mtu: u32) -> Result<u32> {
    if (68..=65535).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(Error::InvalidValue {
            what: "MTU (68..=65535)",
            value: u64::from(mtu),
        })
    }
}

/// The positive errno of a netlink error (0 for an unknown one).
fn errno(e: &ErrorMessage) -> i32 {
    e.code.map_or(0, |c| -c.get())
}

fn nl_err(e: ErrorMessage, what: &str) -> Error {
    Error::Netlink {
        what: what.to_string(),
        source: std::io::Error::from_raw_os_error(errno(&e)),
    }
}

fn netlink_error(e: rtnetlink::Error, what: &str, name: &str) -> Error {
    match e {
        rtnetlink::Error::NetlinkError(e) if errno(&e) == libc::ENODEV => {
            Error::NoSuchLink(name.to_string())
        }
        rtnetlink::Error::NetlinkError(e) => nl_err(e, &format!("{what} ({name})")),
        other => Error::NetlinkOther {
            what: format!("{what} ({name})"),
            detail: other.to_string(),
        },
    }
}

fn check(res: std::result::Result<(), rtnetlink::Error>, what: &str, name: &str) -> Result<()> {
    res.map_err(|e| netlink_error(e, what, name))
}
