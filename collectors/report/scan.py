"""Read one node bundle and apply the catalog to it, streaming.

A bundle is read once, member after member, out of the gzip stream: nothing is extracted to disk
and no file is held whole in memory. Each member is read in blocks of whole lines. A rule first
looks for its literals in a block (`bytes.find`, memory speed) and runs its regex only on the
lines that hold one; only matches become evidence (file, line number, line). Lines are split in
Python only for the few small files that tests (lspci, sinfo -R, EFA counters) and CSV rules
read line by line.
"""

from __future__ import annotations

import gzip
from concurrent.futures import ProcessPoolExecutor
from itertools import takewhile
from pathlib import Path
from typing import IO, Iterator

from collectors.report.bundles import BUNDLE_NAME_RE, READ_ERRORS, blocks, chunk_size, in_processes, members
from collectors.report.catalog import Catalog, CsvSpec, Fact, Rule
from collectors.report.checks import NODE_TESTS, NodeTest
from collectors.report.model import CsvRows, Evidence, Hit, NodeScan, csv_number, decode, gpu_id

EVIDENCE_PER_HIT = 3
# Past this many lines holding a rule's literal, the regex runs over the whole block instead.
DENSE_LINES = 64


def scan_bundles(paths: list[Path], workers: int, catalog: Catalog) -> list[NodeScan]:
    """Every bundle, in worker processes when there are many (each gets the catalog once)."""
    if not in_processes(len(paths), workers):
        return [scan_bundle(path, catalog) for path in paths]
    with ProcessPoolExecutor(max_workers=workers, initializer=_keep_catalog, initargs=(catalog,)) as pool:
        return list(pool.map(_scan_in_worker, paths, chunksize=chunk_size(len(paths), workers)))


_worker_catalog: Catalog | None = None


def _keep_catalog(catalog: Catalog) -> None:
    global _worker_catalog
    _worker_catalog = catalog


def _scan_in_worker(path: Path) -> NodeScan:
    return scan_bundle(path, _worker_catalog)


def scan_bundle(path: Path, catalog: Catalog) -> NodeScan:
    named = BUNDLE_NAME_RE.match(path.name)
    scan = NodeScan(bundle=path.name, instance_id=named["instance_id"] if named else None,
                    group=named["group"] if named else None)
    reader = BundleReader(catalog, scan)
    try:
        for member, content in members(path):
            if content is not None and "/" in member.name:
                reader.read_member(member.name.split("/", 1)[1], content)
    except READ_ERRORS as exc:
        # What was read before the damage still counts; the error becomes a finding.
        scan.error = f"{type(exc).__name__}: {exc}"
    reader.finish()
    return scan


class BundleReader:
    """Applies the catalog to the members of one bundle, in the order the tarball holds them."""

    def __init__(self, catalog: Catalog, scan: NodeScan):
        self.catalog = catalog
        self.scan = scan
        self.hits: dict[tuple, Hit] = {}
        self.tests: dict[str, NodeTest] = {}
        self.facts = FactValues(catalog.facts)
        self.gpu_order = GpuOrder()

    def read_member(self, path: str, raw: IO[bytes] | None) -> None:
        rules, facts = self.catalog.for_path(path.removesuffix(".gz"))
        if raw is None or not (rules or facts):
            return  # not read at all: the tar stream skips over it
        self.scan.files += 1
        source = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        file_hits = FileHits(path)
        pattern_rules = [rule for rule in rules if rule.pattern is not None]
        # A test that needs only the lines holding a literal of this file (a unit failure among a
        # syslog's lines) is fed those; the others see every line.
        sparse = {rule.id: literal for rule in rules if rule.test
                  and (literal := self.test(rule).literal(path)) is not None}
        line_rules = [rule for rule in rules if rule.pattern is None and rule.id not in sparse]
        csv_facts = [fact for fact in facts if fact.csv is not None]
        csv = CsvRows() if any(rule.csv for rule in line_rules) or csv_facts else None
        line_base = 0
        for block in blocks(source):
            self.scan.bytes_read += len(block)
            for rule in pattern_rules:
                match_pattern(rule, block, line_base, file_hits)
            self.facts.read(facts, path, block, line_base)
            if line_rules or csv_facts:
                self.read_lines(line_rules, csv_facts, csv, path, block, line_base, file_hits)
            for rule_id, literal in sparse.items():
                feed_lines_with(self.tests[rule_id], literal, path, block, line_base)
            line_base += block.count(b"\n")
        file_hits.merge_into(self.hits)
        self.gpu_order.add(file_hits, {rule.id: rule.file_rank(path.removesuffix(".gz")) for rule in pattern_rules})

    def read_lines(self, rules: list[Rule], csv_facts: list[Fact], csv: CsvRows | None, path: str, block: bytes,
                   line_base: int, file_hits: FileHits) -> None:
        lines = block.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the block ends with a line end, not with an empty line
        for offset, line in enumerate(lines):
            number = line_base + offset + 1
            row = csv.feed(line) if csv is not None else None
            for rule in rules:
                if rule.csv is not None:
                    if row is not None:
                        match_csv_row(rule, row, number, line, file_hits)
                else:
                    self.test(rule).feed(path, number, line)
            if row is not None:
                for fact in csv_facts:
                    self.facts.add_csv(fact, path, row, number, line)

    def test(self, rule: Rule) -> NodeTest:
        if rule.id not in self.tests:
            self.tests[rule.id] = NODE_TESTS[rule.test](rule)
        return self.tests[rule.id]

    def finish(self) -> None:
        for test in self.tests.values():
            for hit in test.finish():
                _merge(self.hits, hit, hit.count)
            self.scan.counters.update(test.counters)
        self.gpu_order.mark(self.hits.values())
        self.scan.hits = list(self.hits.values())
        self.facts.store(self.scan)


def feed_lines_with(test: NodeTest, literal: bytes, path: str, block: bytes, line_base: int) -> None:
    """Feed the test the lines of the block that hold the literal, with their line numbers."""
    counted_to, number = 0, line_base + 1
    at = block.find(literal)
    while at >= 0:
        start, end = block.rfind(b"\n", 0, at) + 1, line_end(block, at)
        number += block.count(b"\n", counted_to, start)
        counted_to = start
        test.feed(path, number, block[start:end])
        at = block.find(literal, end)


def match_pattern(rule: Rule, block: bytes, line_base: int, file_hits: FileHits) -> None:
    """Each line is searched on its own (a match never spans lines); only lines that may match are
    searched at all. One hit per line: the first match that passes `when`."""
    counted_to, line_number = 0, line_base + 1
    for start, end in candidate_lines(rule, block):
        line_number += block.count(b"\n", counted_to, start)
        counted_to = start
        line = block[start:end]
        if rule.exclude is not None and rule.exclude.search(line):
            continue
        for match in rule.pattern.finditer(block, start, end):
            if all(condition.holds(match.group(condition.group)) for condition in rule.conditions):
                key = decode(match.group(rule.key)) if rule.key and match.group(rule.key) is not None else None
                gpu = decode(match.group(rule.first_per_gpu)) if rule.first_per_gpu else None
                file_hits.add(rule.id, key, line_number, line, gpu)
                break


def candidate_lines(rule: Rule, block: bytes) -> list[tuple[int, int]]:
    """(start, end) of the lines that may match, in order: those that hold one of the rule's literals,
    or, where the literals are on most lines (nvlink -e) or unknown, those where the regex matches."""
    starts = literal_lines(rule.literals, block) if rule.literals else None
    if starts is None:
        starts = set()
        for match in rule.pattern.finditer(block):
            # A match across lines may hide a real one inside the lines it covers: try each of them.
            first, last = block.rfind(b"\n", 0, match.start()) + 1, block.rfind(b"\n", 0, match.end()) + 1
            starts.update(takewhile(lambda start: start <= last, line_starts(block, first)))
    return [(start, line_end(block, start)) for start in sorted(starts)]


def literal_lines(literals: tuple[bytes, ...], block: bytes) -> set[int] | None:
    """Starts of the lines holding a literal; None when there are so many that a pass of the regex
    over the block is cheaper than searching them one by one."""
    starts: set[int] = set()
    for literal in literals:
        at = block.find(literal)
        while at >= 0:
            starts.add(block.rfind(b"\n", 0, at) + 1)
            if len(starts) > DENSE_LINES:
                return None
            at = block.find(literal, line_end(block, at))
    return starts


def line_starts(block: bytes, start: int = 0) -> Iterator[int]:
    while start < len(block):
        yield start
        start = line_end(block, start) + 1


def line_end(block: bytes, position: int) -> int:
    end = block.find(b"\n", position)
    return len(block) if end < 0 else end


def match_csv_row(rule: Rule, row: dict[str, bytes], number: int, line: bytes, file_hits: FileHits) -> None:
    value = csv_sum(rule.csv, row)
    if value is None or not all(condition.holds(value) for condition in rule.conditions):
        return
    key = decode(row.get(rule.csv.key_column, b"")).strip() or None if rule.csv.key_column else None
    file_hits.add(rule.id, key, number, line, gpu=key if gpu_id(key) else None, order=False)


def csv_sum(spec: CsvSpec, row: dict[str, bytes]) -> float | None:
    """The summed columns, or None when none holds a number ([N/A], [Not Supported])."""
    values = [number for number in (csv_number(row.get(column, b"")) for column in spec.sum_columns)
              if number is not None]
    return sum(values) if values else None


class FileHits:
    """Hits found in one file. A node's count is the largest count of any one file, because the same
    kernel line is in dmesg, the journal and kern.log: summing them would triple it."""

    def __init__(self, path: str):
        self.path = path
        self.hits: dict[tuple, Hit] = {}
        self.first_key: dict[tuple[str, str], str] = {}  # (rule, GPU) -> the key seen first there
        self.gpus: dict[tuple, set[str]] = {}  # (rule, key) -> the GPUs it was seen on

    def add(self, rule_id: str, key: str | None, number: int, line: bytes, gpu: str | None = None,
            order: bool = True) -> None:
        """`order`: whether the rule's keys come in time order on each GPU (a log), so the first is
        the root cause; a table row (CSV) only says which GPU it is about."""
        hit = self.hits.get((rule_id, key))
        if hit is None:
            hit = self.hits[rule_id, key] = Hit(rule=rule_id, key=key)
        hit.count += 1
        if len(hit.evidence) < EVIDENCE_PER_HIT:
            hit.evidence.append(Evidence.of_line(self.path, number, line))
        if gpu is None:
            return
        canonical = gpu_id(gpu)
        if canonical and canonical not in hit.gpus:
            hit.gpus.append(canonical)
        if order:
            self.first_key.setdefault((rule_id, gpu), key)
            self.gpus.setdefault((rule_id, key), set()).add(gpu)

    def merge_into(self, node_hits: dict[tuple, Hit]) -> None:
        for hit in self.hits.values():
            _merge(node_hits, hit, hit.count)


class GpuOrder:
    """Which key came first on each GPU (anchors.md 4.5: the first Xid of a GPU is the root cause,
    later ones are fallout). Lines are ordered within a file, not across files, so the first key
    per GPU is taken from the rule's earliest-listed file that names the GPU."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str], tuple[int, str]] = {}  # (rule, GPU) -> (file rank, key)
        self.gpus: dict[tuple, set[str]] = {}

    def add(self, file_hits: FileHits, ranks: dict[str, int]) -> None:
        for (rule_id, gpu), key in file_hits.first_key.items():
            known = self.first.get((rule_id, gpu))
            if known is None or ranks[rule_id] < known[0]:
                self.first[rule_id, gpu] = (ranks[rule_id], key)
        for identity, gpus in file_hits.gpus.items():
            self.gpus.setdefault(identity, set()).update(gpus)

    def mark(self, hits) -> None:
        for hit in hits:
            for gpu in sorted(self.gpus.get((hit.rule, hit.key), ())):
                first = self.first[hit.rule, gpu][1]
                if first == hit.key:
                    hit.first_on.append(gpu)
                else:
                    hit.after[gpu] = first


def _merge(node_hits: dict[tuple, Hit], hit: Hit, count: int) -> None:
    identity = hit.identity()
    known = node_hits.get(identity)
    if known is None:
        node_hits[identity] = hit
        return
    known.count = max(known.count, count)
    known.gpus = sorted(set(known.gpus) | set(hit.gpus))
    texts = {item.text for item in known.evidence}
    for item in hit.evidence:
        if len(known.evidence) < EVIDENCE_PER_HIT and item.text not in texts:
            known.evidence.append(item)


class FactValues:
    """Fact values as files are read. A fact lists its files by preference: the value comes from the
    first listed file that gave one (the CSV when nvidia-smi answered queries, else its table)."""

    def __init__(self, facts: list[Fact]):
        self.found: dict[tuple[str, int], dict] = {}
        self.facts = {fact.name: fact for fact in facts}

    def read(self, facts: list[Fact], path: str, block: bytes, line_base: int) -> None:
        for fact in facts:
            if fact.pattern is None:
                continue
            slot = self._slot(fact, path)
            if fact.take == "first" and slot["values"]:
                continue
            has_value = "value" in fact.pattern.groupindex
            for match in fact.pattern.finditer(block):
                slot["values"].append(decode(match.group("value")).strip() if has_value else "")
                if slot["evidence"] is None:  # the line number is counted once, for the first value only
                    start = block.rfind(b"\n", 0, match.start()) + 1
                    number = line_base + block.count(b"\n", 0, start) + 1
                    slot["evidence"] = Evidence.of_line(path, number, block[start:line_end(block, match.start())])
                if fact.take == "first":
                    break

    def add_csv(self, fact: Fact, path: str, row: dict[str, bytes], number: int, line: bytes) -> None:
        value = csv_sum(fact.csv, row)
        if value is not None:
            slot = self._slot(fact, path)
            slot["values"].append(str(int(value)))
            if slot["evidence"] is None:
                slot["evidence"] = Evidence.of_line(path, number, line)

    def _slot(self, fact: Fact, path: str) -> dict:
        return self.found.setdefault((fact.name, fact.preference(path.removesuffix(".gz"))),
                                     {"values": [], "evidence": None})

    def store(self, scan: NodeScan) -> None:
        for (name, _), slot in sorted(self.found.items(), key=lambda item: item[0][1]):
            fact = self.facts[name]
            # A sum over a file that was read is 0 without a match: the baseline a later run's
            # counter is compared with. Other facts without a match are unknown, not zero.
            if name in scan.facts or not (slot["values"] or fact.take == "sum"):
                continue
            scan.facts[name] = reduce_values(fact.take, slot["values"])
            if slot["evidence"] is not None:
                scan.fact_evidence[name] = slot["evidence"]
            if fact.counter:
                scan.counters[name] = int(scan.facts[name])


def reduce_values(take: str, values: list[str]) -> str | int:
    if take == "count":
        return len(values)
    if take == "distinct":
        return len(set(values))
    if take == "sum":
        return sum(int(float(value)) for value in values if _is_number(value))
    return values[0]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
