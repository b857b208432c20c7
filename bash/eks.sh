# shellcheck shell=bash
# eks.sh: items collected only on nodes of an EKS-orchestrated cluster (see common.sh
# for how items are declared).

hpc_items_eks() {
  hpc_item containerd_status containerd_status.txt
  hpc_item kubelet_status kubelet_status.txt
}

item_containerd_status() {
  hpc_unit_status containerd
}

item_kubelet_status() {
  hpc_unit_status kubelet
}
