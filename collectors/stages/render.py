"""render: compose bash/ into the one `collector_script.sh` every node runs."""

from __future__ import annotations

import hashlib

from collectors import console, nodescript
from collectors.context import StageContext

SCRIPT_NAME = "collector_script.sh"


def execute(ctx: StageContext) -> None:
    state = ctx.state
    state.require_stage("discover", "render")
    commands = ctx.options.get("commands")
    if commands is None:  # re-rendering keeps the commands the run was started with
        commands = state.options.get("commands", [])
    text = nodescript.compose(state.cluster["type"], commands)
    path = state.run_dir / SCRIPT_NAME
    path.write_text(text)
    path.chmod(0o644)
    digest = hashlib.sha256(text.encode()).hexdigest()
    state.options["commands"] = list(commands)
    state.mark_stage("render", "done", script_path=str(path), sha256=digest, bytes=len(text.encode()))
    extra = f" with {len(commands)} extra command(s)" if commands else ""
    console.log(f"render: {path} ({state.cluster['type']}{extra}, sha256 {digest[:12]}…)")
