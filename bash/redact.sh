# shellcheck shell=bash
# redact.sh: secrets never leave the node. Every file an item writes is redacted right
# after the item ends, before anything is packaged; lib.sh (hpc_redact_item) runs
# hpc_redact_files in a child under a time limit and removes whatever it did not finish.
#
# Rules are GNU extended regular expressions (grep -E and sed -E, C locale), applied one
# after the other; each redaction is counted, and the counts go to the manifest. A rule's
# replacement never matches any rule again, so counts are exact.

# The secret-bearing key names of `KEY=value`, `KEY: value`, `"KEY": "value"`: the key
# must end with one of these words (StoragePass, aws_secret_access_key, SessionToken,
# client_secret, DB_PASS, ...), so that max_tokens, tokenizer_path or "Speculative Store
# Bypass: Mitigation" are left alone. HPC_KEY_START: the key starts a word.
readonly HPC_KEY_START='(^|[^A-Za-z0-9_.-])'
readonly HPC_SECRET_KEY='([A-Za-z0-9_.-]*(password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key|private[_-]?key|credentials?)|[A-Za-z0-9_.-]*(storage|jobcomp|db|sql|[_.-])pass|pass)'
declare -rx HPC_PEM_BEGIN='^[[:space:]]*-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[[:space:]]*$'
declare -rx HPC_PEM_END='^[[:space:]]*-----END [A-Z0-9 ]*PRIVATE KEY-----'
# A pattern may hold anything but this (sed's delimiter here), tabs and newlines.
declare -rx HPC_SED_DELIMITER=$'\001'

# Built-in rules: flags ("i": ignore case, "-": none), regex, sed replacement.
HPC_BUILTIN_RULES=(
  i "(${HPC_KEY_START}${HPC_SECRET_KEY}\"?[[:space:]]*[:=][[:space:]]*\")[^\"<][^\"]*\"" '\1<REDACTED>"'
  i "(${HPC_KEY_START}${HPC_SECRET_KEY}'?[[:space:]]*[:=][[:space:]]*')[^'<][^']*'" "\\1<REDACTED>'"
  i "(${HPC_KEY_START}${HPC_SECRET_KEY}[[:space:]]*[:=][[:space:]]*)[^[:space:]\"'<{[][^[:space:]\"',;&]*" '\1<REDACTED>'
  i "(${HPC_KEY_START}--?${HPC_SECRET_KEY}[[:space:]]+)[^[:space:]<-][^[:space:]]*" '\1<REDACTED>'
  i "(${HPC_KEY_START}(aws_secret_access_key|aws_session_token)[[:space:]]+)[^[:space:]\"'<=:][^[:space:]]*" '\1<REDACTED>'
  i '(X-Amz-(Signature|Credential|Security-Token)=)[^&[:space:]"'"'"'<]+' '\1<REDACTED>'
  i '(Bearer[[:space:]]+)[A-Za-z0-9._~+/-]{8,}=*' '\1<REDACTED>'
  i '(Authorization:[[:space:]]*Basic[[:space:]]+)[A-Za-z0-9+/]{8,}=*' '\1<REDACTED>'
  - '(://[^/[:space:]:@]+:)[^/[:space:]@<]+@' '\1<REDACTED>@'
  - '(A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}' '<REDACTED-AWS-KEY-ID>'
  - 'eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*' '<REDACTED-JWT>'
  - '-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*-----END [A-Z0-9 ]*PRIVATE KEY-----' '<REDACTED PRIVATE KEY>'
)

# Checks the operator's patterns (HPC_REDACT_PATTERNS, one per line) before anything is
# collected: each must be a valid extended regex that never matches empty text (sed
# would then insert a marker between every two characters).
hpc_check_redact_patterns() {
  local pattern rc
  while IFS= read -r pattern; do
    [[ -n $pattern ]] || continue
    case $pattern in
      *"$HPC_SED_DELIMITER"* | *$'\t'*) hpc_bad_input "redaction pattern $(printf '%q' "$pattern") holds a tab or \\001" ;;
    esac
    rc=0
    LC_ALL=C grep -qE -e "$pattern" </dev/null 2>/dev/null || rc=$?
    if ((rc == 2)); then
      hpc_bad_input "redaction pattern $(printf '%q' "$pattern") is not a valid extended regular expression"
    fi
    if printf '\n' | LC_ALL=C grep -qE -e "$pattern"; then
      hpc_bad_input "redaction pattern $(printf '%q' "$pattern") matches empty text"
    fi
  done <<<"${HPC_REDACT_PATTERNS:-}"
}

# Writes every rule, built-in then the operator's (checked already), into WORK:
# redact.rules (flags TAB regex TAB replacement), redact.any (all regexes, for a quick
# first look at each file) and redact.block.sed (multi-line PEM private keys).
hpc_prepare_redaction() {
  local work=$1 i pattern
  local rules=("${HPC_BUILTIN_RULES[@]}")
  while IFS= read -r pattern; do
    [[ -n $pattern ]] && rules+=(- "$pattern" '<REDACTED>')
  done <<<"${HPC_REDACT_PATTERNS:-}"
  : >"$work/redact.rules"
  : >"$work/redact.any"
  for ((i = 0; i < ${#rules[@]}; i += 3)); do
    printf '%s\t%s\t%s\n' "${rules[i]}" "${rules[i + 1]}" "${rules[i + 2]}" >>"$work/redact.rules"
    printf '%s\n' "${rules[i + 1]}" >>"$work/redact.any"
  done
  printf '%s\n' "$HPC_PEM_BEGIN" >>"$work/redact.any"
  # Keeps the BEGIN and END lines, drops the key between them for one marker line.
  printf '%s\n' "\\${HPC_SED_DELIMITER}${HPC_PEM_BEGIN}${HPC_SED_DELIMITER},\\${HPC_SED_DELIMITER}${HPC_PEM_END}${HPC_SED_DELIMITER}{" \
    "\\${HPC_SED_DELIMITER}${HPC_PEM_BEGIN}${HPC_SED_DELIMITER}b" \
    "\\${HPC_SED_DELIMITER}${HPC_PEM_END}${HPC_SED_DELIMITER}{" 'i\' '<REDACTED PRIVATE KEY>' 'b' '}' 'd' '}' \
    >"$work/redact.block.sed"
}

# Redacts plain text from file IN into file OUT with every rule; prints the count. Fails
# (leaving OUT absent) when any step fails, e.g. for want of space.
hpc_redact_stream() {
  local work=$1 in=$2 out=$3 flags regex replacement count total=0 grep_i sed_i
  local LC_ALL=C
  cp -- "$in" "$out.a" || return 1
  while IFS=$'\t' read -r flags regex replacement; do
    grep_i="" sed_i=""
    if [[ $flags == i ]]; then
      grep_i=-i sed_i=I
    fi
    count=$(grep -aoE $grep_i -e "$regex" -- "$out.a" | wc -l) || true
    if ((count > 0)); then
      sed -E -e "s${HPC_SED_DELIMITER}${regex}${HPC_SED_DELIMITER}${replacement}${HPC_SED_DELIMITER}g${sed_i}" \
        -- "$out.a" >"$out.b" || return 1
      mv -f -- "$out.b" "$out.a" || return 1
      total=$((total + count))
    fi
  done <"$work/redact.rules"
  count=$(grep -acE -e "$HPC_PEM_BEGIN" -- "$out.a") || true
  if ((count > 0)); then
    sed -f "$work/redact.block.sed" -- "$out.a" >"$out.b" || return 1
    mv -f -- "$out.b" "$out.a" || return 1
    total=$((total + count))
  fi
  mv -f -- "$out.a" "$out" || return 1
  printf '%s\n' "$total"
}

# Redacts one file in place (a .gz file through its uncompressed text); prints the count.
# Files with nothing to redact are only read, once.
hpc_redact_file() {
  local work=$1 file=$2 tmp=$1/tmp/redact count
  local LC_ALL=C
  rm -rf -- "$tmp"
  mkdir -p -- "$tmp" || return 1
  if [[ $file == *.gz ]]; then
    if ! gzip -dc -- "$file" 2>/dev/null | grep -aqiE -f "$work/redact.any"; then
      printf '0\n'
      return 0
    fi
    # A damaged .gz still gives its readable start; that part is what gets shipped.
    gzip -dc -- "$file" >"$tmp/plain" 2>/dev/null
    [[ -s $tmp/plain ]] || return 1
    count=$(hpc_redact_stream "$work" "$tmp/plain" "$tmp/clean") || return 1
    gzip -c -- "$tmp/clean" >"$tmp/result" || return 1
  else
    if ! grep -aqiE -f "$work/redact.any" -- "$file"; then
      printf '0\n'
      return 0
    fi
    count=$(hpc_redact_stream "$work" "$file" "$tmp/result") || return 1
  fi
  # The report and the work folder are on one file system: the rename is atomic, so a
  # file is either the original or wholly redacted.
  mv -f -- "$tmp/result" "$file" || return 1
  rm -rf -- "$tmp"
  printf '%s\n' "$count"
}

# Redacts every file in the NUL-separated LIST, appending "count TAB file NUL" to DONE as
# each one is finished (hpc_redact_item removes the files that never got there).
hpc_redact_files() {
  local work=$1 list=$2 done=$3 file count
  set -uo pipefail
  while IFS= read -r -d '' file; do
    [[ -f $file ]] || continue
    count=$(hpc_redact_file "$work" "$file") || continue
    printf '%s\t%s\0' "$count" "$file" >>"$done"
  done <"$list"
}
