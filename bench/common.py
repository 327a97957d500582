"""Shared helpers of the newer benchmark scripts (density.py, metrics.py, all.py).

A release daemon on a temp data dir with its own config file (so /etc/vessel/vessel.toml is never
read), driven over its unix socket; figures summarized as median and spread.
"""
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

MIB = 1 << 20
READY = b"VESSEL-GUEST-READY"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def default_vessel():
    if os.environ.get("VESSEL_BIN"):
        return os.environ["VESSEL_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    return os.path.join(target, "release", "vessel")


def default_guest():
    return os.environ.get("VESSEL_TEST_GUEST_DIR", os.path.expanduser("~/.cache/vessel/test-guest"))


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=600):
        super().__init__("vessel", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def api(sock, method, path, body=None, timeout=600):
    conn = UnixHTTP(sock, timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {payload[:300]!r}")
    ctype = resp.getheader("Content-Type", "")
    if payload and "json" in ctype:
        return json.loads(payload)
    return payload


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_cpu_seconds(pid):
    """utime + stime of the whole process (every thread, live or gone), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0


class Daemon:
    """A release `vessel daemon` on its own data dir. `restart()` keeps the data dir, so running
    VMs are re-adopted (QEMU runs in its own session and survives the daemon)."""

    def __init__(self, vessel, work=None, sample_interval_secs=5, log_level="warn"):
        self.vessel = os.path.abspath(vessel)
        self.own_work = work is None
        self.work = work or tempfile.mkdtemp(prefix="vessel-bench-")
        self.sock = os.path.join(self.work, "vessel.sock")
        self.data = os.path.join(self.work, "data")
        self.config = os.path.join(self.work, "vessel.toml")
        self.log_level = log_level
        self.proc = None
        self.sample_interval_secs = sample_interval_secs
        self.start()

    def start(self):
        with open(self.config, "w") as f:
            f.write(f"sample_interval_secs = {self.sample_interval_secs}\n")
        self.log = open(os.path.join(self.work, "daemon.log"), "a")
        self.proc = subprocess.Popen(
            [self.vessel, "--socket", self.sock, "daemon", "--data-dir", self.data,
             "--config", self.config],
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "VESSEL_LOG": self.log_level})
        deadline = time.time() + 120
        while True:
            try:
                api(self.sock, "GET", "/v1/host", timeout=5)
                break
            except (FileNotFoundError, ConnectionRefusedError, RuntimeError, socket.timeout):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"daemon did not start; see {self.log.name}")
                time.sleep(0.01)

    def stop_daemon(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, sample_interval_secs):
        """SIGKILL the daemon and start it again on the same data dir (VMs keep running)."""
        self.stop_daemon()
        try:
            os.remove(self.sock)
        except FileNotFoundError:
            pass
        self.sample_interval_secs = sample_interval_secs
        self.start()

    @property
    def pid(self):
        return self.proc.pid

    def rss_kib(self):
        return proc_rss_kib(self.proc.pid)

    def cpu_seconds(self):
        return proc_cpu_seconds(self.proc.pid)

    def cli(self, *args, check=True):
        return subprocess.run([self.vessel, "--socket", self.sock, *args], check=check,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def qemu_pids(self):
        pids = []
        for path in glob.glob(os.path.join(self.data, "vms", "*", "qemu.pid")):
            try:
                with open(path) as f:
                    pids.append(int(f.read().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids

    def cleanup_vms(self):
        """Kill and delete every VM through the API; SIGKILL whatever QEMU is left."""
        if self.proc and self.proc.poll() is None:
            try:
                vms = api(self.sock, "GET", "/v1/vms", timeout=30)
                for vm in vms:
                    try:
                        api(self.sock, "DELETE", f"/v1/vms/{vm['name']}?force=true", timeout=60)
                    except Exception:
                        pass
            except Exception:
                pass
        for pid in self.qemu_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"qemu" not in f.read():
                        continue
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass

    def close(self):
        try:
            self.cleanup_vms()
        finally:
            self.stop_daemon()
            if self.own_work:
                shutil.rmtree(self.work, ignore_errors=True)


def test_guest_vm(name, guest, memory_mib=64, cmdline="quiet", **extra):
    return {"name": name, "cpus": 1, "memory_mib": memory_mib,
            "kernel": f"{guest}/vmlinuz", "initrd": f"{guest}/initramfs.img",
            "cmdline": cmdline, **extra}


def summary(xs, digits=3):
    """median, p90, min, max, n of a list of numbers (any unit)."""
    if not xs:
        return None
    s = sorted(xs)
    r = lambda v: round(v, digits)
    return {"median": r(statistics.median(s)), "p90": r(s[min(len(s) - 1, int(len(s) * 0.9))]),
            "min": r(s[0]), "max": r(s[-1]), "n": len(s)}


def raise_on_sigterm():
    """Turn SIGTERM into KeyboardInterrupt so that `finally` cleanups run."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
