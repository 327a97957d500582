//! Networks end to end: a real daemon inside a network namespace of the test's own, real
//! guests on a managed bridge (DHCP from Vessel, NAT to a server in another namespace, ingress
//! rules, anti-spoofing, NIC hot-plug, a daemon kill -9), two "servers" joined by VXLAN, and
//! bad input. All traffic stays inside namespaces the tests create (host-facts).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::netns::Netns;
use common::{await_console_until, create, guest_vm, Daemon};
use vessel_api::{
    AddNicRequest, CreateNetworkRequest, CreateVmRequest, IngressPolicy, IngressRule, Machine,
    NetworkKind, RuleProtocol, UpdateNetworkRequest, Vm,
};
use vessel_cli::{Client, ClientError, Outcome};

/// Joins two namespaces with a veth pair and addresses on both ends.
fn link(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    a.exec(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.0,
    ]);
    a.exec(&["ip", "addr", "add", a_ip, "dev", a_if]);
    a.exec(&["ip", "link", "set", a_if, "up"]);
    b.exec(&["ip", "addr", "add", b_ip, "dev", b_if]);
    b.exec(&["ip", "link", "set", b_if, "up"]);
}

/// A TCP server inside `ns` that answers every connection with an HTTP response whose body is
/// the peer's address: what NAT made of the client.
fn peer_echo_server(ns: &Netns, addr: &str) {
    let path = format!("/run/netns/{}", ns.0);
    let addr = addr.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        let listener = TcpListener::bind(&addr).expect("bind echo server");
        ready_tx.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.read(&mut buf);
            let peer = stream
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let body = format!("peer={peer}\n");
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("echo server ready");
}

/// Types `command` into the guest's shell and returns its exit status and what it printed.
/// The end marker is printed with arithmetic, so the echo of the typed line does not match it.
async fn sh(client: &Client, vm: &str, tag: &str, command: &str) -> (i32, String) {
    let marker = format!("END-{tag}-0rc");
    let echoed = format!("END-{tag}-$((0))rc");
    common::run_in_guest(client, vm, &format!("{command}; echo {echoed}$?")).await;
    let text = await_console_until(client, vm, &marker, |text| {
        text.split(&marker)
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
    })
    .await;
    let (before, after) = text.split_once(&marker).expect("marker seen");
    let output = before.rsplit(&echoed).next().unwrap_or(before).to_string();
    let rc = after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("exit status");
    (rc, output)
}

fn managed(name: &str, subnet: &str, uplink: Option<&str>) -> CreateNetworkRequest {
    CreateNetworkRequest {
        name: name.into(),
        kind: NetworkKind::Managed,
        project: None,
        bridge: None,
        subnet: Some(subnet.into()),
        gateway: None,
        range: None,
        dhcp: None,
        dns: vec![],
        uplink: uplink.map(Into::into),
        vni: None,
        peers: vec![],
        local: None,
        underlay: None,
        mtu: None,
        ingress_policy: IngressPolicy::Allow,
        ingress: vec![],
    }
}

fn on_network(name: &str, network: &str, machine: Machine, cmdline: &str) -> CreateVmRequest {
    CreateVmRequest {
        machine: Some(machine),
        memory_mib: 256,
        cmdline: Some(format!("quiet vessel.hostname={name} {cmdline}")),
        nics: vec![AddNicRequest {
            network: network.into(),
            ..Default::default()
        }],
        start: true,
        ..guest_vm(name)
    }
}

fn address(vm: &Vm) -> String {
    vm.spec.nics[0]
        .ipv4
        .clone()
        .expect("the NIC has an address")
}

async fn api_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Api { status, error }) => (status, error.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Interfaces and nftables tables Vessel made in the namespace.
fn vessel_leftovers(ns: &Netns) -> Vec<String> {
    let links = ns.exec(&["ip", "-o", "link", "show"]);
    let mut left: Vec<String> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| {
            name.starts_with("vb-")
                || name.starts_with("vx-")
                || name.starts_with("vt")
                || name.starts_with("vifb")
        })
        .collect();
    let rules = ns.exec(&["nft", "list", "tables"]);
    left.extend(
        rules
            .lines()
            .filter(|l| l.contains("vessel"))
            .map(String::from),
    );
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_network_gives_leases_nat_ingress_rules_anti_spoofing_and_cleans_up() {
    let host = Netns::new("host");
    let outside = Netns::new("out");
    link(
        &host,
        "up0",
        "192.168.200.1/24",
        &outside,
        "o0",
        "192.168.200.2/24",
    );
    peer_echo_server(&outside, "192.168.200.2:8080");
    let mut daemon = Daemon::start_in_netns(&host.0);
    let client = daemon.client();

    let lan = client
        .create_network(&managed("lan", "10.77.0.0/24", Some("up0")))
        .await
        .expect("create network");
    assert_eq!(lan.gateway.as_deref(), Some("10.77.0.1"));
    // q35 for hot-plug; microvm for the other, to cover both device kinds.
    let a = create(
        &client,
        &on_network("a", "lan", Machine::Q35, "vessel.dhcp"),
    )
    .await;
    let b = create(
        &client,
        &on_network("b", "lan", Machine::Microvm, "vessel.dhcp"),
    )
    .await;
    let (ip_a, ip_b) = (address(&a), address(&b));
    assert_ne!(ip_a, ip_b);

    // DHCP: each guest got the address IPAM reserved for its NIC, from Vessel's server.
    for (vm, ip) in [("a", &ip_a), ("b", &ip_b)] {
        let want = format!("VESSEL-NET eth0 {ip}/24");
        await_console_until(&client, vm, &want, |t| t.contains(&want)).await;
    }

    // VM to VM over the bridge.
    let (rc, out) = sh(&client, "a", "ping", &format!("ping -c 2 -W 3 {ip_b}")).await;
    assert_eq!(rc, 0, "a cannot ping b: {out}");

    // NAT: the outside server sees the uplink's address, not the VM's.
    let (rc, out) = sh(
        &client,
        "a",
        "nat",
        "timeout 10 wget -q -O - http://192.168.200.2:8080/",
    )
    .await;
    assert_eq!(rc, 0, "a cannot reach the outside: {out}");
    assert!(out.contains("peer=192.168.200.1"), "not masqueraded: {out}");

    // The NIC's traffic shows in the VM's figures (from its tap, in the guest's direction).
    let stats = client.vm_stats("a").await.expect("stats");
    let nic = stats
        .nics
        .iter()
        .find(|n| n.name == "nic0")
        .expect("nic0 counters");
    assert!(
        nic.tx_packets > 0 && nic.rx_packets > 0 && nic.rx_bytes > 0,
        "{nic:?}"
    );

    // Anti-spoofing: a forged source address gets nothing through; the real one does.
    let spoof =
        format!("ip addr add 10.77.0.200/24 dev eth0; ping -c 1 -W 2 -I 10.77.0.200 {ip_b}");
    let (rc, out) = sh(&client, "a", "spoofip", &spoof).await;
    assert_ne!(rc, 0, "a forged source address got through: {out}");
    // A forged MAC gets nothing through either (the ARP cache is flushed so b must answer).
    let spoof_mac = format!(
        "ip addr del 10.77.0.200/24 dev eth0; ip neigh flush dev eth0; ip link set eth0 down; ip link set eth0 address 52:54:00:de:ad:01; ip link set eth0 up; ping -c 1 -W 2 {ip_b}"
    );
    let (rc, out) = sh(&client, "a", "spoofmac", &spoof_mac).await;
    assert_ne!(rc, 0, "a forged MAC got through: {out}");
    let restore = format!(
        "ip link set eth0 down; ip link set eth0 address {}; ip link set eth0 up; ip neigh flush dev eth0; ping -c 1 -W 3 {ip_b}",
        a.spec.nics[0].mac
    );
    let (rc, out) = sh(&client, "a", "realmac", &restore).await;
    assert_eq!(rc, 0, "the real MAC does not get through again: {out}");

    // Ingress rules: with policy deny and one rule, port 8080 of b opens and 8081 does not.
    let (rc, out) = sh(
        &client,
        "b",
        "httpd",
        "mkdir -p /tmp/w && echo hello-from-b > /tmp/w/index.html && httpd -p 8080 -h /tmp/w && httpd -p 8081 -h /tmp/w",
    )
    .await;
    assert_eq!(rc, 0, "httpd in b: {out}");
    let update = UpdateNetworkRequest {
        ingress_policy: Some(IngressPolicy::Deny),
        ingress: Some(vec![IngressRule {
            protocol: RuleProtocol::Tcp,
            ports: Some("8080".into()),
            source: None,
        }]),
        ..Default::default()
    };
    client.update_network("lan", &update).await.expect("rules");
    // (busybox wget's own -T crashes in this static build; timeout(1) ends a dropped connect.)
    let get = |port: u16| format!("timeout 5 wget -q -O - http://{ip_b}:{port}/");
    let (rc, out) = sh(&client, "a", "open", &get(8080)).await;
    assert_eq!(rc, 0, "the allowed port is closed: {out}");
    assert!(out.contains("hello-from-b"), "{out}");
    let (rc, out) = sh(&client, "a", "closed", &get(8081)).await;
    assert_ne!(rc, 0, "a port without a rule is open: {out}");

    // kill -9 of the daemon: bridge, taps and rules are kernel state and stay; a restart
    // re-adopts the VMs and keeps their connectivity and rules.
    daemon.kill9();
    assert_taps_on_bridge(&host, "vb-lan", 2);
    daemon.spawn();
    let (rc, out) = sh(&client, "a", "after", &get(8080)).await;
    assert_eq!(rc, 0, "connectivity lost over a daemon restart: {out}");
    let (rc, out) = sh(&client, "a", "after2", &get(8081)).await;
    assert_ne!(rc, 0, "the rules were lost over a daemon restart: {out}");

    // Hot-plug: a second NIC appears in the running q35 guest, and goes again.
    let outcome = client
        .add_nic(
            "a",
            &AddNicRequest {
                network: "lan".into(),
                bandwidth_mbit: Some(50),
                ..Default::default()
            },
            true,
        )
        .await
        .expect("hot-plug");
    let Outcome::Done(vm) = outcome else {
        panic!("add with wait returned 202")
    };
    assert_eq!(vm.spec.nics.len(), 2);
    // Its bandwidth limit is on its tap (tbf shapes what the guest receives).
    let qdiscs = host.exec(&["tc", "qdisc", "show", "dev", &vm.spec.nics[1].tap]);
    assert!(
        qdiscs.contains("tbf") && qdiscs.contains("50Mbit"),
        "{qdiscs}"
    );
    // (PCIe hot-plug: the guest enumerates the device shortly after QEMU reports it added.)
    let (rc, out) = sh(
        &client,
        "a",
        "eth1",
        "for i in 1 2 3 4 5 6 7 8 9 10; do ip link show eth1 && break; sleep 1; done; ip link show eth1",
    )
    .await;
    assert_eq!(rc, 0, "the hot-plugged NIC is not in the guest: {out}");
    client.remove_nic("a", "nic1", true).await.expect("unplug");
    let (rc, out) = sh(&client, "a", "noeth1", "ip link show eth1").await;
    assert_ne!(rc, 0, "the unplugged NIC is still in the guest: {out}");

    // Deleting a network that NICs use is refused and names them.
    let (status, message) = api_error(client.delete_network("lan").await).await;
    assert_eq!(status, 409);
    assert!(
        message.contains("a/nic0") && message.contains("b/nic0"),
        "{message}"
    );

    // Deleting everything leaves no tap, bridge, IFB or nftables table behind.
    for vm in ["a", "b"] {
        client.delete_vm(vm, true, true).await.expect("delete vm");
    }
    client.delete_network("lan").await.expect("delete network");
    assert_eq!(vessel_leftovers(&host), Vec::<String>::new());
}

fn assert_taps_on_bridge(ns: &Netns, bridge: &str, count: usize) {
    let text = ns.exec(&["ip", "-o", "link", "show", "master", bridge]);
    assert_eq!(
        text.lines().filter(|l| l.contains(": vt")).count(),
        count,
        "taps on {bridge}: {text}"
    );
}

fn vxlan(local: &str, peer: &str) -> CreateNetworkRequest {
    CreateNetworkRequest {
        kind: NetworkKind::Vxlan,
        subnet: Some("10.88.0.0/24".into()),
        vni: Some(4242),
        peers: vec![peer.into()],
        local: Some(local.into()),
        ..managed("ov", "10.88.0.0/24", None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_on_two_servers_share_a_vxlan_segment() {
    let h1 = Netns::new("h1");
    let h2 = Netns::new("h2");
    link(&h1, "u1", "192.168.201.1/24", &h2, "u2", "192.168.201.2/24");
    let d1 = Daemon::start_in_netns(&h1.0);
    let d2 = Daemon::start_in_netns(&h2.0);
    let (c1, c2) = (d1.client(), d2.client());
    c1.create_network(&vxlan("192.168.201.1", "192.168.201.2"))
        .await
        .expect("vxlan on h1");
    c2.create_network(&vxlan("192.168.201.2", "192.168.201.1"))
        .await
        .expect("vxlan on h2");
    // Until the cluster shares one IPAM, each server reserves its own address.
    let vm = |name: &str, ip: &str| CreateVmRequest {
        nics: vec![AddNicRequest {
            network: "ov".into(),
            ipv4: Some(ip.into()),
            ..Default::default()
        }],
        ..on_network(name, "ov", Machine::Microvm, &format!("vessel.ip={ip}/24"))
    };
    create(&c1, &vm("v1", "10.88.0.11")).await;
    create(&c2, &vm("v2", "10.88.0.12")).await;
    let (rc, out) = sh(&c1, "v1", "x", "ping -c 2 -W 3 10.88.0.12").await;
    assert_eq!(rc, 0, "v1 cannot reach v2 across the tunnel: {out}");
    let (rc, out) = sh(&c2, "v2", "y", "ping -c 2 -W 3 10.88.0.11").await;
    assert_eq!(rc, 0, "v2 cannot reach v1 across the tunnel: {out}");
    // Without the peer, the segment is cut.
    c1.update_network(
        "ov",
        &UpdateNetworkRequest {
            peers: Some(vec![]),
            ..Default::default()
        },
    )
    .await
    .expect("remove peer");
    let (rc, out) = sh(
        &c1,
        "v1",
        "z",
        "ip neigh flush dev eth0; ping -c 1 -W 2 10.88.0.12",
    )
    .await;
    assert_ne!(rc, 0, "traffic crossed without a peer: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_bridge_and_user_networks_work() {
    let host = Netns::new("bad");
    // A route the host already has.
    host.exec(&[
        "ip", "link", "add", "r0", "type", "veth", "peer", "name", "r1",
    ]);
    host.exec(&["ip", "addr", "add", "192.168.210.1/24", "dev", "r0"]);
    host.exec(&["ip", "link", "set", "r0", "up"]);
    let daemon = Daemon::start_in_netns(&host.0);
    let client = daemon.client();
    client
        .create_network(&managed("lan", "10.77.0.0/24", None))
        .await
        .expect("lan");
    let cases: Vec<(CreateNetworkRequest, u16, &str)> = vec![
        (managed("lan2", "10.77.0.0/16", None), 400, "overlaps"),
        (
            managed("routed", "192.168.210.0/24", None),
            400,
            "collides with the host's route",
        ),
        (
            managed("nouplink", "10.78.0.0/24", Some("eth9")),
            400,
            "does not exist",
        ),
        (
            managed("abcdefghijklm", "10.79.0.0/24", None),
            400,
            "limit is 12",
        ),
        (managed("lan", "10.80.0.0/24", None), 409, "already exists"),
        (
            CreateNetworkRequest {
                kind: NetworkKind::Bridge,
                subnet: None,
                bridge: Some("nosuchbr".into()),
                ..managed("br", "10.0.0.0/24", None)
            },
            400,
            "no bridge",
        ),
    ];
    for (request, status, needle) in &cases {
        let (got, message) = api_error(client.create_network(request).await).await;
        assert_eq!(got, *status, "{}: {message}", request.name);
        assert!(message.contains(needle), "{}: {message}", request.name);
    }
    client
        .create_network(&CreateNetworkRequest {
            vni: Some(7),
            ..vxlan("192.168.210.1", "192.168.210.2")
        })
        .await
        .expect("vxlan");
    let (status, message) = api_error(
        client
            .create_network(&CreateNetworkRequest {
                name: "ov2".into(),
                vni: Some(7),
                subnet: None,
                ..vxlan("192.168.210.1", "192.168.210.3")
            })
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("VNI 7 is already used"), "{message}");
    let networks: Vec<String> = client
        .list_networks()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(networks, ["lan", "ov"]);

    // NICs: a multicast MAC, a MAC in use, an address outside the subnet or taken.
    let mut vm = guest_vm("n1");
    vm.nics = vec![AddNicRequest {
        network: "lan".into(),
        mac: Some("52:54:00:00:00:01".into()),
        ipv4: Some("10.77.0.10".into()),
        ..Default::default()
    }];
    create(&client, &vm).await;
    let bad_nics = [
        (Some("01:00:5e:00:00:01"), None, "multicast"),
        (Some("52:54:00:00:00:01"), None, "already used"),
        (None, Some("10.99.0.5"), "not a host address"),
        (None, Some("10.77.0.10"), "already used"),
        (None, Some("10.77.0.1"), "gateway"),
    ];
    for (mac, ip, needle) in bad_nics {
        let request = AddNicRequest {
            network: "lan".into(),
            mac: mac.map(Into::into),
            ipv4: ip.map(Into::into),
            ..Default::default()
        };
        let (status, message) = api_error(client.add_nic("n1", &request, true).await).await;
        assert_eq!(status, 400, "{message}");
        assert!(message.contains(needle), "{needle}: {message}");
    }
    let nics = client.list_nics("n1").await.unwrap();
    assert_eq!(nics.len(), 1, "a refused NIC was kept: {nics:?}");
    // A create whose NIC is refused creates no VM.
    let mut bad_vm = guest_vm("n2");
    bad_vm.nics = vec![AddNicRequest {
        network: "lan".into(),
        ipv4: Some("10.77.0.10".into()),
        ..Default::default()
    }];
    let (status, _) = api_error(client.create_vm(&bad_vm, true).await).await;
    assert_eq!(status, 400);
    let (status, _) = api_error(client.get_vm("n2").await).await;
    assert_eq!(status, 404);
    // A `bridge` network puts taps on the host's own bridge (and nothing else there); a `user`
    // network gives QEMU user-mode NAT. The taps go when their QEMU goes.
    host.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    client
        .create_network(&CreateNetworkRequest {
            kind: NetworkKind::Bridge,
            subnet: None,
            bridge: Some("br0".into()),
            ..managed("office", "10.0.0.0/24", None)
        })
        .await
        .expect("bridge network");
    client
        .create_network(&CreateNetworkRequest {
            kind: NetworkKind::User,
            subnet: None,
            ..managed("nat", "10.0.0.0/24", None)
        })
        .await
        .expect("user network");
    let mut two = guest_vm("n3");
    two.start = true;
    two.nics = ["office", "nat"]
        .iter()
        .map(|n| AddNicRequest {
            network: (*n).into(),
            ..Default::default()
        })
        .collect();
    let started = create(&client, &two).await;
    assert_taps_on_bridge(&host, "br0", 1);
    let pid = daemon.qemu_pids_of("n3")[0];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("user,id=hn-nic1"), "{cmdline}");
    let rules = host.exec(&["nft", "list", "table", "bridge", "vessel"]);
    assert!(rules.contains(&started.spec.nics[0].tap), "{rules}");
    client
        .vm_action("n3", &vessel_cli::VmAction::Kill, true)
        .await
        .expect("kill");
    assert_taps_on_bridge(&host, "br0", 0);

    // Networks belong to projects: the project's network quota holds, and a NIC uses only a
    // network of its VM's project.
    client
        .create_project(&vessel_api::CreateProjectRequest {
            name: "team".into(),
            quota: vessel_api::Quota {
                networks: Some(1),
                ..Default::default()
            },
        })
        .await
        .expect("project");
    let in_team = |name: &str| CreateNetworkRequest {
        kind: NetworkKind::User,
        subnet: None,
        project: Some("team".into()),
        ..managed(name, "10.0.0.0/24", None)
    };
    client.create_network(&in_team("t1")).await.expect("t1");
    let (status, message) = api_error(client.create_network(&in_team("t2")).await).await;
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("networks"), "{message}");
    let mut foreign = guest_vm("n4");
    foreign.nics = vec![AddNicRequest {
        network: "t1".into(),
        ..Default::default()
    }];
    let (status, message) = api_error(client.create_vm(&foreign, true).await).await;
    // Answered as a missing network would be: it names no other project.
    assert_eq!(status, 404, "{message}");
    assert!(
        message.contains("not found in project \"default\""),
        "{message}"
    );
    assert!(!message.contains("team"), "{message}");

    // No interfaces of refused networks exist.
    let links = host.exec(&["ip", "-o", "link", "show"]);
    for name in ["vb-lan2", "vb-routed", "vb-nouplink", "vb-ov2", "vx-ov2"] {
        assert!(
            !links.contains(&format!(": {name}")),
            "{name} was made: {links}"
        );
    }
}
