"""The engine: paced, bounded fan-out over nodes, with deadlines, retries and Ctrl-C handling.

It knows nothing of SSM, SSH or S3. It calls `prepare(key)` in the main thread just before each
launch (so what a launch is can be recorded before it starts), `launch(key)` in worker threads (at most
`max_sessions` at once, started no faster than the adaptive rate allows), and `poll(keys)` in a
thread of its own for nodes whose work goes on without a session, so that a slow poll never
delays a launch. Every outcome reaches the caller through callbacks in the main thread, which is
the only thread that writes the state file.
A failed node is data, never an exception.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from collectors import console
from collectors.pacing import BACKOFF_BASE, AdaptiveRate, jittered_backoff

# What a launch can come back as.
LAUNCHED = "launched"      # work goes on without the session: wait for it with poll()
FINAL = "final"            # the node is done (collected, or failed for good)
THROTTLED = "throttled"    # AWS refused the start: slow down, try again later
RETRY = "retry"            # the session failed or dropped before the work started: try again
MAX_BACKOFF_EXPONENT = 5
IDLE_WAIT = 0.2


@dataclass
class Launch:
    kind: str
    outcome: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    key: str
    attempts: int = 0
    throttles: int = 0
    not_before: float = 0.0
    last: Launch | None = None


@dataclass
class Callbacks:
    prepare: Callable[[str, int], None]                  # (key, attempt), main thread, just before launch
    launch: Callable[[str, int], Launch]                 # (key, attempt) -> Launch, in a worker thread
    poll: Callable[[list[str]], dict[str, dict]]          # waiting keys -> {key: final outcome}
    on_launched: Callable[[str, dict], None]
    on_final: Callable[[str, dict], None]
    give_up: Callable[[str, Launch | None, str], dict]  # (key, last launch, why) -> final outcome
    crashed: Callable[[str, str], dict]                   # (key, traceback) -> final outcome


class Engine:
    def __init__(self, callbacks: Callbacks, *, rate: AdaptiveRate, max_sessions: int, max_attempts: int,
                 run_deadline: float, poll_interval: float, cancel: threading.Event,
                 backoff_base: float = BACKOFF_BASE, clock: Callable[[], float] = time.monotonic):
        self.cb = callbacks
        self.rate = rate
        self.max_sessions = max_sessions
        self.max_attempts = max_attempts
        self.run_deadline = run_deadline
        self.poll_interval = poll_interval
        self.cancel = cancel
        self.backoff_base = backoff_base
        self.clock = clock
        self.queue: deque[Task] = deque()
        self.inflight: dict[Future, Task] = {}
        self.waiting: dict[str, float] = {}      # key -> deadline for its node-side work
        self.stopping = False                    # first Ctrl-C: no new launches
        self.next_poll = 0.0
        self.poller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poll")
        self.polling: Future | None = None       # the poll in progress, if any

    # -- public ---------------------------------------------------------------------------
    def run(self, to_launch: Iterable[str], waiting: dict[str, float]) -> None:
        """Launch `to_launch`, wait for `waiting` (key -> deadline); raise KeyboardInterrupt after Ctrl-C."""
        self.queue.extend(Task(key) for key in to_launch)
        self.waiting.update(waiting)
        pool = ThreadPoolExecutor(max_workers=self.max_sessions, thread_name_prefix="session")
        try:
            self._loop(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # A poll still in progress (after Ctrl-C) is not waited for: its nodes stay running in
            # the state, and the next run picks them up.
            self.poller.shutdown(wait=False, cancel_futures=True)
        if self.stopping:
            raise KeyboardInterrupt

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self, pool: ThreadPoolExecutor) -> None:
        while self.inflight or (not self.stopping and (self.queue or self.waiting)):
            try:
                self._step(pool)
            except KeyboardInterrupt:
                self._interrupt()

    def _step(self, pool: ThreadPoolExecutor) -> None:
        if not self.stopping:
            self._launch_due(pool)
        self._collect_launches(timeout=self._idle_time())
        if not self.stopping:
            self._poll_waiting()
            self._enforce_deadlines()

    def _interrupt(self) -> None:
        if not self.stopping:
            self.stopping = True
            if self.inflight:
                console.log(f"stopping: no new sessions; waiting for {len(self.inflight)} session(s) in flight "
                            "(Ctrl-C again to end them)")
            return
        console.log("ending the sessions in flight")
        self.cancel.set()

    def _launch_due(self, pool: ThreadPoolExecutor) -> None:
        now = self.clock()
        while len(self.inflight) < self.max_sessions:
            task = self._next_ready(now)
            if task is None or not self.rate.try_acquire():
                if task is not None:
                    self.queue.appendleft(task)
                return
            task.attempts += 1
            try:
                self.cb.prepare(task.key, task.attempts)
            except Exception:  # noqa: BLE001 - as in a launch: this node fails, the others go on
                self.cb.on_final(task.key, self.cb.crashed(task.key, traceback.format_exc(limit=5)))
                continue
            self.inflight[pool.submit(self._guarded_launch, task)] = task

    def _next_ready(self, now: float) -> Task | None:
        for _ in range(len(self.queue)):
            task = self.queue.popleft()
            if task.not_before <= now:
                return task
            self.queue.append(task)
        return None

    def _guarded_launch(self, task: Task) -> Launch:
        try:
            return self.cb.launch(task.key, task.attempts)
        except Exception:  # noqa: BLE001 - a bug on one node must not stop the others
            return Launch(FINAL, self.cb.crashed(task.key, traceback.format_exc(limit=5)))

    def _idle_time(self) -> float:
        """Sleep until the next launch is due (so the start rate is kept exactly), at most IDLE_WAIT."""
        if self.stopping or not self.queue or len(self.inflight) >= self.max_sessions:
            return IDLE_WAIT
        earliest = min(task.not_before for task in self.queue) - self.clock()
        return min(IDLE_WAIT, max(0.005, self.rate.delay(), earliest))

    def _collect_launches(self, timeout: float) -> None:
        if not self.inflight:
            time.sleep(timeout)
            return
        done, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            task = self.inflight.pop(future)
            self._handle(task, future.result())

    def _handle(self, task: Task, launch: Launch) -> None:
        task.last = launch
        if launch.kind == LAUNCHED:
            self.rate.on_success()
            self.waiting[task.key] = launch.outcome["deadline"]
            self.cb.on_launched(task.key, launch.outcome)
        elif launch.kind == FINAL:
            self.cb.on_final(task.key, launch.outcome)
        elif launch.kind == THROTTLED:
            self.rate.on_throttled()
            task.attempts -= 1  # throttling is not the node's fault: it does not use up an attempt
            task.throttles += 1
            self._requeue(task, task.throttles)
        elif task.attempts < self.max_attempts and not self.cancel.is_set():
            self._requeue(task, task.attempts)
        else:
            self.cb.on_final(task.key, self.cb.give_up(task.key, launch, "attempts"))

    def _requeue(self, task: Task, exponent: int) -> None:
        task.not_before = self.clock() + jittered_backoff(min(exponent, MAX_BACKOFF_EXPONENT), self.backoff_base)
        self.queue.append(task)

    def _poll_waiting(self) -> None:
        if self.polling is not None:
            if not self.polling.done():
                return
            self._finish_poll()
        now = self.clock()
        if not self.waiting or now < self.next_poll:
            return
        self.next_poll = now + self.poll_interval
        self.polling = self.poller.submit(self.cb.poll, list(self.waiting))

    def _finish_poll(self) -> None:
        """Wait for the poll in progress and hand its finished nodes on (its errors are raised here)."""
        polling, self.polling = self.polling, None
        for key, outcome in polling.result().items():
            if self.waiting.pop(key, None) is not None:
                self.cb.on_final(key, outcome)

    def _enforce_deadlines(self) -> None:
        now = self.clock()
        expired = [key for key, deadline in self.waiting.items() if now >= deadline]
        if expired and self.polling is not None:
            # What the poll in progress found must count before a node is called timed out.
            self._finish_poll()
            expired = [key for key in expired if key in self.waiting]
        if expired:
            finished = self.cb.poll(expired)  # one last look before calling them timed out
            for key in expired:
                del self.waiting[key]
                outcome = finished.get(key) or self.cb.give_up(key, None, "node_deadline")
                self.cb.on_final(key, outcome)
        if now >= self.run_deadline:
            while self.queue:
                task = self.queue.popleft()
                self.cb.on_final(task.key, self.cb.give_up(task.key, task.last, "run_deadline"))
