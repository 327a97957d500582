#!/usr/bin/env bash
# The test command: installs QEMU if missing, builds the test guest (cached), runs every test.
# Tests boot real guests under QEMU; nothing of QEMU, the store or the network is mocked.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then
	scripts/install-deps.sh
fi
bash scripts/build-test-guest.sh >/dev/null
cargo test --workspace --locked "$@"
