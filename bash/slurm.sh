# shellcheck shell=bash
# slurm.sh: items collected only on nodes of a Slurm-orchestrated cluster (see common.sh
# for how items are declared). sinfo asks slurmctld, so a hung controller shows here as
# a timed-out item rather than a lost node.

hpc_items_slurm() {
  hpc_item sinfo sinfo.txt needs=sinfo
  hpc_item sinfo_R sinfo_R.txt needs=sinfo
  hpc_item slurmd_status slurmd_status.txt needs=systemctl
}

item_sinfo() {
  sinfo
}

item_sinfo_R() {
  sinfo -R
}

item_slurmd_status() {
  hpc_unit_status slurmd
}
