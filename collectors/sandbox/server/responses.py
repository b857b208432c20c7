"""What the middleware's handlers answer with: JSON, and AWS's JSON errors."""

import json
import secrets
from collections.abc import Callable

from werkzeug.wrappers import Request, Response

# A handler answers a request (a Response) or leaves it to the next handler and then moto (None).
Handler = Callable[[Request], Response | None]


def json_response(body, status: int = 200, content_type: str = "application/json") -> Response:
    return Response(json.dumps(body, default=str), status=status, content_type=content_type)


def aws_json_error(code: str, message: str, status: int = 400) -> Response:
    response = json_response({"__type": code, "message": message}, status, "application/x-amz-json-1.1")
    response.headers["x-amzn-ErrorType"] = code
    response.headers["x-amzn-RequestId"] = request_id()
    return response


def request_id() -> str:
    hex_id = secrets.token_hex(16)
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


def validation_error(value, field: str, constraint: str) -> Response:
    return aws_json_error("ValidationException",
                          f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
                          f"{constraint}")
