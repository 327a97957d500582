#!/usr/bin/env bash
# Makes the data-dir upgrade fixture: a small but representative data dir written by a given
# (previous) `vessel` binary, packed for crates/vessel/tests/upgrade.rs, which starts the current
# binary on it and checks that nothing was lost.
#
#   scripts/make-datadir-fixture.sh /work/old-bin/vessel-a8fffc5            # datadir-v1 (today's)
#   scripts/make-datadir-fixture.sh ./old/vessel v2                          # a later generation
#
# Run as root (it makes a network namespace). QEMU and qemu-img must be installed.
#
# The store keeps absolute paths (pools, volume files), so the fixture is made under one fixed
# path, FIXTURE_ROOT=/var/tmp/vessel-fixture-<version>, and the test extracts it to that very path
# again. Everything of the fixture lives below it:
#   data/               the data dir (the default pool is data/pools/default)
#   pool2/              the second directory pool
#   fxuser.token        the secret of fxuser's token (a test fixture: it signs in over TLS)
# The daemon runs inside a network namespace of its own, so the bridge of the managed network
# (vb-fxlan) and its rules never reach the machine's own namespace; its TLS listener is
# 127.0.0.1:8443 inside that namespace. What the fixture holds is listed in
# crates/vessel/tests/fixtures/datadir-<version>.md (keep both in step).
set -euo pipefail

BIN=${1:?usage: make-datadir-fixture.sh VESSEL_BINARY [VERSION (default v1)]}
VERSION=${2:-v1}
BIN=$(realpath "$BIN")
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT="$REPO/crates/vessel/tests/fixtures/datadir-$VERSION.tar.gz"
ROOT=/var/tmp/vessel-fixture-$VERSION
DATA=$ROOT/data
NS=vessel-fixture-make-$$
WORK=$(mktemp -d /tmp/vessel-fixture-make.XXXXXX)
SOCK=$WORK/vessel.sock
DAEMON_PID=

cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -9 "$DAEMON_PID" 2>/dev/null || true
    fi
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

v() { "$BIN" --socket "$SOCK" "$@"; }

[[ $(id -u) == 0 ]] || { echo "run as root (the daemon runs in a network namespace)" >&2; exit 2; }
rm -rf "$ROOT"
mkdir -p "$ROOT/pool2"

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up

echo "starting $BIN daemon on $DATA (netns $NS)"
# `ip netns exec` execs the daemon: $! is the daemon's pid.
ip netns exec "$NS" env VESSEL_LOG=info "$BIN" daemon --data-dir "$DATA" --socket "$SOCK" \
    --accelerator tcg --listen 127.0.0.1:8443 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 300); do
    [[ -S $SOCK ]] && v host check >/dev/null 2>&1 && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }
    sleep 0.1
done

# Access: a project with a quota, a user with a role in it and a token of that user.
v project create fxproj --vms 4 --vcpus 4 --memory 1G --disk 256M --networks 2
v user create fxuser --grant fxproj=operator
v token create --user fxuser --description "upgrade fixture" >"$ROOT/fxuser.token"
chmod 600 "$ROOT/fxuser.token"

# Storage: a second directory pool, an image, volumes of every sort.
v pool create fxpool2 --path "$ROOT/pool2"
# A 1 MiB raw disk whose boot sector prints VESSEL-DISK-BOOT on the first serial port and halts
# (the same as boot_sector() in crates/vessel/tests/common): the VMs boot from it through SeaBIOS.
printf '\xfa\x31\xc0\x8e\xd8\xbe\x16\x7c\xba\xf8\x03\xac\x84\xc0\x74\x03\xee\xeb\xf8\xf4\xeb\xfd' \
    >"$WORK/boot.raw"
printf 'VESSEL-DISK-BOOT\r\n\0' >>"$WORK/boot.raw"
truncate -s 510 "$WORK/boot.raw"
printf '\x55\xaa' >>"$WORK/boot.raw"
truncate -s 1M "$WORK/boot.raw"
v image import fxboot "$WORK/boot.raw" --project fxproj
v volume create fxdata --size 8M --project fxproj
v volume create fxraw --size 4M --format raw --pool fxpool2
v volume create fxbase --size 2M --pool fxpool2
v volume create fxlinked --backing fxbase --pool fxpool2
# LUKS creation fails now and then on hosts with SHA-NI (host-facts.md): try again.
for try in 1 2 3 4 5; do
    v volume create fxsecret --size 4M --encrypted && break
    [[ $try == 5 ]] && exit 1
done

# Network: a managed bridge (no uplink: nothing leaves the namespace) in the project.
v network create fxlan --kind managed --subnet 10.231.7.0/24 --project fxproj

# VMs: fxvm boots from a linked clone of the image, has a data volume and a NIC with a fixed
# address and MAC; started once (status, restart and event records) and killed, then an offline
# snapshot. fxvm2 is only created, its NIC with the next free address.
v vm create fxvm --project fxproj --image fxboot --memory 64M --cpus 1 --restart-policy on-failure
v volume attach fxdata fxvm
v vm nic add fxvm fxlan --ip 10.231.7.50 --mac 52:54:00:fe:07:50
v vm start fxvm
v vm kill fxvm
v vm snapshot create fxvm fxsnap1
v vm create fxvm2 --project fxproj --image fxboot --memory 64M --network fxlan

v audit verify
echo "stopping the daemon (SIGTERM: last audit checkpoint, WAL checkpointed)"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || true
DAEMON_PID=
"$BIN" audit verify --data-dir "$DATA" --public-key "$DATA/audit.pub"
if [[ -e $DATA/vessel.db-wal && -s $DATA/vessel.db-wal ]]; then
    echo "the daemon left a non-empty WAL: $(ls -l "$DATA"/vessel.db-wal)" >&2
    exit 1
fi

# Run-time leftovers that a started daemon makes again are not part of the fixture.
mkdir -p "$(dirname "$OUT")"
tar -C / --sparse --numeric-owner -czf "$OUT" \
    --exclude='*.sock' --exclude='*/qmp' --exclude='*.pid' \
    "${ROOT#/}"
echo "wrote $OUT ($(stat -c %s "$OUT") bytes) from $ROOT"
tar -tvzf "$OUT"
