#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost that mirrors KOA's partitions and GPU types, for tests.
#   tests/slurm/local-slurm.sh install   # Debian packages slurmctld, slurmd, munge, slurm-client (root)
#   tests/slurm/local-slurm.sh start     # prints the SLURM_CONF to export
#   tests/slurm/local-slurm.sh stop
# GPUs are fake: GRES backed by character devices like /dev/null (no CUDA). The node declares a KOA-sized
# GPU node (32 CPUs, 256 GB; SlurmdParameters=config_overrides lets slurmd accept more than the
# hardware has), so the KOA profile's requests fit unchanged. Needs root (slurmd runs jobs as their users).
# The configuration is linked at /etc/slurm/slurm.conf, where srun inside jobs looks for it, as on a
# real cluster (the SLURM executor strips SLURM_* variables, SLURM_CONF included, from job steps).
set -euo pipefail
DIR=${KOAML_SLURM_DIR:-/tmp/koaml-slurm}
HOST=$(hostname -s)
CPUS=${KOAML_SLURM_CPUS:-32}
MEM_MB=${KOAML_SLURM_MEM_MB:-256000}
ETC=/etc/slurm
# Every GPU type KOA's sinfo shows (type:count), each backed by its own fake device.
GPUS="NV-A30:2 NV-V100-SXM2:1 NV-RTX5000:1 NV-RTX-A4000:1 NV-RTX2080Ti:1 NV-RTX2070:1 NV-L40:1 NV-H100:1
nvidia_h100_pcie:1 nvidia_h100_nvl:1 nvidia_h200_nvl:1 nvidia_a30_2g.12gb:1 nvidia_a30_1g.6gb:4"

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/gpus"
  local gres="" lines="" n=0 type count first
  for spec in $GPUS; do
    type=${spec%:*} count=${spec#*:} first=$n
    for _ in $(seq "$count"); do
      [ -c "$DIR/gpus/gpu$n" ] || { rm -f "$DIR/gpus/gpu$n"; mknod "$DIR/gpus/gpu$n" c 1 3; }  # like /dev/null
      n=$((n + 1))
    done
    gres+="${gres:+,}gpu:$type:$count"
    lines+="NodeName=$HOST Name=gpu Type=$type File=$DIR/gpus/gpu[$first-$((n - 1))]"$'\n'
  done
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=koa-local
SlurmctldHost=$HOST
AuthType=auth/munge
# A requeued (preempted) job waits out its credential's lifetime before it starts again: 120 s by default.
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# No accounting database: finished jobs stay visible to squeue/scontrol for an hour.
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
# Preemption sends SIGTERM, then SIGKILL after KillWait seconds: time to save a checkpoint.
KillWait=60
SchedulerType=sched/backfill
# Pending jobs (a requeued one waits for its begin time) are looked at every second, not every 30 to 60.
SchedulerParameters=bf_interval=1,sched_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=$gres State=UNKNOWN
# KOA's partitions (sinfo on koa.its.hawaii.edu), all on this one node.
PartitionName=sandbox Nodes=$HOST MaxTime=04:00:00 State=UP
PartitionName=shared Nodes=$HOST Default=YES MaxTime=3-00:00:00 State=UP
PartitionName=shared-long Nodes=$HOST MaxTime=7-00:00:00 State=UP
PartitionName=exclusive Nodes=$HOST MaxTime=3-00:00:00 State=UP
PartitionName=exclusive-long Nodes=$HOST MaxTime=7-00:00:00 State=UP
PartitionName=gpu Nodes=$HOST MaxTime=3-00:00:00 State=UP
PartitionName=gpu-sandbox Nodes=$HOST MaxTime=04:00:00 State=UP
PartitionName=kill-shared Nodes=$HOST MaxTime=3-00:00:00 PreemptMode=REQUEUE State=UP
PartitionName=kill-exclusive Nodes=$HOST MaxTime=3-00:00:00 PreemptMode=REQUEUE State=UP
CONF
  printf "%s" "$lines" > "$DIR/gres.conf"
}

# srun inside a job reads /etc/slurm/slurm.conf; refuse to replace a configuration that is not ours.
link_config() {
  mkdir -p "$ETC"
  for f in slurm.conf gres.conf; do
    if [ -e "$ETC/$f" ] && [ ! -L "$ETC/$f" ]; then
      echo "$ETC/$f exists and is not a koa-ml test link: not replacing a real SLURM configuration" >&2
      exit 1
    fi
    ln -sfn "$DIR/$f" "$ETC/$f"
  done
}

start() {
  install
  stop >/dev/null 2>&1 || true
  write_config
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  link_config
  export SLURM_CONF=$DIR/slurm.conf
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return
    fi
    sleep 1
  done
  echo "local SLURM did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
  exit 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if [ -f "$DIR/$daemon.pid" ]; then kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null || true; fi
  done
  sleep 1
  pkill -9 -x slurmd 2>/dev/null || true
  pkill -9 -x slurmctld 2>/dev/null || true
  rm -rf "$DIR/state" "$DIR/spool"
  for f in slurm.conf gres.conf; do
    if [ "$(readlink "$ETC/$f" 2>/dev/null)" = "$DIR/$f" ]; then rm -f "$ETC/$f"; fi
  done
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
