# shellcheck shell=bash
# common.sh: items collected on every node, EKS or Slurm. One function per item
# (item_NAME); hpc_items_common declares them in the order they run, with their output
# name inside the report folder and what must be present on the node for them to run
# (see hpc_item in lib.sh). The order is what matters most when a node is sick: files and
# logs first (the Xid that explains everything is in kern.log), the orchestrator's items next,
# then the GPU items (nvidia-smi is what hangs on a sick GPU), the operator's commands, and
# the slow optional tools last, so that a tool that hits its time limit costs nothing else.

# Exported: item bodies run in their own bash processes and read these there.
declare -rx HPC_RESOURCE_CONFIG=/opt/ml/config/resource_config.json
declare -rx HPC_CLUSTER_LOGS=/var/log/aws/clusters
declare -rx HPC_INFINIBAND=/sys/class/infiniband
# Seconds between the two samples of the EFA counters: deltas matter, totals do not.
declare -rx HPC_EFA_SAMPLE_GAP=2

hpc_items_common() {
  hpc_item instance_group instance_group.txt
  hpc_item instance_id instance_id.txt
  hpc_item launch launch.txt
  hpc_item cluster_type cluster_type.txt
  hpc_item hostname hostname.txt
  hpc_item timestamp timestamp.txt
  hpc_item uname uname.txt
  hpc_item uptime uptime.txt
  hpc_item versions versions.txt
  hpc_item dmesg_T dmesg_T.txt needs=dmesg
  hpc_item journal_kernel journal_kernel.txt needs=journalctl
  hpc_item syslog syslog needs=/var/log/syslog
  hpc_item messages messages needs=/var/log/messages
  hpc_item kern_log kern.log needs=/var/log/kern.log
  hpc_item rotated_logs rotated_logs/
  hpc_item resource_config resource_config.json "needs=$HPC_RESOURCE_CONFIG"
  hpc_item cluster_logs cluster_logs/ "needs=$HPC_CLUSTER_LOGS"
  hpc_item systemd_services systemd_services.txt needs=systemctl
  hpc_item systemd_failed systemd_failed.txt needs=systemctl
  hpc_item disk_usage disk_usage.txt
  hpc_item disk_inodes disk_inodes.txt
  hpc_item memory memory.txt
  hpc_item processes processes.txt needs=ps
  hpc_item lspci lspci.txt needs=lspci
  hpc_item lsmod lsmod.txt 'needs=lsmod|/proc/modules'
  hpc_item fi_info_efa fi_info_efa.txt needs=fi_info
  hpc_item efa_counters efa_counters.txt "needs=$HPC_INFINIBAND"
}

# After the orchestrator's items. Once one nvidia-smi item has timed out, the others are not
# run (tool=): on a wedged GPU each would only burn its whole time limit.
hpc_items_gpu() {
  hpc_item nvidia_smi nvidia_smi.txt needs=nvidia-smi tool=nvidia-smi
  hpc_item nvidia_smi_q nvidia_smi_q.txt needs=nvidia-smi tool=nvidia-smi
  hpc_item nvidia_smi_gpus nvidia_smi_gpus.csv needs=nvidia-smi tool=nvidia-smi
  hpc_item nvidia_smi_remapped_rows nvidia_smi_remapped_rows.csv needs=nvidia-smi tool=nvidia-smi
  hpc_item nvidia_smi_nvlink_status nvidia_smi_nvlink_status.txt needs=nvidia-smi tool=nvidia-smi
  hpc_item nvidia_smi_nvlink_errors nvidia_smi_nvlink_errors.txt needs=nvidia-smi tool=nvidia-smi
  hpc_item fabricmanager fabricmanager.txt \
    'needs=/dev/nvidia-nvswitchctl|/proc/driver/nvidia-nvswitch|/var/log/fabricmanager.log'
  hpc_item dcgm_discovery dcgm_discovery.txt needs=dcgmi
  hpc_item dcgm_health dcgm_health.txt needs=dcgmi
}

# Slow, optional: nvidia-bug-report.sh takes minutes on a node with 8 GPUs.
# A DCGM level-1 diagnostic is active (it runs tests on the GPUs), so it is off unless asked for.
hpc_items_slow_common() {
  hpc_item nvidia_bug_report nvidia_bug_report/ when=HPC_NVIDIA_BUG_REPORT \
    needs=nvidia-bug-report.sh limit=HPC_NVIDIA_BUG_REPORT_TIMEOUT
  hpc_item dcgm_diag dcgm_diag.txt when=HPC_DCGM_DIAG needs=dcgmi
}

item_instance_group() {
  printf '%s\n' "$INSTANCE_GROUP"
}

item_instance_id() {
  printf '%s\n' "$INSTANCE_ID"
}

# Which run and which launch of it made this report: tells a late upload from a relaunch's.
item_launch() {
  printf 'run_id=%s\nlaunch_id=%s\n' "${HPC_RUN_ID:-}" "${HPC_LAUNCH_ID:-}"
}

item_cluster_type() {
  printf '%s\n' "$CLUSTER_TYPE"
}

item_hostname() {
  hostname
}

# `date -u` as the earlier tool wrote it, then the same moment in ISO 8601.
item_timestamp() {
  local now
  now=$(date -u +%s)
  date -u -d "@$now"
  date -u -d "@$now" +%Y-%m-%dT%H:%M:%SZ
}

item_uname() {
  uname -a
}

item_uptime() {
  uptime
}

# Prints "== TITLE", then runs the command, or says it is not present.
hpc_section() {
  local title=$1
  shift
  printf '\n== %s\n' "$title"
  if hpc_available "$1"; then
    "$@" 2>&1 || printf '(exit %s)\n' "$?"
  else
    printf 'not present: %s\n' "$1"
  fi
}

# Prints each existing file among the arguments, or says none is present.
hpc_files_section() {
  local title=$1 file found=""
  shift
  printf '\n== %s\n' "$title"
  for file in "$@"; do
    if [[ -f $file ]]; then
      printf -- '-- %s\n' "$file"
      cat -- "$file" 2>&1 || true
      found=1
    fi
  done
  [[ -n $found ]] || printf 'not present: %s\n' "$*"
}

# Libraries and install markers: a `ls` of what exists among the arguments (globs).
hpc_paths_section() {
  local title=$1 path found=()
  shift
  printf '\n== %s\n' "$title"
  for path in "$@"; do
    [[ -e $path || -L $path ]] && found+=("$path")
  done
  if ((${#found[@]})); then
    ls -ld -- "${found[@]}" 2>&1 || true
  else
    printf 'not present: %s\n' "$*"
  fi
}

# Driver, CUDA, NCCL, EFA and OS versions, each section saying "not present" when absent.
item_versions() {
  shopt -s nullglob
  hpc_files_section "os" /etc/os-release
  # (not nvidia-smi, which may hang: nvidia_smi_gpus.csv has its driver and VBIOS versions)
  hpc_files_section "nvidia driver" /proc/driver/nvidia/version
  hpc_paths_section "cuda installs" /usr/local/cuda /usr/local/cuda-*
  hpc_files_section "cuda version" /usr/local/cuda/version.json /usr/local/cuda/version.txt
  hpc_section "nvcc" nvcc --version
  hpc_paths_section "nccl libraries" /usr/lib/x86_64-linux-gnu/libnccl.so.* /usr/lib64/libnccl.so.* \
    /usr/local/cuda*/lib*/libnccl.so.* /opt/nccl*/build/lib/libnccl.so.* /opt/nccl/lib/libnccl.so.*
  hpc_section "nccl packages (dpkg)" dpkg-query -W 'libnccl*'
  hpc_section "nccl packages (rpm)" rpm -qa 'libnccl*'
  hpc_files_section "efa installer" /opt/amazon/efa_installed_packages
  hpc_files_section "efa driver" /sys/module/efa/version
  hpc_section "libfabric" fi_info --version
  hpc_paths_section "aws-ofi-nccl" /opt/amazon/ofi-nccl /opt/aws-ofi-nccl /opt/amazon/ofi-nccl/lib*/libnccl-net*.so
  hpc_section "dcgm" dcgmi --version
  hpc_section "fabric manager" nv-fabricmanager --version
}

item_nvidia_smi() {
  nvidia-smi
}

# nvidia-smi with ARGS; when this node's nvidia-smi does not know them (exit 2 and its own
# words for it), the item is "unsupported" rather than failed (see HPC_RC_UNSUPPORTED).
hpc_nvidia_query() {
  local rc=0
  nvidia-smi "$@" || rc=$?
  if ((rc == 2)) && grep -qE 'Invalid combination of input arguments|is not a valid field|nvalid (option|command)' \
    "$HPC_ITEM_OUT"; then
    return "$HPC_RC_UNSUPPORTED"
  fi
  return "$rc"
}

item_nvidia_smi_q() {
  hpc_nvidia_query -q
}

# One line per GPU: inventory and the counters a fleet is compared on.
item_nvidia_smi_gpus() {
  hpc_nvidia_query --format=csv \
    --query-gpu=index,pci.bus_id,name,serial,uuid,driver_version,vbios_version,pstate,temperature.gpu,power.draw,clocks_throttle_reasons.active,ecc.errors.uncorrected.volatile.total,ecc.errors.uncorrected.aggregate.total,retired_pages.sbe,retired_pages.dbe
}

item_nvidia_smi_remapped_rows() {
  hpc_nvidia_query --format=csv \
    --query-remapped-rows=gpu_bus_id,gpu_uuid,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure
}

item_nvidia_smi_nvlink_status() {
  hpc_nvidia_query nvlink -s
}

item_nvidia_smi_nvlink_errors() {
  hpc_nvidia_query nvlink -e
}

# Nodes with NVSwitches (p4d, p5) need the fabric manager for NVLink between GPUs.
item_fabricmanager() {
  hpc_unit_status nvidia-fabricmanager
  printf '\n== journal\n'
  hpc_journal -u nvidia-fabricmanager || true
  if [[ -f /var/log/fabricmanager.log ]]; then
    printf '\n== /var/log/fabricmanager.log\n'
    hpc_cat_capped /var/log/fabricmanager.log
  fi
}

# DCGM's list of the GPUs and NVSwitches it manages (dcgmi asks nv-hostengine; an engine that does
# not answer is a finding of its own).
item_dcgm_discovery() {
  dcgmi discovery -l
}

# The background health watches set on this node and what they found. Only reads: setting watches
# is the operator's choice, and `health -c` knows nothing where none are set (dcgmi-health(1)).
item_dcgm_health() {
  hpc_section "health watches" dcgmi health -f
  hpc_section "health check" dcgmi health -c
}

# Level 1 (quick: deployment and software checks, seconds) of the active diagnostic, dcgmi-diag(1).
item_dcgm_diag() {
  dcgmi diag -r 1
}

# Every device, then the GPUs (NVIDIA, 10de) and Amazon devices (1d0f: EFA, ENA, NVMe)
# in full: LnkCap against LnkSta shows a degraded PCIe link.
item_lspci() {
  lspci -nn
  printf '\n== NVIDIA devices\n'
  lspci -vvv -d 10de:
  printf '\n== Amazon devices (EFA, ENA, NVMe)\n'
  lspci -vvv -d 1d0f:
}

item_lsmod() {
  if command -v lsmod >/dev/null 2>&1; then
    lsmod
  else
    cat /proc/modules
  fi
}

item_fi_info_efa() {
  fi_info -p efa
}

# Two samples of every EFA hardware counter, a little apart.
item_efa_counters() {
  local sample
  shopt -s nullglob
  ls -l "$HPC_INFINIBAND/"
  for sample in 1 2; do
    printf '\n== sample %s at %s\n' "$sample" "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
    (cd "$HPC_INFINIBAND" && grep -H . ./*/ports/*/hw_counters/* 2>/dev/null) || printf 'no hw_counters\n'
    ((sample == 2)) || sleep "$HPC_EFA_SAMPLE_GAP"
  done
}

item_dmesg_T() {
  dmesg -T
}

# Kernel messages of every boot in the window, not only this one (`journalctl -k` alone
# is this boot): the Xid before a GPU-induced reboot is the one that matters.
item_journal_kernel() {
  hpc_journal _TRANSPORT=kernel
}

item_syslog() {
  hpc_cat_capped /var/log/syslog
}

item_messages() {
  hpc_cat_capped /var/log/messages
}

item_kern_log() {
  hpc_cat_capped /var/log/kern.log
}

# Yesterday's syslog, kern.log and messages (rotated files) when written inside the window.
item_rotated_logs() {
  local dir=$1 file count=0
  shopt -s nullglob
  for file in /var/log/syslog.[0-9]* /var/log/kern.log.[0-9]* /var/log/messages.[0-9]* /var/log/messages-*; do
    [[ -f $file ]] || continue
    if hpc_in_window "$file"; then
      hpc_copy_capped "$file" "$dir/${file##*/}"
      count=$((count + 1))
    fi
  done
  ((count)) || printf 'no rotated syslog, kern.log or messages written since %s\n' "$HPC_SINCE"
}

item_resource_config() {
  hpc_cat_capped "$HPC_RESOURCE_CONFIG"
}

# HyperPod agent and lifecycle-script logs (sagemaker-cluster-agent.log, ...).
item_cluster_logs() {
  hpc_copy_tree "$HPC_CLUSTER_LOGS" "$1"
}

item_systemd_services() {
  systemctl list-units --type=service --all --no-pager
}

item_systemd_failed() {
  systemctl list-units --failed --all --no-pager
}

item_disk_usage() {
  df -h
}

item_disk_inodes() {
  df -i
}

item_memory() {
  free -m
}

# Processes in D state (wchan) explain "Kill task failed" drains and hung jobs.
item_processes() {
  ps -eo pid,ppid,user,stat,lstart,pcpu,pmem,rss,wchan:32,args
}

# nvidia-bug-report.sh may hang on a sick GPU and still leave a useful partial file, so
# it gets two thirds of the item's time, then --safe-mode (skips the hanging parts) gets
# the rest (if the first one ignored TERM, the item's own limit ends both); when
# nvidia-smi has already hung here, only --safe-mode runs. It writes into the current
# folder: a private one.
item_nvidia_bug_report() {
  local dir=$1 first rest rc=0
  first=$((HPC_THIS_ITEM_LIMIT * 2 / 3))
  rest=$((HPC_THIS_ITEM_LIMIT - first - 1))
  mkdir -p -- "$HPC_ITEM_TMP"
  cd "$HPC_ITEM_TMP" || return 1
  if [[ -n ${HPC_HUNG_NVIDIA_SMI:-} ]]; then
    printf 'nvidia-smi did not return in %s: --safe-mode only\n' "$HPC_HUNG_NVIDIA_SMI"
    timeout --kill-after="$HPC_KILL_GRACE" "$((HPC_THIS_ITEM_LIMIT - 1))" \
      nvidia-bug-report.sh --safe-mode --output-file "$dir/nvidia-bug-report.log" </dev/null
    return
  fi
  timeout --kill-after="$HPC_KILL_GRACE" "$first" \
    nvidia-bug-report.sh --output-file "$dir/nvidia-bug-report.log" </dev/null || rc=$?
  if ((rc == 124 || rc == 137)) && ((rest > 0)); then
    printf 'nvidia-bug-report.sh did not finish in %ss; again with --safe-mode\n' "$first"
    if [[ -f $dir/nvidia-bug-report.log.gz ]]; then
      mv -f -- "$dir/nvidia-bug-report.log.gz" "$dir/nvidia-bug-report.partial.log.gz"
    fi
    rc=0
    timeout --kill-after="$HPC_KILL_GRACE" "$rest" \
      nvidia-bug-report.sh --safe-mode --output-file "$dir/nvidia-bug-report.log" </dev/null || rc=$?
  fi
  return "$rc"
}
