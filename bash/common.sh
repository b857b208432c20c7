# shellcheck shell=bash
# common.sh: items collected on every node, EKS or Slurm. One function per item
# (item_NAME); hpc_items_common declares them in the order they run, with their output
# name inside the report folder and what must be present on the node for them to run.

# Exported: item bodies run in their own bash processes and read these there.
declare -rx HPC_RESOURCE_CONFIG=/opt/ml/config/resource_config.json
declare -rx HPC_CLUSTER_LOGS=/var/log/aws/clusters

hpc_items_common() {
  hpc_item instance_group instance_group.txt
  hpc_item instance_id instance_id.txt
  hpc_item cluster_type cluster_type.txt
  hpc_item hostname hostname.txt
  hpc_item timestamp timestamp.txt
  hpc_item nvidia_smi nvidia_smi.txt needs=nvidia-smi
  hpc_item disk_usage disk_usage.txt
  hpc_item resource_config resource_config.json "needs=$HPC_RESOURCE_CONFIG"
  hpc_item cluster_logs cluster_logs/ "needs=$HPC_CLUSTER_LOGS"
  hpc_item systemd_services systemd_services.txt
}

item_instance_group() {
  printf '%s\n' "$INSTANCE_GROUP"
}

item_instance_id() {
  printf '%s\n' "$INSTANCE_ID"
}

item_cluster_type() {
  printf '%s\n' "$CLUSTER_TYPE"
}

item_hostname() {
  hostname
}

item_timestamp() {
  date -u
}

item_nvidia_smi() {
  nvidia-smi
}

item_disk_usage() {
  df -h
}

item_resource_config() {
  cat -- "$HPC_RESOURCE_CONFIG"
}

# HyperPod agent logs (sagemaker-cluster-agent.log, ...); $1 is the folder to fill.
item_cluster_logs() {
  cp -R -- "$HPC_CLUSTER_LOGS/." "$1/"
}

item_systemd_services() {
  systemctl list-units --type=service --all --no-pager
}
