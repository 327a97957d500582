#!/usr/bin/env bash
# The test command: installs QEMU if missing, builds the test guest (cached), runs every test.
# Tests boot real guests under QEMU; nothing of QEMU, the store or the network is mocked.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
	echo "error: cargo not found. Vessel needs Rust 1.85 or newer: install it with rustup (https://rustup.rs), then run this again." >&2
	exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
	scripts/install-deps.sh --test
fi
bash scripts/build-test-guest.sh >/dev/null
# --no-fail-fast: one failing test binary does not hide the results of the others.
cargo test --workspace --locked --no-fail-fast "$@"
