#!/usr/bin/env bash
# Quick start: install QEMU, build Vessel, start the daemon on the embedded store, create and boot
# a demo VM from the test guest, and show its console.
#
#   sudo scripts/demo.sh            # data in ./.vessel-demo, socket ./.vessel-demo/vessel.sock
#
# The daemon keeps running afterwards; the script prints how to talk to it and how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
	echo "error: cargo not found. Vessel needs Rust 1.85 or newer: install it with rustup (https://rustup.rs), then run this again." >&2
	exit 1
fi
root=$(pwd)
demo="$root/.vessel-demo"
export VESSEL_SOCKET="$demo/vessel.sock"

step() { printf '\n==> %s\n' "$*"; }

step "Installing QEMU (apt) if missing"
scripts/install-deps.sh

step "Building vessel (release)"
cargo build --release --locked -p vessel
# Where cargo put it: $CARGO_TARGET_DIR when set, else target/ of the repository.
vessel="${CARGO_TARGET_DIR:-$root/target}/release/vessel"

step "Building the demo guest (Debian cloud kernel + busybox initramfs, cached)"
guest_dir="${VESSEL_TEST_GUEST_DIR:-$HOME/.cache/vessel/test-guest}"
bash scripts/build-test-guest.sh "$guest_dir" >/dev/null

mkdir -p "$demo"
if ! "$vessel" host info >/dev/null 2>&1; then
	step "Starting the daemon (data dir $demo/data, log $demo/daemon.log)"
	nohup "$vessel" daemon --data-dir "$demo/data" >"$demo/daemon.log" 2>&1 &
	for _ in $(seq 1 100); do
		[ -S "$VESSEL_SOCKET" ] && "$vessel" host info >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
"$vessel" host info

step "Host check"
"$vessel" host check || true

step "Creating and starting the VM 'demo'"
if "$vessel" vm show demo >/dev/null 2>&1; then
	"$vessel" vm delete demo --force
fi
"$vessel" vm create demo --cpus 1 --memory 256M \
	--kernel "$guest_dir/vmlinuz" --initrd "$guest_dir/initramfs.img" \
	--cmdline "quiet vessel.hostname=demo" --nic user --start
"$vessel" vm list

step "The demo VM's console (until it reaches userspace)"
timeout 120 "$vessel" vm log demo --follow | sed -u '/VESSEL-GUEST-READY/q'

step "A command typed on the demo VM's serial console"
printf 'uname -a; echo "hello from $(hostname)"\n' | "$vessel" vm console demo

cat <<MSG

The VM is running. Try:
  export VESSEL_SOCKET=$VESSEL_SOCKET
  $vessel vm console demo      # interactive shell on its serial console; Ctrl-] detaches
  $vessel vm stop demo         # ACPI power-off
  $vessel vm list --output json
Stop the daemon with: kill \$(cat $demo/data/vessel.lock)   (VMs keep running; a new daemon re-adopts them)
MSG
