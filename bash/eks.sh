# shellcheck shell=bash
# eks.sh: items collected only on nodes of an EKS-orchestrated cluster (see common.sh
# for how items are declared).

declare -rx HPC_POD_LOGS=/var/log/pods
declare -rx HPC_CNI_LOGS=/var/log/aws-routed-eni
declare -rx HPC_CNI_CONFIG=/etc/cni/net.d
declare -rx HPC_CONTAINERD_CONFIG=/etc/containerd/config.toml

hpc_items_eks() {
  hpc_item kubelet_status kubelet_status.txt needs=systemctl
  hpc_item containerd_status containerd_status.txt needs=systemctl
  hpc_item kubelet_journal kubelet_journal.txt needs=journalctl
  hpc_item containerd_journal containerd_journal.txt needs=journalctl
  hpc_item containerd_config containerd_config.txt "needs=containerd|$HPC_CONTAINERD_CONFIG"
  hpc_item kubelet_config kubelet_config/ 'needs=/etc/kubernetes/kubelet|/var/lib/kubelet/config.yaml'
  hpc_item cni_config cni_config/ "needs=$HPC_CNI_CONFIG"
  hpc_item cni_logs cni_logs/ "needs=$HPC_CNI_LOGS"
  hpc_item pod_logs pod_logs/ "needs=$HPC_POD_LOGS"
}

# The AWS EKS log collector, when the orchestrator was configured with one: it fetched
# it from a pinned URL, checked its sha256 and put it in the run's S3 prefix, from where
# this node downloads it (nodes often have no internet). Slow, so it runs last.
hpc_items_slow_eks() {
  hpc_item eks_log_collector eks-logs/ when=HPC_EKS_COLLECTOR secret=HPC_URL_EKS \
    limit=HPC_EKS_COLLECTOR_TIMEOUT
}

item_containerd_status() {
  hpc_unit_status containerd
}

item_kubelet_status() {
  hpc_unit_status kubelet
}

item_kubelet_journal() {
  hpc_journal -u kubelet
}

item_containerd_journal() {
  hpc_journal -u containerd
}

# The configuration containerd really runs with (defaults merged), else its file.
item_containerd_config() {
  if command -v containerd >/dev/null 2>&1 && containerd config dump; then
    return 0
  fi
  hpc_cat_capped "$HPC_CONTAINERD_CONFIG"
}

# kubelet's configuration (AL2: kubelet-config.json, AL2023: config.json and drop-ins,
# kubeadm-style: /var/lib/kubelet/config.yaml). Never the kubeconfig: it is a credential.
item_kubelet_config() {
  local dir=$1
  if [[ -d /etc/kubernetes/kubelet ]]; then
    hpc_copy_tree /etc/kubernetes/kubelet "$dir/etc_kubernetes_kubelet" '*kubeconfig*'
  fi
  if [[ -f /var/lib/kubelet/config.yaml ]]; then
    hpc_copy_capped /var/lib/kubelet/config.yaml "$dir/var_lib_kubelet_config.yaml"
  fi
}

item_cni_config() {
  hpc_copy_tree "$HPC_CNI_CONFIG" "$1"
}

# VPC CNI logs: ipamd.log, plugin.log, egress-v6-plugin.log.
item_cni_logs() {
  hpc_copy_tree "$HPC_CNI_LOGS" "$1"
}

# Logs of system pods only (HPC_POD_NAMESPACES): /var/log/pods/<namespace>_<pod>_<uid>/.
item_pod_logs() {
  local dir=$1 namespace pod pods=0
  shopt -s nullglob
  for namespace in $HPC_POD_NAMESPACES; do
    for pod in "$HPC_POD_LOGS/${namespace}"_*; do
      [[ -d $pod ]] || continue
      hpc_copy_tree "$pod" "$dir/${pod##*/}"
      pods=$((pods + 1))
    done
  done
  printf 'pods of namespaces %s: %s\n' "$HPC_POD_NAMESPACES" "$pods"
}

# Downloads the collector (URL on stdin), checks its sha256 again here, runs it in a
# private folder, and unpacks the bundle it made (the newest /var/log/eks_*.tar.gz that
# was not there before: an old bundle from a manual run is never taken, nor deleted).
item_eks_log_collector() {
  local dir=$1 script=$HPC_ITEM_TMP/eks-log-collector.sh sum rc=0 bundle="" file
  local before=()
  shopt -s nullglob
  mkdir -p -- "$HPC_ITEM_TMP"
  if [[ -z ${HPC_EKS_COLLECTOR_SHA256:-} ]]; then
    printf 'no sha256 configured for the EKS log collector: not run\n'
    return 1
  fi
  curl -fsS --retry 3 --connect-timeout 10 --max-time 120 -o "$script" --config - || {
    printf 'could not download the EKS log collector (curl rc=%s)\n' "$?"
    return 1
  }
  sum=$(sha256sum <"$script")
  sum=${sum%% *}
  if [[ $sum != "$HPC_EKS_COLLECTOR_SHA256" ]]; then
    printf 'EKS log collector sha256 is %s, expected %s: not run\n' "$sum" "$HPC_EKS_COLLECTOR_SHA256"
    return 1
  fi
  before=(/var/log/eks_*.tar.gz)
  (cd "$HPC_ITEM_TMP" && bash "$script" </dev/null) >"$dir/eks-log-collector-output.txt" 2>&1 || rc=$?
  for file in /var/log/eks_*.tar.gz; do
    [[ " ${before[*]} " == *" $file "* ]] && continue
    if [[ -z $bundle || $file -nt $bundle ]]; then
      bundle=$file
    fi
  done
  if [[ -z $bundle ]]; then
    printf 'the EKS log collector (rc=%s) made no new /var/log/eks_*.tar.gz\n' "$rc"
    return 1
  fi
  tar -xzf "$bundle" -C "$dir" --no-same-owner
  rm -f -- "$bundle"
  printf 'EKS log collector rc=%s, bundle %s unpacked\n' "$rc" "${bundle##*/}"
  return "$rc"
}
