# shellcheck shell=bash
# lib.sh: helpers of the node-side collector. collectors/nodescript.py concatenates
# lib.sh, common.sh, eks.sh or slurm.sh, redact.sh, the generated options block and
# collect.sh into the one collector_script.sh a node runs; none of these files is run alone.
#
# Bash 4.2 (Amazon Linux 2) is the oldest shell this must run on: no negative array
# subscripts, no `wait -n`, no namerefs, no `mapfile -d`, and never expand a possibly
# empty array under `set -u`.

# Exit code for bad input or configuration (the others are in collect.sh).
readonly HPC_EXIT_BAD_INPUT=2

# manifest.tsv rc of an item that never started (its file then holds a one-line note).
readonly HPC_RC_DEADLINE=124     # no time left: its stage's or the node's (timed_out=0: it never ran)
readonly HPC_RC_NO_SPACE=75      # the work root had less than HPC_MIN_FREE_MB free (EX_TEMPFAIL)
readonly HPC_RC_INTERRUPTED=143  # the script had been sent TERM, INT or HUP
readonly HPC_RC_BUNDLE_CAP=27    # the report had reached HPC_BUNDLE_CAP_MB (EFBIG)
# manifest.tsv rc of an item whose output could not be redacted: the output was removed.
readonly HPC_RC_UNREDACTED=70
# An item body exits with this (EOPNOTSUPP) when the tool on this node does not know what was
# asked (an older nvidia-smi): a version fact, not a fault. The row gets rc 0 and a note
# starting "unsupported:", the tool's message stays in the item's file, and it counts as skipped.
readonly HPC_RC_UNSUPPORTED=95

# Seconds kept back from the items for packaging and upload, at the least. The orchestrator
# gives a node no budget below twice this (collectors/nodescript.py MIN_NODE_BUDGET).
readonly HPC_FINISH_RESERVE_S=60

# Seconds between an item's TERM and its KILL: a wedged nvidia-smi may ignore TERM, and
# the node budget is better spent on the next item than on a long grace.
readonly HPC_KILL_GRACE=3

# Set by collect.sh once it is running; declared here so helpers work under `set -u`.
HPC_ITEMS=0
HPC_FAILED_ITEMS=0
HPC_SKIPPED_ITEMS=0
HPC_BUNDLE_BYTES=0
HPC_ITEM_PID=""
HPC_INTERRUPTED=""
HPC_WAIT_INTERRUPTED=0
# Set by hpc_run_item: whether the item that just ran hit its time limit.
HPC_LAST_TIMED_OUT=0
# Items whose files are being redacted in the background while later items run
# (hpc_defer_settle), oldest first: each one's manifest row number, and by row number its
# hpc_settle_item arguments (joined by US) and its redacting child's pid.
HPC_QUEUE=()
declare -A HPC_QUEUED_ARGS=() HPC_QUEUED_PID=() HPC_QUEUED_SLOT=()
HPC_QUEUED_BYTES=0  # their files' size once capped: counted against the bundle cap already
# Background redactions at most at once: the node's CPUs, up to 4 (collection shares the
# node with training jobs).
HPC_REDACT_JOBS=$(nproc 2>/dev/null || echo 1)
((HPC_REDACT_JOBS >= 1 && HPC_REDACT_JOBS <= 4)) || HPC_REDACT_JOBS=$((HPC_REDACT_JOBS > 4 ? 4 : 1))
# Each background redaction works in a folder of its own (the redaction's scripts name their
# scratch files in it): slot N is $HPC_WORK_DIR/redact.slot.N, made by hpc_prepare_redaction_slots.
declare -A HPC_SLOT_IN_USE=()
# The next manifest row's number: rows stay in the order items ran, however late an item is
# settled. HPC_ROW_AT, when set, is the number of the row being written.
HPC_NEXT_ROW=0
# An item's files: path -> bytes (hpc_list_item_files), path -> redactions (hpc_redact_item).
declare -A HPC_SIZES=() HPC_REDACTED=()
# The item that has run longest so far, and for how long: what cut the collection short, when
# time runs out.
HPC_LONGEST_ITEM=""
HPC_LONGEST_MS=0
HPC_STAGE=items
# The item in which nvidia-smi did not return (see hpc_item tool=), for the items after it.
HPC_HUNG_NVIDIA_SMI=""
# manifest.tsv and manifest_files.tsv rows by row number, kept in memory and written when
# packaging: a disk that fills up mid-run must not lose the record of what was collected.
HPC_MANIFEST_ROWS=()
HPC_FILE_ROWS=()

# One progress line on stdout; the orchestrator shows these and keys on the last one.
hpc_progress() {
  printf '[hpc] %s\n' "$*"
}

# Text from the environment (an instance group may hold anything) as one printable line:
# control characters become '?', so no input can fake a progress or result line.
hpc_printable() {
  local LC_ALL=C
  printf '%s\n' "${1//[[:cntrl:]]/?}"
}

# Bad input or configuration: one line on stderr, exit 2, nothing collected. collect.sh
# may define hpc_on_bad_input to tell the orchestrator first.
hpc_bad_input() {
  printf 'hpc-collect: %s\n' "$1" >&2
  if declare -F hpc_on_bad_input >/dev/null; then
    hpc_on_bad_input "$1" || true
  fi
  exit "$HPC_EXIT_BAD_INPUT"
}

# The helpers below that compute a value set a variable instead of printing it: `$(...)`
# forks the whole shell, and the collector runs them several times per item.

# Sets HPC_NOW_MS: milliseconds since the epoch (bash 5's clock; date on bash 4).
hpc_clock() {
  local micro
  if [[ -n ${EPOCHREALTIME:-} ]]; then
    micro=${EPOCHREALTIME/[.,]/}
    HPC_NOW_MS=$((10#$micro / 1000))
  else
    HPC_NOW_MS=$(date +%s%3N)
  fi
}

# Sets VAR to MS milliseconds as "1.2" (DECIMALS 1, progress) or "1.234" (3, manifest).
hpc_format_ms() {
  local var=$1 ms=$2 decimals=$3
  if [[ $decimals == 3 ]]; then
    printf -v "$var" '%d.%03d' "$((ms / 1000))" "$((ms % 1000))"
  else
    printf -v "$var" '%d.%d' "$((ms / 1000))" "$((ms % 1000 / 100))"
  fi
}

# Sets VAR to BYTES for people: 2150 -> "2.1KB".
hpc_format_bytes() {
  local var=$1 bytes=$2
  if ((bytes < 1024)); then
    printf -v "$var" '%dB' "$bytes"
  elif ((bytes < 1048576)); then
    printf -v "$var" '%d.%dKB' "$((bytes / 1024))" "$((bytes % 1024 * 10 / 1024))"
  else
    printf -v "$var" '%d.%dMB' "$((bytes / 1048576))" "$((bytes % 1048576 * 10 / 1048576))"
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

# Sets HPC_FREE_MB to the free MB under $1, or empty when df cannot tell (then no item is
# held back for it).
hpc_free_mb() {
  local kb=""
  HPC_FREE_MB=""
  { read -r _ && read -r _ _ _ kb _; } < <(df -Pk -- "$1" 2>/dev/null) || true
  if [[ $kb =~ ^[0-9]+$ ]]; then
    HPC_FREE_MB=$((kb / 1024))
  fi
}

# An item's prerequisite: alternatives separated by '|', each an absolute path that must
# exist or a command on PATH. Succeeds when any one is there.
hpc_available() {
  local alternative alternatives
  IFS='|' read -r -a alternatives <<<"$1"
  for alternative in "${alternatives[@]}"; do
    if [[ $alternative == /* ]]; then
      [[ -e $alternative ]] && return 0
    elif command -v -- "$alternative" >/dev/null 2>&1; then
      return 0
    fi
  done
  return 1
}

# File-name part for any text: every byte outside [A-Za-z0-9._-] becomes "_", cut to
# MAX (50). The C locale makes ranges and multibyte text behave the same on every node.
hpc_safe_name() {
  local LC_ALL=C
  local safe=${1//[^A-Za-z0-9._-]/_}
  printf '%s\n' "${safe:0:${2:-50}}"
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

# journalctl over the --since window (HPC_SINCE_JOURNAL is empty for "all"), with ISO
# timestamps so that lines from several nodes can be merged into one timeline.
hpc_journal() {
  if [[ -n $HPC_SINCE_JOURNAL ]]; then
    journalctl --no-pager -o short-iso --since "$HPC_SINCE_JOURNAL" "$@"
  else
    journalctl --no-pager -o short-iso "$@"
  fi
}

# ---------------------------------------------------------------- caps, used inside items

# Records that DST lost its first BYTES bytes to a cap; the item's manifest row sums these.
hpc_note_cut() {
  printf '%s\t%s\n' "$1" "$2" >>"$HPC_CUTS_FILE"
}

# Prints SRC, or only its last HPC_FILE_CAP_BYTES bytes, to stdout, which is the item's
# own output file (HPC_ITEM_OUT): logs matter most at their end.
hpc_cat_capped() {
  local src=$1 size
  size=$(stat -c %s -- "$src")
  if ((size > HPC_FILE_CAP_BYTES)); then
    tail -c "$HPC_FILE_CAP_BYTES" -- "$src"
    hpc_note_cut "$HPC_ITEM_OUT" "$((size - HPC_FILE_CAP_BYTES))"
  else
    cat -- "$src"
  fi
}

# Copies SRC to DST, or only its tail when it is over the cap. cat, not cp: a plain file
# comes out whatever SRC's owner, mode or attributes.
hpc_copy_capped() {
  local src=$1 dst=$2 size
  size=$(stat -c %s -- "$src")
  if ((size > HPC_FILE_CAP_BYTES)); then
    tail -c "$HPC_FILE_CAP_BYTES" -- "$src" >"$dst"
    hpc_note_cut "$dst" "$((size - HPC_FILE_CAP_BYTES))"
  else
    cat -- "$src" >"$dst"
  fi
}

# True when FILE was written inside the --since window (always, for "all").
hpc_in_window() {
  local mtime
  ((HPC_SINCE_EPOCH == 0)) && return 0
  mtime=$(stat -c %Y -- "$1" 2>/dev/null) || return 1
  ((mtime >= HPC_SINCE_EPOCH))
}

# Copies the regular files under SRC into DST, keeping their relative paths: only those
# written inside the --since window, each capped, none matching an EXCLUDE glob (secret
# material such as munge.key). What was left out is listed on stdout (the item's log).
hpc_copy_tree() {
  local src=${1%/} dst=$2 file rel glob skip
  shift 2
  local old=() excluded=()
  while IFS= read -r -d '' file; do
    rel=${file#"$src"/}
    skip=""
    for glob in "$@"; do
      # shellcheck disable=SC2053 # the glob is a pattern on purpose
      [[ ${rel##*/} == $glob ]] && skip=1
    done
    if [[ -n $skip ]]; then
      excluded+=("$rel")
    elif ! hpc_in_window "$file"; then
      old+=("$rel")
    else
      mkdir -p -- "$dst/$(dirname -- "$rel")"
      hpc_copy_capped "$file" "$dst/$rel" || printf 'could not copy %s\n' "$rel"
    fi
  done < <(find "$src" -type f -print0 2>/dev/null)
  if ((${#old[@]})); then
    printf 'not copied, last written before the --since window (%s): %s\n' "$HPC_SINCE" "${old[*]}"
  fi
  if ((${#excluded[@]})); then
    printf 'not copied, secret material: %s\n' "${excluded[*]}"
  fi
}

# ---------------------------------------------------------------- the clock

# Starts the node-wide budget of $1 seconds. Items stop early enough to leave an eighth
# of it, and HPC_FINISH_RESERVE_S at least (half of a budget too small for that), for
# packaging and upload.
hpc_start_clock() {
  local budget=$1 reserve=$(($1 / 8)) floor=$HPC_FINISH_RESERVE_S
  ((floor <= budget / 2)) || floor=$((budget / 2))
  ((reserve >= floor)) || reserve=$floor
  hpc_clock
  HPC_DEADLINE_MS=$((HPC_NOW_MS + budget * 1000))
  HPC_ITEMS_DEADLINE_MS=$((HPC_DEADLINE_MS - reserve * 1000))
  HPC_ITEMS_START_MS=$HPC_NOW_MS
  HPC_STAGE_DEADLINE_MS=$HPC_ITEMS_DEADLINE_MS
}

# Starts a stage of the collection (collect.sh runs them in turn): its items must be done
# by END_PERCENT of the items' time, counted from the start. A hung item then costs its own
# stage's time, never the later stages' turn (the GPU items above all); what a stage leaves
# unused goes to the next.
hpc_begin_stage() {
  local name=$1 end_percent=$2
  HPC_STAGE=$name
  HPC_STAGE_DEADLINE_MS=$((HPC_ITEMS_START_MS + (HPC_ITEMS_DEADLINE_MS - HPC_ITEMS_START_MS) * end_percent / 100))
}

# Sets HPC_SECONDS_LEFT before the node-wide deadline.
hpc_seconds_left() {
  hpc_clock
  # shellcheck disable=SC2034 # read by collect.sh
  HPC_SECONDS_LEFT=$(((HPC_DEADLINE_MS - HPC_NOW_MS) / 1000))
}

# Sets HPC_LIMIT to the seconds the next item may run: its own limit OWN, capped by what
# is left of its stage's time and before the node-wide deadline (which already keeps back
# time for packaging and upload).
hpc_item_limit() {
  local own=$1 left_ms end_ms=$HPC_ITEMS_DEADLINE_MS
  ((HPC_STAGE_DEADLINE_MS >= end_ms)) || end_ms=$HPC_STAGE_DEADLINE_MS
  hpc_clock
  left_ms=$((end_ms - HPC_NOW_MS))
  if ((left_ms / 1000 < own)); then
    HPC_LIMIT=$((left_ms < 0 ? 0 : left_ms / 1000))
  else
    HPC_LIMIT=$own
  fi
}

# ---------------------------------------------------------------- the manifest

# Sets VAR to TEXT as one TSV cell: tabs and control characters would break the table.
hpc_tsv_cell() {
  local LC_ALL=C
  printf -v "$1" '%s' "${2//[[:cntrl:]]/ }"
}

# One manifest.tsv row: item rc seconds bytes timed_out cut_bytes redactions note; at
# HPC_ROW_AT (an item settled late) or the next row.
hpc_manifest_row() {
  local name=$1 rc=$2 ms=$3 bytes=$4 timed_out=$5 cut=$6 redactions=$7 seconds cell row at
  at=${HPC_ROW_AT:-$((HPC_NEXT_ROW++))}
  hpc_format_ms seconds "$ms" 3
  hpc_tsv_cell cell "$8"
  printf -v row '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$name" "$rc" "$seconds" "$bytes" "$timed_out" "$cut" \
    "$redactions" "$cell"
  HPC_MANIFEST_ROWS[at]=$row
  HPC_ITEMS=$((HPC_ITEMS + 1))
  if ((rc != 0)); then
    HPC_FAILED_ITEMS=$((HPC_FAILED_ITEMS + 1))
  fi
}

# Writes manifest.tsv and manifest_files.tsv into the report folder.
hpc_write_manifest() {
  local row
  {
    printf 'item\trc\tseconds\tbytes\ttimed_out\tcut_bytes\tredactions\tnote\n'
    for row in ${HPC_MANIFEST_ROWS[@]+"${HPC_MANIFEST_ROWS[@]}"}; do
      printf '%s\n' "$row"
    done
  } >"$HPC_REPORT_DIR/manifest.tsv"
  {
    printf 'file\titem\tbytes\tcut_bytes\tredactions\n'
    for row in ${HPC_FILE_ROWS[@]+"${HPC_FILE_ROWS[@]}"}; do
      printf '%s\n' "$row"
    done
  } >"$HPC_REPORT_DIR/manifest_files.tsv"
}

# An item that could not start still gets a manifest row and a file saying why, so the
# reader of the tarball sees what is missing instead of guessing.
hpc_record_not_run() {
  local name=$1 output=$2 rc=$3 timed_out=$4 why=$5
  local note=$HPC_REPORT_DIR/${output%/}
  [[ $output != */ ]] || note=$note.log
  printf '[hpc] %s not run: %s\n' "$name" "$why" >"$note" 2>/dev/null || true
  hpc_manifest_row "$name" "$rc" 0 "$(hpc_size_bytes "$note")" "$timed_out" 0 0 "not run: $why"
  hpc_progress "$name not run: $why"
}

# An item whose prerequisite is absent, or that is off by configuration: a manifest row
# (rc 0, not a failure) that says so, and no file.
hpc_record_skipped() {
  local name=$1 why=$2
  hpc_manifest_row "$name" 0 0 0 0 0 0 "skipped: $why"
  HPC_SKIPPED_ITEMS=$((HPC_SKIPPED_ITEMS + 1))
  hpc_progress "$name skipped: $why"
}

# ---------------------------------------------------------------- running one item

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
  export INSTANCE_GROUP INSTANCE_ID CLUSTER_TYPE HPC_RUN_ID HPC_LAUNCH_ID HPC_SINCE HPC_SINCE_EPOCH HPC_SINCE_JOURNAL \
    HPC_FILE_CAP_BYTES HPC_CUTS_FILE HPC_POD_NAMESPACES HPC_EKS_COLLECTOR_SHA256 HPC_KILL_GRACE HPC_RC_UNSUPPORTED \
    HPC_HUNG_NVIDIA_SMI
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

# Sets HPC_WHY to why the next item cannot start, or empty when it can.
hpc_blocker() {
  local limit=$1 longest_s
  HPC_WHY=""
  if [[ -n $HPC_INTERRUPTED ]]; then
    HPC_WHY="interrupted by SIG$HPC_INTERRUPTED"
  elif ((limit < 1)); then
    hpc_clock
    if ((HPC_NOW_MS < HPC_ITEMS_DEADLINE_MS)); then
      HPC_WHY="the time for the $HPC_STAGE items was used up"
    else
      HPC_WHY="node deadline of ${HPC_DEADLINE_SECONDS}s reached"
    fi
    if [[ -n $HPC_LONGEST_ITEM ]]; then
      hpc_format_ms longest_s "$HPC_LONGEST_MS" 1
      HPC_WHY="$HPC_WHY; cut short by $HPC_LONGEST_ITEM (${longest_s}s)"
    fi
  elif ((HPC_BUNDLE_BYTES + HPC_QUEUED_BYTES >= HPC_BUNDLE_CAP_BYTES)); then
    HPC_WHY="bundle cap of $HPC_BUNDLE_CAP_MB MB reached"
  else
    hpc_free_mb "$HPC_WORK_DIR"
    if [[ -n $HPC_FREE_MB ]] && ((HPC_FREE_MB < HPC_MIN_FREE_MB)); then
      HPC_WHY="only $HPC_FREE_MB MB free under $HPC_WORK_ROOT, need $HPC_MIN_FREE_MB MB"
    fi
  fi
}

# Starts one item in the background under `timeout`, its stdout and stderr into $log.
# kind "function": TARGET is a bash function (item_*), given $dir when it fills a folder.
# kind "command": TARGET is operator text, run as `bash -c TARGET`, never re-parsed here.
# The lock on this run (collect.sh) is not handed down: an item's stray child must not
# hold it after the script ends. SECRET, when set, is the item's stdin (a curl config
# line), so a URL reaches the item without being in any environment or argument list.
hpc_launch() {
  local name=$1 kind=$2 target=$3 limit=$4 log=$5 dir=$6 secret=$7
  if [[ $kind == function ]]; then
    (
      hpc_export_functions
      export HPC_ITEM_OUT=$log HPC_ITEM_TMP HPC_THIS_ITEM_LIMIT=$limit
      exec timeout --kill-after="$HPC_KILL_GRACE" "$limit" \
        "$BASH" -c 'set -Eeuo pipefail; "$@"' "$name" "$target" ${dir:+"$dir"}
    ) >"$log" 2>&1 < <(if [[ -n $secret ]]; then printf 'url = "%s"\n' "$secret"; fi) \
      {HPC_LOCK_FD}>&- &
  else
    (exec timeout --kill-after="$HPC_KILL_GRACE" "$limit" "$BASH" -c "$target" "$name") \
      >"$log" 2>&1 </dev/null {HPC_LOCK_FD}>&- &
  fi
}

# Runs one item and records it. Never fails: a failed or hung item is data for the
# manifest, and the next item runs regardless.
# OUTPUT is relative to the report folder; ending in "/" it is a folder the item fills,
# and the item's own messages go to OUTPUT.log (kept only when not empty).
hpc_run_item() {
  local name=$1 output=$2 kind=$3 target=$4 own_limit=${5:-$HPC_ITEM_TIMEOUT} secret=${6:-}
  local limit why path log dir="" start_ms ms rc=0 timed_out=0
  hpc_item_limit "$own_limit"
  limit=$HPC_LIMIT
  hpc_blocker "$limit"
  why=$HPC_WHY
  if [[ -n $why ]]; then
    case $why in
      interrupted*) hpc_record_not_run "$name" "$output" "$HPC_RC_INTERRUPTED" 0 "$why" ;;
      node\ deadline* | the\ time\ for*) hpc_record_not_run "$name" "$output" "$HPC_RC_DEADLINE" 0 "$why" ;;
      bundle\ cap*) hpc_record_not_run "$name" "$output" "$HPC_RC_BUNDLE_CAP" 0 "$why" ;;
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
  # A private scratch folder, made by the items that need one (hpc_item_tmp).
  HPC_ITEM_TMP=$HPC_WORK_DIR/tmp/$name
  : >"$HPC_CUTS_FILE" 2>/dev/null || true
  hpc_clock
  start_ms=$HPC_NOW_MS
  hpc_launch "$name" "$kind" "$target" "$limit" "$log" "$dir" "$secret"
  hpc_wait_item "$!" || rc=$?
  hpc_clock
  ms=$((HPC_NOW_MS - start_ms))
  if ((ms > HPC_LONGEST_MS)); then
    HPC_LONGEST_ITEM=$name HPC_LONGEST_MS=$ms
  fi
  if [[ -e $HPC_ITEM_TMP ]]; then
    rm -rf -- "$HPC_ITEM_TMP" 2>/dev/null || true
  fi
  # 124/137 alone could be the item's own exit code; only `timeout` ends it this late.
  if [[ $rc == 124 || $rc == 137 ]] && ((ms >= limit * 1000)); then
    timed_out=1
    printf '\n[hpc] %s cut after %ss (item time limit)\n' "$name" "$limit" >>"$log" 2>/dev/null || true
  fi
  if [[ -n $dir && ! -s $log ]]; then
    rm -f -- "$log"
  fi
  HPC_LAST_TIMED_OUT=$timed_out
  hpc_defer_settle "$name" "$path" "$dir" "$rc" "$ms" "$timed_out"
}

# Declares one built-in item: `hpc_item NAME OUTPUT [needs=A|B] [when=VAR] [limit=VAR]
# [secret=VAR] [tool=nvidia-smi]`. Its body is the function item_NAME.
#   needs   what must be on the node (see hpc_available); absent: a "skipped" row
#   when    the item runs only when $VAR is 1 (a node option); else a "skipped" row
#   limit   the item's own time limit is $VAR seconds instead of HPC_ITEM_TIMEOUT
#   secret  the item's stdin is a curl config line for the URL in $VAR; empty: not run
#   tool    the item is nvidia-smi: once one such item has timed out, the rest are not run
hpc_item() {
  local name=$1 output=$2 option needs="" when="" limit_var="" secret_var="" secret="" tool=""
  shift 2
  for option in "$@"; do
    case $option in
      needs=*) needs=${option#needs=} ;;
      when=*) when=${option#when=} ;;
      limit=*) limit_var=${option#limit=} ;;
      secret=*) secret_var=${option#secret=} ;;
      tool=*) tool=${option#tool=} ;;
    esac
  done
  if [[ -n $when && ${!when:-0} != 1 ]]; then
    hpc_record_skipped "$name" "off by configuration ($when=${!when:-0})"
    return 0
  fi
  if [[ -n $needs ]] && ! hpc_available "$needs"; then
    hpc_record_skipped "$name" "not present: $needs"
    return 0
  fi
  if [[ -n $secret_var ]]; then
    secret=${!secret_var:-}
    if [[ -z $secret ]]; then
      hpc_record_not_run "$name" "$output" 1 0 "no download URL was given to this node"
      return 0
    fi
  fi
  if [[ -n $tool && -n $HPC_HUNG_NVIDIA_SMI ]]; then
    hpc_record_not_run "$name" "$output" "$HPC_RC_DEADLINE" 0 "nvidia-smi did not return in $HPC_HUNG_NVIDIA_SMI"
    return 0
  fi
  hpc_run_item "$name" "$output" function "item_$name" "${limit_var:+${!limit_var}}" "$secret"
  if [[ -n $tool ]] && ((HPC_LAST_TIMED_OUT)); then
    HPC_HUNG_NVIDIA_SMI=$name
  fi
}

# ---------------------------------------------------------------- after an item

# "size TAB path NUL" for each regular file an item wrote: its output file, or its
# folder's files and the folder's .log.
hpc_item_files() {
  local path=$1 dir=$2
  if [[ -n $dir ]]; then
    find "$dir" "$path.log" -type f -printf '%s\t%p\0' 2>/dev/null || true
  else
    find "$path" -maxdepth 0 -type f -printf '%s\t%p\0' 2>/dev/null || true
  fi
}

# Keeps the last KEEP bytes of FILE, SIZE bytes long (KEEP 0: the file goes); the cut is
# recorded. The tail is moved to the front in place (dd reads ahead of where it writes),
# then the file is truncated: this needs no free space, which matters when an item has
# filled the disk.
hpc_cut_file() {
  local file=$1 keep=$2 size=$3
  ((size > keep)) || return 0
  if ((keep == 0)); then
    rm -f -- "$file"
  elif ! dd if="$file" of="$file" bs=1M iflag=skip_bytes skip="$((size - keep))" conv=notrunc status=none ||
    ! truncate -s "$keep" -- "$file"; then
    printf '[hpc] could not cut %s to its last %s bytes\n' "$file" "$keep" >&2
    return 0
  fi
  hpc_note_cut "$file" "$((size - keep))"
}

# The report must stay under HPC_BUNDLE_CAP_BYTES: cut the item's largest files (tails
# kept, as for the per-file cap) by OVER bytes in all. Reads "size TAB path" lines.
hpc_fit_bundle() {
  local over=$1 size file
  while IFS=$'\t' read -r -d '' size file; do
    ((over > 0)) || break
    if ((size <= over)); then
      hpc_cut_file "$file" 0 "$size"
      over=$((over - size))
    else
      hpc_cut_file "$file" "$((size - over))" "$size"
      over=0
    fi
  done < <(sort -z -rn)
}

# Redacts FILES in a child under a time limit (redact.sh). Sets HPC_REDACTED[file] to
# each redacted file's count; a file the child did not finish is removed, never shipped.
# Most files hold nothing to redact: one grep finds the few that do (and .gz files are
# always looked into), and only those go to the child.
hpc_redact_item() {
  # Named by the process: several items may be redacted at once (hpc_defer_settle).
  local list=$HPC_WORK_DIR/redact.list.$BASHPID done=$HPC_WORK_DIR/redact.done.$BASHPID limit file count
  local -A finished=() suspect=()
  local plain=()
  for file in "$@"; do
    if [[ $file == *.gz ]]; then
      suspect[$file]=1
    else
      plain+=("$file")
    fi
  done
  if ((${#plain[@]})); then
    while IFS= read -r -d '' file; do
      suspect[$file]=1
    done < <(LC_ALL=C grep -alsiZE -f "$HPC_WORK_DIR/redact.any" -- "${plain[@]}" || true)
  fi
  : >"$list" 2>/dev/null || true
  for file in "$@"; do
    if [[ -n ${suspect[$file]:-} ]]; then
      printf '%s\0' "$file" >>"$list" 2>/dev/null || true
    else
      finished[$file]=1
    fi
  done
  if [[ -s $list ]]; then
    : >"$done" 2>/dev/null || true
    hpc_item_limit "$HPC_ITEM_TIMEOUT"
    limit=$((HPC_LIMIT < 30 ? 30 : HPC_LIMIT))
    (
      export -f hpc_redact_files hpc_redact_file hpc_redact_stream
      exec timeout --kill-after="$HPC_KILL_GRACE" "$limit" "$BASH" -c 'hpc_redact_files "$@"' redact \
        "$HPC_WORK_DIR" "$list" "$done"
    ) </dev/null >/dev/null 2>&1 {HPC_LOCK_FD}>&- || true
    while IFS=$'\t' read -r -d '' count file; do
      finished[$file]=1
      HPC_REDACTED[$file]=$count
    done <"$done"
  fi
  for file in "$@"; do
    if [[ -z ${finished[$file]:-} && -e $file ]]; then
      rm -f -- "$file"
      HPC_UNREDACTED+=("${file#"$HPC_REPORT_DIR"/}")
    fi
  done
}

# Sets VAR to the first line of the item's output (its .log for a folder item), cut to 200.
hpc_first_line() {
  local line=""
  IFS= read -r line <"$2${3:+.log}" 2>/dev/null || true
  printf -v "$1" '%s' "${line:0:200}"
}

# Sets HPC_SIZES (path -> bytes), HPC_FILES (paths) and HPC_FILES_BYTES for an item's files.
hpc_list_item_files() {
  local size file
  HPC_SIZES=() HPC_FILES=() HPC_FILES_BYTES=0
  while IFS=$'\t' read -r -d '' size file; do
    HPC_FILES+=("$file")
    HPC_SIZES[$file]=$size
    HPC_FILES_BYTES=$((HPC_FILES_BYTES + size))
  done < <(hpc_item_files "$1" "$2")
}

# After an item has ended: cap its files now, and redact them in the background while the
# next items run (redaction is most of the CPU an item costs, and items mostly wait on tools
# and disks). The item keeps its place in the manifest; it is settled when HPC_REDACT_JOBS
# redactions are under way already, and before packaging (hpc_settle_all).
hpc_defer_settle() {
  local path=$2 dir=$3 file at=$((HPC_NEXT_ROW++)) slot=1
  local result=$HPC_WORK_DIR/redact.$at.result
  ((${#HPC_QUEUE[@]} < HPC_REDACT_JOBS)) || hpc_settle_oldest
  while [[ -n ${HPC_SLOT_IN_USE[$slot]:-} ]]; do slot=$((slot + 1)); done
  hpc_list_item_files "$path" "$dir"
  for file in ${HPC_FILES[@]+"${HPC_FILES[@]}"}; do
    hpc_cut_file "$file" "$HPC_FILE_CAP_BYTES" "${HPC_SIZES[$file]}"
  done
  hpc_list_item_files "$path" "$dir"
  hpc_item_progress "$1" "$4" "$5" "$6"
  HPC_QUEUED_BYTES=$((HPC_QUEUED_BYTES + HPC_FILES_BYTES))
  # The next item writes its own cuts into HPC_CUTS_FILE: this item's go aside.
  mv -f -- "$HPC_CUTS_FILE" "$HPC_WORK_DIR/cuts.$at" 2>/dev/null || : >"$HPC_WORK_DIR/cuts.$at"
  HPC_QUEUE+=("$at")
  HPC_QUEUED_ARGS[$at]=$(IFS=$'\x1f' && printf '%s' "$*|$HPC_FILES_BYTES")
  HPC_QUEUED_PID[$at]=""
  : >"$result"
  if ((${#HPC_FILES[@]})); then
    HPC_SLOT_IN_USE[$slot]=$at HPC_QUEUED_SLOT[$at]=$slot
    (
      HPC_WORK_DIR=$HPC_WORK_DIR/redact.slot.$slot
      declare -A HPC_REDACTED=()
      HPC_UNREDACTED=()
      hpc_redact_item "${HPC_FILES[@]}"
      for file in "${!HPC_REDACTED[@]}"; do
        printf '%s\t%s\0' "${HPC_REDACTED[$file]}" "$file"
      done
      for file in ${HPC_UNREDACTED[@]+"${HPC_UNREDACTED[@]}"}; do
        printf 'unredacted\t%s\0' "$file"
      done
    ) >"$result" 2>/dev/null </dev/null {HPC_LOCK_FD}>&- &
    HPC_QUEUED_PID[$at]=$!
  fi
}

# Waits for the oldest item being redacted, then settles it (hpc_settle_item) in its row.
hpc_settle_oldest() {
  local at=${HPC_QUEUE[0]} pid count file bytes
  local -a pending
  HPC_QUEUE=(${HPC_QUEUE[@]+"${HPC_QUEUE[@]:1}"})
  IFS=$'\x1f' read -r -a pending <<<"${HPC_QUEUED_ARGS[$at]%|*}"
  bytes=${HPC_QUEUED_ARGS[$at]##*|}
  pid=${HPC_QUEUED_PID[$at]}
  [[ -z ${HPC_QUEUED_SLOT[$at]:-} ]] || unset "HPC_SLOT_IN_USE[${HPC_QUEUED_SLOT[$at]}]"
  unset "HPC_QUEUED_ARGS[$at]" "HPC_QUEUED_PID[$at]" "HPC_QUEUED_SLOT[$at]"
  declare -gA HPC_REDACTED=()
  HPC_UNREDACTED=()
  if [[ -n $pid ]]; then
    # A signal (TERM, INT, HUP) ends `wait` early: wait again, the files must be done.
    while ! wait "$pid" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do :; done
    while IFS=$'\t' read -r -d '' count file; do
      if [[ $count == unredacted ]]; then
        HPC_UNREDACTED+=("$file")
      else
        HPC_REDACTED[$file]=$count
      fi
    done <"$HPC_WORK_DIR/redact.$at.result"
  fi
  rm -f -- "$HPC_WORK_DIR/redact.$at.result"
  HPC_QUEUED_BYTES=$((HPC_QUEUED_BYTES - bytes))
  local HPC_CUTS_FILE=$HPC_WORK_DIR/cuts.$at HPC_ROW_AT=$at
  hpc_settle_item "${pending[@]}"
  rm -f -- "$HPC_CUTS_FILE"
}

# The redaction's folders, one per background redaction at once (see HPC_SLOT_IN_USE): copies
# of what hpc_prepare_redaction wrote into the work folder, with the scratch files its scripts
# name moved into the slot. Built-ins only: on a slow node each command costs.
hpc_prepare_redaction_slots() {
  local slot file text
  for ((slot = 1; slot <= HPC_REDACT_JOBS; slot++)); do
    mkdir -p -- "$HPC_WORK_DIR/redact.slot.$slot/tmp" || return 1
    for file in "$HPC_WORK_DIR"/redact.*; do
      [[ -f $file ]] || continue
      IFS= read -r -d '' text <"$file" || true
      printf '%s' "${text//"$HPC_WORK_DIR/"/"$HPC_WORK_DIR/redact.slot.$slot/"}" \
        >"$HPC_WORK_DIR/redact.slot.$slot/${file##*/}"
    done
  done
}

# Settles every item still being redacted: before packaging.
hpc_settle_all() {
  while ((${#HPC_QUEUE[@]})); do
    hpc_settle_oldest
  done
}

# Keeps the bundle under its cap, then records each file (manifest_files.tsv) and the item
# (manifest.tsv). Its files are capped and redacted already (HPC_REDACTED, HPC_UNREDACTED).
hpc_settle_item() {
  local name=$1 path=$2 dir=$3 rc=$4 ms=$5 timed_out=$6
  local file size cut=0 redactions=0 note="" rel row
  local -A cuts=()
  declare -gA HPC_SIZES=()
  hpc_list_item_files "$path" "$dir"
  if ((${#HPC_FILES[@]})); then
    if ((HPC_BUNDLE_BYTES + HPC_FILES_BYTES > HPC_BUNDLE_CAP_BYTES)); then
      for file in "${HPC_FILES[@]}"; do
        printf '%s\t%s\0' "${HPC_SIZES[$file]}" "$file"
      done | hpc_fit_bundle "$((HPC_BUNDLE_BYTES + HPC_FILES_BYTES - HPC_BUNDLE_CAP_BYTES))"
      note="cut to fit the bundle cap of $HPC_BUNDLE_CAP_MB MB"
      hpc_list_item_files "$path" "$dir"
    fi
  fi
  if [[ -f $HPC_CUTS_FILE ]]; then
    while IFS=$'\t' read -r file size; do
      [[ -n $file ]] || continue
      cuts[$file]=$((${cuts[$file]:-0} + size))
      cut=$((cut + size))
    done <"$HPC_CUTS_FILE"
  fi
  for file in ${HPC_FILES[@]+"${HPC_FILES[@]}"}; do
    redactions=$((redactions + ${HPC_REDACTED[$file]:-0}))
    hpc_tsv_cell rel "${file#"$HPC_REPORT_DIR"/}"
    printf -v row '%s\t%s\t%s\t%s\t%s' "$rel" "$name" "${HPC_SIZES[$file]}" "${cuts[$file]:-0}" \
      "${HPC_REDACTED[$file]:-0}"
    HPC_FILE_ROWS+=("$row")  # items are settled in the order they ran
  done
  HPC_BUNDLE_BYTES=$((HPC_BUNDLE_BYTES + HPC_FILES_BYTES))
  if ((rc == HPC_RC_UNSUPPORTED)); then
    rc=0
    hpc_first_line note "$path" "$dir"
    note="unsupported: $note"
    HPC_SKIPPED_ITEMS=$((HPC_SKIPPED_ITEMS + 1))
  fi
  if ((${#HPC_UNREDACTED[@]})); then
    note="removed, redaction did not finish: ${HPC_UNREDACTED[*]}"
    ((rc != 0)) || rc=$HPC_RC_UNREDACTED
  fi
  hpc_manifest_row "$name" "$rc" "$ms" "$HPC_FILES_BYTES" "$timed_out" "$cut" "$redactions" "$note"
  # Its progress line came when it ended (hpc_item_progress); what only settling tells, now.
  if [[ $note == removed* || $note == cut\ to\ fit* ]]; then
    hpc_progress "$name: $note"
  fi
}

# The line that says an item has ended, printed at once (its redaction goes on in the
# background): rc, time, size once capped, and what was cut or timed out.
hpc_item_progress() {
  local name=$1 rc=$2 ms=$3 timed_out=$4 cut=0 size file took shown extra=""
  [[ ! -f $HPC_CUTS_FILE ]] || while IFS=$'\t' read -r file size; do
    [[ -z $file ]] || cut=$((cut + size))
  done <"$HPC_CUTS_FILE"
  hpc_format_ms took "$ms" 1
  hpc_format_bytes shown "$HPC_FILES_BYTES"
  if ((rc == HPC_RC_UNSUPPORTED)); then
    rc=0 extra=" unsupported"
  fi
  ((timed_out == 0)) || extra+=" TIMED OUT"
  if ((cut > 0)); then
    hpc_format_bytes size "$cut"
    extra+=" cut $size"
  fi
  hpc_progress "$name rc=$rc ${took}s $shown$extra"
}

# ---------------------------------------------------------------- node options

# The generated block of collector_script.sh sets each node option this way: the value
# chosen at render time, unless the environment already holds one.
hpc_default() {
  if [[ -z ${!1:-} ]]; then
    printf -v "$1" '%s' "$2"
  fi
}
