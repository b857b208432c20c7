"""The run's live line: an ETA from the first second, what failed and what is in flight, and the node that
holds the run up, by name."""

from __future__ import annotations

import io

from collectors.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def node(n: int, status: str = "ok") -> dict:
    return {"instance_id": f"i-{n:03d}", "hostname": f"ip-10-0-0-{n}", "group": "g", "status": status}


def test_an_eta_before_any_node_has_finished():
    clock = Clock()
    progress = Progress(30, rate=3.0, stream=io.StringIO(), clock=clock)
    for n in range(3):
        progress.launched(node(n))
    clock.now = 10.0
    # 27 launches to come at 3/s (9 s), then a node's time: 10 s at least (the oldest in flight so far).
    assert progress.eta(clock.now) == 19.0
    assert "0/30 done (none yet); 0 failed; 3 in flight; ETA 19s" in progress.line(clock.now)


def test_the_eta_uses_the_median_node_time_once_nodes_finish():
    clock = Clock()
    progress = Progress(10, rate=2.0, stream=io.StringIO(), clock=clock)
    for n in range(4):
        progress.launched(node(n))
    for n, took in ((0, 20.0), (1, 30.0), (2, 40.0)):
        clock.now = took
        progress.finished(node(n, "ok" if n else "failed"))
    # 6 to launch at 2/s, then the median node time, 30 s.
    assert progress.eta(clock.now) == 33.0
    assert "3/10 done (1 failed, 2 ok); 1 failed; 1 in flight" in progress.line(clock.now)


def test_the_node_that_holds_the_run_up_is_named():
    clock = Clock()
    progress = Progress(4, rate=4.0, stream=io.StringIO(), clock=clock)
    for n in range(4):
        progress.launched(node(n))
    for n in range(3):
        clock.now = 20.0
        progress.finished(node(n))
    clock.now = 25.0
    assert "waiting on" not in progress.line(clock.now)  # not yet well past the median (20 s)
    clock.now = 95.0
    assert progress.line(clock.now).endswith("; waiting on i-003 (ip-10-0-0-3), 1m35s so far")
