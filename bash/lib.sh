# shellcheck shell=bash
# lib.sh: helpers of the node-side collector. collectors/nodescript.py concatenates
# lib.sh, common.sh, eks.sh or slurm.sh, the operator's commands and collect.sh into the
# one collector_script.sh a node runs; none of these files is run alone.
#
# Bash 4.2 (Amazon Linux 2) is the oldest shell this must run on: no negative array
# subscripts, no `wait -n`, no namerefs, and never expand a possibly empty array under
# `set -u`.

# Exit code for bad input or configuration (the others are in collect.sh).
readonly HPC_EXIT_BAD_INPUT=2

# manifest.tsv rc of an item that never started (its file then holds a one-line note).
readonly HPC_RC_DEADLINE=124     # the node-wide deadline had passed (timed_out=1)
readonly HPC_RC_NO_SPACE=75      # the work root had less than HPC_MIN_FREE_MB free (EX_TEMPFAIL)
readonly HPC_RC_INTERRUPTED=143  # the script had been sent TERM, INT or HUP

# Seconds between an item's TERM and its KILL: a wedged nvidia-smi may ignore TERM, and
# the node budget is better spent on the next item than on a long grace.
readonly HPC_KILL_GRACE=3

# Set by collect.sh once it is running; declared here so helpers work under `set -u`.
HPC_ITEMS=0
HPC_FAILED_ITEMS=0
HPC_ITEM_PID=""
HPC_INTERRUPTED=""
HPC_WAIT_INTERRUPTED=0

# One progress line on stdout; the orchestrator shows these and keys on the last one.
hpc_progress() {
  printf '[hpc] %s\n' "$*"
}

# Bad input or configuration: one line on stderr, exit 2, nothing collected.
hpc_bad_input() {
  printf 'hpc-collect: %s\n' "$1" >&2
  exit "$HPC_EXIT_BAD_INPUT"
}

hpc_now_ms() {
  date +%s%3N
}

# 1234 ms -> "1.2" (progress) or "1.234" (manifest).
hpc_format_ms() {
  local ms=$1 decimals=$2
  if [[ $decimals == 3 ]]; then
    printf '%d.%03d' "$((ms / 1000))" "$((ms % 1000))"
  else
    printf '%d.%d' "$((ms / 1000))" "$((ms % 1000 / 100))"
  fi
}

# 2150 -> "2.1KB": progress lines are read by people.
hpc_format_bytes() {
  local bytes=$1
  if ((bytes < 1024)); then
    printf '%dB' "$bytes"
  elif ((bytes < 1048576)); then
    printf '%d.%dKB' "$((bytes / 1024))" "$((bytes % 1024 * 10 / 1024))"
  else
    printf '%d.%dMB' "$((bytes / 1048576))" "$((bytes % 1048576 * 10 / 1048576))"
  fi
}

# Apparent size of a file or a whole tree; 0 when it is missing or unreadable, because
# a size is a report detail and must never stop the collection.
hpc_size_bytes() {
  local out=""
  if [[ -e $1 ]]; then
    out=$(du -sb -- "$1" 2>/dev/null) || true
  fi
  out=${out%%[[:space:]]*}
  printf '%s\n' "${out:-0}"
}

# Free MB under $1, or nothing when df cannot tell (then no item is held back for it).
hpc_free_mb() {
  local kb
  kb=$(df -Pk -- "$1" 2>/dev/null | awk 'NR == 2 { print $4 }') || true
  if [[ $kb =~ ^[0-9]+$ ]]; then
    printf '%s\n' "$((kb / 1024))"
  fi
}

# An item's prerequisite: an absolute path that must exist, or a command on PATH.
hpc_available() {
  if [[ $1 == /* ]]; then
    [[ -e $1 ]]
  else
    command -v -- "$1" >/dev/null 2>&1
  fi
}

# File-name part for an operator command: every byte outside [A-Za-z0-9._-] becomes
# "_", cut to 50. The C locale makes ranges and multibyte text behave the same on
# every node.
hpc_safe_name() {
  local LC_ALL=C
  local safe=${1//[^A-Za-z0-9._-]/_}
  printf '%s\n' "${safe:0:50}"
}

# `systemctl status` reports through its exit code (3: unit not running, 4: no such
# unit); in both cases the status text was collected, so only other codes are failures.
hpc_unit_status() {
  local rc=0
  systemctl status "$1" --no-pager || rc=$?
  case $rc in
    0 | 3 | 4) return 0 ;;
    *) return "$rc" ;;
  esac
}

# Starts the node-wide budget of $1 seconds. Items stop early enough to leave an eighth
# of it for packaging and upload.
hpc_start_clock() {
  local budget=$1
  HPC_DEADLINE_MS=$(($(hpc_now_ms) + budget * 1000))
  HPC_ITEMS_DEADLINE_MS=$((HPC_DEADLINE_MS - budget / 8 * 1000))
}

hpc_seconds_left() {
  printf '%s\n' "$(((HPC_DEADLINE_MS - $(hpc_now_ms)) / 1000))"
}

# Seconds the next item may run: its own limit, capped by what is left before the
# node-wide deadline (which already keeps back time for packaging and upload).
hpc_item_limit() {
  local own=$1 left_ms
  left_ms=$((HPC_ITEMS_DEADLINE_MS - $(hpc_now_ms)))
  if ((left_ms / 1000 < own)); then
    printf '%s\n' "$((left_ms < 0 ? 0 : left_ms / 1000))"
  else
    printf '%s\n' "$own"
  fi
}

hpc_manifest_row() {
  local name=$1 rc=$2 ms=$3 bytes=$4 timed_out=$5
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(hpc_format_ms "$ms" 3)" "$bytes" "$timed_out" \
    >>"$HPC_REPORT_DIR/manifest.tsv"
  HPC_ITEMS=$((HPC_ITEMS + 1))
  if ((rc != 0)); then
    HPC_FAILED_ITEMS=$((HPC_FAILED_ITEMS + 1))
  fi
}

# An item that could not start still gets a manifest row and a file saying why, so the
# reader of the tarball sees what is missing instead of guessing.
hpc_record_not_run() {
  local name=$1 output=$2 rc=$3 timed_out=$4 why=$5
  local note=$HPC_REPORT_DIR/${output%/}
  [[ $output != */ ]] || note=$note.log
  printf '[hpc] %s not run: %s\n' "$name" "$why" >"$note" 2>/dev/null || true
  hpc_manifest_row "$name" "$rc" 0 "$(hpc_size_bytes "$note")" "$timed_out"
  hpc_progress "$name not run: $why"
}

# Items run as separate bash processes (that is what `timeout` can kill), so the item
# functions and the helpers they call must travel through the environment. Only built-in
# items get them; operator commands see a plain environment.
hpc_export_functions() {
  local fn
  while read -r _ _ fn; do
    case $fn in
      item_* | hpc_*) export -f "${fn?}" ;;
    esac
  done < <(declare -F)
  export INSTANCE_GROUP INSTANCE_ID CLUSTER_TYPE
}

# `wait` returns early when a trapped signal arrives (the trap then stops the item);
# wait again until the item has really ended, so its rc is the real one.
# `timeout` makes its own process group (pgid = its pid). When it returns, whatever the
# item left in that group (a TERM-ignoring child of a killed item, a stray `cmd &`) is
# killed: an item never outlives its manifest row.
hpc_wait_item() {
  local rc
  HPC_ITEM_PID=$1
  while :; do
    HPC_WAIT_INTERRUPTED=0
    rc=0
    wait "$HPC_ITEM_PID" || rc=$?
    ((HPC_WAIT_INTERRUPTED)) || break
  done
  kill -KILL -- "-$HPC_ITEM_PID" 2>/dev/null || true
  HPC_ITEM_PID=""
  return "$rc"
}

# TERM/INT/HUP: stop the running item now, run no more, but still package and upload.
hpc_on_signal() {
  HPC_INTERRUPTED=$1
  HPC_WAIT_INTERRUPTED=1
  if [[ -n $HPC_ITEM_PID ]]; then
    kill -TERM "$HPC_ITEM_PID" 2>/dev/null || true
  fi
}

# Why the next item cannot start, or nothing when it can.
hpc_blocker() {
  local limit=$1 free_mb
  if [[ -n $HPC_INTERRUPTED ]]; then
    printf 'interrupted by SIG%s\n' "$HPC_INTERRUPTED"
  elif ((limit < 1)); then
    printf 'node deadline of %ss reached\n' "$HPC_DEADLINE_SECONDS"
  else
    free_mb=$(hpc_free_mb "$HPC_WORK_DIR")
    if [[ -n $free_mb ]] && ((free_mb < HPC_MIN_FREE_MB)); then
      printf 'only %s MB free under %s, need %s MB\n' "$free_mb" "$HPC_WORK_ROOT" "$HPC_MIN_FREE_MB"
    fi
  fi
}

# Starts one item in the background under `timeout`, its stdout and stderr into $log.
# kind "function": TARGET is a bash function (item_*), given $dir when it fills a folder.
# kind "command": TARGET is operator text, run as `bash -c TARGET`, never re-parsed here.
hpc_launch() {
  local name=$1 kind=$2 target=$3 limit=$4 log=$5 dir=$6
  if [[ $kind == function ]]; then
    (
      hpc_export_functions
      exec timeout --kill-after="$HPC_KILL_GRACE" "$limit" \
        "$BASH" -c 'set -Eeuo pipefail; "$@"' "$name" "$target" ${dir:+"$dir"}
    ) >"$log" 2>&1 </dev/null &
  else
    (exec timeout --kill-after="$HPC_KILL_GRACE" "$limit" "$BASH" -c "$target" "$name") \
      >"$log" 2>&1 </dev/null &
  fi
}

# Runs one item and records it. Never fails: a failed or hung item is data for the
# manifest, and the next item runs regardless.
# OUTPUT is relative to the report folder; ending in "/" it is a folder the item fills,
# and the item's own messages go to OUTPUT.log (kept only when not empty).
hpc_run_item() {
  local name=$1 output=$2 kind=$3 target=$4
  local limit why path log dir="" start_ms ms rc=0 timed_out=0 bytes flag=""
  limit=$(hpc_item_limit "$HPC_ITEM_TIMEOUT")
  why=$(hpc_blocker "$limit")
  if [[ -n $why ]]; then
    case $why in
      interrupted*) hpc_record_not_run "$name" "$output" "$HPC_RC_INTERRUPTED" 0 "$why" ;;
      node\ deadline*) hpc_record_not_run "$name" "$output" "$HPC_RC_DEADLINE" 1 "$why" ;;
      *) hpc_record_not_run "$name" "$output" "$HPC_RC_NO_SPACE" 0 "$why" ;;
    esac
    return 0
  fi
  path=$HPC_REPORT_DIR/${output%/}
  log=$path
  if [[ $output == */ ]]; then
    dir=$path
    log=$path.log
    mkdir -p -- "$dir"
  fi
  start_ms=$(hpc_now_ms)
  hpc_launch "$name" "$kind" "$target" "$limit" "$log" "$dir"
  hpc_wait_item "$!" || rc=$?
  ms=$(($(hpc_now_ms) - start_ms))
  # 124/137 alone could be the item's own exit code; only `timeout` ends it this late.
  if [[ $rc == 124 || $rc == 137 ]] && ((ms >= limit * 1000)); then
    timed_out=1
    flag=" TIMED OUT"
    printf '\n[hpc] %s cut after %ss (item time limit)\n' "$name" "$limit" >>"$log" || true
  fi
  if [[ -n $dir && ! -s $log ]]; then
    rm -f -- "$log"
  fi
  bytes=$(hpc_size_bytes "$path")
  hpc_manifest_row "$name" "$rc" "$ms" "$bytes" "$timed_out"
  hpc_progress "$name rc=$rc $(hpc_format_ms "$ms" 1)s $(hpc_format_bytes "$bytes")$flag"
}

# Declares one built-in item: `hpc_item NAME OUTPUT [needs=COMMAND|/PATH]`.
# Its body is the function item_NAME; an item whose prerequisite is absent on this node
# is skipped (a progress line, no manifest row): absence is not a failure.
hpc_item() {
  local name=$1 output=$2 needs=""
  if [[ $# -ge 3 ]]; then
    needs=${3#needs=}
  fi
  if [[ -n $needs ]] && ! hpc_available "$needs"; then
    hpc_progress "$name skipped: $needs not present"
    return 0
  fi
  hpc_run_item "$name" "$output" function "item_$name"
}
