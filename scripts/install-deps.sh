#!/usr/bin/env bash
# Installs what Vessel needs on a Debian/Ubuntu host: QEMU (system emulator + qemu-img), the
# tools the test-guest build uses, nftables + iproute2 (ip, tc) for networks, and protoc with
# protobuf's well-known types (the etcd client's gRPC code is generated at build time).
# Idempotent; safe to run again.
#
#   scripts/install-deps.sh          what the daemon and the demo need
#   scripts/install-deps.sh --test   also what the tests use: promtool (package prometheus, which
#                                    on a systemd host also starts a Prometheus server), isoinfo
#                                    (genisoimage) and etcd (etcd-server; the tests start their
#                                    own etcd on loopback ports, a packaged service is not used)
set -euo pipefail
for_tests=
[ "${1:-}" = "--test" ] && for_tests=1

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
	log "run as root (apt-get needs it)"
	exit 1
fi

# qemu-io (package qemu-utils, with qemu-img) is used by the tests to write into images.
have_qemu() {
	command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v qemu-img >/dev/null 2>&1 &&
		command -v qemu-io >/dev/null 2>&1 &&
		command -v depmod >/dev/null 2>&1 && command -v cpio >/dev/null 2>&1
}

# Managed, bridge and VXLAN networks: nft for the firewall, ip and tc (iproute2).
have_net_tools() {
	command -v nft >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1
}
net_packages=(nftables iproute2)

# crates/vessel-store-etcd builds etcd's gRPC API with protoc, which needs the well-known
# .proto files (google/protobuf/*.proto) of libprotobuf-dev too.
have_build_tools() {
	command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/timestamp.proto ]
}
build_packages=(protobuf-compiler libprotobuf-dev)

# promtool (Debian package `prometheus`) validates the /metrics output in the tests; isoinfo
# (genisoimage) reads back the cloud-init seed images.
have_test_tools() {
	command -v promtool >/dev/null 2>&1 && command -v isoinfo >/dev/null 2>&1 &&
		command -v etcd >/dev/null 2>&1
}
test_packages=()
[ -n "$for_tests" ] && test_packages=(prometheus genisoimage etcd-server)

if have_qemu; then
	log "QEMU present: $(qemu-system-x86_64 --version | head -n1)"
	missing=()
	have_net_tools || missing+=("${net_packages[@]}")
	have_build_tools || missing+=("${build_packages[@]}")
	if [ -n "$for_tests" ] && ! have_test_tools; then
		missing+=("${test_packages[@]}")
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
	exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq
# qemu-system-x86 and qemu-utils must come from the same QEMU release: some images ship a newer
# qemu-utils (backports), and installing qemu-system-x86 alone would remove it, taking qemu-img
# with it. Pin qemu-utils to the emulator's version.
version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
	log "no qemu-system-x86 package available from apt"
	exit 1
fi
log "installing qemu-system-x86 and qemu-utils $version"
apt-get install -y -qq --no-install-recommends --allow-downgrades \
	"qemu-system-x86=$version" "qemu-utils=$version" kmod cpio ca-certificates \
	"${net_packages[@]}" "${build_packages[@]}" "${test_packages[@]}" >/dev/null
have_qemu || { log "QEMU still missing after install"; exit 1; }
have_build_tools || { log "protoc or protobuf's .proto files still missing after install"; exit 1; }
if [ -n "$for_tests" ] && ! have_test_tools; then
	log "promtool, isoinfo or etcd still missing after install"
	exit 1
fi
log "installed: $(qemu-system-x86_64 --version | head -n1)"
