"""The signature catalog (catalog.yaml): loaded, checked, and compiled once.

The catalog is data so that a rule can be added or tuned without touching the engine; the
checks here make a malformed rule fail loudly at load time, never silently match nothing.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import string
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from collectors.errors import UsageError
from collectors.report.checks import TESTS
from collectors.report.literals import required_literals

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")
SEVERITIES = ("critical", "high", "warning", "info")
SOURCES = ("node", "kubectl", "state", "fleet", "cluster_api")
FACT_TAKES = ("first", "count", "distinct", "sum")
RULE_ID_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
# A cause in consequence_of: a rule id, or a glob over rule ids, optionally with `:key` (a glob too).
CAUSE_RE = re.compile(r"^[a-z0-9_*]+(\.[a-z0-9_*]+)+(?::.+)?$")
CONDITION_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")
COMPARE = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
           ">": operator.gt, "<": operator.lt}
TEXT_FIELDS = ("title", "severity", "meaning", "action")


@dataclass(frozen=True)
class Condition:
    group: str
    compare: Any
    limit: float
    text: str

    def holds(self, value: bytes | str | float | None) -> bool:
        try:
            return self.compare(float(value), self.limit)
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class CsvSpec:
    """Rows of a CSV file with a header line (nvidia-smi --format=csv): summed columns give `value`."""

    sum_columns: tuple[str, ...]
    key_column: str | None


def glob_rank(globs: tuple[str, ...], path: str, cache: dict[str, int]) -> int:
    """The first of the globs the path matches (its index; len(globs) for none), cached per path:
    each file of every bundle asks again."""
    if path not in cache:
        cache[path] = next((i for i, glob in enumerate(globs) if fnmatch.fnmatchcase(path, glob)), len(globs))
    return cache[path]


@dataclass
class Rule:
    id: str
    title: str
    severity: str
    meaning: str
    action: str
    source: str = "node"
    files: tuple[str, ...] = ()
    pattern: re.Pattern | None = None
    # Strings every match contains (literals.py); None: the pattern runs over every line.
    literals: tuple[bytes, ...] | None = None
    exclude: re.Pattern | None = None
    conditions: tuple[Condition, ...] = ()
    csv: CsvSpec | None = None
    key: str | None = None
    test: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    cases: dict[str, dict[str, str]] = field(default_factory=dict)
    # Another rule (and key) that names the same fault from another file: hits join its finding.
    same_as: tuple[str, str | None] | None = None
    # The capture that names the GPU: the first key seen per GPU is its root cause, later ones fallout.
    first_per_gpu: str | None = None
    # Finding ids (globs: gpu.xid:48, disk.full, fs.*) whose fault this rule's finding is a consequence
    # of, by this rule's key (a glob; "*" when the catalog gave one list for every key): on a node (and
    # GPU, where both name one) that has one of them, this finding folds under it.
    consequence_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A node with this finding is out of service (drained, down, replaced) whatever the severity says.
    node_unavailable: bool = False
    _ranks: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def file_rank(self, path: str) -> int:
        """Which of the rule's globs (0 = first listed) this path matches."""
        return glob_rank(self.files, path, self._ranks)

    def consequences(self, key: str | None) -> tuple[str, ...]:
        """The causes this rule's finding with `key` may be a consequence of."""
        return next((causes for pattern, causes in self.consequence_of.items()
                     if fnmatch.fnmatchcase(key or "", pattern)), ())

    def describe(self, key: str | None, case: str | None = None, override: dict[str, str] | None = None
                 ) -> dict[str, str]:
        """Title, severity, meaning and action for one finding of this rule: the case wins over the rule."""
        chosen = self.cases.get(case if case is not None else (key or ""), {})
        text = {name: (override or {}).get(name) or chosen.get(name) or getattr(self, name) for name in TEXT_FIELDS}
        values = {name: key if key is not None else "-" for name in (self.key or "key", "key")}
        text["title"] = text["title"].format(**values)
        return text


@dataclass
class Fact:
    name: str
    files: tuple[str, ...]
    take: str = "first"
    pattern: re.Pattern | None = None
    csv: CsvSpec | None = None
    counter: bool = False
    _preferences: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def preference(self, path: str) -> int:
        """Which of the fact's globs (0 = most preferred) this path matches."""
        return glob_rank(self.files, path, self._preferences)


@dataclass
class Catalog:
    version: int
    rules: list[Rule]
    facts: list[Fact]
    _by_path: dict[str, tuple[list[Rule], list[Fact]]] = field(default_factory=dict, repr=False)

    def rule(self, rule_id: str) -> Rule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def rules_from(self, source: str) -> list[Rule]:
        return [rule for rule in self.rules if rule.source == source]

    def for_path(self, path: str) -> tuple[list[Rule], list[Fact]]:
        """Node rules and facts that read this bundle path; cached, since every bundle has the same names."""
        cached = self._by_path.get(path)
        if cached is None:
            rules = [r for r in self.rules if r.source == "node" and matches_any(path, r.files)]
            facts = [f for f in self.facts if matches_any(path, f.files)]
            cached = self._by_path[path] = (rules, facts)
        return cached


def matches_any(path: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(path, glob) for glob in globs)


@lru_cache(maxsize=4)
def load(path: Path = CATALOG_PATH) -> Catalog:
    """The catalog at `path`, validated; a broken catalog is bad configuration (exit 2)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the signature catalog {path}: {exc}") from None
    return parse(raw, str(path))


def parse(raw: Any, where: str = "catalog") -> Catalog:
    if not isinstance(raw, dict) or not isinstance(raw.get("version"), int):
        raise UsageError(f"{where}: needs a mapping with an integer `version`")
    # file_sets only holds YAML anchors that rules reuse (`files: *kernel_logs`).
    _known_keys(raw, {"version", "file_sets", "rules", "facts"}, where)
    rules = [_rule(item, where) for item in _list(raw, "rules", where)]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise UsageError(f"{where}: rule id {rule.id} is used twice")
        seen.add(rule.id)
    _check_same_as(rules, where)
    _check_consequences(rules, where)
    facts = [_fact(item, where) for item in _list(raw, "facts", where)]
    if len({fact.name for fact in facts}) != len(facts):
        raise UsageError(f"{where}: a fact name is used twice")
    return Catalog(version=raw["version"], rules=rules, facts=facts)


def _list(raw: dict, name: str, where: str) -> list[dict]:
    items = raw.get(name) or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise UsageError(f"{where}: `{name}` must be a list of mappings")
    return items


def _rule(item: dict, where: str) -> Rule:
    rule_id = item.get("id")
    if not isinstance(rule_id, str) or not RULE_ID_RE.match(rule_id):
        raise UsageError(f"{where}: rule id {rule_id!r} must be dotted lower-case words (gpu.xid)")
    here = f"{where}: rule {rule_id}"
    _known_keys(item, {"id", "title", "severity", "source", "files", "pattern", "exclude", "when", "csv", "key",
                       "test", "params", "cases", "meaning", "action", "same_as", "first_per_gpu", "consequence_of",
                       "node_unavailable"}, here)
    for name in TEXT_FIELDS:
        if not isinstance(item.get(name), str) or not item[name].strip():
            raise UsageError(f"{here}: needs a non-empty `{name}`")
    _severity(item["severity"], here)
    source = item.get("source", "node")
    if source not in SOURCES:
        raise UsageError(f"{here}: source must be one of {', '.join(SOURCES)}, not {source!r}")
    pattern = _regex(item.get("pattern"), here, "pattern")
    csv = _csv(item.get("csv"), here)
    how = [name for name in ("pattern", "csv", "test") if item.get(name)]
    if len(how) != 1:
        raise UsageError(f"{here}: needs exactly one of pattern, csv, test (has {how or 'none'})")
    if source != "node" and not item.get("test"):
        raise UsageError(f"{here}: {source} rules are tests (`test:`), not patterns")
    files = _globs(item.get("files"), here, required=source == "node")
    key = item.get("key")
    captures = set(pattern.groupindex) if pattern else {"value"}
    if key is not None and pattern is not None and key not in pattern.groupindex:
        raise UsageError(f"{here}: key {key!r} is not a named group of the pattern")
    if csv and key is None and csv.key_column:
        key = csv.key_column
    conditions = _conditions(item.get("when"), captures if (pattern or csv) else set(), here)
    rule = Rule(id=rule_id, title=item["title"], severity=item["severity"], meaning=item["meaning"].strip(),
                action=item["action"].strip(), source=source, files=files, pattern=pattern,
                literals=required_literals(pattern) if pattern is not None else None,
                exclude=_regex(item.get("exclude"), here, "exclude"), conditions=conditions, csv=csv, key=key,
                test=item.get("test"), params=dict(item.get("params") or {}), cases=_cases(item.get("cases"), here),
                same_as=_same_as(item.get("same_as"), here), first_per_gpu=item.get("first_per_gpu"),
                consequence_of=_consequence_of(item.get("consequence_of"), here),
                node_unavailable=_flag(item.get("node_unavailable", False), here, "node_unavailable"))
    if rule.first_per_gpu is not None and (pattern is None or rule.key is None
                                           or rule.first_per_gpu not in pattern.groupindex):
        raise UsageError(f"{here}: first_per_gpu needs a pattern with a key and a named group of that name")
    _check_title(rule, here)
    _check_test(rule, here)
    return rule


def _fact(item: dict, where: str) -> Fact:
    name = item.get("name")
    here = f"{where}: fact {name!r}"
    if not isinstance(name, str) or not name:
        raise UsageError(f"{where}: a fact needs a name")
    _known_keys(item, {"name", "files", "pattern", "csv", "take", "counter"}, here)
    take = item.get("take", "first")
    if take not in FACT_TAKES:
        raise UsageError(f"{here}: take must be one of {', '.join(FACT_TAKES)}")
    pattern = _regex(item.get("pattern"), here, "pattern")
    csv = _csv(item.get("csv"), here)
    if (pattern is None) == (csv is None):
        raise UsageError(f"{here}: needs exactly one of pattern, csv")
    if pattern is not None and take != "count" and "value" not in pattern.groupindex:
        raise UsageError(f"{here}: the pattern needs a (?P<value>...) group unless take is count")
    return Fact(name=name, files=_globs(item.get("files"), here, required=True), take=take, pattern=pattern,
                csv=csv, counter=bool(item.get("counter")))


def _known_keys(item: dict, known: set[str], here: str) -> None:
    unknown = set(item) - known
    if unknown:
        raise UsageError(f"{here}: unknown key(s) {', '.join(sorted(unknown))}")


def _severity(value: Any, here: str) -> None:
    if value not in SEVERITIES:
        raise UsageError(f"{here}: severity must be one of {', '.join(SEVERITIES)}, not {value!r}")


def _regex(text: Any, here: str, name: str) -> re.Pattern | None:
    if text is None:
        return None
    if not isinstance(text, str) or not text:
        raise UsageError(f"{here}: `{name}` must be a non-empty string")
    try:
        # Bytes: bundles are read without decoding; only evidence lines are decoded.
        return re.compile(text.encode(), re.MULTILINE)
    except re.error as exc:
        raise UsageError(f"{here}: `{name}` is not a valid regex: {exc}") from None


def _csv(spec: Any, here: str) -> CsvSpec | None:
    if spec is None:
        return None
    columns = spec.get("sum") if isinstance(spec, dict) else None
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise UsageError(f"{here}: csv needs `sum: [column, ...]`")
    return CsvSpec(tuple(columns), spec.get("key"))


def _globs(value: Any, here: str, required: bool) -> tuple[str, ...]:
    if value is None and not required:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise UsageError(f"{here}: `files` must be a non-empty list of globs")
    return tuple(value)


def _conditions(when: Any, captures: set[str], here: str) -> tuple[Condition, ...]:
    if when is None:
        return ()
    if not isinstance(when, dict):
        raise UsageError(f"{here}: `when` must map capture names to tests like \">= 95\"")
    conditions = []
    for group, text in when.items():
        match = CONDITION_RE.match(str(text))
        if group not in captures or not match:
            raise UsageError(f"{here}: when {group}: {text!r} needs a named capture and a test like \">= 95\"")
        conditions.append(Condition(group, COMPARE[match.group(1)], float(match.group(2)), str(text)))
    return tuple(conditions)


def _cases(cases: Any, here: str) -> dict[str, dict[str, str]]:
    if cases is None:
        return {}
    if not isinstance(cases, dict):
        raise UsageError(f"{here}: `cases` must map key values to overrides")
    checked = {}
    for value, override in cases.items():
        if not isinstance(override, dict) or set(override) - set(TEXT_FIELDS):
            raise UsageError(f"{here}: case {value!r} may only set {', '.join(TEXT_FIELDS)}")
        if "severity" in override:
            _severity(override["severity"], f"{here} case {value!r}")
        checked[str(value)] = {name: str(text).strip() for name, text in override.items()}
    return checked


def _same_as(value: Any, here: str) -> tuple[str, str | None] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"{here}: same_as must name a rule, as gpu.xid or gpu.xid:79")
    rule_id, _, key = value.partition(":")
    return rule_id, key or None


def _consequence_of(value: Any, here: str) -> dict[str, tuple[str, ...]]:
    """A list of causes for every key, or a mapping of key globs to lists (first match wins)."""
    if value is None:
        return {}
    by_key = {"*": value} if isinstance(value, list) else value
    if not isinstance(by_key, dict) or not by_key:
        raise UsageError(f"{here}: consequence_of must be a list of causes or map keys to lists of causes")
    for key, causes in by_key.items():
        if not isinstance(causes, list) or not causes or not all(isinstance(c, str) and CAUSE_RE.match(c)
                                                                 for c in causes):
            raise UsageError(f"{here}: consequence_of {key!r} must list finding ids or globs (gpu.xid:48, disk.full)")
    return {str(key): tuple(causes) for key, causes in by_key.items()}


def _flag(value: Any, here: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{here}: {name} must be true or false")
    return value


def _check_consequences(rules: list[Rule], where: str) -> None:
    """Every cause a rule names must be a rule of the catalog, and no rule may name itself."""
    ids = {rule.id for rule in rules}
    for rule in rules:
        for cause in (cause for causes in rule.consequence_of.values() for cause in causes):
            cause_rule = cause.split(":", 1)[0]
            if not any(fnmatch.fnmatchcase(known, cause_rule) for known in ids - {rule.id}) and cause_rule != rule.id:
                raise UsageError(f"{where}: rule {rule.id}: consequence_of {cause!r} names no other rule of the "
                                 f"catalog")


def _check_same_as(rules: list[Rule], where: str) -> None:
    by_id = {rule.id: rule for rule in rules}
    for rule in rules:
        if rule.same_as is None:
            continue
        target = by_id.get(rule.same_as[0])
        if target is None or target.same_as is not None or target is rule:
            raise UsageError(f"{where}: rule {rule.id}: same_as {rule.same_as[0]!r} must be another rule of the "
                             f"catalog that has no same_as of its own")


def _check_title(rule: Rule, here: str) -> None:
    """Titles name a finding (one per key), so they may only use the key: never a value that differs per node."""
    allowed = {"key"} | ({rule.key} if rule.key else set())
    for title in [rule.title] + [case["title"] for case in rule.cases.values() if "title" in case]:
        fields = {name for _, name, _, _ in string.Formatter().parse(title) if name}
        if fields - allowed:
            raise UsageError(f"{here}: title {title!r} may only use {{{'}, {'.join(sorted(allowed))}}}")


def _check_test(rule: Rule, here: str) -> None:
    if rule.test is None:
        return
    known = TESTS.get(rule.source, {})
    if rule.test not in known:
        raise UsageError(f"{here}: unknown {rule.source} test {rule.test!r} (known: {', '.join(sorted(known))})")
