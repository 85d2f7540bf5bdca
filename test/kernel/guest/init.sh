#!/bin/busybox sh
# /init of the real-kernel test guest (busybox-static, ppc64el).
# Loads the VFIO modules, binds the test device (vendor:device from the kernel
# argument pvdp.dev=VVVV:DDDD) to vfio-pci, prints what it found, runs the
# payload's command (/payload/.pvdp-command) with a timeout (pvdp.timeout=SECS),
# prints the exit marker and powers off. Lines the host parses start with PVDP-.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
export PATH=/opt/node/bin:/payload/bin:/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/tmp TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
[ -e /dev/pts ] || mkdir -p /dev/pts
mount -t devpts devpts /dev/pts 2>/dev/null

finish() {
  echo "PVDP-KERNEL-EXIT rc=$1"
  sync
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger 2>/dev/null
}

arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}

KREL=$(uname -r)
echo "PVDP-KERNEL-BOOTED kernel=$KREL arch=$(uname -m)"

for m in $(cat /lib/modules/pvdp/order); do
  insmod "/lib/modules/pvdp/$m" || echo "PVDP-KERNEL-WARN insmod $m failed"
done

PLATFORM=unknown
grep -q 'platform.*pSeries' /proc/cpuinfo && PLATFORM=pseries
grep -q 'platform.*PowerNV' /proc/cpuinfo && PLATFORM=powernv
CPU=$(grep -m1 '^cpu' /proc/cpuinfo | sed 's/^cpu[[:space:]]*:[[:space:]]*//' | cut -d' ' -f1 | tr -d ,)

DEV=$(arg pvdp.dev)
TIMEOUT=$(arg pvdp.timeout || echo 600)
# Every PCI device whose vendor:device is DEV (in BDF order) is a test device.
BDFS=
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/vendor" ] || continue
  id="$(sed 's/^0x//' "$d/vendor"):$(sed 's/^0x//' "$d/device")"
  [ "$id" = "$DEV" ] && BDFS="$BDFS ${d##*/}"
done
if [ -z "$BDFS" ]; then
  echo "PVDP-KERNEL-ERROR no PCI device $DEV; devices:"
  for d in /sys/bus/pci/devices/*; do echo "  ${d##*/} $(cat $d/vendor):$(cat $d/device)"; done
  finish 97
fi

bind_vfio() {
  b=$1
  cur=$(readlink "/sys/bus/pci/devices/$b/driver" 2>/dev/null)
  [ "${cur##*/}" = vfio-pci ] && return 0
  [ -n "$cur" ] && echo "$b" > "/sys/bus/pci/devices/$b/driver/unbind"
  echo vfio-pci > "/sys/bus/pci/devices/$b/driver_override"
  echo "$b" > /sys/bus/pci/drivers_probe
  cur=$(readlink "/sys/bus/pci/devices/$b/driver" 2>/dev/null)
  [ "${cur##*/}" = vfio-pci ]
}

GROUP= BDF= MEMBERS= VGROUPS= ALLBDFS=
for dev in $BDFS; do
  g=
  if [ -e "/sys/bus/pci/devices/$dev/iommu_group" ]; then
    g=$(readlink "/sys/bus/pci/devices/$dev/iommu_group"); g=${g##*/}
  fi
  [ -n "$g" ] || { echo "PVDP-KERNEL-ERROR $dev has no iommu_group"; finish 96; }
  members=
  for m in /sys/kernel/iommu_groups/$g/devices/*; do
    b=${m##*/}
    members="$members${members:+,}$b"
    bind_vfio "$b" || { echo "PVDP-KERNEL-ERROR cannot bind $b to vfio-pci"; dmesg | tail -20; finish 95; }
  done
  i=0
  while [ ! -e "/dev/vfio/$g" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  [ -e "/dev/vfio/$g" ] || { echo "PVDP-KERNEL-ERROR /dev/vfio/$g did not appear"; finish 94; }
  gname=$(cat /sys/kernel/iommu_groups/$g/name 2>/dev/null)
  echo "PVDP-KERNEL-DEVICE bdf=$dev group=$g members=$members group_name=${gname:-none} driver=vfio-pci"
  case ",$VGROUPS," in *",$g,"*) ;; *) VGROUPS="$VGROUPS${VGROUPS:+,}$g" ;; esac
  ALLBDFS="$ALLBDFS${ALLBDFS:+,}$dev"
  if [ -z "$GROUP" ]; then GROUP=$g BDF=$dev MEMBERS=$members GNAME=$gname; fi
done
# pvdp.nonviable=VVVV:DDDD: bind only that function to vfio-pci and leave the rest of its group on
# their drivers, so the group has a node but is not viable.
NVDEV=$(arg pvdp.nonviable)
NVGROUP=
if [ -n "$NVDEV" ]; then
  for d in /sys/bus/pci/devices/*; do
    id="$(sed 's/^0x//' "$d/vendor"):$(sed 's/^0x//' "$d/device")"
    [ "$id" = "$NVDEV" ] || continue
    b=${d##*/}
    g=$(readlink "$d/iommu_group"); g=${g##*/}
    bind_vfio "$b" || { echo "PVDP-KERNEL-ERROR cannot bind $b to vfio-pci"; finish 93; }
    i=0
    while [ ! -e "/dev/vfio/$g" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    drivers=
    for m in /sys/kernel/iommu_groups/$g/devices/*; do
      drv=$(readlink "$m/driver" 2>/dev/null); drivers="$drivers${drivers:+,}${m##*/}:${drv##*/}"
    done
    echo "PVDP-KERNEL-NONVIABLE group=$g members=$drivers"
    NVGROUP=$g
  done
fi
export PVDP_NONVIABLE_GROUP=$NVGROUP

echo "PVDP-KERNEL-INFO platform=$PLATFORM cpu=$CPU group=$GROUP bdf=$BDF id=$DEV members=$MEMBERS group_name=${GNAME:-none} driver=vfio-pci groups=$VGROUPS bdfs=$ALLBDFS"

# PVDP_GROUP/PVDP_BDF: the first test device; PVDP_GROUPS/PVDP_BDFS: all of them (comma-separated).
export PVDP_PLATFORM=$PLATFORM PVDP_GROUP=$GROUP PVDP_BDF=$BDF PVDP_GROUP_MEMBERS=$MEMBERS PVDP_DEVICE_ID=$DEV
export PVDP_GROUPS=$VGROUPS PVDP_BDFS=$ALLBDFS
cd /payload 2>/dev/null || cd /
if [ -f /payload/.pvdp-command ]; then
  echo "PVDP-KERNEL-PAYLOAD-START"
  timeout -s KILL "$TIMEOUT" sh /payload/.pvdp-command
  rc=$?
  echo "PVDP-KERNEL-PAYLOAD-END"
  if [ "$rc" != 0 ]; then echo "PVDP-KERNEL-DMESG-TAIL"; dmesg | tail -40; fi
else
  echo "PVDP-KERNEL-WARN no payload command"
  rc=0
fi
finish $rc
