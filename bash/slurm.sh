# shellcheck shell=bash
# slurm.sh: items collected only on nodes of a Slurm-orchestrated cluster (see common.sh
# for how items are declared). sinfo, scontrol and squeue ask slurmctld, so a hung
# controller shows here as a timed-out item rather than a lost node.

declare -rx HPC_SLURM_ETC=/opt/slurm/etc
declare -rx HPC_SLURM_LOGS=/var/log/slurm

hpc_items_slurm() {
  hpc_item sinfo sinfo.txt needs=sinfo
  hpc_item sinfo_R sinfo_R.txt needs=sinfo
  hpc_item scontrol_show_node scontrol_show_node.txt needs=scontrol
  hpc_item squeue_node squeue_node.txt needs=squeue
  hpc_item slurmctld_status slurmctld_status.txt needs=systemctl
  hpc_item slurmd_status slurmd_status.txt needs=systemctl
  hpc_item slurmctld_journal slurmctld_journal.txt needs=journalctl
  hpc_item slurmd_journal slurmd_journal.txt needs=journalctl
  hpc_item opt_slurm_etc opt_slurm_etc/ "needs=$HPC_SLURM_ETC"
  hpc_item var_log_slurm var_log_slurm/ "needs=$HPC_SLURM_LOGS"
}

hpc_items_slow_slurm() {
  :
}

item_sinfo() {
  sinfo
}

# Drain and down reasons in full: the default format cuts REASON at 20 characters.
item_sinfo_R() {
  sinfo -R -o '%60E %9u %19H %N'
}

# This node's name in Slurm: on HyperPod it is the short hostname (ip-10-1-2-3). When
# Slurm knows it by another name, every node is shown, so the record is still there.
hpc_slurm_node_name() {
  hostname -s
}

item_scontrol_show_node() {
  local node
  node=$(hpc_slurm_node_name)
  if ! scontrol show node "$node"; then
    printf '\n[hpc] no Slurm node named %s; every node follows\n' "$node"
    scontrol show node
  fi
}

item_squeue_node() {
  squeue -w "$(hpc_slurm_node_name)" -o '%.18i %.9P %.30j %.10u %.8T %.12M %.12l %.6D %R'
}

item_slurmctld_status() {
  hpc_unit_status slurmctld
}

item_slurmd_status() {
  hpc_unit_status slurmd
}

item_slurmctld_journal() {
  hpc_journal -u slurmctld
}

item_slurmd_journal() {
  hpc_journal -u slurmd
}

# slurm.conf, gres.conf, slurmdbd.conf, ... as they are on this node; secrets in them are
# redacted afterwards like everything else, and key files are never copied.
item_opt_slurm_etc() {
  hpc_copy_tree "$HPC_SLURM_ETC" "$1" '*.key' '*.pem' 'jwt*'
}

item_var_log_slurm() {
  hpc_copy_tree "$HPC_SLURM_LOGS" "$1"
}
