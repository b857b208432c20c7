"""Bounded fan-out over nodes. A failed node is data, never an exception.

The runner knows nothing of SSM or SSH: it calls `work(item)` in worker threads, with at most
`max_workers` at once, and hands every result to `on_result` in the calling (main) thread, which
is the only thread that writes the state file.
"""

from __future__ import annotations

import threading
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def fan_out(items: Iterable[Item], work: Callable[[Item], Result], *, max_workers: int,
            on_result: Callable[[Item, Result], None], on_crash: Callable[[Item, str], Result],
            cancel: threading.Event) -> None:
    """Run `work` over `items`; on Ctrl-C stop launching, let in-flight work end, then re-raise.

    `on_crash(item, text)` turns a bug in `work` into a result, so one node cannot sink the run.
    Items never started after Ctrl-C get no result: they stay unfinished for the next run.
    """
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="node")
    futures: dict[Future, Item] = {}
    delivered: set[Future] = set()
    try:
        for item in items:
            futures[pool.submit(_guarded, work, on_crash, item)] = item
        _deliver(futures, delivered, on_result)
    except KeyboardInterrupt:
        cancel.set()
        for future in futures:
            future.cancel()
        _deliver(futures, delivered, on_result)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _deliver(futures: dict[Future, Item], delivered: set[Future],
             on_result: Callable[[Item, Result], None]) -> None:
    pending = {f for f in futures if f not in delivered and not f.cancelled()}
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            delivered.add(future)
            if not future.cancelled():
                on_result(futures[future], future.result())


def _guarded(work: Callable[[Item], Result], on_crash: Callable[[Item, str], Result], item: Item) -> Result:
    try:
        return work(item)
    except Exception:  # noqa: BLE001 - a bug on one node must not stop the others
        return on_crash(item, traceback.format_exc(limit=5))
