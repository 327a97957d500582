#!/usr/bin/env python3
"""Networks: guest TCP throughput on a managed bridge vs QEMU user-mode networking (same guests,
same run), and the time to create a managed network and to attach a NIC.

Usage: python3 bench/network.py [--vessel PATH] [--guest-dir DIR] [--runs N] [--mib N]
                                [--create-runs N] [--nic-runs N] [--json]

Everything runs inside a network namespace the script creates (vbench-net-PID, only `lo` and what
Vessel makes in it; private subnets only): a release daemon runs in it (`ip netns exec`), the CLI
and the API reach it over its unix socket. The namespace, the daemon, its QEMUs and anything else
left in the namespace are removed at the end, also on an error or Ctrl-C.

Two test-guest VMs (q35, 1 vCPU, 256 MiB, `vessel.dhcp vessel.noecho`), each with two NICs:
eth0 on a managed network `lan` (bridge vb-lan, 10.50.0.0/24, gateway 10.50.0.1 = the host side,
address from Vessel's DHCP server) and one on a user-kind network `nat` (QEMU user-mode NAT; the
guest gives it 10.0.2.15/24 by hand; 10.0.2.2 is QEMU's alias for the loopback of the namespace
the QEMU runs in, the daemon's). A Python sink in the namespace listens on 0.0.0.0:5001 and
counts what it receives.

Throughput, --mib MiB of zeros per transfer (`dd bs=64k | nc`), three paths interleaved each run:
- vm-to-vm over the bridge: guest A sends to guest B's `nc -l -p 5001 | wc -c` (B's count is
  checked; B's nc reads its stdin from a FIFO it holds open itself, since busybox nc half-closes
  on stdin EOF and the sender's nc quits on that FIN);
- vm-to-host over the bridge: guest A sends to the sink at 10.50.0.1;
- vm-to-host over user-mode NAT: guest A sends to the sink at 10.0.2.2.
The time of a transfer is the sender guest's own /proc/uptime (10 ms resolution) from before `dd`
to after `nc` exits (nc exits once the receiver closed: all bytes were received); the same method
on every path. For the two vm-to-host paths the sink also records its first-to-last-byte time on
the host clock and checks the byte count (a cross-check of the guest clock). Reported: Mbit/s per
run, medians, and the ratios bridge / user-mode (vm-to-host) and vm-to-vm bridge / user-mode.

Control plane (wall time of the CLI process, median over cycles):
- `vessel network create bn --kind managed --subnet 10.51.0.0/24` then `vessel network delete bn`,
  --create-runs cycles (the bridge, its address, nftables rules and the DHCP server each time);
- `vessel vm nic add A lan` to the running q35 VM A (tap + QMP getfd/netdev_add/device_add
  hot-plug; the CLI waits for the operation) then `vessel vm nic remove A nicN` (device_del, the
  guest acknowledges the unplug), --nic-runs cycles;
- the same add/remove on a stopped (defined, never started) q35 VM C: configuration only.

Prints JSON with --json, else a short report.
"""
import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import READY, api  # noqa: E402

SUBNET = "10.50.0.0/24"
GATEWAY = "10.50.0.1"
USER_ADDR = "10.0.2.15/24"
USER_HOST = "10.0.2.2"
PORT = 5001

SINK = r"""
import json, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", %d))
s.listen(8)
print("LISTENING", flush=True)
buf = bytearray(1 << 20)
while True:
    c, addr = s.accept()
    n, first, last = 0, None, None
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        now = time.monotonic()
        if first is None:
            first = now
        last = now
        n += k
    c.close()
    print(json.dumps({"peer": addr[0], "bytes": n,
                      "first_last_s": (last - first) if first is not None else None}), flush=True)
""" % PORT


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(*cmd, check=True):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


class Netns:
    def __init__(self, name):
        self.name = name
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "add", name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")

    def prefix(self):
        return ["ip", "netns", "exec", self.name]

    def pids(self):
        out = sh("ip", "netns", "pids", self.name, check=False)
        return [int(p) for p in out.split()]

    def delete(self):
        # Whatever still runs in the namespace was started by this script (the daemon, its
        # QEMUs, DHCP server, the sink): end those by pid, then drop the namespace.
        for _ in range(3):
            pids = [p for p in self.pids() if p != os.getpid()]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
        sh("ip", "netns", "del", self.name, check=False)


class NsDaemon(common.Daemon):
    """common.Daemon, started inside the namespace."""

    def __init__(self, vessel, netns):
        self.netns = netns
        super().__init__(vessel)

    def start(self):
        with open(self.config, "w") as f:
            f.write(f"sample_interval_secs = {self.sample_interval_secs}\n")
        self.log = open(os.path.join(self.work, "daemon.log"), "a")
        self.proc = subprocess.Popen(
            self.netns.prefix() + [self.vessel, "--socket", self.sock, "daemon", "--data-dir", self.data,
                                   "--config", self.config],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "VESSEL_LOG": self.log_level})
        deadline = time.time() + 120
        while True:
            try:
                api(self.sock, "GET", "/v1/host", timeout=5)
                break
            except (FileNotFoundError, ConnectionRefusedError, RuntimeError, socket.timeout):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"daemon did not start; see {self.log.name}")
                time.sleep(0.01)

    def run(self, *args):
        p = self.cli(*args, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"vessel {' '.join(args)}: {p.stderr.decode().strip()}")
        return p.stdout.decode()

    def timed(self, *args):
        t0 = time.perf_counter()
        p = self.cli(*args, check=False)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"vessel {' '.join(args)}: {p.stderr.decode().strip()}")
        return dt


class Sink:
    """The Python sink inside the namespace; results() yields one dict per connection."""

    def __init__(self, netns):
        self.proc = subprocess.Popen(netns.prefix() + [sys.executable, "-u", "-c", SINK],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.q = queue.Queue()
        first = self.proc.stdout.readline()
        if "LISTENING" not in first:
            raise RuntimeError("sink did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(json.loads(line))

    def result(self, timeout=120):
        return self.q.get(timeout=timeout)

    def drain(self):
        while not self.q.empty():
            self.q.get_nowait()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Console:
    """The guest's serial shell through the API (HTTP upgrade), kept open."""

    def __init__(self, sock, name, timeout=60):
        self.name = name
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(sock)
        self.s.sendall((f"GET /v1/vms/{name}/console HTTP/1.1\r\nHost: vessel\r\n"
                        "Connection: Upgrade\r\nUpgrade: vessel-console\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.s.recv(4096)
            if not chunk:
                raise RuntimeError(f"{name}: console closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"{name}: console attach refused: {head[:200]!r}")
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.n = 0

    def type(self, line):
        self.s.sendall(line.encode() + b"\n")

    def run(self, command, timeout=300):
        """Types `command`; returns (exit status, output). The end marker is made with shell
        arithmetic so that an echo of the typed line would not match it."""
        self.n += 1
        marker = f"END{self.n}-0rc".encode()
        self.buf = b""
        self.type(f"{command}; echo END{self.n}-$((0))rc$?")
        deadline = time.time() + timeout
        while not (marker in self.buf and b"\n" in self.buf.split(marker, 1)[1]):
            if time.time() > deadline:
                raise RuntimeError(f"{self.name}: no answer to {command!r} in {timeout} s: {self.buf[-500:]!r}")
            self.s.settimeout(max(0.1, deadline - time.time()))
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise RuntimeError(f"{self.name}: console closed")
            self.buf += chunk
        before, after = self.buf.split(marker, 1)
        return int(after.split()[0]), before.decode(errors="replace")

    def check(self, command, timeout=300):
        rc, out = self.run(command, timeout)
        if rc != 0:
            raise RuntimeError(f"{self.name}: {command!r} failed ({rc}): {out[-500:]}")
        return out

    def close(self):
        self.s.close()


def wait_console(sock, name, needle, timeout):
    conn = common.UnixHTTP(sock, timeout=timeout)
    deadline = time.time() + timeout
    try:
        conn.request("GET", f"/v1/vms/{name}/console/log?follow=true")
        resp = conn.getresponse()
        buf = b""
        while needle not in buf:
            conn.sock.settimeout(max(0.1, deadline - time.time()))
            if time.time() > deadline:
                raise RuntimeError(f"{name}: no {needle!r} within {timeout} s")
            chunk = resp.read1(65536)
            if not chunk:
                raise RuntimeError(f"{name}: console log ended before {needle!r}")
            buf = buf[-256:] + chunk
    finally:
        conn.close()


def mbit(nbytes, seconds):
    return nbytes * 8 / seconds / 1e6


def transfer(con, dest, count, bs=65536):
    """Guest `con` sends count*bs bytes of zeros to dest:5001; seconds by the guest's uptime."""
    out = con.check(f"read a b < /proc/uptime; dd if=/dev/zero bs={bs} count={count} 2>/dev/null | "
                    f"nc {dest} {PORT}; r=$?; read c d < /proc/uptime; echo XFER $a $c $r", timeout=900)
    line = [x for x in out.splitlines() if x.startswith("XFER ")][-1].split()
    t0, t1, rc = float(line[1]), float(line[2]), int(line[3])
    if rc != 0:
        raise RuntimeError(f"{con.name}: nc to {dest} failed ({rc})")
    return t1 - t0


def iface_for_mac(con, mac):
    out = con.check("for i in /sys/class/net/*; do echo IF ${i##*/} $(cat $i/address); done")
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "IF" and parts[2].lower() == mac.lower():
            return parts[1]
    raise RuntimeError(f"{con.name}: no interface with MAC {mac}: {out}")


def nic_ids(sock, vm):
    return [n["id"] for n in api(sock, "GET", f"/v1/vms/{vm}")["spec"].get("nics", [])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vessel", default=common.default_vessel())
    ap.add_argument("--guest-dir", default=common.default_guest())
    ap.add_argument("--runs", type=int, default=7, help="throughput runs per path")
    ap.add_argument("--mib", type=int, default=8, help="MiB per transfer")
    ap.add_argument("--create-runs", type=int, default=10)
    ap.add_argument("--nic-runs", type=int, default=10)
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    common.raise_on_sigterm()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, bridges)")
    guest = a.guest_dir
    count = a.mib * 16  # 64 KiB blocks
    nbytes = count * 65536
    res = {"config": {"mib_per_transfer": a.mib, "runs": a.runs, "create_runs": a.create_runs,
                      "nic_runs": a.nic_runs, "vm": "q35, 1 vCPU, 256 MiB, test guest", "subnet": SUBNET}}
    res["loadavg_start"] = os.getloadavg()[0]
    ns = Netns(f"vbench-net-{os.getpid()}")
    d = sink = None
    consoles = []
    try:
        d = NsDaemon(a.vessel, ns)
        sock = d.sock
        log("network: daemon up in", ns.name)
        d.run("network", "create", "lan", "--kind", "managed", "--subnet", SUBNET)
        d.run("network", "create", "nat", "--kind", "user")
        for name in ("a", "b"):
            d.run("vm", "create", name, "--kernel", f"{guest}/vmlinuz", "--initrd", f"{guest}/initramfs.img",
                  "--cmdline", f"quiet vessel.hostname={name} vessel.dhcp vessel.noecho",
                  "--machine", "q35", "--memory", "256M", "--cpus", "1",
                  "--network", "lan", "--network", "nat", "--start")
        vms = {}
        for name in ("a", "b"):
            wait_console(sock, name, READY, a.boot_timeout)
            vms[name] = api(sock, "GET", f"/v1/vms/{name}")
        log("network: guests ready")
        ip = {n: vms[n]["spec"]["nics"][0]["ipv4"] for n in vms}
        con = {n: Console(sock, n) for n in vms}
        consoles += con.values()
        for n in vms:
            lan_if = iface_for_mac(con[n], vms[n]["spec"]["nics"][0]["mac"])
            user_if = iface_for_mac(con[n], vms[n]["spec"]["nics"][1]["mac"])
            out = con[n].check(f"ip -4 -o addr show dev {lan_if}")
            if ip[n].split("/")[0] not in out:
                raise RuntimeError(f"{n}: {lan_if} does not have {ip[n]}: {out}")
            con[n].check(f"ip addr add {USER_ADDR} dev {user_if} && ip link set {user_if} up")
        res["guests"] = {n: {"lan_ip": ip[n]} for n in vms}
        sink = Sink(ns)
        b_ip = ip["b"].split("/")[0]
        # Warm-up (ARP, slirp, TCG's translation of the network paths), not counted.
        small = max(16, count // 8)
        for dest in (GATEWAY, USER_HOST):
            s = transfer(con["a"], dest, small)
            log(f"network: warm-up to {dest}: {small * 65536 >> 20} MiB in {s:.2f} s, sink {sink.result()}")

        paths = ["vm_to_vm_bridge", "vm_to_host_bridge", "vm_to_host_user"]
        runs = {p: [] for p in paths}
        host_side = {p: [] for p in paths[1:]}
        for i in range(a.runs):
            order = paths[i % 3:] + paths[:i % 3]
            for p in order:
                if p == "vm_to_vm_bridge":
                    # The receiver's stdin is a FIFO it holds open itself: it never sees EOF there,
                    # so it does not half-close (busybox nc would, and the sender's nc exits on
                    # the peer's FIN). Detached with setsid, away from the shell's job control.
                    con["b"].check(f"rm -f /tmp/rx /tmp/f; mkfifo /tmp/f; setsid sh -c 'nc -l -p {PORT} <> /tmp/f "
                                   f"| wc -c > /tmp/rx' < /dev/null > /dev/null 2>&1 & sleep 1")
                    s = transfer(con["a"], b_ip, count)
                    out = con["b"].check("while [ ! -s /tmp/rx ]; do sleep 0.2; done; echo RX $(cat /tmp/rx)", timeout=60)
                    got = int([x for x in out.splitlines() if x.startswith("RX ")][-1].split()[1])
                    if got != nbytes:
                        raise RuntimeError(f"{p}: guest b got {got} bytes, sent {nbytes}")
                else:
                    sink.drain()
                    s = transfer(con["a"], GATEWAY if p == "vm_to_host_bridge" else USER_HOST, count)
                    got = sink.result()
                    if got["bytes"] != nbytes:
                        raise RuntimeError(f"{p}: sink got {got['bytes']} bytes, sent {nbytes}")
                    host_side[p].append(mbit(nbytes, got["first_last_s"]))
                runs[p].append(mbit(nbytes, s))
                log(f"network: run {i + 1} {p}: {s:.2f} s, {runs[p][-1]:.1f} Mbit/s")
        tp = {p: common.summary(runs[p], 1) for p in paths}
        tp["host_clock_vm_to_host_bridge"] = common.summary(host_side["vm_to_host_bridge"], 1)
        tp["host_clock_vm_to_host_user"] = common.summary(host_side["vm_to_host_user"], 1)
        tp["ratio_bridge_vs_user_vm_to_host"] = round(tp["vm_to_host_bridge"]["median"] / tp["vm_to_host_user"]["median"], 2)
        tp["ratio_vm_to_vm_bridge_vs_user_vm_to_host"] = round(tp["vm_to_vm_bridge"]["median"] / tp["vm_to_host_user"]["median"], 2)
        tp["pair_ratio_bridge_vs_user"] = common.summary(
            [x / y for x, y in zip(runs["vm_to_host_bridge"], runs["vm_to_host_user"])], 2)
        tp["runs_mbit"] = {p: [round(x, 1) for x in runs[p]] for p in paths}
        res["throughput"] = tp

        # Control plane.
        creates, deletes = [], []
        for i in range(a.create_runs):
            creates.append(d.timed("network", "create", "bn", "--kind", "managed", "--subnet", "10.51.0.0/24"))
            deletes.append(d.timed("network", "delete", "bn"))
        res["network_create_ms"] = common.summary([x * 1000 for x in creates], 1)
        res["network_delete_ms"] = common.summary([x * 1000 for x in deletes], 1)
        log(f"network: create {res['network_create_ms']}")

        noop = [d.timed("vm", "show", "a") * 1000 for _ in range(max(5, a.nic_runs))]
        res["cli_vm_show_ms"] = common.summary(noop, 1)

        d.run("vm", "create", "c", "--kernel", f"{guest}/vmlinuz", "--initrd", f"{guest}/initramfs.img",
              "--machine", "q35", "--memory", "256M")
        for vm, key in (("a", "nic_running"), ("c", "nic_stopped")):
            adds, removes = [], []
            before = set(nic_ids(sock, vm))
            for i in range(a.nic_runs):
                adds.append(d.timed("vm", "nic", "add", vm, "lan"))
                new = [x for x in nic_ids(sock, vm) if x not in before]
                if len(new) != 1:
                    raise RuntimeError(f"{vm}: expected one new NIC, got {new}")
                if vm == "a" and i == 0:
                    # The hot-plugged NIC shows up in the guest (checked once, not timed).
                    mac = next(n["mac"] for n in api(sock, "GET", f"/v1/vms/{vm}")["spec"].get("nics", []) if n["id"] == new[0])
                    deadline = time.time() + 30
                    while True:
                        try:
                            iface_for_mac(con["a"], mac)
                            break
                        except RuntimeError:
                            if time.time() > deadline:
                                raise
                            time.sleep(0.5)
                removes.append(d.timed("vm", "nic", "remove", vm, new[0]))
            res[key] = {"add_ms": common.summary([x * 1000 for x in adds], 1),
                        "remove_ms": common.summary([x * 1000 for x in removes], 1)}
            log(f"network: {key} {res[key]}")
        res["loadavg_end"] = os.getloadavg()[0]
        res["vms"] = {n: api(sock, "GET", f"/v1/vms/{n}")["state"] for n in ("a", "b", "c")}
    finally:
        for c in consoles:
            try:
                c.close()
            except OSError:
                pass
        if sink:
            sink.close()
        if d:
            try:
                d.close()
            except Exception as e:  # noqa: BLE001
                log(f"network: cleanup: {e}")
        ns.delete()
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        tp = res["throughput"]
        for p in ("vm_to_vm_bridge", "vm_to_host_bridge", "vm_to_host_user"):
            s = tp[p]
            print(f"{p:20s} median {s['median']:7.1f} Mbit/s  ({s['min']}–{s['max']}, n={s['n']})")
        print(f"bridge / user-mode (vm to host): {tp['ratio_bridge_vs_user_vm_to_host']}x; "
              f"vm-to-vm bridge / user-mode: {tp['ratio_vm_to_vm_bridge_vs_user_vm_to_host']}x")
        print(f"network create: median {res['network_create_ms']['median']} ms; delete "
              f"{res['network_delete_ms']['median']} ms")
        print(f"nic add, running q35: {res['nic_running']['add_ms']['median']} ms; stopped: "
              f"{res['nic_stopped']['add_ms']['median']} ms")


if __name__ == "__main__":
    main()
