# shellcheck shell=bash
# redact.sh: secrets never leave the node. Every file an item writes is redacted right
# after the item ends, before anything is packaged; lib.sh (hpc_redact_item) runs
# hpc_redact_files in a child under a time limit and removes whatever it did not finish.
#
# The catalogue below is modelled on the public secret-scanning rule sets (gitleaks'
# config/gitleaks.toml, detect-secrets' plugins, trufflehog's detectors): the kinds and
# their shapes are theirs, the patterns are ours, GNU extended regular expressions as
# grep -E and sed -E take them in the C locale (sed 4.7 and grep 3.4 as on Ubuntu 20.04
# and AL2023: no PCRE, no lookaround). Each rule has lines it must redact and lines it
# must leave alone in tests/fixtures/redaction/; README.md says how to add one.
#
# Speed (bench/redact.py): like gitleaks and trufflehog, every rule names the words any
# match of it holds; a grep for those words (big files in parts, one per CPU), then a
# grep for each rule's quick form, find the candidate lines, and only those run the rules,
# in order. A file with no change is left as it was; one with a few changed lines gets
# them spliced in by line number. A rule's replacement never matches any rule again, so
# the count of a file, markers added on its changed lines, is exact; the counts go to the
# manifest.

# The secret-bearing key names of `KEY=value`, `KEY: value`, `"KEY": "value"`: the key
# must end with one of these words (StoragePass, aws_secret_access_key, SessionToken,
# client_secret, DB_PASS, MYSQL_PWD, PGPASSWORD, ...), so that max_tokens, tokenizer_path,
# OLDPWD or "Speculative Store Bypass: Mitigation" are left alone. HPC_KEY_START: the key
# starts a word.
readonly HPC_KEY_START='(^|[^A-Za-z0-9_.-])'
readonly HPC_SECRET_KEY='([A-Za-z0-9_.-]*(password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key|private[_-]?key|credentials?)|[A-Za-z0-9_.-]*(storage|jobcomp|db|sql|[_.-])pass|[A-Za-z0-9_.-]*[_.-]pwd|pass)'
# The words one of those keys holds, for the first look (see the catalogue).
readonly HPC_KEYED_WORDS='pass|pwd|secret|token|key|credential'
# After a key: its closing quote (JSON, Python reprs), blanks, `=` or `:`, blanks.
readonly HPC_KEY_SEP='["'"'"']?[[:space:]]*[:=][[:space:]]*'
# PEM private keys (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP ... BLOCK, SSH2's `---- BEGIN`).
readonly HPC_PEM_BEGIN='-{4,5} ?BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)? ?-{4,5}'
readonly HPC_PEM_END='-{4,5} ?END [A-Z0-9 ]*PRIVATE KEY( BLOCK)? ?-{4,5}'
# The first line of a key written out over several lines: the marker alone on its line
# (after a journal or log prefix, if any).
readonly HPC_PEM_BLOCK_BEGIN="${HPC_PEM_BEGIN}[[:space:]]*\$"
# A line inside such a key: blank, a header (Proc-Type:, DEK-Info:, Comment:), or ending
# in base64 (a log prefix before it is dropped too). The block ends at the END line or at
# the first line of any other kind, which is then redacted as usual.
readonly HPC_PEM_BODY='[[:space:]]*|([^\n]*[[:space:]:])?[A-Za-z0-9+/=]{2,}[[:space:]]*|[^\n]*(Proc-Type|DEK-Info|Comment): [^\n]*'
# A pattern may hold anything but this (sed's delimiter here), tabs and newlines.
readonly HPC_SED_DELIMITER=$'\001'
readonly HPC_PEM_MARKER='<REDACTED PRIVATE KEY>'

# The catalogue, in the order rules run: name, flags ("i": ignore case, "-": none), the
# words every match holds ('|' between them; lowercase, found ignoring case, letters,
# digits and ` ._:/=-` only), regex, sed replacement. AWS structures and URL credentials
# run first, keyed forms next and shapes last, so `token: eyJ...` keeps its key and says
# <REDACTED>; a specific shape (a GitHub token) says which kind it was.
HPC_BUILTIN_RULES=(
  # Private keys collapsed onto one line (JSON strings, `\n` escapes), also cut short: then
  # up to the quote that ends the string.
  private-key-inline - 'private key' "${HPC_PEM_BEGIN}.*${HPC_PEM_END}" "$HPC_PEM_MARKER"
  private-key-inline-cut - 'private key' "${HPC_PEM_BEGIN}"'(\\r)?\\n([^"'"'"'<]|["'"'"'][^,}[:space:]])*' "$HPC_PEM_MARKER"
  # AWS first, so that the keyed rules below leave a presigned URL's date and a SigV4
  # header's credential scope alone: presigned URLs (SigV4 query parameters, SigV2, also
  # \u0026 and &amp; escaped), the SigV4 and SigV2 Authorization headers, a secret key
  # right after its key id (credentials CSV, `id secret` pairs), the key ids themselves.
  presigned-sigv4 i 'x-amz-' '(X-Amz-(Signature|Credential|Security-Token)=)[^&[:space:]"'"'"'<\\]+' '\1<REDACTED>'
  presigned-sigv2 i 'signature=|awsaccesskeyid=' '((^|[?&;]|\\u0026)(Signature|AWSAccessKeyId)=)[^&[:space:]"'"'"'<\\]+' '\1<REDACTED>'
  authorization-sigv4 - 'aws4-hmac-sha256' '(AWS4-HMAC-SHA256 Credential=[^[:space:],"'"'"']*,[[:space:]]*SignedHeaders=[^[:space:],"'"'"']*,[[:space:]]*Signature=)[0-9a-fA-F]+' '\1<REDACTED>'
  authorization-sigv2 i 'authorization' "(Authorization${HPC_KEY_SEP}"'b?["'"'"']?AWS[[:space:]]+)[A-Za-z0-9]{16,128}:[A-Za-z0-9+/=]+' '\1<REDACTED>'
  aws-secret-after-key-id - 'a3t|akia|asia|abia|acca' '((A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}[^A-Za-z0-9/+<]{1,8})[A-Za-z0-9/+]{40}' '\1<REDACTED>'
  aws-key-id - 'a3t|akia|asia|abia|acca' '(A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}' '<REDACTED-AWS-KEY-ID>'
  # Credentials in URLs (postgres://, mysql://, mongodb+srv://, redis://:pass@, https://),
  # before the keyed rules, which would take https://x-access-token:... and the host after it.
  url-credentials - '://' '(://[^/?#[:space:]:@"'"'"'<]*:)[^/?#[:space:]<"'"'"']+@' '\1<REDACTED>@'
  # KEY=value in all its quotings: JSON inside a JSON string (\"password\":\"x\", or
  # escaped deeper), double and single quotes (also Python's b'...'), bare values (not an
  # escaped quote: that is the first form's), --flag value.
  keyed-escaped-json i "$HPC_KEYED_WORDS" "(${HPC_KEY_START}${HPC_SECRET_KEY}"'(\\*")?[[:space:]]*[:=][[:space:]]*\\+")[^"<][^"]*\\"' '\1<REDACTED>\\"'
  keyed-double-quoted i "$HPC_KEYED_WORDS" "(${HPC_KEY_START}${HPC_SECRET_KEY}${HPC_KEY_SEP}"'b?")[^"<][^"]*"' '\1<REDACTED>"'
  keyed-single-quoted i "$HPC_KEYED_WORDS" "(${HPC_KEY_START}${HPC_SECRET_KEY}${HPC_KEY_SEP}b?')[^'<][^']*'" "\\1<REDACTED>'"
  keyed-bare i "$HPC_KEYED_WORDS" "(${HPC_KEY_START}${HPC_SECRET_KEY}"'[[:space:]]*[:=][[:space:]]*)([^[:space:]"'"'"'<{[,;&}\\]|\\[^"\\])[^[:space:]"'"'"',;&]*' '\1<REDACTED>'
  keyed-flag i "$HPC_KEYED_WORDS" "(${HPC_KEY_START}--?${HPC_SECRET_KEY}"'[[:space:]]+)[^[:space:]<-][^[:space:]]*' '\1<REDACTED>'
  aws-cli-argument i 'aws_secret_access_key|aws_session_token' "(${HPC_KEY_START}"'(aws_secret_access_key|aws_session_token)[[:space:]]+)[^[:space:]"'"'"'<=:-][^[:space:]]*' '\1<REDACTED>'
  # Environment lists: {"name": "DB_PASSWORD", "value": "x"} and kubelet's Go structs
  # (EnvVar{Name:DB_PASSWORD,Value:x,ValueFrom:nil,}).
  env-name-value-json i "$HPC_KEYED_WORDS" '("name"[[:space:]]*:[[:space:]]*"'"${HPC_SECRET_KEY}"'"[[:space:]]*,[[:space:]]*"value"[[:space:]]*:[[:space:]]*")[^"<][^"]*"' '\1<REDACTED>"'
  env-name-value-struct i "$HPC_KEYED_WORDS" "(Name:${HPC_SECRET_KEY},Value:)"'[^,[:space:]<][^,[:space:]]*' '\1<REDACTED>'
  # ~/.netrc: machine HOST login USER password SECRET (curl, git, wandb).
  netrc-password - 'password' '(machine[[:space:]]+[^[:space:]]+([[:space:]]+login[[:space:]]+[^[:space:]]+)?[[:space:]]+password[[:space:]]+)[^[:space:]<]+' '\1<REDACTED>'
  # kubeconfig: the client key goes, the client certificate (public) stays; `token:` is keyed.
  kubeconfig-client-key i 'client-key-data' "(client-key-data${HPC_KEY_SEP}"'["'"'"']?)[A-Za-z0-9+/=]{20,}' '\1<REDACTED>'
  # Registry credentials: "auth" in docker/containerd config, Auth: in containerd's log
  # of an AuthConfig; identitytoken and registrytoken are keyed.
  registry-auth - 'auth' '((^|[^A-Za-z0-9_.-])["'"'"']?auth["'"'"']?[[:space:]]*[:=][[:space:]]*["'"'"'])[^"'"'"'<][^"'"'"']*' '\1<REDACTED>'
  registry-auth-struct - 'auth:' '([{,]Auth:)[^,}[:space:]<][^,}[:space:]]*' '\1<REDACTED>'
  # HTTP Authorization: Bearer, Basic, curl --user.
  authorization-bearer i 'bearer' '(Bearer[[:space:]]+)[A-Za-z0-9._~+/-]{8,}=*' '\1<REDACTED>'
  authorization-basic i 'basic' "(Authorization${HPC_KEY_SEP}"'b?["'"'"']?Basic[[:space:]]+)[A-Za-z0-9+/]{4,}=*' '\1<REDACTED>'
  curl-user - 'curl' '(curl[[:space:]]([^<;|&]*[[:space:]])?(-u|--user)[[:space:]=]?)[^[:space:]"'"'"'<:-][^[:space:]"'"'"':]*:[^[:space:]"'"'"']+' '\1<REDACTED>'
  # Cookies: every value of a Cookie header, the value of Set-Cookie (its attributes stay).
  cookie i 'cookie' '((^|[^A-Za-z0-9_-])Cookie["'"'"']?[[:space:]]*:[[:space:]]*b?["'"'"']?)[^"'"'"'<[:space:]][^"'"'"'[:cntrl:]]*' '\1<REDACTED>'
  set-cookie i 'set-cookie' '(Set-Cookie["'"'"']?[[:space:]]*:[[:space:]]*b?["'"'"']?[^=;[:space:]"'"'"']+=)[^;[:space:]"'"'"'<]+' '\1<REDACTED>'
  # Tokens whose shape gives them away, wherever they are.
  slack-webhook i 'hooks.slack.com' '(hooks\.slack\.com/(services|workflows|triggers)/)[A-Za-z0-9_/+-]{8,}' '\1<REDACTED>'
  github-token - 'ghp_|gho_|ghu_|ghs_|ghr_|github_pat_' '(gh[pousr]_[A-Za-z0-9_]{36,}|github_pat_[A-Za-z0-9_]{50,})' '<REDACTED-GITHUB-TOKEN>'
  gitlab-token - 'glpat-|gldt-|glft-|glsoat-|glrt-|glcbt-|glimt-|glptt-|glagent-|gloas-|glffct-|gr1348941' '((glpat|gldt|glft|glsoat|glrt|glcbt|glimt|glptt|glagent|gloas|glffct)-[A-Za-z0-9_-]{20,}(\.[0-9a-z]{9})?|GR1348941[A-Za-z0-9_-]{20,})' '<REDACTED-GITLAB-TOKEN>'
  slack-token - 'xox|xapp-' '((xoxe\.)?xox[abeoprs]-[A-Za-z0-9-]{10,}|xapp-[0-9]+-[A-Za-z0-9-]{10,})' '<REDACTED-SLACK-TOKEN>'
  huggingface-token - 'hf_|api_org_' '(^|[^A-Za-z0-9_])(hf|api_org)_[A-Za-z0-9]{34,}' '\1<REDACTED-HF-TOKEN>'
  wandb-key - 'wandb_v1_|wb_at_' '(wandb_v1_[A-Za-z0-9_]{40,}|wb_at_[A-Za-z0-9._-]{20,})' '<REDACTED-WANDB-KEY>'
  wandb-login - 'wandb' '(wandb[[:space:]]+login[[:space:]]([^<]*[[:space:]])?)([A-Za-z0-9]+-)?[A-Za-z0-9_]{40,}' '\1<REDACTED-WANDB-KEY>'
  openai-style-key - 'sk-' '(^|[^A-Za-z0-9_-])sk-((proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|ant-[a-z]+[0-9]{2}-[A-Za-z0-9_-]{20,}|[A-Za-z0-9]{32,})' '\1<REDACTED-API-KEY>'
  npm-token - 'npm_' '(^|[^A-Za-z0-9_])npm_[A-Za-z0-9]{36,}' '\1<REDACTED-NPM-TOKEN>'
  pypi-token - 'pypi-age' 'pypi-AgE[A-Za-z0-9_-]{50,}' '<REDACTED-PYPI-TOKEN>'
  ngc-key - 'nvapi-' 'nvapi-[A-Za-z0-9_-]{64,}' '<REDACTED-NGC-KEY>'
  eks-token - 'k8s-aws-v1.' 'k8s-aws-v1\.[A-Za-z0-9_-]{20,}' '<REDACTED-EKS-TOKEN>'
  jwt - 'eyj' 'eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*' '<REDACTED-JWT>'
  # AWS session tokens by their own start (the keyed forms above say <REDACTED>).
  aws-session-token - 'jb3jpz2lux2vj|zxivyxdz' '([A-Za-z0-9+/]{3}Jb3JpZ2luX2Vj|[A-Za-z0-9+/]{4}ZXIvYXdz)[A-Za-z0-9+/=%]{40,}' '<REDACTED-AWS-SESSION-TOKEN>'
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

# Sets HPC_QUICK to REGEX with every counted repeat X{n,m} made X{k,}, k at most 8: it
# matches wherever REGEX does, and grep's DFA runs all of them at once at full speed.
# Counts over the same characters in many rules ({34}, {36,}, {40}, {64} over [A-Za-z0-9])
# would multiply its states on every hex id and digest.
hpc_quick_pattern() {
  local rest=$1 count max=8
  HPC_QUICK=""
  while [[ $rest =~ ^(([^{]|\{[^0-9])*)\{([0-9]+)(,[0-9]*)?\}(.*)$ ]]; do
    count=${BASH_REMATCH[3]}
    ((count <= max)) || count=$max
    HPC_QUICK+="${BASH_REMATCH[1]}{$count,}"
    rest=${BASH_REMATCH[5]}
  done
  HPC_QUICK+=$rest
}

# Sets HPC_CASE_BLIND to REGEX with every letter outside a bracket expression X made
# [Xx]: sed's I flag has the same meaning but takes sed off its DFA, which made a 400 KB
# line cost a second (and 4 times more at twice the length). Bracket expressions of the
# catalogue's "i" rules hold both cases already ([A-Za-z]).
hpc_case_blind() {
  local regex=$1 i=0 c class
  HPC_CASE_BLIND=""
  while ((i < ${#regex})); do
    c=${regex:i:1}
    if [[ $c == '\' ]]; then
      HPC_CASE_BLIND+=${regex:i:2}
      i=$((i + 2))
    elif [[ $c == '[' ]]; then
      # Up to the closing ], which may come first (after ^) and never closes a [:class:].
      [[ ${regex:i} =~ ^(\[\^?\]?([^]\[]|\[:[a-z]+:\]|\[)*\]) ]] || return 1
      class=${BASH_REMATCH[1]}
      HPC_CASE_BLIND+=$class
      i=$((i + ${#class}))
    elif [[ $c == [A-Za-z] ]]; then
      HPC_CASE_BLIND+="[${c^^}${c,,}]"
      i=$((i + 1))
    else
      HPC_CASE_BLIND+=$c
      i=$((i + 1))
    fi
  done
}

# Sets HPC_RULE_REGEX to the regex of the rule at index I of the catalogue as sed runs it.
hpc_rule_regex() {
  local flags=${HPC_BUILTIN_RULES[$1 + 1]} regex=${HPC_BUILTIN_RULES[$1 + 3]}
  HPC_RULE_REGEX=$regex
  if [[ $flags == i ]]; then
    hpc_case_blind "$regex" || return 1
    HPC_RULE_REGEX=$HPC_CASE_BLIND
  fi
}

# Prints the catalogue's words as regexes (a `.` escaped), but none that holds another
# (authorization holds auth): a line with it has the other too, and grep is a third faster
# with fewer words.
hpc_catalogue_words() {
  local i word other words=() all=()
  for ((i = 0; i < ${#HPC_BUILTIN_RULES[@]}; i += 5)); do
    IFS='|' read -r -a words <<<"${HPC_BUILTIN_RULES[i + 2]}"
    all+=("${words[@]}")
  done
  for word in "${all[@]}"; do
    for other in "${all[@]}"; do
      [[ $word == "$other" || $word != *"$other"* ]] || continue 2
    done
    printf '%s\n' "${word//./\\.}"
  done | sort -u
}

# Writes into WORK what hpc_redact_stream runs: redact.any (the catalogue's words as
# regexes and the operator's patterns, one a line: the first look at a file, lib.sh's
# too), redact.quick (the quick form of every rule, for grep -n's "N:LINE" lines;
# empty with the operator's patterns, which no quick form stands for), redact.lines.sed
# (the rules on such lines), redact.sed (the rules on a whole file, and keys written over
# several lines) and redact.functions.
hpc_prepare_redaction() {
  local work=$1 i pattern own=() quick=()
  # sed scripts name files under WORK (`w`, `R`): a newline would end the name.
  [[ $work != *$'\n'* ]] || hpc_bad_input "the work folder's name holds a newline"
  while IFS= read -r pattern; do
    [[ -n $pattern ]] && own+=("$pattern")
  done <<<"${HPC_REDACT_PATTERNS:-}"
  {
    hpc_catalogue_words
    for pattern in ${own[@]+"${own[@]}"}; do
      printf '%s\n' "$pattern"
    done
  } >"$work/redact.any"
  : >"$work/redact.quick"
  if ((${#own[@]} == 0)); then
    for ((i = 0; i < ${#HPC_BUILTIN_RULES[@]}; i += 5)); do
      hpc_rule_regex "$i"
      hpc_quick_pattern "$HPC_RULE_REGEX"
      # A line's start comes after grep's "N:".
      quick+=("${HPC_QUICK//(^|/(^[0-9]+:|}")
    done
    printf '%s\n' "${HPC_PEM_BLOCK_BEGIN}" "${quick[@]}" >"$work/redact.quick"
  fi
  hpc_write_line_rules ${own[@]+"${own[@]}"} >"$work/redact.lines.sed"
  hpc_write_file_rules ${own[@]+"${own[@]}"} >"$work/redact.sed"
  # lib.sh's child gets hpc_redact_files, hpc_redact_file and hpc_redact_stream; these
  # helpers reach it through this file, and no item's environment carries them.
  declare -f hpc_redact_scan hpc_redact_quick_look hpc_redact_splice hpc_redact_whole >"$work/redact.functions"
}

# Every rule, in order, then the operator's PATTERNS; the t flag is cleared first (an
# earlier s/// may have set it), so that `t changed` after them says whether they did.
hpc_write_substitutions() {
  local d=$HPC_SED_DELIMITER i pattern
  printf '%s\n' 't clear' ':clear'
  for ((i = 0; i < ${#HPC_BUILTIN_RULES[@]}; i += 5)); do
    hpc_rule_regex "$i"
    printf '%s\n' "s${d}${HPC_RULE_REGEX}${d}${HPC_BUILTIN_RULES[i + 4]}${d}g"
  done
  for pattern in "$@"; do
    printf '%s\n' "s${d}${pattern}${d}<REDACTED>${d}g"
  done
}

# redact.lines.sed, for `sed -n` over grep -n's "N:LINE" candidates: prints "-N:LINE" and
# "+N:REDACTED" for each line a rule changes, and "!" for the start of a key written over
# several lines (which only a pass over the whole file can take out).
hpc_write_line_rules() {
  local d=$HPC_SED_DELIMITER
  printf '%s\n' h 's/^[0-9]+://' "\\${d}${HPC_PEM_BLOCK_BEGIN}${d}{" 's/.*/!/' p d '}'
  hpc_write_substitutions "$@"
  printf '%s\n' 't changed' d ':changed' x 's/^/-/' p 's/^-([0-9]+:).*/+\1/' G 's/\n//' p
}

# redact.sed, for `sed` over a whole file: prints it redacted. A key over several lines
# keeps its BEGIN and END lines and one marker line for its body; N/D leave the line after
# the body to the usual rules. Lines with none of the catalogue's words (letters as [Xx]:
# sed's I flag would take it off its DFA) or the operator's patterns skip the rules. On
# stderr (`w /dev/stderr`) it marks what it changed as the line scripts do ("-LINE",
# "+LINE"), and each key block as "+<REDACTED PRIVATE KEY>".
hpc_write_file_rules() {
  local d=$HPC_SED_DELIMITER pattern any=""
  printf '%s\n' "\\${d}${HPC_PEM_BLOCK_BEGIN}${d}{" h "s/.*/+${HPC_PEM_MARKER}/" 'w /dev/stderr' g p \
    "s/.*/${HPC_PEM_MARKER}/" ':pem' '$b' N "\\${d}\\n[^\\n]*${HPC_PEM_END}${d}b" \
    "\\${d}\\n(${HPC_PEM_BODY})\$${d}{" 's/\n.*//' 'b pem' '}' P D '}'
  while IFS= read -r pattern; do
    hpc_case_blind "$pattern"
    any+="${any:+|}${HPC_CASE_BLIND}"
  done < <(hpc_catalogue_words)
  printf '%s\n' "\\${d}${any}${d} b rules"
  for pattern in "$@"; do
    printf '%s\n' "\\${d}${pattern}${d} b rules"
  done
  printf '%s\n' b ':rules' h
  hpc_write_substitutions "$@"
  printf '%s\n' 't changed' b ':changed' x 's/^/-/' 'w /dev/stderr' x 's/^/+/' 'w /dev/stderr' 's/^[+]//'
}

# Redacts the plain text file IN into OUT and prints the count of redactions. OUT is
# written only when something changed; on any failure (no space) it is absent and this
# fails. More changed lines than splice_max (sed tests each splice address on every line),
# or a key over several lines: one pass of every rule over the whole file instead.
hpc_redact_stream() {
  local work=$1 in=$2 out=$3 changes=$3.changes count rc=0 splice_max=64
  # Exported: a plain `local` stays in this shell, and grep and sed in a UTF-8 locale are
  # many times slower and skip what follows a byte that is not UTF-8.
  local -x LC_ALL=C
  rm -f -- "$out"
  hpc_redact_scan "$work" "$in" "$changes" || return 1
  if [[ ! -s $changes ]]; then
    rm -f -- "$changes"
    printf '0\n'
    return 0
  fi
  if grep -q '^!' -- "$changes" || (($(grep -c '^+' -- "$changes") > splice_max)) ||
    ! hpc_redact_splice "$in" "$changes" "$out"; then
    hpc_redact_whole "$work" "$in" "$out" "$changes" || rc=1
  fi
  count=$(awk '/^\+/ { n += gsub(/<REDACTED/, "&") } /^-/ { n -= gsub(/<REDACTED/, "&") } END { print n + 0 }' \
    "$changes") || rc=1
  rm -f -- "$changes" "$changes".*
  if ((rc != 0)); then
    rm -f -- "$out"
    return 1
  fi
  printf '%s\n' "$count"
}

# Writes into CHANGES what the rules change in the file IN: for each part of it, a line
# "@LINES" (the lines before the part), then redact.lines.sed's lines for the part, by line
# number in the part. The lines with a word of the catalogue (a fast grep), then those
# some rule's quick form matches (grep again: sed would take a second for one 400 KB
# line), go to the rules. A big file is read in parts at once, one per CPU up to 4, each
# part from the start of a line: this first look is most of the time redaction takes.
hpc_redact_scan() {
  local work=$1 in=$2 changes=$3 size parts=1 part next bytes
  local -a starts=(0) pids=()
  size=$(stat -c %s -- "$in") || return 1
  if ((size > 32 * 1048576)); then
    parts=$(nproc 2>/dev/null) || parts=1
    ((parts <= 4)) || parts=4
  fi
  for ((part = 1; part < parts; part++)); do
    next=$((size * part / parts))
    # (tail ends on SIGPIPE once head has its line)
    bytes=$(tail -c "+$((next + 1))" -- "$in" | head -n 1 | wc -c) || true
    [[ $bytes =~ ^[0-9]+$ ]] || return 1
    next=$((next + bytes))
    ((next >= starts[part - 1])) || next=${starts[part - 1]}
    starts+=("$next")
  done
  starts+=("$size")
  for ((part = 0; part < parts; part++)); do
    (
      dd if="$in" bs=1M iflag=skip_bytes,count_bytes skip="${starts[part]}" \
        count="$((starts[part + 1] - starts[part]))" status=none |
        grep -naiE -f "$work/redact.any" | hpc_redact_quick_look "$work" |
        sed -n -E -f "$work/redact.lines.sed" >"$changes.$part"
      # grep: 1 is "no line matched", 2 an error; any other failure fails the file.
      ((PIPESTATUS[0] == 0 && PIPESTATUS[1] <= 1 && PIPESTATUS[2] <= 1 && PIPESTATUS[3] == 0)) || exit 1
      if [[ -s $changes.$part ]]; then
        head -c "${starts[part]}" -- "$in" | wc -l >"$changes.$part.lines"
      fi
    ) &
    pids+=($!)
  done
  for part in "${!pids[@]}"; do
    wait "${pids[part]}" || parts=0
  done
  ((parts > 0)) || return 1
  for ((part = 0; part < parts; part++)); do
    if [[ -s $changes.$part ]]; then
      printf '@'
      cat -- "$changes.$part.lines" "$changes.$part" || return 1
    fi
  done >"$changes"
}

# Passes on the lines of stdin that the quick form of some rule matches, or all of them
# when there is none (the operator's patterns); exits as grep does.
hpc_redact_quick_look() {
  if [[ -s $1/redact.quick ]]; then
    grep -aE -f "$1/redact.quick"
  else
    cat
  fi
}

# Writes IN into OUT with each changed line of CHANGES (see hpc_redact_scan) in place of
# the original: sed's `R` puts in the next new line, `d` drops the old one. A last line
# without a newline gets one from `R`: such a file is left to the whole-file pass.
hpc_redact_splice() {
  local in=$1 changes=$2 out=$3
  [[ $(tail -c 1 -- "$in" | od -An -tx1) == *0a ]] || return 1
  sed -n 's/^+[0-9]*://p' -- "$changes" >"$changes.new" &&
    HPC_NEW_LINES=$changes.new awk -F: '/^@/ { base = substr($1, 2) }
      /^\+/ { printf "%d{\nR %s\nd\n}\n", base + substr($1, 2), ENVIRON["HPC_NEW_LINES"] }' \
      "$changes" >"$changes.sed" &&
    sed -f "$changes.sed" -- "$in" >"$out"
}

# Redacts IN into OUT with every rule on every line (redact.sed); writes what changed
# into CHANGES, as hpc_redact_scan does (without offsets).
hpc_redact_whole() {
  local work=$1 in=$2 out=$3 changes=$4
  sed -E -f "$work/redact.sed" -- "$in" >"$out" 2>"$changes"
}

# Redacts one file in place (a gzip file through its uncompressed text; a .gz that is not
# gzip as the text it is); prints the count. A file with nothing to redact stays as it was.
hpc_redact_file() {
  local work=$1 file=$2 tmp=$1/tmp/redact count
  rm -rf -- "$tmp"
  mkdir -p -- "$tmp" || return 1
  if [[ $file == *.gz && $(head -c 2 -- "$file" | od -An -tx1) == " 1f 8b" ]]; then
    # A damaged .gz still gives its readable start; that part is what gets shipped.
    gzip -dc -- "$file" >"$tmp/plain" 2>/dev/null
    count=$(hpc_redact_stream "$work" "$tmp/plain" "$tmp/clean") || return 1
    if [[ -f $tmp/clean ]]; then
      gzip -c -- "$tmp/clean" >"$tmp/result" || return 1
    fi
  else
    count=$(hpc_redact_stream "$work" "$file" "$tmp/result") || return 1
  fi
  # The report and the work folder are on one file system: the rename is atomic, so a
  # file is either the original or wholly redacted.
  if [[ -f $tmp/result ]]; then
    mv -f -- "$tmp/result" "$file" || return 1
  fi
  rm -rf -- "$tmp"
  printf '%s\n' "$count"
}

# Redacts every file in the NUL-separated LIST, appending "count TAB file NUL" to DONE as
# each one is finished (hpc_redact_item removes the files that never got there).
hpc_redact_files() {
  local work=$1 list=$2 done=$3 file count
  set -uo pipefail
  # shellcheck source=/dev/null # written by hpc_prepare_redaction
  source "$work/redact.functions" || return 1
  while IFS= read -r -d '' file; do
    [[ -f $file ]] || continue
    count=$(hpc_redact_file "$work" "$file") || continue
    printf '%s\t%s\0' "$count" "$file" >>"$done"
  done <"$list"
}
