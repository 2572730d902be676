#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), so that the
# tests run the documented SLURM array + dependent group job and nipype's SLURM plugin for
# real (tests/test_slurm_cluster.py; they skip when `sinfo` finds no cluster).
#
# Usage (as root, on a throw-away machine such as CI): bash scripts/ci_slurm.sh
#
# The node is this machine under its hostname, in partition `normal` (the one
# brainfm/data/nipype_plugins/slurm.yml names). It declares 8 CPUs and 64 GB whatever the
# hardware (SlurmdParameters=config_overrides), so that the participant script's
# `#SBATCH --cpus-per-task=4 --mem=16G` can be scheduled on a small CI machine; nothing is
# enforced (no cgroup task plugin). Idempotent: a running cluster is left as it is. When it
# cannot start one (not root, no apt, daemons failing), it says why and exits 0: the cluster
# tests then skip with that reason.
set -uo pipefail

say() { echo "ci_slurm: $*"; }

if sinfo -h >/dev/null 2>&1; then
  say "a SLURM cluster answers already:"; sinfo; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "not root: no cluster started (the SLURM cluster tests will skip)"; exit 0
fi
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends slurm-wlm munge >/dev/null; }; then
    say "apt-get could not install slurm-wlm and munge (the SLURM cluster tests will skip)"
    exit 0
  fi
fi

host="$(hostname)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge \
         /var/log/munge /var/lib/munge
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=brainfm-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=8 RealMemory=64000 State=UNKNOWN
PartitionName=normal Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
echo "CgroupPlugin=autodetect" > /etc/slurm/cgroup.conf

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged 2>/dev/null || munged --force
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 30); do
  if sinfo -h -o %t 2>/dev/null | grep -qx idle; then
    say "one-node cluster up:"; sinfo; exit 0
  fi
  sleep 1
done
say "the cluster did not come up (the SLURM cluster tests will skip); logs:"
tail -n 5 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log 2>/dev/null
exit 0
