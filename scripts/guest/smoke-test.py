#!/usr/bin/env python3
"""Boot the Vessel test guest under QEMU (TCG) and check what tests rely on.

Usage: scripts/guest/smoke-test.py [--guest-dir DIR] [--machine microvm|q35|all]
                                  [--runs N] [--only boot,powerdown,...]

Checks per machine type: boot with vessel.poweroff (timed), ACPI power button
via QMP system_powerdown, `reboot -f` typed on the console (READY again with a
new boot id), shell over the serial line (also with vessel.noecho), virtio-blk
disk in VESSEL-DISKS, virtio-net NIC with DHCP from QEMU user networking,
vessel.panic.
Not used by the build; kept next to the guest so that it can be re-verified.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

READY = re.compile(rb"VESSEL-GUEST-READY boot=([0-9a-f]{32})\r?\n")


def host_tsc_khz():
    """TSC frequency of the host in kHz (TCG's guest TSC runs at the host rate)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return None


def machine_args(machine):
    """QEMU arguments, kernel cmdline extras and device model names per machine."""
    if machine == "microvm":
        # Without tsc_early_khz the kernel often hangs at boot on microvm under
        # TCG: PIT calibration of the TSC fails on a busy host and microvm has
        # no HPET/ACPI PM timer to fall back on.
        extra = []
        khz = host_tsc_khz()
        if khz:
            extra.append(f"tsc_early_khz={khz}")
        return ["-M", "microvm"], extra, "device"
    return ["-M", "q35"], [], "pci"


class Guest:
    def __init__(self, guest_dir, machine, append="", extra=(), qmp=False):
        self.tmp = tempfile.mkdtemp(prefix="vessel-smoke-")
        margs, mcmdline, self.bus = machine_args(machine)
        cmdline = " ".join(["console=ttyS0", "quiet", *mcmdline, append]).strip()
        self.qmp_path = os.path.join(self.tmp, "qmp.sock") if qmp else None
        argv = ["qemu-system-x86_64", "-accel", "tcg", *margs, "-m", "256M", "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-kernel", os.path.join(guest_dir, "vmlinuz"),
                "-initrd", os.path.join(guest_dir, "initramfs.img"),
                "-append", cmdline, *extra]
        if qmp:
            argv += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        self.argv = argv
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.pos = 0  # expect() searches from here
        self._out = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        # Drain the console in a thread: if nobody reads it, QEMU blocks on the
        # serial write and stops answering QMP.
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self):
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            with self._cond:
                if not data:
                    self._eof = True
                else:
                    self._out += data
                self._cond.notify_all()
            if not data:
                return

    @property
    def out(self):
        with self._cond:
            return bytes(self._out)

    def elapsed(self):
        return time.monotonic() - self.t0

    def expect(self, pattern, timeout=60):
        """Wait for a regex (bytes) in the output after the last match."""
        pat = re.compile(pattern) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = pat.search(self._out, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise TimeoutError(f"no {pat.pattern!r} after {timeout}s"
                                       + (" (QEMU exited)" if self._eof else ""))
                self._cond.wait(left)

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_exit(self, timeout=30):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        with self._cond:  # let the reader collect the last output
            self._cond.wait_for(lambda: self._eof, 5)
        return self.proc.returncode

    def qmp(self, command):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        for _ in range(100):
            try:
                s.connect(self.qmp_path)
                break
            except OSError:
                time.sleep(0.05)
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        for cmd in ({"execute": "qmp_capabilities"}, {"execute": command}):
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    break
        s.close()
        return msg

    last_log = ""

    def close(self):
        Guest.last_log = self.log()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["rm", "-rf", self.tmp])

    def log(self):
        return self.out.decode(errors="replace")


def check_boot(gd, machine, runs):
    res = []
    for _ in range(runs):
        g = Guest(gd, machine, "vessel.poweroff")
        try:
            g.expect(READY, 120)
            t_ready = g.elapsed()
            rc = g.wait_exit(60)
            t_exit = g.elapsed()
            assert rc == 0, f"qemu exit code {rc}"
            mods = re.search(rb"VESSEL-MODULES [^\r\n]*", g.out).group().decode()
            res.append((t_ready, t_exit))
            print(f"  boot: READY {t_ready:.2f}s, exit {t_exit:.2f}s; {mods}")
        finally:
            g.close()
    return res


def check_powerdown(gd, machine):
    g = Guest(gd, machine, qmp=True)
    try:
        g.expect(READY, 120)
        time.sleep(0.5)
        t = time.monotonic()
        g.qmp("system_powerdown")
        rc = g.wait_exit(20)
        dt = time.monotonic() - t
        assert rc == 0, f"QEMU still running {dt:.1f}s after system_powerdown"
        assert b"reason=acpi-power-button" in g.out
        print(f"  powerdown: QEMU exited {dt:.2f}s after system_powerdown")
    finally:
        g.close()


def check_shell_reboot(gd, machine):
    g = Guest(gd, machine)
    try:
        id1 = g.expect(READY, 120).group(1)
        time.sleep(0.5)
        g.send("echo $((6*7))x\n")
        g.expect(rb"\n42x", 20)
        print("  shell: command typed on ttyS0 ran")
        t = time.monotonic()
        g.send("reboot -f\n")
        id2 = g.expect(READY, 120).group(1)
        dt = time.monotonic() - t
        assert id1 != id2
        print(f"  reboot -f: READY again after {dt:.2f}s, boot id {id1.decode()[:8]} -> {id2.decode()[:8]}")
        g.send("poweroff -f\n")
        assert g.wait_exit(30) == 0
    finally:
        g.close()


def check_noecho(gd, machine):
    g = Guest(gd, machine, "vessel.noecho")
    try:
        g.expect(READY, 120)
        time.sleep(0.5)
        g.send("echo $((6*7))x\n")
        g.expect(rb"\n42x\r?\n", 20)
        time.sleep(0.3)
        assert b"echo $((6*7))x" not in g.out and b"\x1b[6n" not in g.out, "input echoed"
        print("  noecho: command output only, no echo, no ESC[6n")
    finally:
        g.close()


def check_disk(gd, machine):
    g = None
    with tempfile.NamedTemporaryFile(suffix=".raw") as disk:
        disk.truncate(16 << 20)
        disk.flush()
        try:
            g = Guest(gd, machine, "vessel.poweroff", [
                "-drive", f"file={disk.name},if=none,id=d0,format=raw",
                "-device", f"virtio-blk-{'device' if machine == 'microvm' else 'pci'},drive=d0"])
            m = g.expect(rb"VESSEL-DISKS[^\r\n]*(?=\r?\n)", 120)
            assert b" vda:16384" in m.group(), m.group()
            print(f"  disk: {m.group().decode()}")
            g.wait_exit(30)
        finally:
            if g:
                g.close()


def check_net(gd, machine):
    g = Guest(gd, machine, "vessel.dhcp", [
        "-netdev", "user,id=n0",
        "-device", f"virtio-net-{'device' if machine == 'microvm' else 'pci'},netdev=n0"])
    try:
        m = g.expect(rb"VESSEL-NET[^\r\n]*(?=\r?\n)", 120)
        g.expect(READY, 60)
        assert b"10.0.2.15/24" in m.group(), m.group()
        time.sleep(0.5)
        g.send("ip -o link show eth0; ping -c1 -W2 10.0.2.2 >/dev/null && echo PING-OK\n")
        g.expect(rb"\d+: eth0:", 20)
        g.expect(rb"\nPING-OK", 20)
        print(f"  net: {m.group().decode()}; ip link shows eth0; ping 10.0.2.2 ok")
        g.send("poweroff -f\n")
        g.wait_exit(30)
    finally:
        g.close()


def check_panic(gd, machine):
    g = Guest(gd, machine, "vessel.panic panic=-1", ["-no-reboot"])
    try:
        g.expect(READY, 120)
        rc = g.wait_exit(30)
        assert rc == 0 and b"Kernel panic" in g.out, "no panic exit"
        print("  panic: kernel panic, QEMU exited (panic=-1 + -no-reboot)")
    finally:
        g.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--guest-dir", default=os.environ.get(
        "VESSEL_TEST_GUEST_DIR", os.path.expanduser("~/.cache/vessel/test-guest")))
    ap.add_argument("--machine", default="all", choices=["microvm", "q35", "all"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="boot,powerdown,reboot,noecho,disk,net,panic")
    a = ap.parse_args()
    only = a.only.split(",")
    failed = 0
    for machine in (["microvm", "q35"] if a.machine == "all" else [a.machine]):
        print(f"{machine}:")
        for name, fn in [("boot", lambda: check_boot(a.guest_dir, machine, a.runs)),
                         ("powerdown", lambda: check_powerdown(a.guest_dir, machine)),
                         ("reboot", lambda: check_shell_reboot(a.guest_dir, machine)),
                         ("noecho", lambda: check_noecho(a.guest_dir, machine)),
                         ("disk", lambda: check_disk(a.guest_dir, machine)),
                         ("net", lambda: check_net(a.guest_dir, machine)),
                         ("panic", lambda: check_panic(a.guest_dir, machine))]:
            if name not in only:
                continue
            try:
                fn()
            except Exception as e:  # report and go on with the next check
                failed += 1
                print(f"  {name}: FAILED: {e}")
                tail = Guest.last_log.splitlines()[-15:]
                print("    | " + "\n    | ".join(tail))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
