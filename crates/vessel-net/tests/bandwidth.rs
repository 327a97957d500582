//! Bandwidth limits, measured with real TCP transfers between namespaces.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use common::{root_or_skip, Ns};
use tokio::io::AsyncWriteExt;
use vessel_net::tc::{self, IFB_PREFIX};
use vessel_net::Netlink;

const BYTES: usize = 1_500_000;

/// Sends [`BYTES`] from `from` to `listener` (at `to`), returns how long it took to arrive.
fn transfer(from: &Ns, listener: TcpListener, to: Ipv4Addr) -> Duration {
    let start = Instant::now();
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    from.run(move || async move {
        let mut conn = tokio::net::TcpStream::connect((to, 6000)).await.unwrap();
        conn.write_all(&vec![0u8; BYTES]).await.unwrap();
        conn.shutdown().await.unwrap();
    });
    assert_eq!(receiver.join().unwrap(), BYTES);
    start.elapsed()
}

fn limit(host: &Ns, mbit: Option<u32>) {
    host.run(move || async move { tc::set_bandwidth("p1", mbit).await.unwrap() });
}

#[test]
fn bandwidth_limit_slows_both_directions_and_is_removed() {
    if !root_or_skip("bandwidth") {
        return;
    }
    let host = Ns::new("bwhost");
    let guest = Ns::new("bwguest");
    host.sh(&format!(
        "ip link add p1 type veth peer name eth0 netns {} && ip addr add 10.63.0.1/24 dev p1 && ip link set p1 up",
        guest.name
    ));
    guest.sh("ip addr add 10.63.0.2/24 dev eth0 && ip link set eth0 up");
    let host_ip: Ipv4Addr = "10.63.0.1".parse().unwrap();
    let guest_ip: Ipv4Addr = "10.63.0.2".parse().unwrap();

    let unlimited = transfer(&guest, host.listen(6000), host_ip);
    assert!(unlimited < Duration::from_millis(700), "{unlimited:?}");

    // 8 Mbit/s = 1 MB/s: 1.5 MB takes about 1.4 s (after the 64 KiB burst).
    limit(&host, Some(8));
    let shown = host.run(|| async { tc::qdiscs("p1").await.unwrap() });
    assert!(
        shown.contains("qdisc tbf") && shown.contains("rate 8Mbit"),
        "{shown}"
    );
    assert!(shown.contains("qdisc ingress"), "{shown}");
    let vm_to_host = transfer(&guest, host.listen(6000), host_ip);
    let host_to_vm = transfer(&host, guest.listen(6000), guest_ip);
    eprintln!(
        "unlimited {unlimited:?}, 8 Mbit/s: vm->host {vm_to_host:?}, host->vm {host_to_vm:?}"
    );
    for (what, took) in [("vm->host", vm_to_host), ("host->vm", host_to_vm)] {
        assert!(
            took > Duration::from_millis(1000) && took < Duration::from_secs(4),
            "{what} took {took:?} under an 8 Mbit/s limit"
        );
    }
    // Setting it again (another rate) replaces the limit.
    limit(&host, Some(16));
    let shown = host.run(|| async { tc::qdiscs("p1").await.unwrap() });
    assert!(shown.contains("rate 16Mbit"), "{shown}");

    limit(&host, None);
    let shown = host.run(|| async { tc::qdiscs("p1").await.unwrap() });
    assert!(
        !shown.contains("tbf") && !shown.contains("ingress"),
        "{shown}"
    );
    let ifbs = host.run(|| async {
        let nl = Netlink::connect().unwrap();
        nl.links_with_prefix(IFB_PREFIX).await.unwrap()
    });
    assert!(ifbs.is_empty(), "{ifbs:?}");
    let again = transfer(&guest, host.listen(6000), host_ip);
    assert!(again < Duration::from_millis(700), "{again:?}");
    // Removing when there is nothing to remove is fine.
    limit(&host, None);
}

#[test]
fn ifb_of_a_vanished_tap_is_removed_as_orphan() {
    if !root_or_skip("orphan ifb") {
        return;
    }
    common::in_new_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.create_veth("p1", "p1peer").await.unwrap();
        nl.create_veth("p2", "p2peer").await.unwrap();
        nl.set_up("p1", true).await.unwrap();
        nl.set_up("p2", true).await.unwrap();
        tc::set_bandwidth("p1", Some(10)).await.unwrap();
        tc::set_bandwidth("p2", Some(10)).await.unwrap();
        let p2_ifb = format!("{IFB_PREFIX}{}", nl.index("p2").await.unwrap());
        nl.delete_link("p1").await.unwrap();
        let removed = tc::remove_orphan_ifbs(&nl).await.unwrap();
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert!(
            nl.exists(&p2_ifb).await.unwrap(),
            "a live tap's IFB was removed"
        );
        assert!(!nl.exists(&removed[0]).await.unwrap());
        match tc::set_bandwidth("p9", Some(10)).await {
            Err(vessel_net::Error::NoSuchLink(name)) => assert_eq!(name, "p9"),
            other => panic!("expected NoSuchLink, got {other:?}"),
        }
    });
}
