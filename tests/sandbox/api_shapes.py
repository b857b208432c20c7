"""Raw API responses checked against the output shapes of botocore's own service models.

botocore's parsers forgive: a member the model does not have is dropped, a value of the wrong type
often passes through. So a sandbox that invents a field, spells one differently or sends the wrong
type would go unnoticed by the tool's tests while the real service never sends it. Here the raw
response (the JSON body, or S3's XML body and headers) is walked against the shape in
botocore/data/<service>/<version>/service-2.json, read as data (never botocore's parsers):
every member must be in the shape, of its type, within its enum, length, range and pattern, and
every required member must be there.

moto writes SageMaker's answers through the model itself, dropping any key the shape lacks: there a
renamed field shows as a missing one, so `missing(...)` checks that what the real service sends, and
the tool reads, is there.

`capture_raw_responses(client)` records each response a client gets; `problems(...)` lists what is
wrong with one, as lines naming the path of each bad value.
"""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import botocore.loaders

# Headers S3 adds to every answer that no operation's shape models (its "Common Response Headers").
S3_COMMON_HEADERS = {"x-amz-request-id", "x-amz-id-2"}
SCALAR_TYPES = ("string", "integer", "long", "boolean", "timestamp", "double", "float", "blob")


@lru_cache(maxsize=None)
def service_model(service: str) -> dict:
    return botocore.loaders.Loader().load_service_model(service, "service-2")


def output_shape(service: str, operation: str) -> str | None:
    return service_model(service)["operations"][operation].get("output", {}).get("shape")


def capture_raw_responses(client) -> list[dict]:
    """Every response the client receives from now on: {"operation", "status", "headers", "body"}."""
    captured: list[dict] = []

    def record(operation_model, response_dict, **_):
        body = response_dict["body"]
        captured.append({"operation": operation_model.name, "status": response_dict["status_code"],
                         "headers": {name.lower(): value for name, value in response_dict["headers"].items()},
                         "body": body if isinstance(body, bytes) else b""})  # a streamed body is the payload

    client.meta.events.register("before-parse", record)
    return captured


def problems(service: str, response: dict) -> list[str]:
    """What in one raw response its operation's output shape does not allow (error answers have
    error shapes, not the output shape: they are not checked here)."""
    if response["status"] >= 300:
        return []
    model = service_model(service)
    shape_name = output_shape(service, response["operation"])
    if shape_name is None:
        return [] if not response["body"].strip() else [f"{response['operation']}: a body, and no output shape"]
    if model["metadata"]["protocol"] == "rest-xml":
        return RestXmlChecker(model).response(shape_name, response)
    if not response["body"]:
        return JsonChecker(model).value(shape_name, {}, response["operation"])
    return JsonChecker(model).value(shape_name, json.loads(response["body"]), response["operation"])


def missing(response: dict, paths: list[str]) -> list[str]:
    """The dotted paths (`[]` for every item of a list) absent from a JSON response's body."""
    body = json.loads(response["body"] or b"{}")
    return [f"{response['operation']}.{path}: missing" for path in paths if not present(body, path.split("."))]


def present(value: Any, steps: list[str]) -> bool:
    if not steps:
        return True
    step, rest = steps[0], steps[1:]
    if step.endswith("[]"):
        items = value.get(step[:-2]) if isinstance(value, dict) else None
        return isinstance(items, list) and bool(items) and all(present(item, rest) for item in items)
    return isinstance(value, dict) and step in value and present(value[step], rest)


class Checker:
    """What both protocols share: scalar rules, read from the shape."""

    def __init__(self, model: dict) -> None:
        self.shapes = model["shapes"]

    def constraints(self, shape: dict, value: Any, where: str) -> list[str]:
        found = []
        if "enum" in shape and value not in shape["enum"]:
            found.append(f"{where}: {value!r} is not one of the model's values {shape['enum']}")
        if shape["type"] == "string" and isinstance(value, str):
            if len(value) < shape.get("min", 0) or len(value) > shape.get("max", len(value)):
                found.append(f"{where}: length {len(value)} outside {shape.get('min', 0)}..{shape.get('max')}")
            if "pattern" in shape and not re.fullmatch(shape["pattern"], value):
                found.append(f"{where}: {value!r} does not match {shape['pattern']!r}")
        if shape["type"] in ("integer", "long") and isinstance(value, int):
            if value < shape.get("min", value) or value > shape.get("max", value):
                found.append(f"{where}: {value} outside {shape.get('min')}..{shape.get('max')}")
        return found

    def members(self, shape: dict, present: set[str], where: str) -> list[str]:
        unknown = sorted(present - shape["members"].keys())
        found = [f"{where}.{name}: not a member of the model's shape" for name in unknown]
        body_required = [name for name in shape.get("required", []) if self.in_body(shape["members"][name])]
        found += [f"{where}.{name}: required by the model, missing" for name in body_required if name not in present]
        return found

    @staticmethod
    def in_body(member: dict) -> bool:
        return member.get("location") is None


class JsonChecker(Checker):
    """The json protocol (SageMaker, SSM): members by name, timestamps as epoch seconds."""

    def value(self, shape_name: str, value: Any, where: str) -> list[str]:
        shape = self.shapes[shape_name]
        kind = shape["type"]
        if kind == "structure":
            if not isinstance(value, dict):
                return [f"{where}: {type(value).__name__}, the model says structure"]
            found = self.members(shape, set(value), where)
            for name, item in value.items():
                if name in shape["members"]:
                    found += self.value(shape["members"][name]["shape"], item, f"{where}.{name}")
            return found
        if kind == "list":
            if not isinstance(value, list):
                return [f"{where}: {type(value).__name__}, the model says list"]
            return [problem for index, item in enumerate(value)
                    for problem in self.value(shape["member"]["shape"], item, f"{where}[{index}]")]
        if kind == "map":
            if not isinstance(value, dict):
                return [f"{where}: {type(value).__name__}, the model says map"]
            return [problem for key, item in value.items()
                    for problem in self.value(shape["key"]["shape"], key, f"{where} key")
                    + self.value(shape["value"]["shape"], item, f"{where}[{key!r}]")]
        if not self.is_json_type(kind, value):
            return [f"{where}: {value!r} is not a JSON {kind}"]
        return self.constraints(shape, value, where)

    @staticmethod
    def is_json_type(kind: str, value: Any) -> bool:
        if kind in ("integer", "long"):
            return isinstance(value, int) and not isinstance(value, bool)
        if kind in ("double", "float", "timestamp"):
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "blob":
            return isinstance(value, str) and is_base64(value)
        return isinstance(value, str)


class RestXmlChecker(Checker):
    """S3's rest-xml: body members as elements (locationName, flattened lists), the rest as headers."""

    def response(self, shape_name: str, response: dict) -> list[str]:
        shape = self.shapes[shape_name]
        where = response["operation"]
        found = self.headers(shape, response["headers"], where)
        payload = shape.get("payload")
        body_members = {name for name, member in shape["members"].items() if self.in_body(member)}
        if payload and self.shapes[shape["members"][payload]["shape"]]["type"] == "blob":
            return found  # the body is the object's bytes
        if not response["body"].strip():
            required = [name for name in shape.get("required", []) if name in body_members]
            return found + [f"{where}.{name}: required by the model, missing" for name in required]
        root = ElementTree.fromstring(response["body"])
        if payload:
            return found + self.element(shape["members"][payload]["shape"], root, f"{where}.{payload}")
        lone = [name for name in body_members if self.xml_name(name, shape["members"][name]) == local(root.tag)]
        if lone and self.shapes[shape["members"][lone[0]]["shape"]]["type"] in SCALAR_TYPES:
            # GetBucketLocation: the root element is the member itself.
            return found + self.element(shape["members"][lone[0]]["shape"], root, f"{where}.{lone[0]}")
        return found + self.structure(shape, root, where)

    def headers(self, shape: dict, headers: dict[str, str], where: str) -> list[str]:
        modelled = {member["locationName"].lower(): member for member in shape["members"].values()
                    if member.get("location") == "header"}
        prefixes = [member["locationName"].lower() for member in shape["members"].values()
                    if member.get("location") == "headers"]
        found = []
        for name, value in headers.items():
            if name in modelled:
                found += self.scalar(self.shapes[modelled[name]["shape"]], value, f"{where} header {name}", "header")
            elif name.startswith("x-amz-") and name not in S3_COMMON_HEADERS and not name.startswith(tuple(prefixes)):
                found.append(f"{where} header {name}: not a member of the model's shape")
        return found

    def xml_name(self, name: str, member: dict) -> str:
        target = self.shapes[member["shape"]]
        if target["type"] == "list" and (member.get("flattened") or target.get("flattened")):
            return member.get("locationName") or target["member"].get("locationName") or name
        return member.get("locationName", name)

    def structure(self, shape: dict, element: ElementTree.Element, where: str) -> list[str]:
        by_xml_name = {self.xml_name(name, member): name for name, member in shape["members"].items()
                       if self.in_body(member)}
        children: dict[str, list[ElementTree.Element]] = {}
        for child in element:
            children.setdefault(local(child.tag), []).append(child)
        unknown = sorted(children.keys() - by_xml_name.keys())
        found = [f"{where}.{tag}: not a member of the model's shape" for tag in unknown]
        found += self.members(shape, {by_xml_name[tag] for tag in children if tag in by_xml_name}, where)
        for tag, elements in children.items():
            if tag not in by_xml_name:
                continue
            name = by_xml_name[tag]
            member, member_shape = shape["members"][name], self.shapes[shape["members"][name]["shape"]]
            if member_shape["type"] == "list" and (member.get("flattened") or member_shape.get("flattened")):
                item_shape = member_shape["member"]["shape"]
                found += [problem for index, item in enumerate(elements)
                          for problem in self.element(item_shape, item, f"{where}.{name}[{index}]")]
            elif len(elements) > 1:
                found.append(f"{where}.{name}: {len(elements)} elements, the model has one")
            else:
                found += self.element(shape["members"][name]["shape"], elements[0], f"{where}.{name}")
        return found

    def element(self, shape_name: str, element: ElementTree.Element, where: str) -> list[str]:
        shape = self.shapes[shape_name]
        if shape["type"] == "structure":
            return self.structure(shape, element, where)
        if shape["type"] == "list":  # not flattened: one wrapper element, its items inside
            item_name = shape["member"].get("locationName", "member")
            found = [f"{where}.{local(child.tag)}: not a member of the list (its items are <{item_name}>)"
                     for child in element if local(child.tag) != item_name]
            return found + [problem for index, child in enumerate(element) if local(child.tag) == item_name
                            for problem in self.element(shape["member"]["shape"], child, f"{where}[{index}]")]
        if len(element):
            return [f"{where}: has child elements, the model says {shape['type']}"]
        if not element.text:
            return []  # an empty element is a null (GetBucketLocation's answer for us-east-1)
        return self.scalar(shape, element.text, where, "xml")

    def scalar(self, shape: dict, text: str, where: str, location: str) -> list[str]:
        parsed = parse_scalar(shape, text, location)
        if parsed is None:
            return [f"{where}: {text!r} is not a {shape['type']}"]
        return self.constraints(shape, parsed, where)


def parse_scalar(shape: dict, text: str, location: str) -> Any:
    """The value of an XML text or header as the model types it, None when it is not of that type."""
    kind = shape["type"]
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("double", "float"):
            return float(text)
        if kind == "boolean":
            return {"true": True, "false": False}[text]
        if kind == "timestamp":
            # rest-xml: ISO 8601 in bodies, RFC 822 (HTTP date) in headers, unless the shape says otherwise.
            form = shape.get("timestampFormat", "rfc822" if location == "header" else "iso8601")
            if form == "rfc822":
                return parsedate_to_datetime(text)
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        if kind == "blob":
            return text if is_base64(text) else None
        return text
    except (ValueError, KeyError, TypeError):
        return None


def is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
        return True
    except ValueError:
        return False


def local(tag: str) -> str:
    """An element's name without its XML namespace."""
    return tag.rsplit("}", 1)[-1]
