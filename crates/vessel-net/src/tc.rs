//! Per-tap bandwidth limits with the `tc` tool of iproute2.
//!
//! Host -> VM is what leaves the tap: a `tbf` root qdisc on the tap shapes it. VM -> host is
//! what enters the tap; the usual `ingress` qdisc with a `police` filter needs the kernel's
//! `act_police`, which is missing from some kernels (this project's test machines among them),
//! and policing drops instead of queueing, which TCP handles badly. So the tap's ingress traffic
//! is redirected (`u32 match-all` + `mirred`) to an IFB device of its own, `vifb<tap index>`,
//! whose `tbf` root qdisc shapes it. Needs `sch_tbf`, `sch_ingress`, `cls_u32`, `act_mirred`
//! and `ifb`, all in stock Debian kernels.
//!
//! When a tap vanishes (its QEMU exited), its qdiscs go with it but its IFB stays:
//! [`remove_orphan_ifbs`] deletes those.

use crate::command;
use crate::link::Netlink;
use crate::name::validate_ifname;
use crate::{Error, Result};

/// Prefix of the IFB devices made here; followed by the tap's ifindex.
pub const IFB_PREFIX: &str = "vifb";

const TC_HINT: &str = "install iproute2 (apt-get install iproute2)";

/// Limits traffic through `ifname` to `mbit` Mbit/s in each direction, replacing an earlier
/// limit; `None` removes the limits (and is a no-op without any).
pub async fn set_bandwidth(ifname: &str, mbit: Option<u32>) -> Result<()> {
    validate_ifname(ifname)?;
    let nl = Netlink::connect()?;
    let index = nl.index(ifname).await?;
    let ifb = format!("{IFB_PREFIX}{index}");
    match mbit {
        Some(0) => Err(Error::InvalidValue {
            what: "bandwidth limit in Mbit/s",
            value: 0,
        }),
        Some(mbit) => limit(&nl, ifname, &ifb, mbit).await,
        None => unlimit(&nl, ifname, &ifb).await,
    }
}

/// The `tc qdisc show dev <ifname>` output, for diagnostics and tests.
pub async fn qdiscs(ifname: &str) -> Result<String> {
    validate_ifname(ifname)?;
    tc(&["qdisc", "show", "dev", ifname]).await
}

/// Deletes the IFB devices whose tap no longer exists; returns their names.
pub async fn remove_orphan_ifbs(nl: &Netlink) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ifb in nl.links_with_prefix(IFB_PREFIX).await? {
        let Ok(tap_index) = ifb.name[IFB_PREFIX.len()..].parse::<u32>() else {
            continue;
        };
        if !nl.index_exists(tap_index).await? {
            nl.delete_link(&ifb.name).await?;
            removed.push(ifb.name);
        }
    }
    Ok(removed)
}

async fn limit(nl: &Netlink, ifname: &str, ifb: &str, mbit: u32) -> Result<()> {
    let rate = format!("{mbit}mbit");
    // 10 ms worth of traffic, but at least 64 KiB: taps carry GSO frames up to 64 KiB.
    let burst = (u64::from(mbit) * 1250).max(65536).to_string();
    let tbf = |dev: &str| {
        [
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate, "burst", &burst,
            "latency", "50ms",
        ]
        .map(str::to_string)
    };
    tc_owned(&tbf(ifname)).await?;
    if !nl.exists(ifb).await? {
        nl.create_ifb(ifb).await?;
    }
    tc_owned(&tbf(ifb)).await?;
    tc(&[
        "qdisc", "replace", "dev", ifname, "handle", "ffff:", "ingress",
    ])
    .await?;
    tc(&[
        "filter", "replace", "dev", ifname, "parent", "ffff:", "protocol", "all", "prio", "1",
        "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
    ])
    .await?;
    Ok(())
}

async fn unlimit(nl: &Netlink, ifname: &str, ifb: &str) -> Result<()> {
    let shown = qdiscs(ifname).await?;
    if shown.contains("qdisc tbf") {
        tc(&["qdisc", "del", "dev", ifname, "root"]).await?;
    }
    if shown.contains("qdisc ingress") {
        tc(&["qdisc", "del", "dev", ifname, "ingress"]).await?;
    }
    if nl.exists(ifb).await? {
        nl.delete_link(ifb).await?;
    }
    Ok(())
}

async fn tc(args: &[&str]) -> Result<String> {
    command::run("tc", TC_HINT, args, None).await
}

async fn tc_owned(args: &[String]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tc(&args).await
}
