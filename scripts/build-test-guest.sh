#!/usr/bin/env bash
# Build the Vessel test guest: the Debian cloud kernel plus a busybox
# initramfs whose /init (scripts/guest/init) loads the virtio/ACPI modules,
# prints console markers and offers a shell on ttyS0. See scripts/guest/README.md.
#
# Usage: scripts/build-test-guest.sh [OUT_DIR]
#   OUT_DIR defaults to ${VESSEL_TEST_GUEST_DIR:-$HOME/.cache/vessel/test-guest}.
#
# Output (OUT_DIR):
#   vmlinuz         the kernel (bzImage)
#   initramfs.img   gzip-compressed newc cpio
#   kernel-version  e.g. 6.1.0-56-cloud-amd64
#   manifest        the build inputs (package versions, script/guest file hashes)
# The manifest is written last, by rename; a build is taken as complete (and the
# script exits at once) only if the manifest equals the one computed for the
# current inputs and the other files exist. Progress goes to stderr; the last
# line on stdout is OUT_DIR.
#
# Needs: apt-get/apt-cache/dpkg (Debian or Ubuntu), depmod (kmod), cpio, gzip.
# Root is not needed, except that a missing apt package list is fixed with
# `apt-get update`, which only root can run.
#
# Kernel cmdline used with this guest: "console=ttyS0 quiet" plus vessel.*
# options (see scripts/guest/init) plus the following, as measured with QEMU 7.2
# under TCG (-accel tcg), -nodefaults, -serial stdio:
#   - microvm needs tsc_early_khz=<host TSC kHz> (e.g. from "cpu MHz" in the
#     host's /proc/cpuinfo; TCG's guest TSC runs at the host TSC rate). Without
#     it the kernel often hangs for good right after "tsc: Marking TSC unstable
#     due to could not calculate TSC khz": on a busy host the PIT calibration
#     fails and microvm has no HPET or ACPI PM timer to fall back on. q35 has
#     both and boots either way; the option is harmless there.
#   - Power off (`poweroff -f`, vessel.poweroff, and the ACPI power button that
#     QMP system_powerdown presses) makes QEMU exit on q35 and on microvm with
#     its default ACPI (acpi=auto = on). `-M microvm,acpi=off` loses both: no
#     power button, and poweroff only halts (QEMU keeps running).
#   - Reboot (`reboot -f`) needs no reboot= option on either machine: the guest
#     comes back to READY with a new boot id (reboot=t, triple fault, works too).
#     With -no-reboot, QEMU exits instead.
#   - vessel.panic: add panic=-1 to reboot at once after the panic (QEMU exits
#     with -no-reboot); without it the guest just hangs after the oops.

set -euo pipefail

script_path=$(readlink -f "${BASH_SOURCE[0]}")
script_dir=$(dirname "$script_path")
guest_dir="$script_dir/guest"
out_dir=${1:-${VESSEL_TEST_GUEST_DIR:-$HOME/.cache/vessel/test-guest}}

# Files from scripts/guest that go into the image (and into the manifest hash).
guest_files=(init acpi-power-button udhcpc.script)

# Modules loaded by /init (with their dependencies), in this order. Missing or
# built-in ones are tolerated (reported at build time, skipped at boot).
modules=(
	virtio virtio_ring virtio_mmio
	virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	virtio_blk
	scsi_common scsi_mod sd_mod virtio_scsi
	failover net_failover virtio_net
	virtio_console virtio_balloon virtio_rng
	vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
	button evdev
	pvpanic pvpanic_mmio pvpanic_pci
)

log() { echo "build-test-guest: $*" >&2; }
die() { echo "build-test-guest: error: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg depmod cpio gzip sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (needs a Debian/Ubuntu host with kmod and cpio installed)"
done
for f in "${guest_files[@]}"; do
	[ -f "$guest_dir/$f" ] || die "missing $guest_dir/$f"
done

# ---- apt ---------------------------------------------------------------------
apt_updated=
apt_update_once() {
	[ -z "$apt_updated" ] || return 1
	apt_updated=1
	if [ "$(id -u)" -ne 0 ]; then
		log "apt package lists look missing or stale, and only root can run 'apt-get update'"
		return 1
	fi
	log "running apt-get update (package lists missing or stale)"
	apt-get update -qq >&2 || { log "apt-get update failed"; return 1; }
}

# Sets kpkg, kver, kpkg_version, bb_version from the local package lists (one
# apt-cache call: each one costs about a second here).
resolve_inputs() {
	local info
	info=$(apt-cache show --no-all-versions linux-image-cloud-amd64 busybox-static 2>/dev/null) || true
	read -r kpkg kpkg_version bb_version < <(printf '%s\n' "$info" | awk '
		/^Package:/ { pkg = $2 }
		pkg == "linux-image-cloud-amd64" && /^Depends:/ {
			if (match($0, /linux-image-[0-9][^ ,]*-cloud-amd64 \(= [^)]*\)/)) {
				split(substr($0, RSTART, RLENGTH), f, /[ ()=]+/); k = f[1]; kv = f[2]
			}
		}
		pkg == "busybox-static" && /^Version:/ { bv = $2 }
		END { print k, kv, bv }') || true
	[ -n "${kpkg:-}" ] && [ -n "${kpkg_version:-}" ] && [ -n "${bb_version:-}" ] || return 1
	kver=${kpkg#linux-image-}
}

if ! resolve_inputs; then
	apt_update_once && resolve_inputs ||
		die "cannot resolve linux-image-cloud-amd64 / busybox-static from the apt package lists (run 'apt-get update' as root, and check that the Debian main archive is in sources.list)"
fi

guest_hash=$(cd "$guest_dir" && sha256sum "${guest_files[@]}" | sha256sum | awk '{print $1}')
script_hash=$(sha256sum "$script_path" | awk '{print $1}')
manifest="format 1
kernel-package $kpkg $kpkg_version
busybox-package busybox-static $bb_version
kernel-version $kver
modules ${modules[*]}
script-sha256 $script_hash
guest-sha256 $guest_hash"

is_fresh() {
	[ -s "$out_dir/vmlinuz" ] && [ -s "$out_dir/initramfs.img" ] && [ -s "$out_dir/kernel-version" ] &&
		[ -f "$out_dir/manifest" ] && [ "$(cat "$out_dir/manifest")" = "$manifest" ]
}

if is_fresh; then
	log "up to date: $out_dir ($kver)"
	echo "$out_dir"
	exit 0
fi

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
# Serialize concurrent builds of the same OUT_DIR, then check again.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$out_dir/.lock"
	flock 9
	if is_fresh; then
		log "up to date: $out_dir ($kver)"
		echo "$out_dir"
		exit 0
	fi
	rm -rf "$out_dir"/.stage.* # left by a build that was killed
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vessel-test-guest.XXXXXX")
stage=
cleanup() { rm -rf "$work"; [ -z "$stage" ] || rm -rf "$stage"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. download and unpack ---------------------------------------------------
apt_opts=(-q)
# As root, apt drops privileges to _apt, which cannot write into our 0700 work dir.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
download() {
	(cd "$work" && apt-get "${apt_opts[@]}" download "$kpkg=$kpkg_version" "busybox-static=$bb_version") >&2
}
log "downloading $kpkg=$kpkg_version busybox-static=$bb_version"
if ! download; then
	apt_update_once && resolve_inputs && download ||
		die "apt-get download of $kpkg and busybox-static failed (package lists missing or mirror unreachable? try 'apt-get update' as root)"
	# Inputs may have changed with the new lists: recompute the manifest.
	manifest=$(printf '%s\n' "$manifest" | sed -e "s/^kernel-package .*/kernel-package $kpkg $kpkg_version/" \
		-e "s/^busybox-package .*/busybox-package busybox-static $bb_version/" -e "s/^kernel-version .*/kernel-version $kver/")
fi
kroot=$work/kernel
bbroot=$work/busybox
dpkg -x "$work/${kpkg}_"*.deb "$kroot"
dpkg -x "$work"/busybox-static_*.deb "$bbroot"
vmlinuz=$kroot/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no boot/vmlinuz-$kver in $kpkg"
[ -d "$kroot/lib/modules/$kver" ] || die "no lib/modules/$kver in $kpkg"
[ -x "$bbroot/bin/busybox" ] || die "no bin/busybox in busybox-static"

# ---- 2. module closure in load order ------------------------------------------
log "depmod $kver"
depmod -b "$kroot" "$kver"
kmod_dir=$kroot/lib/modules/$kver

declare -A mod_path=() mod_deps=() visited=()
while IFS= read -r line; do
	path=${line%%:*}
	deps=${line#*:}
	name=${path##*/}
	name=${name%.ko*}
	name=${name//-/_}
	mod_path[$name]=$path
	mod_deps[$name]=$deps
done <"$kmod_dir/modules.dep"

builtin_names=" "
if [ -f "$kmod_dir/modules.builtin" ]; then
	while IFS= read -r path; do
		name=${path##*/}
		name=${name%.ko*}
		builtin_names+="${name//-/_} "
	done <"$kmod_dir/modules.builtin"
fi

order=()
visit() {
	local name=$1 dep dname
	[ -z "${visited[$name]:-}" ] || return 0
	visited[$name]=1
	for dep in ${mod_deps[$name]}; do
		dname=${dep##*/}
		dname=${dname%.ko*}
		visit "${dname//-/_}"
	done
	order+=("$name")
}
for name in "${modules[@]}"; do
	if [ -n "${mod_path[$name]:-}" ]; then
		visit "$name"
	elif [[ $builtin_names == *" $name "* ]]; then
		log "module $name is built into $kver"
	else
		log "warning: module $name not found in $kver, skipped"
	fi
done

# ---- 3. initramfs tree ----------------------------------------------------------
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/acpi/PWRF,etc/vessel,proc,sys,dev,run,tmp,root,var/log,var/run,lib/modules/"$kver"}
cp "$bbroot/bin/busybox" "$root/bin/busybox"
while IFS= read -r applet; do
	[ "$applet" = bin/busybox ] || [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done < <("$bbroot/bin/busybox" --list-full)
[ -L "$root/bin/sh" ] || ln -s /bin/busybox "$root/bin/sh"

install -m 0755 "$guest_dir/init" "$root/init"
install -m 0755 "$guest_dir/acpi-power-button" "$root/etc/acpi/PWRF/00000080"
install -m 0755 "$guest_dir/udhcpc.script" "$root/etc/udhcpc.script"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'vessel-guest\n' >"$root/etc/hostname"

: >"$root/etc/vessel/modules"
for name in "${order[@]}"; do
	path=${mod_path[$name]}
	mkdir -p "$root/lib/modules/$kver/$(dirname "$path")"
	cp "$kmod_dir/$path" "$root/lib/modules/$kver/$path"
	printf '%s %s\n' "$name" "$path" >>"$root/etc/vessel/modules"
done
for f in modules.order modules.builtin modules.builtin.modinfo; do
	[ ! -f "$kmod_dir/$f" ] || cp "$kmod_dir/$f" "$root/lib/modules/$kver/"
done
# modules.dep & co. for busybox modprobe/modinfo in the guest shell.
depmod -b "$root" "$kver"
log "modules (load order): ${order[*]}"

# ---- 4. pack into a staging dir inside OUT_DIR, then rename into place ----------------
stage=$(mktemp -d "$out_dir/.stage.XXXXXX")
# Fixed timestamps, owners and inode numbers: same inputs, same image.
find "$root" -exec touch -h -d @0 {} +
cpio_opts=(-o -H newc -R 0:0 --quiet)
! cpio --help 2>/dev/null | grep -q -- --reproducible || cpio_opts+=(--reproducible)
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio "${cpio_opts[@]}") |
	gzip -9 -n >"$stage/initramfs.img"
cp "$vmlinuz" "$stage/vmlinuz"
printf '%s\n' "$kver" >"$stage/kernel-version"
printf '%s\n' "$manifest" >"$stage/manifest"

rm -f "$out_dir/manifest"
mv -f "$stage/vmlinuz" "$out_dir/vmlinuz"
mv -f "$stage/initramfs.img" "$out_dir/initramfs.img"
mv -f "$stage/kernel-version" "$out_dir/kernel-version"
mv -f "$stage/manifest" "$out_dir/manifest"
log "built $out_dir ($kver; vmlinuz $(stat -c %s "$out_dir/vmlinuz") bytes, initramfs.img $(stat -c %s "$out_dir/initramfs.img") bytes)"
echo "$out_dir"
