#!/usr/bin/env bash
# Build a cloud-init NoCloud seed disk: a FAT file system labelled CIDATA
# (cloud-init matches the label cidata/CIDATA case-insensitively) holding
# user-data, meta-data and, if given, network-config. Attach it to the VM as
# any disk (e.g. virtio-blk, raw, read-only).
#
# Usage: scripts/cloud-image/make-seed.sh OUT.img USER_DATA META_DATA [NETWORK_CONFIG]
#
# No root, no loop device, no mount: mkfs.vfat (dosfstools) on a plain file,
# files copied in with mcopy (mtools). Missing tools are installed with
# apt-get when running as root; otherwise the script says what to install.
# OUT.img is written to a temporary file and renamed into place.
set -euo pipefail

[ $# -ge 3 ] && [ $# -le 4 ] ||
  { echo "usage: $0 OUT.img USER_DATA META_DATA [NETWORK_CONFIG]" >&2; exit 2; }
out=$1 user_data=$2 meta_data=$3 network_config=${4:-}
for f in "$user_data" "$meta_data" ${network_config:+"$network_config"}; do
  [ -f "$f" ] || { echo "make-seed: no such file: $f" >&2; exit 2; }
done

need=()
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2
  else
    echo "make-seed: missing tools; install: apt-get install ${need[*]}" >&2; exit 1
  fi
fi

# Size: the files plus room for FAT metadata, at least 1 MiB (FAT12).
bytes=0
for f in "$user_data" "$meta_data" ${network_config:+"$network_config"}; do
  bytes=$(( bytes + $(stat -L -c %s "$f") + 4096 ))
done
kib=$(( bytes / 1024 + 512 ))
[ $kib -ge 1024 ] || kib=1024

tmp=$(mktemp "$(dirname "$out")/.seed.XXXXXX")
trap 'rm -f "$tmp"' EXIT
rm -f "$tmp"
mkfs.vfat -C -n CIDATA "$tmp" "$kib" >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -o -i "$tmp" "$user_data" ::user-data
mcopy -o -i "$tmp" "$meta_data" ::meta-data
[ -z "$network_config" ] || mcopy -o -i "$tmp" "$network_config" ::network-config
mv -f "$tmp" "$out"
trap - EXIT
