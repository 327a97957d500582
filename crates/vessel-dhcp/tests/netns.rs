//! The server on real sockets, in network namespaces the tests create (see `support`): our own
//! minimal client for exact protocol checks, and busybox `udhcpc` as an independent client.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use support::{discover, in_netns, ip, request, Lan};
use tokio::sync::watch;
use vessel_dhcp::packet::{MAGIC_COOKIE, MIN_LEN};
use vessel_dhcp::{Binding, DhcpMessage, DhcpServer, Error, MessageType};

/// A MAC no test binds.
const STRANGER: [u8; 6] = [0x02, 0, 0, 0, 0xee, 0xee];

#[test]
fn known_mac_gets_its_bound_address_with_mask_router_and_lease() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);

        let offer = client
            .exchange(&discover(lan.client_mac, 0x1001), Ipv4Addr::BROADCAST)
            .await;
        assert_eq!(offer.options.message_type, Some(MessageType::Offer));
        assert_eq!(offer.yiaddr, lan.bound_ip());
        assert_eq!(offer.mac(), Some(lan.client_mac));
        let o = &offer.options;
        assert_eq!(o.server_id, Some(lan.server_ip));
        assert_eq!(o.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(o.routers, vec![lan.server_ip]);
        assert_eq!(
            o.dns_servers,
            vec![Ipv4Addr::new(10, 77, 1, 2), Ipv4Addr::new(10, 77, 1, 3)]
        );
        assert_eq!(o.domain_name.as_deref(), Some("vessel.test"));
        assert_eq!(o.hostname.as_deref(), Some("web-1"));
        assert_eq!(o.mtu, Some(1400));
        assert_eq!(
            (o.lease_secs, o.renewal_secs, o.rebinding_secs),
            (Some(3600), Some(1800), Some(3150))
        );

        let req = request(lan.client_mac, 0x1002, lan.server_ip, lan.bound_ip());
        let ack = client.exchange(&req, Ipv4Addr::BROADCAST).await;
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, lan.bound_ip());
        assert_eq!(ack.options.lease_secs, Some(3600));
        assert_eq!(ack.options.subnet_mask, o.subnet_mask);

        let stats = server.stats();
        assert_eq!((stats.offers, stats.acks, stats.served()), (1, 1, 2));
        assert_eq!((stats.received, stats.malformed, stats.ignored), (2, 0, 0));
        server.shutdown().await;
    });
}

#[test]
fn unknown_mac_gets_no_answer() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);
        let sentinel = discover(lan.client_mac, 0x2000);

        client
            .expect_no_reply(&discover(STRANGER, 0x2001), &sentinel)
            .await;
        // Not even a NAK for a REQUEST of an address: another server may own this client.
        let req = request(STRANGER, 0x2002, lan.server_ip, lan.bound_ip());
        client.expect_no_reply(&req, &sentinel).await;
        // And plainly, within a bounded wait.
        client
            .send(&discover(STRANGER, 0x2003), Ipv4Addr::BROADCAST)
            .await;
        assert_eq!(client.recv(0x2003, Duration::from_millis(500)).await, None);

        let stats = server.stats();
        assert_eq!((stats.ignored, stats.offers, stats.naks), (3, 2, 0));
    });
}

#[test]
fn request_for_a_wrong_address_gets_a_nak() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);
        let wrong = Ipv4Addr::new(10, 77, 1, 99);

        // SELECTING with this server's id.
        let nak = client
            .exchange(
                &request(lan.client_mac, 0x3001, lan.server_ip, wrong),
                Ipv4Addr::BROADCAST,
            )
            .await;
        assert_eq!(nak.options.message_type, Some(MessageType::Nak));
        assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.options.server_id, Some(lan.server_ip));
        assert!(nak.options.message.unwrap().contains("10.77.1.99"));

        // INIT-REBOOT (no server id), e.g. a VM whose address was changed while it was off.
        let mut reboot = request(lan.client_mac, 0x3002, lan.server_ip, wrong);
        reboot.options.server_id = None;
        let nak = client.exchange(&reboot, Ipv4Addr::BROADCAST).await;
        assert_eq!(nak.options.message_type, Some(MessageType::Nak));

        // A REQUEST naming another server is that server's business: silence, not a NAK.
        let other = request(lan.client_mac, 0x3003, Ipv4Addr::new(10, 77, 1, 254), wrong);
        client
            .expect_no_reply(&other, &discover(lan.client_mac, 0x3004))
            .await;
        assert_eq!(server.stats().naks, 2);
    });
}

#[test]
fn renewal_with_ciaddr_is_answered_by_unicast() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let _server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let addr = format!("addr add {}/24 dev {}", lan.bound_ip(), lan.client_if);
        lan.in_client(|| ip(&addr));
        // Bound to the leased address, this socket cannot receive broadcasts: the ACK must
        // be sent to ciaddr.
        let client = lan.client(lan.bound_ip());
        let mut renew = DhcpMessage::client(MessageType::Request, lan.client_mac, 0x4001);
        renew.ciaddr = lan.bound_ip();
        renew.flags = 0;
        let ack = client.exchange(&renew, lan.server_ip).await;
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!((ack.ciaddr, ack.yiaddr), (lan.bound_ip(), lan.bound_ip()));

        // INFORM from a configured client: unicast too, no lease.
        let mut inform = DhcpMessage::client(MessageType::Inform, lan.client_mac, 0x4002);
        inform.ciaddr = lan.bound_ip();
        inform.flags = 0;
        let ack = client.exchange(&inform, lan.server_ip).await;
        assert_eq!(ack.options.message_type, Some(MessageType::Ack));
        assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.options.lease_secs, None);
        assert_eq!(ack.options.dns_servers.len(), 2);
    });
}

#[test]
fn binding_changes_through_the_watch_channel_are_served_at_once() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        // The sentinel MAC is bound from the start; the client's MAC is not, yet.
        let sentinel_mac = [0x02, 0, 0, 0, 0x99, 0x99];
        let sentinel_binding = Binding {
            ip: Ipv4Addr::new(10, 77, 1, 99),
            hostname: None,
        };
        let mut map = HashMap::from([(sentinel_mac, sentinel_binding)]);
        let (tx, rx) = watch::channel(map.clone());
        let _server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);
        let sentinel = discover(sentinel_mac, 0x5000);
        let mine = |xid| discover(lan.client_mac, xid);

        client.expect_no_reply(&mine(0x5001), &sentinel).await;

        map.extend(lan.bindings("first"));
        tx.send(map.clone()).unwrap();
        let offer = client.exchange(&mine(0x5002), Ipv4Addr::BROADCAST).await;
        assert_eq!(offer.yiaddr, lan.bound_ip());
        assert_eq!(offer.options.hostname.as_deref(), Some("first"));

        let moved = Ipv4Addr::new(10, 77, 1, 11);
        map.insert(
            lan.client_mac,
            Binding {
                ip: moved,
                hostname: Some("second".into()),
            },
        );
        tx.send(map.clone()).unwrap();
        let offer = client.exchange(&mine(0x5003), Ipv4Addr::BROADCAST).await;
        assert_eq!(offer.yiaddr, moved);
        assert_eq!(offer.options.hostname.as_deref(), Some("second"));
        // The old address is no longer this client's.
        let old = request(lan.client_mac, 0x5004, lan.server_ip, lan.bound_ip());
        let nak = client.exchange(&old, Ipv4Addr::BROADCAST).await;
        assert_eq!(nak.options.message_type, Some(MessageType::Nak));

        map.remove(&lan.client_mac);
        tx.send(map).unwrap();
        client.expect_no_reply(&mine(0x5005), &sentinel).await;
    });
}

#[test]
fn servers_on_two_bridges_in_one_namespace_coexist() {
    in_netns(|| async {
        let (lan1, lan2) = (Lan::create(1).await, Lan::create(2).await);
        let (_tx1, rx1) = watch::channel(lan1.bindings("one"));
        let (_tx2, rx2) = watch::channel(lan2.bindings("two"));
        let s1 = DhcpServer::spawn(lan1.config(), rx1).unwrap();
        let s2 = DhcpServer::spawn(lan2.config(), rx2).unwrap();
        let c1 = lan1.client(Ipv4Addr::UNSPECIFIED);
        let c2 = lan2.client(Ipv4Addr::UNSPECIFIED);

        for (lan, client, xid) in [(&lan1, &c1, 0x6001), (&lan2, &c2, 0x6002)] {
            let offer = client
                .exchange(&discover(lan.client_mac, xid), Ipv4Addr::BROADCAST)
                .await;
            assert_eq!(offer.yiaddr, lan.bound_ip());
            assert_eq!(offer.options.server_id, Some(lan.server_ip));
        }
        // Each server hears only its own bridge: lan1's MAC on bridge 2 gets nothing.
        c2.expect_no_reply(
            &discover(lan1.client_mac, 0x6003),
            &discover(lan2.client_mac, 0x6004),
        )
        .await;
        assert_eq!((s1.stats().received, s1.stats().offers), (1, 1));
        assert_eq!((s2.stats().received, s2.stats().offers), (3, 2));
    });
}

#[test]
fn servers_sharing_one_bridge_answer_only_their_own_macs() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let other_ip = Ipv4Addr::new(10, 77, 1, 2);
        ip(&format!("addr add {other_ip}/24 dev {}", lan.bridge));
        let other_mac = [0x02, 0, 0, 0, 0x01, 0x20];
        let other_bound = Ipv4Addr::new(10, 77, 1, 20);
        let (_tx1, rx1) = watch::channel(lan.bindings("one"));
        let (_tx2, rx2) = watch::channel(HashMap::from([(
            other_mac,
            Binding {
                ip: other_bound,
                hostname: None,
            },
        )]));
        let s1 = DhcpServer::spawn(lan.config(), rx1).unwrap();
        let mut config2 = lan.config();
        config2.server_ip = other_ip;
        let s2 = DhcpServer::spawn(config2, rx2).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);

        for (mac, want_ip, want_server, xid) in [
            (lan.client_mac, lan.bound_ip(), lan.server_ip, 0x6101),
            (other_mac, other_bound, other_ip, 0x6102),
        ] {
            client.send(&discover(mac, xid), Ipv4Addr::BROADCAST).await;
            let offer = client.recv_any(support::REPLY_WAIT).await.expect("offer");
            assert_eq!(offer.xid, xid);
            assert_eq!(offer.yiaddr, want_ip);
            assert_eq!(offer.options.server_id, Some(want_server));
        }
        // Both heard both DISCOVERs; each answered one. Exactly two replies came: a third
        // (from the server that should have stayed silent) would show up as the next reply
        // before this sentinel's.
        client
            .expect_no_reply(
                &discover(STRANGER, 0x6103),
                &discover(lan.client_mac, 0x6104),
            )
            .await;
        assert_eq!((s1.stats().offers, s1.stats().ignored), (2, 2));
        assert_eq!((s2.stats().offers, s2.stats().ignored), (1, 3));
    });
}

/// A plain socket on 0.0.0.0:67 bound to `ifname`, without SO_REUSEADDR, as a program that
/// does not expect company (a dnsmasq, say) would have.
fn exclusive_port_67(ifname: &str) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.bind_device(Some(ifname.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67).into())?;
    Ok(s)
}

#[test]
fn start_errors_say_what_to_fix_and_shutdown_releases_the_port() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));

        let blocker = exclusive_port_67(&lan.bridge).unwrap();
        let err = DhcpServer::spawn(lan.config(), rx.clone()).unwrap_err();
        assert!(matches!(err, Error::AddrInUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot bind DHCP port 67 on br1: address in use (is dnsmasq or another DHCP server \
             running on this bridge?)"
        );
        drop(blocker);

        let mut missing = lan.config();
        missing.ifname = "vb-missing".into();
        let err = DhcpServer::spawn(missing, rx.clone()).unwrap_err();
        assert!(matches!(err, Error::NoSuchInterface { .. }), "{err:?}");
        assert!(err.to_string().contains("vb-missing"), "{err}");

        let server = DhcpServer::spawn(lan.config(), rx.clone()).unwrap();
        assert!(
            exclusive_port_67(&lan.bridge).is_err(),
            "the running server holds the port"
        );
        server.shutdown().await;
        exclusive_port_67(&lan.bridge).expect("port 67 free after shutdown");

        // Dropping the handle stops the server too.
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        drop(server);
        let client = lan.client(Ipv4Addr::UNSPECIFIED);
        client
            .send(&discover(lan.client_mac, 0x7001), Ipv4Addr::BROADCAST)
            .await;
        assert_eq!(client.recv(0x7001, Duration::from_millis(500)).await, None);
        exclusive_port_67(&lan.bridge).expect("port 67 free after drop");
    });
}

#[test]
fn garbage_does_not_stop_the_server() {
    in_netns(|| async {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let client = lan.client(Ipv4Addr::UNSPECIFIED);

        // Garbage is built on a stranger's DISCOVER: random bytes that happen to parse are then
        // ignored (unknown MAC) instead of answered.
        let valid = discover(STRANGER, 0x8000).encode(0).bytes;
        let mut garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            valid[..MIN_LEN - 1].to_vec(),
            vec![0xff; 1500],  // too long
            vec![0x01; 9000],  // longer than the receive buffer, fragmented on the wire
            vec![0x00; 65000], // near the UDP maximum
        ];
        // Well-formed but not for a server: another server's OFFER for a known client.
        let mut rogue_offer = DhcpMessage::client(MessageType::Offer, lan.client_mac, 0x8001);
        rogue_offer.op = vessel_dhcp::packet::BOOTREPLY;
        garbage.push(rogue_offer.encode(0).bytes);
        let mut no_cookie = valid.clone();
        no_cookie[236] = 0;
        garbage.push(no_cookie);
        let mut truncated_option = valid[..MIN_LEN].to_vec();
        truncated_option.extend_from_slice(&[53, 1, 1, 61, 200, 1, 2]);
        garbage.push(truncated_option);
        // Random bytes behind a valid header and cookie.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let mut b = valid[..MIN_LEN].to_vec();
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b.push(seed as u8);
            }
            if let Some(first) = b.get_mut(MIN_LEN) {
                *first = 61; // start with an option, not END
            }
            garbage.push(b);
        }
        assert_eq!(&valid[236..240], &MAGIC_COOKIE);

        // In batches, each followed by a real DISCOVER that must still be answered: sent all
        // at once, the burst (64 KiB datagrams among them) would overflow the socket's
        // receive buffer, and the kernel, not the server, would drop the rest.
        let mut exchanges = 0u64;
        for batch in garbage.chunks(8) {
            for b in batch {
                client.send_raw(b, Ipv4Addr::BROADCAST).await;
            }
            exchanges += 1;
            let offer = client
                .exchange(
                    &discover(lan.client_mac, 0x8100 + exchanges as u32),
                    Ipv4Addr::BROADCAST,
                )
                .await;
            assert_eq!(offer.yiaddr, lan.bound_ip());
        }
        let after = server.stats();
        assert_eq!(after.received, garbage.len() as u64 + exchanges);
        // The random ones may happen to parse; every datagram was either rejected or ignored.
        assert_eq!(
            after.malformed + after.ignored,
            garbage.len() as u64,
            "{after:?}"
        );
        assert!(after.malformed >= 8, "{after:?}");
        assert_eq!(after.offers, exchanges);
    });
}

// ---- busybox udhcpc: an independent client -------------------------------------------------

/// The udhcpc hook: prints what udhcpc took from the reply, one line per event.
const UDHCPC_SCRIPT: &str = "#!/bin/sh\n\
echo \"$1 ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain \
hostname=$hostname mtu=$mtu lease=$lease serverid=$serverid\"\n";

/// Runs `udhcpc -f -q -n` on `ifname`; returns its exit success and the hook's output.
async fn udhcpc(busybox: &std::path::Path, lan: &Lan, tries: u32) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, UDHCPC_SCRIPT).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = tokio::process::Command::new(busybox);
    command
        .args(["udhcpc", "-f", "-q", "-n", "-T", "1", "-A", "1", "-t"])
        .arg(tries.to_string())
        .args(["-i", &lan.client_if, "-s"])
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // Spawned in the VM's namespace, where its NIC is.
    let child = lan
        .in_client(|| command.spawn())
        .expect("run busybox udhcpc");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("udhcpc did not exit within 30 s")
        .unwrap();
    let hook = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "udhcpc stderr:\n{}\nhook:\n{hook}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), hook)
}

#[test]
fn udhcpc_gets_the_bound_address_and_settings() {
    let Some(busybox) = support::busybox_or_skip() else {
        return;
    };
    in_netns(move || async move {
        let lan = Lan::create(1).await;
        let (_tx, rx) = watch::channel(lan.bindings("web-1"));
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let (ok, hook) = udhcpc(&busybox, &lan, 3).await;
        assert!(ok, "udhcpc got no lease:\n{hook}");
        let bound = hook
            .lines()
            .find(|l| l.starts_with("bound "))
            .unwrap_or_else(|| panic!("no bound event:\n{hook}"));
        assert_eq!(
            bound,
            "bound ip=10.77.1.10 subnet=255.255.255.0 router=10.77.1.1 dns=10.77.1.2 10.77.1.3 \
             domain=vessel.test hostname=web-1 mtu=1400 lease=3600 serverid=10.77.1.1"
        );
        let stats = server.stats();
        assert!(stats.offers >= 1 && stats.acks >= 1, "{stats:?}");
    });
}

#[test]
fn udhcpc_with_an_unknown_mac_gets_no_lease() {
    let Some(busybox) = support::busybox_or_skip() else {
        return;
    };
    in_netns(move || async move {
        let lan = Lan::create(1).await;
        let mut bindings = lan.bindings("web-1");
        let binding = bindings.remove(&lan.client_mac).unwrap();
        bindings.insert(STRANGER, binding);
        let (_tx, rx) = watch::channel(bindings);
        let server = DhcpServer::spawn(lan.config(), rx).unwrap();
        let (ok, hook) = udhcpc(&busybox, &lan, 2).await;
        assert!(!ok, "udhcpc got a lease:\n{hook}");
        assert!(!hook.contains("bound"), "{hook}");
        // The server did hear the DISCOVERs: silence was its decision.
        let stats = server.stats();
        assert!(stats.ignored >= 2, "{stats:?}");
        assert_eq!(stats.served(), 0);
    });
}
