#!/usr/bin/env bash
# Boot the cloud image built by scripts/build-cloud-image.sh under QEMU (TCG,
# q35) with a NoCloud seed and check on the serial console that cloud-init
# ran: (a) the hostname comes from meta-data, (b) a user-data runcmd ran,
# (c) cloud-init reports done. The root disk is a linked clone (qcow2 with the
# image as backing file), as Vessel's `vm create --image` makes it.
#
# Usage: scripts/cloud-image/smoke-test.sh [IMAGE_DIR]
#   IMAGE_DIR defaults to ${VESSEL_CLOUD_IMAGE_DIR:-$HOME/.cache/vessel/cloud-image}
# Environment:
#   BOOT=disk|kernel   disk (default): firmware -> GRUB on the disk;
#                      kernel: direct kernel boot with IMAGE_DIR/vmlinuz,
#                      initrd.img and cmdline
#   NET=1              add a virtio NIC on QEMU user networking with
#                      restrict=on (DHCP from QEMU itself, no outside traffic)
#   SMP=N MEM=512M     guest vCPUs / memory (defaults 1 / 512M)
#   DISK_SIZE=20G      virtual size of the linked clone (default: the image's);
#                      cloud-init grows partition 1 and the ext4 fs to it
#   TIMEOUT=300        seconds to wait for all markers
#   KEEP=1             keep the work directory (serial log) and print its path
# Exit 0 if all checks pass; the serial log is printed on failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMG_DIR=${1:-${VESSEL_CLOUD_IMAGE_DIR:-$HOME/.cache/vessel/cloud-image}}
BOOT=${BOOT:-disk} SMP=${SMP:-1} MEM=${MEM:-512M} TIMEOUT=${TIMEOUT:-300}
HOSTNAME_WANT=vessel-ci-vm
for f in debian-cloud.qcow2 vmlinuz initrd.img cmdline manifest; do
  [ -f "$IMG_DIR/$f" ] || { echo "smoke-test: $IMG_DIR/$f missing; run scripts/build-cloud-image.sh" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/vessel-cloud-smoke.XXXXXX")
QPID=
finish() {
  [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
  [ -z "$QPID" ] || wait "$QPID" 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "smoke-test: work dir kept: $W" >&2; else rm -rf "$W"; fi
}
trap finish EXIT

cat > "$W/meta-data" <<EOF
instance-id: iid-vessel-smoke-$$-$RANDOM
local-hostname: $HOSTNAME_WANT
EOF
cat > "$W/user-data" <<'EOF'
#cloud-config
runcmd:
  - [sh, -c, 'echo "VESSEL-CLOUDINIT-RAN hostname=$(hostname)" > /dev/ttyS0']
  - [sh, -c, '(cloud-init status --wait --long 2>&1 | sed "s/^/VESSEL-STATUS /" > /dev/ttyS0) </dev/null >/dev/null 2>&1 &']
final_message: "VESSEL-CLOUDINIT-FINAL cloud-init $VERSION finished after $UPTIME s"
EOF
"$HERE/make-seed.sh" "$W/seed.img" "$W/user-data" "$W/meta-data"
qemu-img create -q -f qcow2 -F qcow2 -b "$(cd "$IMG_DIR" && pwd)/debian-cloud.qcow2" "$W/root.qcow2" ${DISK_SIZE:-}

# -kernel claims bootindex 0 itself; QEMU refuses a second one.
[ "$BOOT" = kernel ] || BOOTINDEX=,bootindex=0
args=(qemu-system-x86_64 -accel tcg -M q35 -m "$MEM" -smp "$SMP"
  -nodefaults -display none -no-reboot -serial "file:$W/serial.log"
  -drive "file=$W/root.qcow2,if=none,id=root,format=qcow2,discard=unmap"
  -device "virtio-blk-pci,drive=root${BOOTINDEX-}"
  -drive "file=$W/seed.img,if=none,id=seed,format=raw,readonly=on"
  -device virtio-blk-pci,drive=seed)
if [ "$BOOT" = kernel ]; then
  args+=(-kernel "$IMG_DIR/vmlinuz" -initrd "$IMG_DIR/initrd.img" -append "$(cat "$IMG_DIR/cmdline")")
fi
[ "${NET:-0}" != 1 ] || args+=(-nic user,model=virtio-net-pci,restrict=on)
echo "smoke-test: ${args[*]}" >&2

t0=$(date +%s.%N)
"${args[@]}" </dev/null >"$W/qemu.out" 2>&1 &
QPID=$!
elapsed() { echo "$(date +%s.%N) - $t0" | bc | xargs printf '%.1f'; }
declare -A seen=()
want=(login ran final status)
pattern() {
  case $1 in
    login)  echo "^$HOSTNAME_WANT login:" ;;
    ran)    echo "VESSEL-CLOUDINIT-RAN hostname=$HOSTNAME_WANT" ;;
    final)  echo "VESSEL-CLOUDINIT-FINAL" ;;
    status) echo "VESSEL-STATUS status: done" ;;
  esac
}
ok=0
while :; do
  for k in "${want[@]}"; do
    [ -n "${seen[$k]:-}" ] && continue
    if grep -aq "$(pattern "$k")" "$W/serial.log" 2>/dev/null; then
      seen[$k]=$(elapsed); echo "smoke-test: $k after ${seen[$k]} s" >&2
    fi
  done
  [ ${#seen[@]} = ${#want[@]} ] && { ok=1; break; }
  kill -0 "$QPID" 2>/dev/null || { echo "smoke-test: QEMU exited" >&2; cat "$W/qemu.out" >&2; break; }
  [ "$(echo "$(elapsed) > $TIMEOUT" | bc)" = 1 ] && { echo "smoke-test: timeout after $TIMEOUT s" >&2; break; }
  sleep 0.5
done

tr -d '\r' < "$W/serial.log" | grep -aE "VESSEL-|^$HOSTNAME_WANT login:|Cloud-init v\. .* finished" | sort -u >&2 || true
if [ $ok = 1 ]; then
  echo "smoke-test: PASS (boot=$BOOT smp=$SMP mem=$MEM net=${NET:-0}): runcmd marker ${seen[ran]} s, cloud-init done ${seen[status]} s, login prompt ${seen[login]} s" >&2
  exit 0
fi
echo "smoke-test: FAIL; missing: $(for k in "${want[@]}"; do [ -n "${seen[$k]:-}" ] || printf '%s ' "$k"; done)" >&2
echo "----- serial log -----" >&2; tr -d '\r' < "$W/serial.log" | tail -n 150 >&2
exit 1
