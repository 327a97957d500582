#!/usr/bin/env bash
# Build (and cache) a small real Debian 12 cloud image for Vessel's tests:
# debootstrap minbase + linux-image-cloud-amd64 + cloud-init (NoCloud), as a
# partitioned qcow2 that boots from its own disk (GRUB, BIOS/SeaBIOS) and, for
# direct kernel boot, the kernel and initrd exported next to it.
# See scripts/cloud-image/README.md.
#
# Usage: scripts/build-cloud-image.sh [OUT_DIR]
#   OUT_DIR defaults to ${VESSEL_CLOUD_IMAGE_DIR:-$HOME/.cache/vessel/cloud-image}.
#
# Environment (all part of the cache key):
#   VESSEL_CLOUD_IMAGE_MIRROR  default http://deb.debian.org/debian
#   VESSEL_CLOUD_IMAGE_SUITE   default bookworm
#   VESSEL_CLOUD_IMAGE_SIZE    virtual disk size, default 1G
#
# Output (OUT_DIR):
#   debian-cloud.qcow2  partitioned disk: MBR, GRUB core in the MBR gap,
#                       partition 1 = ext4 labelled vessel-root (the root fs)
#   vmlinuz, initrd.img the image's kernel and initrd (for direct kernel boot)
#   cmdline             the kernel cmdline GRUB uses (also for direct boot)
#   packages            dpkg -l of the image (name version)
#   manifest            the build inputs; written last
# Every file is built in a temporary directory inside OUT_DIR and renamed into
# place; the manifest is removed before and renamed into place after them. A
# build is taken as complete (and the script exits at once) only if the
# manifest equals the one computed for the current inputs and every output
# exists. A lock (flock on OUT_DIR/.lock) serialises concurrent runs.
# Progress goes to stderr; the last line on stdout is OUT_DIR.
#
# Needs root (debootstrap, chroot, mount of /proc in the chroot) and a Debian
# or Ubuntu host; missing tools (debootstrap, grub-pc-bin, e2fsprogs,
# qemu-utils, fdisk) are installed with apt-get. No loop devices and no
# mounts of the image are used: the ext4 file system is made with
# `mkfs.ext4 -d ROOTDIR`, the partition table with sfdisk on a plain file,
# and GRUB is installed by writing boot.img/core.img with dd.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT_DIR=${1:-${VESSEL_CLOUD_IMAGE_DIR:-$HOME/.cache/vessel/cloud-image}}
MIRROR=${VESSEL_CLOUD_IMAGE_MIRROR:-http://deb.debian.org/debian}
SUITE=${VESSEL_CLOUD_IMAGE_SUITE:-bookworm}
DISK_SIZE=${VESSEL_CLOUD_IMAGE_SIZE:-1G}
LABEL=vessel-root
CMDLINE="root=LABEL=$LABEL ro console=ttyS0,115200n8 net.ifnames=0"

# Installed by debootstrap (minbase) in the first pass.
BASE_PACKAGES=(systemd-sysv udev kmod e2fsprogs iproute2 netbase ifupdown
  isc-dhcp-client ca-certificates)
# Installed with apt in the chroot once dpkg excludes and the initramfs
# configuration are in place (so no docs are ever unpacked and the initrd
# is built only once).
IMAGE_PACKAGES=(linux-image-cloud-amd64 cloud-init cloud-guest-utils fdisk qemu-guest-agent)
HOST_PACKAGES=(debootstrap grub-pc-bin e2fsprogs fdisk)

log() { printf '[build-cloud-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"

# --- host tools -----------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ -f /usr/lib/grub/i386-pc/boot.img ] && command -v grub-mkimage >/dev/null || missing+=(grub-pc-bin)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v sfdisk >/dev/null || missing+=(fdisk)
if ! command -v qemu-img >/dev/null; then
  # Never install qemu-utils alone next to a qemu-system-x86 of another
  # version (see host-facts.md): ask for the matching pair.
  if dpkg -s qemu-system-x86 >/dev/null 2>&1; then missing+=(qemu-utils qemu-system-x86); else missing+=(qemu-utils); fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi

# --- cache check (under the lock) ------------------------------------------
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec 9>"$OUT_DIR/.lock"
if ! flock -n 9; then
  log "another build holds $OUT_DIR/.lock; waiting"
  flock 9
fi

OUTPUTS=(debian-cloud.qcow2 vmlinuz initrd.img cmdline packages)
manifest_now() {
  printf 'format 1\n'
  printf 'suite %s\nmirror %s\ndisk-size %s\nlabel %s\ncmdline %s\n' \
    "$SUITE" "$MIRROR" "$DISK_SIZE" "$LABEL" "$CMDLINE"
  printf 'base-packages %s\nimage-packages %s\n' "${BASE_PACKAGES[*]}" "${IMAGE_PACKAGES[*]}"
  printf 'script %s\n' "$(sha256sum < "$SCRIPT_DIR/build-cloud-image.sh" | cut -d' ' -f1)"
  printf 'grub %s\n' "$(dpkg-query -W -f='${Version}' grub-pc-bin 2>/dev/null || echo unknown)"
}
WANT=$(manifest_now)
fresh=1
[ -f "$OUT_DIR/manifest" ] && [ "$(cat "$OUT_DIR/manifest")" = "$WANT" ] || fresh=0
for f in "${OUTPUTS[@]}"; do [ -s "$OUT_DIR/$f" ] || fresh=0; done
if [ $fresh = 1 ]; then
  log "cached image is up to date: $OUT_DIR"
  echo "$OUT_DIR"
  exit 0
fi

START=$(date +%s)
rm -f "$OUT_DIR/manifest"
# Leftovers of an interrupted run (never through a mount point).
for d in "$OUT_DIR"/.build.*; do
  [ -d "$d" ] || continue
  for m in proc sys; do mountpoint -q "$d/root/$m" && umount -l "$d/root/$m"; done
  rm -rf --one-file-system "$d"
done
WORK=$(mktemp -d "$OUT_DIR/.build.XXXXXX")
ROOT=$WORK/root
cleanup() {
  local rc=$?
  for m in proc sys; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
  rm -rf --one-file-system "$WORK"
  [ $rc = 0 ] || log "build failed (exit $rc)"
}
trap cleanup EXIT

# --- 1. debootstrap ---------------------------------------------------------
log "debootstrap $SUITE (minbase) from $MIRROR"
inc=$(IFS=,; echo "${BASE_PACKAGES[*]}")
debootstrap --variant=minbase --include="$inc" "$SUITE" "$ROOT" "$MIRROR" >&2 ||
  { cat "$ROOT/debootstrap/debootstrap.log" >&2 2>/dev/null || true; die "debootstrap failed"; }

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
in_root() { LC_ALL=C DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"; }

# Keep it small: never unpack docs, man pages, locales (applies to any
# later apt-get install inside the guest too).
cat > "$ROOT/etc/dpkg/dpkg.cfg.d/01-vessel-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
cat > "$ROOT/etc/apt/apt.conf.d/90-vessel" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://security.debian.org/debian-security $SUITE-security main
EOF
# The initrd only needs what finds the root fs on a virtual disk (ext4 is
# built into the cloud kernel). A small initrd loads fast under TCG.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
# FSTYPE: the root (LABEL=...) does not exist at build time, so the fsck
# hook could not detect its type and would leave fsck out of the initrd.
printf 'MODULES=list\nFSTYPE=ext4\n' > "$ROOT/etc/initramfs-tools/conf.d/vessel"
cat >> "$ROOT/etc/initramfs-tools/modules" <<'EOF'
virtio_pci
virtio_blk
virtio_scsi
sd_mod
nvme
ahci
ata_piix
EOF
# Root by label; written before the kernel is installed so that the
# initrd's fsck hook sees it (the initrd then checks the root fs).
printf 'LABEL=%s / ext4 defaults,errors=remount-ro 0 1\n' "$LABEL" > "$ROOT/etc/fstab"
# Symlinks /vmlinuz and /initrd.img (GRUB's config boots through them, so
# a kernel upgrade inside the guest keeps booting).
printf 'do_symlinks = yes\nlink_in_boot = no\n' > "$ROOT/etc/kernel-img.conf"
# No daemons start inside the chroot.
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

log "apt-get install ${IMAGE_PACKAGES[*]}"
# The base suite only; the image is not upgraded from -updates/-security at
# build time (reproducible from the suite's current state).
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOT/etc/apt/sources.list.d/build.list"
mv "$ROOT/etc/apt/sources.list" "$WORK/sources.list"
in_root apt-get update >&2
in_root apt-get install -y "${IMAGE_PACKAGES[@]}" >&2
mv "$WORK/sources.list" "$ROOT/etc/apt/sources.list"
rm -f "$ROOT/etc/apt/sources.list.d/build.list"

# --- 2. make it a cloud VM -----------------------------------------------
log "configuring"
in_root passwd -l root >&2
# cloud-init sets the hostname; no host-derived leftovers in the image.
rm -f "$ROOT/etc/hostname" "$ROOT/etc/resolv.conf" "$ROOT/var/lib/dbus/machine-id"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n' > "$ROOT/etc/hosts"
# Empty machine-id: systemd makes a fresh one at first boot (per VM).
: > "$ROOT/etc/machine-id"
# A loopback stanza; cloud-init writes the NIC config (ifupdown/ENI renderer).
cat > "$ROOT/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
# Serial console getty (tests and operators read/log in on ttyS0).
mkdir -p "$ROOT/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/serial-getty@.service \
  "$ROOT/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# cloud-init: only NoCloud (a cidata seed disk); its output to ttyS0.
cat > "$ROOT/etc/cloud/cloud.cfg.d/90-vessel.cfg" <<'EOF'
# Vessel test image (scripts/build-cloud-image.sh)
datasource_list: [NoCloud, None]
# What cloud-init prints goes to its log and to stdout; its systemd units
# send stdout to journal+console, i.e. to ttyS0 with console=ttyS0.
output: {all: '| tee -a /var/log/cloud-init-output.log'}
# No locales package in the image (a string: the schema wants one).
locale: "false"
# No grub-pc package in the image.
grub_dpkg: {enabled: false}
# No openssh-server in the image: Debian's module list without "ssh" (host
# key generation would fail, and an empty ssh_genkeytypes is invalid).
cloud_init_modules: [migrator, seed_random, bootcmd, write-files, growpart,
  resizefs, disk_setup, mounts, set_hostname, update_hostname,
  update_etc_hosts, ca-certs, rsyslog, users-groups]
EOF
# Fewer units to start under TCG: timers and jobs a short-lived test VM
# never needs.
for u in apt-daily.timer apt-daily-upgrade.timer apt-daily.service \
  apt-daily-upgrade.service dpkg-db-backup.timer dpkg-db-backup.service \
  e2scrub_all.timer e2scrub_all.service e2scrub_reap.service fstrim.timer \
  systemd-pstore.service getty-static.service; do
  ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done
rm -f "$ROOT/usr/sbin/policy-rc.d"

# GRUB configuration read from the root fs (the core image embeds only a
# search for the label and a configfile).
KVER=$(cd "$ROOT/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/vmlinuz-$KVER" ] || die "no kernel in the image"
mkdir -p "$ROOT/boot/grub"
cat > "$ROOT/boot/grub/grub.cfg" <<EOF
# Vessel test image: no menu, straight to the kernel.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Debian $SUITE ($KVER)" {
  linux /vmlinuz $CMDLINE
  initrd /initrd.img
}
EOF

# --- trim ----------------------------------------------------------------
in_root apt-get clean
umount "$ROOT/proc" "$ROOT/sys"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
  "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old \
  "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/lintian/* \
  "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* \
  "$ROOT"/debootstrap
find "$ROOT/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete
find "$ROOT/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Package} ${Version}\n' > "$WORK/packages"

# --- 3. file system, disk, GRUB -------------------------------------------
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
printf '%s\n' "$CMDLINE" > "$WORK/cmdline"

size_bytes=$(numfmt --from=iec "$DISK_SIZE")
part_start=2048                     # sectors: 1 MiB, the MBR gap for GRUB
part_sectors=$(( size_bytes / 512 - part_start ))
used_kib=$(du -sk "$ROOT" | cut -f1)
[ $(( used_kib * 1024 * 13 / 10 )) -lt $(( part_sectors * 512 )) ] ||
  die "root fs ($used_kib KiB) does not fit in $DISK_SIZE with headroom"
log "mkfs.ext4 -d (root fs uses $((used_kib / 1024)) MiB)"
# Reproducible-ish metadata; fresh UUID per build is fine (root is by label).
mkfs.ext4 -q -F -L "$LABEL" -d "$ROOT" -E root_owner=0:0 \
  "$WORK/rootfs.ext4" "$(( part_sectors / 2 ))k" >&2

log "partitioning and installing GRUB (i386-pc)"
truncate -s "$size_bytes" "$WORK/disk.raw"
printf 'label: dos\nstart=%d, size=%d, type=83, bootable\n' "$part_start" "$part_sectors" |
  sfdisk -q "$WORK/disk.raw" >&2
dd if="$WORK/rootfs.ext4" of="$WORK/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$WORK/rootfs.ext4"
cat > "$WORK/embed.cfg" <<EOF
search --no-floppy --label $LABEL --set=root
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
EOF
grub-mkimage -O i386-pc -o "$WORK/core.img" -c "$WORK/embed.cfg" -p /boot/grub \
  biosdisk part_msdos ext2 search search_label configfile normal linux echo \
  serial terminal test
core_sectors=$(( ($(stat -c %s "$WORK/core.img") + 511) / 512 ))
[ $core_sectors -lt $(( part_start - 1 )) ] || die "GRUB core image too big for the MBR gap"
# boot.img (first 440 bytes: code only, keeps the partition table) loads
# sector 1 (its default kernel_sector), where core.img starts; grub-mkimage
# already wrote core.img's own block list (sectors 2.., its length).
dd if=/usr/lib/grub/i386-pc/boot.img of="$WORK/disk.raw" bs=440 count=1 conv=notrunc status=none
# As grub-bios-setup does for hard disks: ignore a bad boot drive from BIOS.
printf '\x90\x90' | dd of="$WORK/disk.raw" bs=1 seek=$((0x66)) conv=notrunc status=none
dd if="$WORK/core.img" of="$WORK/disk.raw" bs=512 seek=1 conv=notrunc status=none

log "qemu-img convert to qcow2"
qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/debian-cloud.qcow2"
rm -f "$WORK/disk.raw"

# --- publish ---------------------------------------------------------------
for f in "${OUTPUTS[@]}"; do mv -f "$WORK/$f" "$OUT_DIR/$f"; done
printf '%s\n' "$WANT" > "$WORK/manifest"
mv -f "$WORK/manifest" "$OUT_DIR/manifest"
log "done in $(( $(date +%s) - START )) s: $OUT_DIR (kernel $KVER, qcow2 $(du -h "$OUT_DIR/debian-cloud.qcow2" | cut -f1))"
echo "$OUT_DIR"
