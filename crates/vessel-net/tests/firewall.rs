//! The nftables firewall against real traffic between network namespaces.

mod common;

use std::net::Ipv4Addr;

use common::{add_guest, root_or_skip, Ns, Reach};
use vessel_net::firewall::{self, BridgePlan, FirewallPlan, IngressRule, PortPlan, Protocol};
use vessel_net::Netlink;

const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0, 0, 0x11];
const MAC2: [u8; 6] = [0x52, 0x54, 0x00, 0, 0, 0x12];

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn port(ifname: &str, mac: [u8; 6], addr: &str) -> PortPlan {
    PortPlan {
        ifname: ifname.to_string(),
        mac,
        ipv4: Some(ip(addr)),
        port_security: true,
    }
}

fn bridge_plan(ports: Vec<PortPlan>) -> BridgePlan {
    BridgePlan {
        bridge: "br0".to_string(),
        subnet: Some("10.60.0.0/24".parse().unwrap()),
        nat_uplink: None,
        ingress_default_deny: false,
        ingress: Vec::new(),
        ports,
    }
}

/// A host namespace with bridge br0 (10.60.0.1/24) and two guests, 10.60.0.11 on port p1 and
/// 10.60.0.12 on port p2.
struct TwoGuests {
    host: Ns,
    g1: Ns,
    g2: Ns,
}

fn two_guests() -> TwoGuests {
    let host = Ns::new("host");
    host.run(|| async {
        let nl = Netlink::connect().unwrap();
        nl.create_bridge("br0", None).await.unwrap();
        nl.add_address("br0", "10.60.0.1/24".parse().unwrap())
            .await
            .unwrap();
    });
    let g1 = Ns::new("g1");
    let g2 = Ns::new("g2");
    add_guest(&host, "br0", "p1", &g1, "10.60.0.11", "52:54:00:00:00:11");
    add_guest(&host, "br0", "p2", &g2, "10.60.0.12", "52:54:00:00:00:12");
    TwoGuests { host, g1, g2 }
}

fn apply_in(ns: &Ns, plan: FirewallPlan) {
    ns.run(move || async move { firewall::apply(&plan).await.unwrap() });
}

#[test]
fn guests_reach_each_other_and_spoofed_traffic_is_dropped() {
    if !root_or_skip("spoofing") {
        return;
    }
    let t = two_guests();
    let _l2 = t.g2.listen(7000);
    let _lh = t.host.listen(7000);
    apply_in(
        &t.host,
        FirewallPlan {
            bridges: vec![bridge_plan(vec![
                port("p1", MAC1, "10.60.0.11"),
                port("p2", MAC2, "10.60.0.12"),
            ])],
        },
    );
    // (a) honest traffic passes, to the other guest and to the gateway.
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 7000, None), Reach::Connected);
    assert_eq!(t.g1.connect(ip("10.60.0.1"), 7000, None), Reach::Connected);

    // (b) a second, unassigned address of the guest's own subnet gets nowhere.
    t.g1.sh("ip addr add 10.60.0.99/24 dev eth0");
    let spoofed = Some(ip("10.60.0.99"));
    assert_eq!(
        t.g1.connect(ip("10.60.0.12"), 7000, spoofed),
        Reach::TimedOut
    );
    assert_eq!(
        t.g1.connect(ip("10.60.0.1"), 7000, spoofed),
        Reach::TimedOut
    );
    // The same spoof without port security on p1 does pass: the rules are what stops it.
    let mut open = port("p1", MAC1, "10.60.0.11");
    open.port_security = false;
    apply_in(
        &t.host,
        FirewallPlan {
            bridges: vec![bridge_plan(vec![open, port("p2", MAC2, "10.60.0.12")])],
        },
    );
    assert_eq!(
        t.g1.connect(ip("10.60.0.12"), 7000, spoofed),
        Reach::Connected
    );

    // (b) a changed MAC gets nowhere either, with the right IP address.
    apply_in(
        &t.host,
        FirewallPlan {
            bridges: vec![bridge_plan(vec![
                port("p1", MAC1, "10.60.0.11"),
                port("p2", MAC2, "10.60.0.12"),
            ])],
        },
    );
    t.g1.sh("ip link set dev eth0 address 52:54:00:00:00:99");
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 7000, None), Reach::TimedOut);
    assert_eq!(t.g1.connect(ip("10.60.0.1"), 7000, None), Reach::TimedOut);
    t.g1.sh("ip link set dev eth0 address 52:54:00:00:00:11");
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 7000, None), Reach::Connected);
}

#[test]
fn port_without_address_only_gets_dhcp_out() {
    if !root_or_skip("no address") {
        return;
    }
    let t = two_guests();
    let _l2 = t.g2.listen(7000);
    let mut p1 = port("p1", MAC1, "10.60.0.11");
    p1.ipv4 = None;
    apply_in(
        &t.host,
        FirewallPlan {
            bridges: vec![bridge_plan(vec![p1, port("p2", MAC2, "10.60.0.12")])],
        },
    );
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 7000, None), Reach::TimedOut);
    assert_eq!(t.g2.connect(ip("10.60.0.11"), 7000, None), Reach::TimedOut);
}

#[test]
fn ingress_rule_opens_one_port_and_replies_still_pass() {
    if !root_or_skip("ingress") {
        return;
    }
    let t = two_guests();
    let _a = t.g2.listen(8080);
    let _b = t.g2.listen(8081);
    let _c = t.g1.listen(8080);
    let _d = t.host.listen(9000);
    let mut plan = bridge_plan(vec![
        port("p1", MAC1, "10.60.0.11"),
        port("p2", MAC2, "10.60.0.12"),
    ]);
    // Before: everything is open.
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 8081, None), Reach::Connected);
    plan.ingress_default_deny = true;
    plan.ingress = vec![IngressRule {
        proto: Protocol::Tcp,
        ports: Some((8080, 8080)),
        source: Some("10.60.0.0/24".parse().unwrap()),
    }];
    apply_in(
        &t.host,
        FirewallPlan {
            bridges: vec![plan],
        },
    );
    // Guest to guest (bridge forward hook).
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 8080, None), Reach::Connected);
    assert_eq!(t.g1.connect(ip("10.60.0.12"), 8081, None), Reach::TimedOut);
    // Host to guest (bridge output hook).
    assert_eq!(
        t.host.connect(ip("10.60.0.12"), 8081, None),
        Reach::TimedOut
    );
    // Replies to connections the guest opened pass (established, via the conntrack mark):
    // the SYN-ACK to g2's ephemeral port matches no rule. From g1 (forward hook) and from the
    // host (output hook).
    assert_eq!(t.g2.connect(ip("10.60.0.11"), 8080, None), Reach::Connected);
    assert_eq!(t.g2.connect(ip("10.60.0.1"), 9000, None), Reach::Connected);
}

#[test]
fn nat_lets_a_guest_reach_a_server_behind_the_uplink() {
    if !root_or_skip("nat") {
        return;
    }
    let host = Ns::new("nathost");
    let server = Ns::new("server");
    let guest = Ns::new("natguest");
    host.run(|| async {
        let nl = Netlink::connect().unwrap();
        nl.create_bridge("brnat", None).await.unwrap();
        nl.add_address("brnat", "10.61.0.1/24".parse().unwrap())
            .await
            .unwrap();
        vessel_net::sysctl::enable_ip_forward().unwrap();
    });
    host.sh(&format!(
        "ip link add up0 type veth peer name eth0 netns {} && ip addr add 192.168.77.1/24 dev up0 && ip link set up0 up",
        server.name
    ));
    server.sh("ip addr add 192.168.77.2/24 dev eth0 && ip link set eth0 up");
    add_guest(
        &host,
        "brnat",
        "p1",
        &guest,
        "10.61.0.10",
        "52:54:00:00:00:21",
    );
    guest.sh("ip route add default via 10.61.0.1");
    let listener = server.listen(80);

    // Without NAT the server has no route back to 10.61.0.0/24.
    assert_eq!(guest.connect(ip("192.168.77.2"), 80, None), Reach::TimedOut);

    let plan = FirewallPlan {
        bridges: vec![BridgePlan {
            bridge: "brnat".to_string(),
            subnet: Some("10.61.0.0/24".parse().unwrap()),
            nat_uplink: Some("up0".to_string()),
            ingress_default_deny: true,
            ingress: Vec::new(),
            ports: vec![port("p1", [0x52, 0x54, 0, 0, 0, 0x21], "10.61.0.10")],
        }],
    };
    apply_in(&host, plan);
    assert_eq!(
        guest.connect(ip("192.168.77.2"), 80, None),
        Reach::Connected
    );
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "192.168.77.1", "not masqueraded");
    // New connections from the uplink side into the VM network are refused by the forward chain.
    let _g = guest.listen(22);
    server.sh("ip route add 10.61.0.0/24 via 192.168.77.1");
    assert_eq!(server.connect(ip("10.61.0.10"), 22, None), Reach::TimedOut);
}

#[test]
fn remove_all_deletes_only_vessels_tables_and_apply_is_idempotent() {
    if !root_or_skip("remove_all") {
        return;
    }
    common::in_new_netns(|| async {
        let nl = Netlink::connect().unwrap();
        nl.create_bridge("br0", None).await.unwrap();
        firewall::nft_script(
            "table inet other {\n chain c {\n type filter hook input priority 0; policy accept;\n }\n}\n\
             table bridge other2 {\n chain c {\n type filter hook forward priority 0; policy accept;\n }\n}\n",
        )
        .await
        .unwrap();
        let mut plan = bridge_plan(vec![port("p1", MAC1, "10.60.0.11")]);
        plan.ingress_default_deny = true;
        plan.nat_uplink = Some("eth9".to_string());
        let plan = FirewallPlan {
            bridges: vec![plan],
        };
        firewall::apply(&plan).await.unwrap();
        let first = firewall::list_ruleset().await.unwrap();
        firewall::apply(&plan).await.unwrap();
        let second = firewall::list_ruleset().await.unwrap();
        assert_eq!(first, second, "applying twice changed the ruleset");
        assert!(first.contains("table bridge vessel"), "{first}");
        assert!(first.contains("table inet vessel"), "{first}");
        assert!(first.contains("chain from_p1"), "{first}");

        firewall::remove_all().await.unwrap();
        let after = firewall::list_ruleset().await.unwrap();
        assert!(!after.contains("vessel"), "{after}");
        assert!(after.contains("table inet other"), "{after}");
        assert!(after.contains("table bridge other2"), "{after}");
        // Removing again (nothing left) is fine too.
        firewall::remove_all().await.unwrap();
    });
}

#[test]
fn a_rejected_script_leaves_the_previous_ruleset_in_place() {
    if !root_or_skip("atomic") {
        return;
    }
    common::in_new_netns(|| async {
        let plan = FirewallPlan {
            bridges: vec![bridge_plan(vec![port("p1", MAC1, "10.60.0.11")])],
        };
        firewall::apply(&plan).await.unwrap();
        let before = firewall::list_ruleset().await.unwrap();
        // A script that deletes the table and then fails is rolled back as a whole.
        let err = firewall::nft_script(
            "delete table bridge vessel\nadd rule bridge vessel nochain drop\n",
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("nft -f -"), "{err}");
        assert_eq!(firewall::list_ruleset().await.unwrap(), before);
    });
}
