# shellcheck shell=bash
# collect.sh: the entry point, the last part of collector_script.sh (see lib.sh).
#
# Inputs, from the environment only. Per node (the orchestrator's run stage):
#   INSTANCE_GROUP          required; any text (recorded exactly; local file names use a safe form)
#   INSTANCE_ID             required; letters, digits, '.', '_', '-'
#   CLUSTER_TYPE            required; eks or slurm (the one the script was composed for)
#   HPC_UPLOAD_URL          presigned S3 PUT URL for the tarball
#   HPC_STATUS_URL          presigned S3 PUT URL for a small JSON status object (optional)
#   HPC_EKS_COLLECTOR_URL   presigned S3 GET URL of the pinned EKS log collector (optional)
#   HPC_RUN_ID              the run's id: a second collector of the same run on this node exits 5
#   HPC_LAUNCH_ID           this launch's id, written into every status object and the report
#                           (launch.txt), so that no launch's result is taken for another's
#   HPC_DEADLINE_SECONDS    node-wide budget, packaging and upload included (840)
# The URLs are credentials: no item, log line, status object or result line ever shows them.
# Node options, the same for every node of a run: their defaults are baked into the
# generated block before this part (collectors/nodescript.py), and the environment wins:
#   HPC_SINCE               journal and log window: 30m, 12h, 3d, 2w, an ISO date/time, or all
#   HPC_FILE_CAP_MB         per-file cap; longer files keep their last bytes (50)
#   HPC_BUNDLE_CAP_MB       cap on the whole report before compression (2048)
#   HPC_NVIDIA_BUG_REPORT   1 to run nvidia-bug-report.sh (slow), 0 not to
#   HPC_DCGM_DIAG           1 to run DCGM's level-1 diagnostic (it loads the GPUs), 0 not to
#   HPC_EKS_COLLECTOR       1 to run the EKS log collector (needs its URL and sha256)
#   HPC_EKS_COLLECTOR_SHA256  the collector's expected sha256, checked again on the node
#   HPC_UPLOAD_MODE         presigned (curl PUT, no S3 permissions needed) or awscli (aws s3 cp)
#   HPC_S3_DESTINATION      awscli mode: s3://bucket/prefix/instances/ (the key adds GROUP_ID.tar.gz)
#   HPC_S3_REGION           awscli mode: the bucket's region (else the node's AWS configuration)
#   HPC_REDACT_PATTERNS     extra redaction patterns (extended regex), one per line
#   HPC_LAUNCH_DIR          the launcher's private folder (/tmp/hpc-run.XXXXXX) holding this script:
#                           removed when the script ends, with its log (HPC_LAUNCH_DIR.log) unless
#                           the script could not report (bad input), when the status names the log
# Other settings, with their defaults:
#   HPC_KEEP_DIR            without an upload destination, the tarball is moved here instead
#   HPC_ITEM_TIMEOUT (120), HPC_NVIDIA_BUG_REPORT_TIMEOUT (300), HPC_EKS_COLLECTOR_TIMEOUT (300)
#   HPC_WORK_ROOT           where the private work folder is made: the first of these (':'
#                           separated) with HPC_MIN_FREE_MB free (/tmp:/var/tmp:/opt/dlami/nvme)
#   HPC_MIN_FREE_MB         items are not run while the work root has less free (100)
#   HPC_POD_NAMESPACES      namespaces whose pod logs are collected (kube-system aws-hyperpod ...)
# Output: one progress line per item on stdout, and as the last line
#   HPC_RESULT status=S rc=N items=N failed_items=N skipped_items=N bytes=B sha256=H tarball=NAME [kept=PATH]
# S is ok, ok_with_errors, upload_failed or already_running; tarball is the local file name;
# kept (spaces as %20) is where the tarball stays on this node when it was not uploaded.
# Exit: 0 ok, 3 ok_with_errors, 4 upload_failed, 5 already_running, 2 bad input (one line on stderr).

set -Eeuo pipefail

readonly HPC_EXIT_OK=0 HPC_EXIT_ITEMS_FAILED=3 HPC_EXIT_UPLOAD_FAILED=4 HPC_EXIT_ALREADY_RUNNING=5
readonly HPC_URL_RE='^https?://[^[:space:]"\]+$'
readonly HPC_RESERVE_BYTES=1048576
readonly HPC_STATUS_RESERVE_S=10 HPC_UPLOAD_FLOOR_S=15
# Beside a tarball kept on the node after its upload failed: the node it belongs to.
readonly HPC_KEPT_MARK=.hpc-kept

# An unexpected failure in this shell still packages and delivers what was gathered.
hpc_on_error() {
  printf 'hpc-collect: internal error at line %s: %s\n' "$1" "$2" >&2
  if [[ $BASHPID == "$$" && -n ${HPC_REPORT_DIR:-} && -z ${HPC_FINISHING:-} ]]; then
    hpc_manifest_row internal_error 70 0 0 0 0 0 "line $1: $2"
    hpc_finish
  fi
}
trap 'hpc_on_error "$LINENO" "$BASH_COMMAND"' ERR

# Presigned URLs are credentials: HPC_UPLOAD_URL, HPC_STATUS_URL, HPC_EKS_COLLECTOR_URL and
# HPC_SCRIPT_URL (which the orchestrator exports to fetch this script). Keep the first three
# in shell variables, then re-run this script with none in its environment and the URLs on
# fd 3: `unset` alone would leave them in /proc/<pid>/environ, which `ps e` in any item
# shows. (Run from a pipe there is no file to re-run; unset is then the best there is.)
hpc_take_urls() {
  local self=${BASH_SOURCE[0]:-} name
  HPC_URL_UPLOAD="" HPC_URL_STATUS="" HPC_URL_EKS=""
  if [[ -n ${HPC_URLS_ON_FD3:-} ]]; then
    unset HPC_URLS_ON_FD3
    { IFS= read -r HPC_URL_UPLOAD && IFS= read -r HPC_URL_STATUS && IFS= read -r HPC_URL_EKS; } <&3 || true
    exec 3<&-
    return 0
  fi
  if [[ -z ${HPC_UPLOAD_URL:-}${HPC_STATUS_URL:-}${HPC_EKS_COLLECTOR_URL:-}${HPC_SCRIPT_URL:-} ]]; then
    return 0
  fi
  HPC_URL_UPLOAD=${HPC_UPLOAD_URL:-} HPC_URL_STATUS=${HPC_STATUS_URL:-} HPC_URL_EKS=${HPC_EKS_COLLECTOR_URL:-}
  unset HPC_UPLOAD_URL HPC_STATUS_URL HPC_EKS_COLLECTOR_URL HPC_SCRIPT_URL
  for name in HPC_URL_UPLOAD HPC_URL_STATUS HPC_URL_EKS; do
    # One URL per line on fd 3; checked for real in hpc_read_destination.
    [[ ${!name} != *$'\n'* ]] || hpc_bad_input "${name/HPC_URL_/HPC_} holds a newline"
  done
  if [[ -n $self && -f $self ]]; then
    export HPC_URLS_ON_FD3=1
    exec "$BASH" "$self" 3<<<"$HPC_URL_UPLOAD"$'\n'"$HPC_URL_STATUS"$'\n'"$HPC_URL_EKS"
  fi
}

# Sets NAME to the whole number in $NAME (or DEFAULT when unset), at least MIN.
hpc_int_setting() {
  local name=$1 default=$2 min=$3 value
  value=${!name:-$default}
  if [[ ! $value =~ ^[0-9]{1,9}$ ]] || ((10#$value < min)); then
    hpc_bad_input "$name must be a whole number >= $min, not $(printf '%q' "$value")"
  fi
  printf -v "$name" '%d' "$((10#$value))"
}

# Sets NAME to 1 or 0 from 1/true/yes/on or 0/false/no/off.
hpc_bool_setting() {
  local name=$1 default=$2
  case ${!name:-$default} in
    1 | true | yes | on) printf -v "$name" 1 ;;
    0 | false | no | off) printf -v "$name" 0 ;;
    *) hpc_bad_input "$name must be 1 or 0, not $(printf '%q' "${!name}")" ;;
  esac
}

hpc_read_identity() {
  # Any text is a valid group; it becomes a file name only in its safe form.
  if [[ -z ${INSTANCE_GROUP:-} ]]; then
    hpc_bad_input "INSTANCE_GROUP is not set"
  fi
  if [[ -z ${INSTANCE_ID:-} ]]; then
    hpc_bad_input "INSTANCE_ID is not set"
  fi
  if [[ ! $INSTANCE_ID =~ ^[A-Za-z0-9._-]+$ ]]; then
    hpc_bad_input "INSTANCE_ID must use only letters, digits, '.', '_' and '-', not $(printf '%q' "$INSTANCE_ID")"
  fi
  case ${CLUSTER_TYPE:-} in
    eks | slurm) ;;
    "") hpc_bad_input "CLUSTER_TYPE is not set (eks or slurm)" ;;
    *) hpc_bad_input "CLUSTER_TYPE must be eks or slurm, not $(printf '%q' "$CLUSTER_TYPE")" ;;
  esac
  if ! declare -F "hpc_items_$CLUSTER_TYPE" >/dev/null; then
    hpc_bad_input "this collector script was composed for another cluster type than $CLUSTER_TYPE"
  fi
  local name
  for name in HPC_RUN_ID HPC_LAUNCH_ID; do
    if [[ -n ${!name:-} && ! ${!name} =~ ^[A-Za-z0-9._:-]{1,128}$ ]]; then
      hpc_bad_input "$name must use only letters, digits, '.', '_', ':' and '-', not $(printf '%q' "${!name}")"
    fi
  done
}

# HPC_SINCE -> HPC_SINCE_EPOCH (0 for all) and HPC_SINCE_JOURNAL (journalctl --since, in
# the node's local time, which is how journalctl reads it; empty for all).
hpc_read_since() {
  local value=${HPC_SINCE:-3d} seconds epoch
  HPC_SINCE=$value
  if [[ $value == all ]]; then
    HPC_SINCE_EPOCH=0 HPC_SINCE_JOURNAL=""
    return 0
  fi
  if [[ $value =~ ^([0-9]{1,6})([smhdw])$ ]]; then
    case ${BASH_REMATCH[2]} in
      s) seconds=1 ;;
      m) seconds=60 ;;
      h) seconds=3600 ;;
      d) seconds=86400 ;;
      w) seconds=604800 ;;
    esac
    epoch=$(($(date +%s) - 10#${BASH_REMATCH[1]} * seconds))
  elif [[ $value =~ ^[0-9][0-9A-Za-z:.+\ -]*$ ]] && epoch=$(date -d "$value" +%s 2>/dev/null); then
    :
  else
    hpc_bad_input "HPC_SINCE must be a duration (30m, 12h, 3d, 2w), an ISO date/time or all, not $(printf '%q' "$value")"
  fi
  HPC_SINCE_EPOCH=$((epoch < 0 ? 0 : epoch))
  # shellcheck disable=SC2034 # read by hpc_journal (lib.sh) in the items
  HPC_SINCE_JOURNAL=$(date -d "@$HPC_SINCE_EPOCH" '+%Y-%m-%d %H:%M:%S')
}

hpc_read_options() {
  hpc_read_since
  hpc_int_setting HPC_FILE_CAP_MB 50 1
  hpc_int_setting HPC_BUNDLE_CAP_MB 2048 1
  # shellcheck disable=SC2034 # both read by lib.sh
  HPC_FILE_CAP_BYTES=$((HPC_FILE_CAP_MB * 1048576)) HPC_BUNDLE_CAP_BYTES=$((HPC_BUNDLE_CAP_MB * 1048576))
  hpc_bool_setting HPC_NVIDIA_BUG_REPORT 1
  hpc_bool_setting HPC_DCGM_DIAG 0
  hpc_bool_setting HPC_EKS_COLLECTOR 0
  hpc_int_setting HPC_NVIDIA_BUG_REPORT_TIMEOUT 300 3
  hpc_int_setting HPC_EKS_COLLECTOR_TIMEOUT 300 10
  HPC_EKS_COLLECTOR_SHA256=${HPC_EKS_COLLECTOR_SHA256:-}
  if [[ -n $HPC_EKS_COLLECTOR_SHA256 && ! $HPC_EKS_COLLECTOR_SHA256 =~ ^[0-9a-f]{64}$ ]]; then
    hpc_bad_input "HPC_EKS_COLLECTOR_SHA256 must be 64 lowercase hex digits"
  fi
  HPC_POD_NAMESPACES=${HPC_POD_NAMESPACES:-kube-system aws-hyperpod amazon-cloudwatch}
  if [[ ! $HPC_POD_NAMESPACES =~ ^[a-z0-9\ -]+$ ]]; then
    hpc_bad_input "HPC_POD_NAMESPACES must be namespace names separated by spaces"
  fi
  HPC_UPLOAD_MODE=${HPC_UPLOAD_MODE:-presigned}
  HPC_S3_DESTINATION=${HPC_S3_DESTINATION:-}
  HPC_S3_REGION=${HPC_S3_REGION:-}
  if [[ -n $HPC_S3_REGION && ! $HPC_S3_REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]]; then
    hpc_bad_input "HPC_S3_REGION must be an AWS region name, not $(printf '%q' "$HPC_S3_REGION")"
  fi
}

# Where the tarball goes: a presigned PUT, `aws s3 cp`, or (neither) HPC_KEEP_DIR.
hpc_read_destination() {
  local name
  for name in HPC_URL_UPLOAD HPC_URL_STATUS HPC_URL_EKS; do
    # curl reads URLs from a config line, so quotes, backslashes and blanks cannot be in
    # them (a presigned URL is percent-encoded and has none). Never echoed.
    if [[ -n ${!name} && ! ${!name} =~ $HPC_URL_RE ]]; then
      hpc_bad_input "${name/HPC_URL_/HPC_}_URL is not an http(s) URL without blanks, quotes or backslashes"
    fi
  done
  HPC_DELIVERY=""
  case $HPC_UPLOAD_MODE in
    presigned) [[ -z $HPC_URL_UPLOAD ]] || HPC_DELIVERY=presigned ;;
    awscli)
      if [[ -n $HPC_S3_DESTINATION ]]; then
        [[ $HPC_S3_DESTINATION =~ ^s3://[a-z0-9][a-z0-9.-]*[a-z0-9]/(.*/)?$ ]] ||
          hpc_bad_input "HPC_S3_DESTINATION must look like s3://bucket/prefix/ (ending in /)"
        HPC_DELIVERY=awscli
      fi
      ;;
    *) hpc_bad_input "HPC_UPLOAD_MODE must be presigned or awscli, not $(printf '%q' "$HPC_UPLOAD_MODE")" ;;
  esac
  if [[ -n $HPC_DELIVERY ]]; then
    return 0
  fi
  if [[ -z ${HPC_KEEP_DIR:-} ]]; then
    if [[ $HPC_UPLOAD_MODE == awscli ]]; then
      hpc_bad_input "HPC_S3_DESTINATION is not set (nor HPC_KEEP_DIR, to keep the tarball on the node)"
    fi
    hpc_bad_input "HPC_UPLOAD_URL is not set (nor HPC_KEEP_DIR, to keep the tarball on the node)"
  elif ! mkdir -p -- "$HPC_KEEP_DIR" 2>/dev/null; then
    hpc_bad_input "HPC_KEEP_DIR $(printf '%q' "$HPC_KEEP_DIR") is not a folder that can be made"
  fi
  HPC_DELIVERY=keep
}

# The work roots that exist, in order of preference (HPC_WORK_ROOT, ':' separated).
hpc_read_work_roots() {
  local roots=() root
  IFS=: read -r -a roots <<<"${HPC_WORK_ROOT:-/tmp:/var/tmp:/opt/dlami/nvme}"
  HPC_WORK_ROOTS=()
  for root in ${roots[@]+"${roots[@]}"}; do
    [[ -n $root && -d $root ]] && HPC_WORK_ROOTS+=("$root")
  done
  if ((${#HPC_WORK_ROOTS[@]} == 0)); then
    hpc_bad_input "HPC_WORK_ROOT $(printf '%q' "${HPC_WORK_ROOT:-}") names no folder"
  fi
}

# Makes the private work folder in the first root with HPC_MIN_FREE_MB free (a full /tmp
# must not cost the report), else in the root with the most room.
hpc_make_work_dir() {
  local root free best="" best_free=-1
  for root in "${HPC_WORK_ROOTS[@]}"; do
    hpc_free_mb "$root"
    free=${HPC_FREE_MB:-999999999}
    if ((free >= HPC_MIN_FREE_MB)) && hpc_try_work_dir "$root"; then
      return 0
    fi
    if ((free > best_free)); then
      best=$root best_free=$free
    fi
  done
  hpc_try_work_dir "$best" ||
    hpc_bad_input "cannot make a work folder under $(printf '%q' "$best")"
}

# A private folder (mode 0700, random name): never fixed names in a shared /tmp.
hpc_try_work_dir() {
  HPC_WORK_DIR=$(mktemp -d "$1/hpc-collect.XXXXXXXX" 2>/dev/null) || return 1
  HPC_WORK_ROOT=$1
}

hpc_read_inputs() {
  local tool tools=(timeout tar gzip sha256sum sed grep find sort stat)
  hpc_read_identity
  hpc_read_options
  hpc_read_destination
  hpc_int_setting HPC_DEADLINE_SECONDS 840 1
  hpc_int_setting HPC_ITEM_TIMEOUT 120 1
  hpc_int_setting HPC_MIN_FREE_MB 100 0
  hpc_read_work_roots
  hpc_check_redact_patterns
  case $HPC_DELIVERY in
    presigned) tools+=(curl) ;;
    awscli) tools+=(aws) ;;
  esac
  for tool in "${tools[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      hpc_bad_input "$tool is not on PATH"
    fi
  done
}

# A root-only folder for lock files: /run/hpc-collect, else one of our own in the work root.
hpc_lock_dir() {
  local dir
  for dir in /run/hpc-collect "${HPC_WORK_ROOTS[0]}/.hpc-collect-locks-$UID"; do
    [[ -d $dir ]] || mkdir -m 0700 -- "$dir" 2>/dev/null || continue
    if [[ -d $dir && ! -L $dir && -O $dir ]]; then
      printf '%s\n' "$dir"
      return 0
    fi
  done
  return 1
}

# One collector per run and node: a second one (a retried session, a twice-typed line)
# reports the first one's pid and exits 5 without touching anything. The lock file is
# named by run and instance (sandbox nodes share /run), and never removed: removing it
# would let two collectors lock two different files.
hpc_lock_run() {
  local dir file pid=""
  # Items close HPC_LOCK_FD; without a run id it is just /dev/null.
  exec {HPC_LOCK_FD}</dev/null
  [[ -n ${HPC_RUN_ID:-} ]] || return 0
  if ! command -v flock >/dev/null 2>&1 || ! dir=$(hpc_lock_dir); then
    hpc_progress "no lock on this run (flock or a lock folder missing): not checking for another collector"
    return 0
  fi
  file=$dir/$(hpc_safe_name "$HPC_RUN_ID" 128)_$INSTANCE_ID.lock
  exec {HPC_LOCK_FD}<>"$file"
  if ! flock -n "$HPC_LOCK_FD"; then
    IFS= read -r pid <"$file" || true
    [[ $pid =~ ^[0-9]+$ ]] || pid=""
    # Detached, this is how the orchestrator learns that the result to wait for is the holder's.
    hpc_report_status already_running "\"holder_pid\":${pid:-null}"
    hpc_remove_launch_files 0
    printf 'HPC_RESULT status=already_running rc=%s items=0 failed_items=0 skipped_items=0 bytes=0 sha256=- tarball=- pid=%s\n' \
      "$HPC_EXIT_ALREADY_RUNNING" "${pid:--}"
    exit "$HPC_EXIT_ALREADY_RUNNING"
  fi
  printf '%s\n' "$$" >"$file"
}

# JSON string for TEXT (quotes, backslashes and control characters escaped).
hpc_json_string() {
  local LC_ALL=C
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\n'/\\n}
  text=${text//$'\t'/\\t}
  text=${text//[[:cntrl:]]/?}
  printf '"%s"' "$text"
}

# PUTs the status object: {"state": STATE, EXTRA (JSON members, already encoded), and what names
# this launch: run, launch, node, pid}. The orchestrator takes only its own launch's result.
hpc_report_status() {
  local extra=${2:+$2,} launch=null
  [[ -z ${HPC_LAUNCH_ID:-} ]] || launch=$(hpc_json_string "$HPC_LAUNCH_ID")
  hpc_put_status "{\"state\":\"$1\",$extra\"run_id\":$(hpc_json_string "${HPC_RUN_ID:-}"),\"launch_id\":$launch,\"instance_id\":$(hpc_json_string "${INSTANCE_ID:-}"),\"pid\":$$}"
}

# PUTs a small JSON object to HPC_STATUS_URL, for an orchestrator that does not wait in
# the session. Never fatal, URL never shown (curl reads it from stdin).
hpc_put_status() {
  local rc=0 err
  [[ -n ${HPC_URL_STATUS:-} ]] || return 0
  command -v curl >/dev/null 2>&1 || return 0
  err=$(printf 'url = "%s"\n' "$HPC_URL_STATUS" |
    curl -fsS --retry 2 --connect-timeout 5 --max-time 10 -X PUT -H 'Content-Type: application/json' \
      --data-binary "$1" -o /dev/null --config - 2>&1) || rc=$?
  if ((rc != 0)); then
    hpc_progress "status report failed (curl rc=$rc): $(hpc_scrub_urls <<<"$err")"
  fi
  return 0
}

hpc_utc_now() {
  date -u +%Y-%m-%dT%H:%M:%SZ
}

# Bad input: the orchestrator, when it does not wait in the session, learns it at once.
# Its log stays (the one file a launch leaves), and the status says where.
hpc_on_bad_input() {
  local log=null
  [[ ! -f ${HPC_LAUNCH_DIR:-}.log ]] || log=$(hpc_json_string "$HPC_LAUNCH_DIR.log")
  if [[ -n ${HPC_URL_STATUS:-} && $HPC_URL_STATUS =~ $HPC_URL_RE ]]; then
    hpc_report_status "done" "\"status\":\"bad_input\",\"rc\":$HPC_EXIT_BAD_INPUT,\"error\":$(hpc_json_string "$1"),\"log\":$log,\"finished\":\"$(hpc_utc_now)\"" >/dev/null
  fi
  hpc_remove_launch_files 1
}

# The launcher's folder (this script's copy; its env file is gone already) and its log:
# nothing of a launch stays on the node but what is worth keeping. KEEP_LOG 1 keeps the log.
hpc_remove_launch_files() {
  local keep_log=$1 dir=${HPC_LAUNCH_DIR:-}
  [[ $dir == /*/hpc-run.* && -d $dir && ! -L $dir && -O $dir ]] || return 0
  rm -rf -- "$dir"
  ((keep_log)) || rm -f -- "$dir.log"
}

hpc_cleanup() {
  local dir
  for dir in ${HPC_EXTRA_DIRS[@]+"${HPC_EXTRA_DIRS[@]}"} ${HPC_WORK_DIR:+"$HPC_WORK_DIR"}; do
    if [[ -n ${HPC_KEPT:-} && $HPC_KEPT == "$dir"/* ]]; then
      # The tarball was not delivered: it stays in its private folder, marked as kept for the
      # next collection of this node that delivers (hpc_remove_kept_tarballs) to remove.
      find "$dir" -mindepth 1 -maxdepth 1 ! -path "$HPC_KEPT" -exec rm -rf -- {} + 2>/dev/null || true
      printf '%s\n' "$INSTANCE_ID" >"$dir/$HPC_KEPT_MARK" 2>/dev/null || true
    else
      rm -rf -- "$dir"
    fi
  done
  hpc_remove_launch_files 0
}

# After a delivery: the tarballs earlier collections of this node kept (their upload failed)
# are of no more use, and nodes must not fill up run after run. Only folders marked kept for
# this very node are removed, never a collector's folder in use.
hpc_remove_kept_tarballs() {
  local root mark
  for root in "${HPC_WORK_ROOTS[@]}"; do
    for mark in "$root"/hpc-collect.*/"$HPC_KEPT_MARK"; do
      [[ -f $mark && ! -L $mark && -O $mark && $(<"$mark") == "$INSTANCE_ID" ]] || continue
      rm -rf -- "${mark%/*}" && hpc_progress "removed an earlier kept tarball: $(hpc_printable "${mark%/*}")"
    done
  done
}

# Tools in HyperPod's usual places, for a root shell whose PATH lacks them (SSM sessions
# start `sh` without the login profile): appended, so the node's own PATH wins.
hpc_extend_path() {
  local dir
  for dir in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin /opt/slurm/bin \
    /opt/amazon/efa/bin /usr/local/cuda/bin; do
    if [[ -d $dir && ":$PATH:" != *":$dir:"* ]]; then
      PATH=$PATH:$dir
    fi
  done
  export PATH
}

hpc_prepare() {
  HPC_STARTED=$(hpc_utc_now)
  hpc_start_clock "$HPC_DEADLINE_SECONDS"
  # Collection shares the node with training jobs: lowest CPU and I/O priority short of idle.
  renice -n 10 -p "$$" >/dev/null 2>&1 || true
  ionice -c 2 -n 7 -p "$$" >/dev/null 2>&1 || true
  hpc_make_work_dir
  HPC_EXTRA_DIRS=()
  trap hpc_cleanup EXIT
  trap 'hpc_on_signal TERM' TERM
  trap 'hpc_on_signal INT' INT
  trap 'hpc_on_signal HUP' HUP
  HPC_SAFE_GROUP=$(hpc_safe_name "$INSTANCE_GROUP" 100)
  HPC_REPORT_NAME=hyperpod_report_${HPC_SAFE_GROUP}_${INSTANCE_ID}_$(date -u +%Y%m%d_%H%M%S)
  HPC_REPORT_DIR=$HPC_WORK_DIR/$HPC_REPORT_NAME
  # shellcheck disable=SC2034 # read by lib.sh, here and in the items
  HPC_CUTS_FILE=$HPC_WORK_DIR/cuts.tsv
  mkdir -- "$HPC_REPORT_DIR" "$HPC_WORK_DIR/tmp"
  hpc_prepare_redaction "$HPC_WORK_DIR"
  hpc_prepare_redaction_slots
  # Room for the manifest and the tarball if the disk fills up while items run.
  head -c "$HPC_RESERVE_BYTES" /dev/zero >"$HPC_WORK_DIR/reserve" 2>/dev/null || rm -f -- "$HPC_WORK_DIR/reserve"
  if [[ $HPC_WORK_ROOT != "${HPC_WORK_ROOTS[0]}" ]]; then
    hpc_progress "$(hpc_printable "${HPC_WORK_ROOTS[0]}") has less than $HPC_MIN_FREE_MB MB free: working in $(hpc_printable "$HPC_WORK_ROOT")"
  fi
  hpc_report_status running "\"started\":\"$HPC_STARTED\""
}

# The operator's extra commands (HPC_USER_COMMANDS, from the generated block), each its
# own item; the text runs as `bash -c TEXT` and is never expanded by this script.
hpc_run_user_commands() {
  local i name
  for ((i = 0; i < ${#HPC_USER_COMMANDS[@]}; i++)); do
    printf -v name 'command_%02d' "$((i + 1))"
    hpc_run_item "$name" "${name}_$(hpc_safe_name "${HPC_USER_COMMANDS[i]}").txt" \
      command "${HPC_USER_COMMANDS[i]}"
  done
}

# tar into DIR; GNU tar exits 1 when a file changed while it was read (a stray child of a
# killed item still writing), and the archive is still whole.
hpc_tar_into() {
  local rc=0
  tar -C "$HPC_WORK_DIR" -czf "$1/$HPC_TARBALL_NAME" -- "$HPC_REPORT_NAME" 2>/dev/null || rc=$?
  if ((rc <= 1)); then
    HPC_TARBALL=$1/$HPC_TARBALL_NAME
    return 0
  fi
  rm -f -- "$1/$HPC_TARBALL_NAME"
  return 1
}

# The largest file of the report goes, and is named in pruned.txt: used only when no
# root has room for the whole tarball.
hpc_prune_largest() {
  local largest
  largest=$(find "$HPC_REPORT_DIR" -type f ! -name 'manifest*.tsv' ! -name pruned.txt -printf '%s\t%P\n' 2>/dev/null |
    sort -rn | head -n 1 | cut -f 2-) || true
  [[ -n $largest ]] || return 1
  rm -f -- "$HPC_REPORT_DIR/$largest"
  printf '%s\n' "$largest" >>"$HPC_REPORT_DIR/pruned.txt" 2>/dev/null || true
  hpc_progress "no room for the tarball: left out $(hpc_printable "$largest")"
}

# Sets HPC_TARBALL; fails only when there is no whole tarball to deliver.
hpc_package() {
  local root dir tries
  HPC_TARBALL_NAME=${HPC_SAFE_GROUP}_${INSTANCE_ID}.tar.gz
  rm -f -- "$HPC_WORK_DIR/reserve"
  rm -rf -- "$HPC_WORK_DIR/tmp"
  hpc_write_manifest 2>/dev/null || hpc_progress "could not write the manifest"
  hpc_tar_into "$HPC_WORK_DIR" && return 0
  for root in "${HPC_WORK_ROOTS[@]}"; do
    [[ $root != "$HPC_WORK_ROOT" ]] || continue
    dir=$(mktemp -d "$root/hpc-collect.XXXXXXXX" 2>/dev/null) || continue
    HPC_EXTRA_DIRS+=("$dir")
    hpc_tar_into "$dir" && return 0
  done
  for ((tries = 0; tries < 50; tries++)); do
    hpc_prune_largest || return 1
    hpc_tar_into "$HPC_WORK_DIR" && return 0
  done
  return 1
}

# curl's messages name the URL on some failures: keep scheme, host and path only.
hpc_scrub_urls() {
  sed -E 's#(https?://[^?[:space:]]*)\?[^[:space:]]*#\1?<redacted>#g' | tr '\n' ' '
}

# The upload ends before the deadline, with time left for the last status report: the
# orchestrator stops waiting soon after the deadline (collectors/nodescript.py). A node already
# late still tries for HPC_UPLOAD_FLOOR_S: gathered data is delivered if at all possible.
hpc_upload_budget() {
  hpc_seconds_left
  local budget=$((HPC_SECONDS_LEFT - HPC_STATUS_RESERVE_S))
  printf '%s\n' "$((budget < HPC_UPLOAD_FLOOR_S ? HPC_UPLOAD_FLOOR_S : budget))"
}

# The URL goes to curl on stdin (a config line), so it is in no process's arguments.
hpc_upload_presigned() {
  local rc=0 max_s err=$HPC_WORK_DIR/upload.err
  max_s=$(hpc_upload_budget)
  printf 'url = "%s"\n' "$HPC_URL_UPLOAD" |
    curl -fsS --retry 3 --retry-connrefused --connect-timeout 10 --max-time "$max_s" \
      --retry-max-time "$max_s" -X PUT -T "$HPC_TARBALL" -o /dev/null --config - 2>"$err" || rc=$?
  if ((rc != 0)); then
    HPC_UPLOAD_ERROR="upload failed (curl rc=$rc): $(hpc_scrub_urls <"$err")"
    hpc_progress "$HPC_UPLOAD_ERROR"
    return 1
  fi
  hpc_progress "uploaded $HPC_TARBALL_NAME"
}

# The fallback mode: the node's own AWS credentials (instance role). The key holds the
# group exactly as given, as the orchestrator expects; it is an argument, never shell text.
hpc_upload_awscli() {
  local rc=0 max_s err=$HPC_WORK_DIR/upload.err
  local destination=${HPC_S3_DESTINATION}${INSTANCE_GROUP}_${INSTANCE_ID}.tar.gz
  max_s=$(hpc_upload_budget)
  timeout --kill-after=10 "$max_s" aws s3 cp --only-show-errors ${HPC_S3_REGION:+--region "$HPC_S3_REGION"} \
    -- "$HPC_TARBALL" "$destination" \
    </dev/null >/dev/null 2>"$err" {HPC_LOCK_FD}>&- || rc=$?
  if ((rc != 0)); then
    HPC_UPLOAD_ERROR="upload failed (aws s3 cp rc=$rc): $(hpc_scrub_urls <"$err")"
    hpc_progress "$HPC_UPLOAD_ERROR"
    return 1
  fi
  hpc_progress "uploaded $HPC_TARBALL_NAME with aws s3 cp"
}

hpc_deliver() {
  case $HPC_DELIVERY in
    presigned) hpc_upload_presigned ;;
    awscli) hpc_upload_awscli ;;
    keep)
      if mv -f -- "$HPC_TARBALL" "$HPC_KEEP_DIR/"; then
        HPC_TARBALL=$HPC_KEEP_DIR/$HPC_TARBALL_NAME
        hpc_progress "kept $HPC_TARBALL_NAME in $(hpc_printable "$HPC_KEEP_DIR")"
      else
        hpc_progress "could not move $HPC_TARBALL_NAME into $(hpc_printable "$HPC_KEEP_DIR")"
        return 1
      fi
      ;;
  esac
}

# A path in the result line is one token: %, blanks and control characters percent-encoded.
hpc_result_path() {
  local LC_ALL=C
  local path=${1//%/%25}
  path=${path// /%20}
  path=${path//$'\t'/%09}
  path=${path//$'\n'/%0A}
  printf '%s\n' "${path//[[:cntrl:]]/%3F}"
}

# Always reached, whatever the items did: package, deliver, then the one result line.
hpc_finish() {
  local bytes=0 sha=- status=ok code=$HPC_EXIT_OK kept=""
  HPC_FINISHING=1
  trap - ERR
  set +e
  hpc_settle_all
  if hpc_package; then
    bytes=$(($(wc -c <"$HPC_TARBALL")))
    sha=$(sha256sum <"$HPC_TARBALL")
    sha=${sha%% *}
    if ! hpc_deliver; then
      status=upload_failed
      code=$HPC_EXIT_UPLOAD_FAILED
    elif [[ $HPC_DELIVERY != keep ]]; then
      hpc_remove_kept_tarballs
    fi
    if [[ $status == upload_failed || $HPC_DELIVERY == keep ]]; then
      kept=$HPC_TARBALL
    fi
  else
    hpc_progress "packaging failed: nothing to deliver"
    status=upload_failed
    code=$HPC_EXIT_UPLOAD_FAILED
  fi
  if [[ $status == ok ]] && ((HPC_FAILED_ITEMS > 0)); then
    status=ok_with_errors
    code=$HPC_EXIT_ITEMS_FAILED
  fi
  [[ $HPC_DELIVERY == keep ]] || HPC_KEPT=$kept
  hpc_report_status "done" "\"status\":\"$status\",\"rc\":$code,\"items\":$HPC_ITEMS,\"failed_items\":$HPC_FAILED_ITEMS,\"skipped_items\":$HPC_SKIPPED_ITEMS,\"bytes\":$bytes,\"sha256\":\"$sha\",\"tarball\":\"${HPC_TARBALL_NAME:-}\",\"kept\":$(
    if [[ -n $kept ]]; then hpc_json_string "$kept"; else printf null; fi),\"error\":$(
    if [[ -n ${HPC_UPLOAD_ERROR:-} ]]; then hpc_json_string "${HPC_UPLOAD_ERROR:0:500}"; else printf null; fi),\"started\":\"$HPC_STARTED\",\"finished\":\"$(hpc_utc_now)\""
  printf 'HPC_RESULT status=%s rc=%s items=%s failed_items=%s skipped_items=%s bytes=%s sha256=%s tarball=%s%s\n' \
    "$status" "$code" "$HPC_ITEMS" "$HPC_FAILED_ITEMS" "$HPC_SKIPPED_ITEMS" "$bytes" "$sha" "${HPC_TARBALL_NAME:-}" \
    "${kept:+ kept=$(hpc_result_path "$kept")}"
  exit "$code"
}

hpc_main() {
  hpc_take_urls
  hpc_extend_path
  hpc_read_inputs
  hpc_lock_run
  hpc_prepare
  hpc_progress "collecting $CLUSTER_TYPE node $INSTANCE_ID ($(hpc_printable "$INSTANCE_GROUP")) into $HPC_REPORT_NAME"
  # Each stage must be done by its share of the items' time (hpc_begin_stage).
  hpc_begin_stage "logs and system" 40
  hpc_items_common
  hpc_begin_stage "$CLUSTER_TYPE" 55
  "hpc_items_$CLUSTER_TYPE"
  hpc_begin_stage GPU 75
  hpc_items_gpu
  hpc_begin_stage "operator command" 85
  hpc_run_user_commands
  hpc_begin_stage slow 100
  hpc_items_slow_common
  "hpc_items_slow_$CLUSTER_TYPE"
  hpc_finish
}

hpc_main
