//! Taps, bridges, addresses, routes, veth and VXLAN against the real kernel, each test in
//! network namespaces of its own.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{add_guest, in_new_netns, root_or_skip, Ns, Reach};
use vessel_net::{create_tap, Error, Netlink, VxlanConfig};

#[test]
fn tap_is_created_enslaved_and_vanishes_when_its_fd_closes() {
    if !root_or_skip("tap") {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::connect().unwrap();
        let fd = create_tap("vt-test0").unwrap();
        let tap = nl.link("vt-test0").await.unwrap().expect("tap exists");
        assert!(tap.mac.is_some());
        assert_eq!(tap.master, None);

        nl.create_bridge("vbr-test", Some(1400)).await.unwrap();
        nl.set_master("vt-test0", Some("vbr-test")).await.unwrap();
        nl.set_up("vt-test0", true).await.unwrap();
        let bridge = nl.index("vbr-test").await.unwrap();
        let tap = nl.link("vt-test0").await.unwrap().unwrap();
        assert_eq!(tap.master, Some(bridge));
        assert!(tap.up);
        let names: Vec<String> = nl
            .links_with_prefix("vt-")
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        assert_eq!(names, ["vt-test0"]);

        drop(fd);
        // The kernel unregisters the tap asynchronously after the last close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while nl.exists("vt-test0").await.unwrap() {
            assert!(std::time::Instant::now() < deadline, "tap outlived its fd");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(nl.exists("vbr-test").await.unwrap());
    });
}

#[test]
fn bad_tap_names_are_rejected_with_the_reason() {
    for name in ["", ".", "..", "has space", "0123456789abcdef", "a/b"] {
        match create_tap(name) {
            Err(Error::InvalidName { .. }) => {}
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
    let msg = create_tap("0123456789abcdef").unwrap_err().to_string();
    assert!(msg.contains("15 bytes"), "{msg}");
}

#[test]
fn links_can_be_created_inspected_and_deleted() {
    if !root_or_skip("links") {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::connect().unwrap();
        assert!(!nl.exists("vbr1").await.unwrap());
        nl.create_bridge("vbr1", None).await.unwrap();
        match nl.create_bridge("vbr1", None).await {
            Err(Error::LinkExists(name)) => assert_eq!(name, "vbr1"),
            other => panic!("expected LinkExists, got {other:?}"),
        }
        nl.add_address("vbr1", "10.70.0.1/24".parse().unwrap())
            .await
            .unwrap();
        // Adding it again is fine.
        nl.add_address("vbr1", "10.70.0.1/24".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(
            nl.addresses("vbr1").await.unwrap(),
            vec!["10.70.0.1/24".parse().unwrap()]
        );
        nl.set_mtu("vbr1", 1450).await.unwrap();
        nl.set_up("vbr1", false).await.unwrap();
        assert!(!nl.link("vbr1").await.unwrap().unwrap().up);
        nl.delete_link("vbr1").await.unwrap();
        assert!(!nl.exists("vbr1").await.unwrap());
        match nl.delete_link("vbr1").await {
            Err(Error::NoSuchLink(name)) => assert_eq!(name, "vbr1"),
            other => panic!("expected NoSuchLink, got {other:?}"),
        }
    });
}

#[test]
fn subnet_overlapping_a_route_is_reported() {
    if !root_or_skip("overlap") {
        return;
    }
    in_new_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.create_bridge("vbr1", None).await.unwrap();
        nl.add_address("vbr1", "10.70.0.1/24".parse().unwrap())
            .await
            .unwrap();
        let hit = nl
            .subnet_overlaps_route("10.70.0.0/16".parse().unwrap())
            .await
            .unwrap();
        assert!(hit.is_some_and(|r| r.network() == "10.70.0.0/24".parse().unwrap()));
        let miss = nl
            .subnet_overlaps_route("10.71.0.0/24".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(miss, None);
    });
}

#[test]
fn veth_end_moves_into_another_namespace() {
    if !root_or_skip("veth") {
        return;
    }
    let other = Ns::new("veth");
    let file = other.file();
    in_new_netns(move || async move {
        let nl = Netlink::connect().unwrap();
        nl.create_veth("va", "vb").await.unwrap();
        nl.move_to_netns("vb", &file).await.unwrap();
        assert!(nl.exists("va").await.unwrap());
        assert!(!nl.exists("vb").await.unwrap());
    });
    assert!(other.sh("ip -o link show").contains("vb@"));
}

#[test]
fn vxlan_joins_guests_on_two_servers() {
    if !root_or_skip("vxlan") {
        return;
    }
    // Two "servers" joined by a veth underlay, 192.168.88.1 and .2.
    let a = Ns::new("a");
    let b = Ns::new("b");
    a.sh(&format!(
        "ip link add und0 type veth peer name und0 netns {} && ip addr add 192.168.88.1/24 dev und0 && ip link set und0 up",
        b.name
    ));
    b.sh("ip addr add 192.168.88.2/24 dev und0 && ip link set und0 up");
    let ip_a: Ipv4Addr = "192.168.88.1".parse().unwrap();
    let ip_b: Ipv4Addr = "192.168.88.2".parse().unwrap();
    // The servers' bridges live in `a` and `b` themselves (VXLAN needs the underlay there).
    for (ns, local, peer) in [(&a, ip_a, ip_b), (&b, ip_b, ip_a)] {
        ns.run(move || async move {
            let nl = Netlink::connect().unwrap();
            let mut cfg = VxlanConfig::new("vx42", 42);
            cfg.local = Some(local);
            cfg.underlay = Some("und0".to_string());
            nl.create_bridge("brv", None).await.unwrap();
            nl.create_vxlan(&cfg).await.unwrap();
            nl.set_master("vx42", Some("brv")).await.unwrap();
            nl.set_up("vx42", true).await.unwrap();
            nl.add_vxlan_peer("vx42", peer).await.unwrap();
            nl.add_vxlan_peer("vx42", peer).await.unwrap();
            assert_eq!(nl.vxlan_peers("vx42").await.unwrap(), vec![peer]);
        });
    }
    let ga = Ns::new("ga");
    let gb = Ns::new("gb");
    add_guest(&a, "brv", "p1", &ga, "10.62.0.1", "52:54:00:00:00:31");
    add_guest(&b, "brv", "p1", &gb, "10.62.0.2", "52:54:00:00:00:32");
    let _l = gb.listen(5000);
    assert_eq!(
        ga.connect("10.62.0.2".parse().unwrap(), 5000, None),
        Reach::Connected
    );

    // Without the replication entry, the ARP broadcast never reaches the other side.
    let gc = Ns::new("gc");
    add_guest(&a, "brv", "p2", &gc, "10.62.0.3", "52:54:00:00:00:33");
    a.run(move || async move {
        let nl = Netlink::connect().unwrap();
        nl.remove_vxlan_peer("vx42", ip_b).await.unwrap();
        nl.remove_vxlan_peer("vx42", ip_b).await.unwrap();
        assert!(nl.vxlan_peers("vx42").await.unwrap().is_empty());
    });
    assert_eq!(
        gc.connect("10.62.0.2".parse().unwrap(), 5000, None),
        Reach::TimedOut
    );
    a.run(move || async move {
        let nl = Netlink::connect().unwrap();
        nl.add_vxlan_peer("vx42", ip_b).await.unwrap();
    });
    assert_eq!(
        gc.connect("10.62.0.2".parse().unwrap(), 5000, None),
        Reach::Connected
    );
}
