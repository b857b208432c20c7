# shellcheck shell=bash
# collect.sh: the entry point, the last part of collector_script.sh (see lib.sh).
#
# Inputs, from the environment only:
#   INSTANCE_GROUP, INSTANCE_ID   required; letters, digits, '.', '_', '-'
#   CLUSTER_TYPE                  required; eks or slurm (the one the script was composed for)
#   HPC_UPLOAD_URL                presigned S3 PUT URL for the tarball; never shown to any item
#   HPC_KEEP_DIR                  without an upload URL, the tarball is moved here instead
#   HPC_DEADLINE_SECONDS          node-wide budget, packaging and upload included (840)
#   HPC_ITEM_TIMEOUT              time limit of one item (120)
#   HPC_WORK_ROOT                 where the private work folder is made (/tmp)
#   HPC_MIN_FREE_MB               items are not run while the work root has less free (100)
# Output: one progress line per item on stdout, and as the last line
#   HPC_RESULT status=<ok|ok_with_errors|upload_failed> items=N failed_items=M bytes=B sha256=H tarball=NAME
# Exit: 0 ok, 3 ok_with_errors, 4 upload_failed, 2 bad input (one line on stderr).

set -Eeuo pipefail

readonly HPC_EXIT_OK=0 HPC_EXIT_ITEMS_FAILED=3 HPC_EXIT_UPLOAD_FAILED=4
trap 'printf "hpc-collect: internal error at line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

# Presigned URLs are credentials: HPC_UPLOAD_URL (write our tarball) and HPC_SCRIPT_URL
# (which the orchestrator exports to fetch this script). Keep the first in a shell
# variable, then re-run this script with neither in its environment and the upload URL
# on fd 3: `unset` alone would leave both in /proc/<pid>/environ, which `ps e` in any item
# shows. (Run from a pipe there is no file to re-run; unset is then the best there is.)
hpc_take_upload_url() {
  local self=${BASH_SOURCE[0]:-}
  HPC_URL=""
  if [[ -n ${HPC_URL_ON_FD3:-} ]]; then
    unset HPC_URL_ON_FD3
    IFS= read -r HPC_URL <&3 || true
    exec 3<&-
    return 0
  fi
  if [[ -n ${HPC_UPLOAD_URL:-}${HPC_SCRIPT_URL:-} ]]; then
    HPC_URL=${HPC_UPLOAD_URL:-}
    unset HPC_UPLOAD_URL HPC_SCRIPT_URL
    if [[ -n $self && -f $self ]]; then
      export HPC_URL_ON_FD3=1
      exec "$BASH" "$self" 3<<<"$HPC_URL"
    fi
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

hpc_read_identity() {
  local name
  for name in INSTANCE_GROUP INSTANCE_ID; do
    if [[ -z ${!name:-} ]]; then
      hpc_bad_input "$name is not set"
    fi
    # Both become file names, here and in S3.
    if [[ ! ${!name} =~ ^[A-Za-z0-9._-]+$ ]]; then
      hpc_bad_input "$name must use only letters, digits, '.', '_' and '-', not $(printf '%q' "${!name}")"
    fi
  done
  case ${CLUSTER_TYPE:-} in
    eks | slurm) ;;
    "") hpc_bad_input "CLUSTER_TYPE is not set (eks or slurm)" ;;
    *) hpc_bad_input "CLUSTER_TYPE must be eks or slurm, not $(printf '%q' "$CLUSTER_TYPE")" ;;
  esac
  if ! declare -F "hpc_items_$CLUSTER_TYPE" >/dev/null; then
    hpc_bad_input "this collector script was composed for another cluster type than $CLUSTER_TYPE"
  fi
}

hpc_read_destination() {
  # curl reads the URL from a config line, so quotes, backslashes and blanks cannot be in it
  # (a presigned URL is percent-encoded and has none). The URL itself is never echoed.
  local url_re='^https?://[^[:space:]"\]+$'
  if [[ -n $HPC_URL ]]; then
    if [[ ! $HPC_URL =~ $url_re ]]; then
      hpc_bad_input "HPC_UPLOAD_URL is not an http(s) URL without blanks, quotes or backslashes"
    fi
  elif [[ -z ${HPC_KEEP_DIR:-} ]]; then
    hpc_bad_input "HPC_UPLOAD_URL is not set (nor HPC_KEEP_DIR, to keep the tarball on the node)"
  elif ! mkdir -p -- "$HPC_KEEP_DIR" 2>/dev/null; then
    hpc_bad_input "HPC_KEEP_DIR $(printf '%q' "$HPC_KEEP_DIR") is not a folder that can be made"
  fi
}

hpc_read_inputs() {
  local tool tools=(timeout tar gzip sha256sum)
  hpc_read_identity
  hpc_read_destination
  hpc_int_setting HPC_DEADLINE_SECONDS 840 1
  hpc_int_setting HPC_ITEM_TIMEOUT 120 1
  hpc_int_setting HPC_MIN_FREE_MB 100 0
  HPC_WORK_ROOT=${HPC_WORK_ROOT:-/tmp}
  if [[ ! -d $HPC_WORK_ROOT ]]; then
    hpc_bad_input "HPC_WORK_ROOT $(printf '%q' "$HPC_WORK_ROOT") is not a folder"
  fi
  if [[ -n $HPC_URL ]]; then
    tools+=(curl)
  fi
  for tool in "${tools[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      hpc_bad_input "$tool is not on PATH"
    fi
  done
}

hpc_cleanup() {
  if [[ -n ${HPC_WORK_DIR:-} ]]; then
    rm -rf -- "$HPC_WORK_DIR"
  fi
}

hpc_prepare() {
  hpc_start_clock "$HPC_DEADLINE_SECONDS"
  # Collection shares the node with training jobs: lowest CPU and I/O priority short of idle.
  renice -n 10 -p "$$" >/dev/null 2>&1 || true
  ionice -c 2 -n 7 -p "$$" >/dev/null 2>&1 || true
  # A private folder (mode 0700, random name): never fixed names in a shared /tmp.
  HPC_WORK_DIR=$(mktemp -d "$HPC_WORK_ROOT/hpc-collect.XXXXXXXX" 2>/dev/null) ||
    hpc_bad_input "cannot make a work folder under $(printf '%q' "$HPC_WORK_ROOT")"
  trap hpc_cleanup EXIT
  trap 'hpc_on_signal TERM' TERM
  trap 'hpc_on_signal INT' INT
  trap 'hpc_on_signal HUP' HUP
  HPC_REPORT_NAME=hyperpod_report_${INSTANCE_GROUP}_${INSTANCE_ID}_$(date -u +%Y%m%d_%H%M%S)
  HPC_REPORT_DIR=$HPC_WORK_DIR/$HPC_REPORT_NAME
  mkdir -- "$HPC_REPORT_DIR"
  printf 'item\trc\tseconds\tbytes\ttimed_out\n' >"$HPC_REPORT_DIR/manifest.tsv"
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

# Sets HPC_TARBALL; fails only when there is no whole tarball to deliver.
hpc_package() {
  local rc=0
  HPC_TARBALL_NAME=${INSTANCE_GROUP}_${INSTANCE_ID}.tar.gz
  HPC_TARBALL=$HPC_WORK_DIR/$HPC_TARBALL_NAME
  tar -C "$HPC_WORK_DIR" -czf "$HPC_TARBALL" -- "$HPC_REPORT_NAME" || rc=$?
  # GNU tar exits 1 when a file changed while it was read (a stray child of a killed item
  # still writing); the archive is still whole.
  ((rc <= 1))
}

# curl's messages name the URL on some failures: keep scheme, host and path only.
hpc_scrub_urls() {
  sed -E 's#(https?://[^?[:space:]]*)\?[^[:space:]]*#\1?<redacted>#g' | tr '\n' ' '
}

# The URL goes to curl on stdin (a config line), so it is in no process's arguments.
hpc_upload() {
  local rc=0 max_s err=$HPC_WORK_DIR/upload.err
  # Past the deadline the upload still gets a minute: gathered data is always delivered.
  max_s=$(hpc_seconds_left)
  if ((max_s < 60)); then
    max_s=60
  fi
  printf 'url = "%s"\n' "$HPC_URL" |
    curl -fsS --retry 3 --connect-timeout 10 --max-time "$max_s" --retry-max-time "$max_s" \
      -X PUT -T "$HPC_TARBALL" -o /dev/null --config - 2>"$err" || rc=$?
  if ((rc != 0)); then
    hpc_progress "upload failed (curl rc=$rc): $(hpc_scrub_urls <"$err")"
    return 1
  fi
  hpc_progress "uploaded $HPC_TARBALL_NAME"
}

hpc_deliver() {
  if [[ -n $HPC_URL ]]; then
    hpc_upload
  elif mv -f -- "$HPC_TARBALL" "$HPC_KEEP_DIR/"; then
    hpc_progress "kept $HPC_TARBALL_NAME in $HPC_KEEP_DIR"
  else
    hpc_progress "could not move $HPC_TARBALL_NAME into $HPC_KEEP_DIR"
    return 1
  fi
}

# Always reached, whatever the items did: package, deliver, then the one result line.
hpc_finish() {
  local bytes=0 sha=- status=ok code=$HPC_EXIT_OK
  if hpc_package; then
    bytes=$(($(wc -c <"$HPC_TARBALL")))
    sha=$(sha256sum <"$HPC_TARBALL")
    sha=${sha%% *}
    if ! hpc_deliver; then
      status=upload_failed
      code=$HPC_EXIT_UPLOAD_FAILED
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
  printf 'HPC_RESULT status=%s items=%s failed_items=%s bytes=%s sha256=%s tarball=%s\n' \
    "$status" "$HPC_ITEMS" "$HPC_FAILED_ITEMS" "$bytes" "$sha" "${HPC_TARBALL_NAME:-}"
  exit "$code"
}

hpc_main() {
  hpc_take_upload_url
  hpc_read_inputs
  hpc_prepare
  hpc_progress "collecting $CLUSTER_TYPE node $INSTANCE_ID ($INSTANCE_GROUP) into $HPC_REPORT_NAME"
  hpc_items_common
  "hpc_items_$CLUSTER_TYPE"
  hpc_run_user_commands
  hpc_finish
}

hpc_main
