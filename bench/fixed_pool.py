"""The earlier tool's scheme, for bench/runner.py to compare against (not part of the product).

16 threads, each holding an `aws ssm start-session` for its node's whole collection; on
ThrottlingException up to 3 tries, sleeping 1 s then 2 s; no pacing. Runs on the latest run of
the cluster the environment names (as `invoke run` would) and records outcomes in its state.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collectors.aws import Aws  # noqa: E402  (after the path is set)
from collectors.context import StageContext  # noqa: E402
from collectors.settings import Settings  # noqa: E402
from collectors.stages.run import NodeCollector, session_failure  # noqa: E402
from collectors.state import RunState  # noqa: E402
from collectors.transports.base import SESSION_OK, SESSION_THROTTLED  # noqa: E402

WORKERS, TRIES = 16, 3


def main() -> None:
    config = {key[len("INVOKE_HYPERPOD_"):].lower(): value for key, value in os.environ.items()
              if key.startswith("INVOKE_HYPERPOD_") and "TIMEOUTS" not in key}
    settings = Settings.from_config(config).with_flags(session_mode="attached", session_client="cli",
                                                       max_workers=WORKERS)
    state = RunState.load(settings.runs_dir, settings.require_cluster())
    ctx = StageContext(settings, state, Aws(settings), {}, threading.Event())
    collector = NodeCollector(ctx, list(state.nodes.values()))
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {pool.submit(collect, collector, node): node for node in state.nodes.values()}
        for future in as_completed(futures):
            futures[future].update(future.result())
    state.save()


def collect(collector: NodeCollector, node: dict) -> dict:
    for attempt in range(TRIES):
        result = collector.transport.run(collector.job(node), collector.ctx.cancel)
        if result.kind != SESSION_THROTTLED or attempt == TRIES - 1:
            break
        time.sleep(2 ** attempt)
    if result.kind == SESSION_OK:
        return collector.attached_outcome(node, result)
    return session_failure(result)


if __name__ == "__main__":
    main()
