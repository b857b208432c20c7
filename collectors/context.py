"""What every stage receives: the same `execute(ctx)` shape for all of them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from collectors.aws import Aws
from collectors.settings import Settings
from collectors.state import RunState


@dataclass
class StageContext:
    settings: Settings
    state: RunState
    aws: Aws
    # Stage-specific flags (e.g. nodes, commands, json, retry_failed); absent means not given.
    options: dict[str, Any] = field(default_factory=dict)
    # Set by the first Ctrl-C: stop starting new work, let in-flight work end cleanly.
    cancel: threading.Event = field(default_factory=threading.Event)
