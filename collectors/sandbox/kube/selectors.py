"""Field and label selectors, and pages of a list (`limit` and `continue`), as the API server reads them."""

from __future__ import annotations

import base64
from typing import Any


def field_value(item: dict, path: str) -> str:
    value: Any = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        for operator in ("!=", "==", "="):
            if operator in term:
                path, _, value = term.partition(operator)
                terms.append((path.strip(), "!=" if operator == "!=" else "=", value.strip()))
                break
    return terms


def matches_fields(item: dict, terms: list[tuple[str, str, str]]) -> bool:
    return all((field_value(item, path) == value) == (operator == "=") for path, operator, value in terms)


def split_selector(text: str) -> list[str]:
    """Split on commas that are not inside `in (a,b)` sets."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [term.strip() for term in terms + [current] if term.strip()]


def label_term_matches(labels: dict[str, str], term: str) -> bool:
    words = term.split()
    if len(words) == 3 and words[1] in ("in", "notin"):
        values = {value.strip() for value in words[2].strip("()").split(",")}
        inside = labels.get(words[0]) in values
        return inside if words[1] == "in" else not inside
    for operator in ("!=", "==", "="):
        if operator in term:
            key, _, value = term.partition(operator)
            equal = labels.get(key.strip()) == value.strip()
            return not equal if operator == "!=" else equal
    if term.startswith("!"):
        return term[1:] not in labels
    return term in labels


def matches_labels(item: dict, selector: str) -> bool:
    labels = item["metadata"].get("labels") or {}
    return all(label_term_matches(labels, term) for term in split_selector(selector))


def page(items: list[dict], limit: int, continue_token: str) -> tuple[list[dict], str]:
    offset = int(base64.urlsafe_b64decode(continue_token.encode()).decode()) if continue_token else 0
    if limit <= 0 or offset + limit >= len(items):
        return items[offset:], ""
    return items[offset:offset + limit], base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
