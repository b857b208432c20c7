"""The engine with fake launch/poll callbacks: pacing, retries, deadlines, Ctrl-C."""

import os
import signal
import threading
import time

import pytest

from collectors.pacing import AdaptiveRate
from collectors.runner import FINAL, LAUNCHED, RETRY, THROTTLED, Callbacks, Engine, Launch


class Recorder:
    """Callbacks that script each node's launches and record what the engine reports."""

    def __init__(self, script=None, finish_after_polls=1):
        self.script = script or {}
        self.finish_after_polls = finish_after_polls
        self.lock = threading.Lock()
        self.calls: dict[str, list[int]] = {}
        self.launched: list[str] = []
        self.prepared: list[tuple[str, int]] = []
        self.final: dict[str, dict] = {}
        self.polls: dict[str, int] = {}
        self.running = 0
        self.peak = 0

    def launch(self, key, attempt):
        with self.lock:
            self.calls.setdefault(key, []).append(attempt)
            self.running += 1
            self.peak = max(self.peak, self.running)
            steps = self.script.get(key, [LAUNCHED])
            kind = steps[min(len(self.calls[key]), len(steps)) - 1]
        time.sleep(0.01)
        with self.lock:
            self.running -= 1
        outcome = {"deadline": time.monotonic() + 5} if kind == LAUNCHED else {"status": kind}
        return Launch(kind, outcome)

    def poll(self, keys):
        done = {}
        for key in keys:
            self.polls[key] = self.polls.get(key, 0) + 1
            if self.polls[key] >= self.finish_after_polls:
                done[key] = {"status": "ok"}
        return done

    def callbacks(self):
        return Callbacks(prepare=lambda k, attempt: self.prepared.append((k, attempt)),
                         launch=self.launch, poll=self.poll, on_launched=lambda k, o: self.launched.append(k),
                         on_final=self.final.__setitem__,
                         give_up=lambda k, last, why: {"status": "gave_up", "why": why},
                         crashed=lambda k, text: {"status": "crashed", "text": text})


def engine(recorder, **overrides):
    options = dict(rate=AdaptiveRate(200.0), max_sessions=4, max_attempts=3, run_deadline=time.monotonic() + 30,
                   poll_interval=0.01, cancel=threading.Event(), backoff_base=0.005)
    options.update(overrides)
    return Engine(recorder.callbacks(), **options)


def test_every_node_launches_then_finishes_from_polls_with_bounded_sessions():
    recorder = Recorder(finish_after_polls=2)
    engine(recorder, max_sessions=3).run([f"n{i}" for i in range(12)], {})
    assert set(recorder.final) == {f"n{i}" for i in range(12)}
    assert all(outcome == {"status": "ok"} for outcome in recorder.final.values())
    assert sorted(recorder.launched) == sorted(recorder.final)
    assert recorder.peak <= 3


def test_every_launch_is_prepared_in_the_main_thread_before_it_starts():
    recorder = Recorder(script={"flaky": [RETRY, LAUNCHED]})
    main = threading.current_thread()
    order = []
    original_launch = recorder.launch

    def prepare(key, attempt):
        assert threading.current_thread() is main
        order.append(("prepare", key, attempt))

    def launch(key, attempt):
        order.append(("launch", key, attempt))
        return original_launch(key, attempt)

    callbacks = recorder.callbacks()
    callbacks.prepare, callbacks.launch = prepare, launch
    Engine(callbacks, rate=AdaptiveRate(200.0), max_sessions=1, max_attempts=3, run_deadline=time.monotonic() + 30,
           poll_interval=0.01, cancel=threading.Event(), backoff_base=0.005).run(["flaky"], {})
    assert order == [("prepare", "flaky", 1), ("launch", "flaky", 1), ("prepare", "flaky", 2), ("launch", "flaky", 2)]


def test_a_prepare_that_crashes_fails_its_node_only():
    recorder = Recorder()
    callbacks = recorder.callbacks()

    def prepare(key, attempt):
        if key == "bad":
            raise OSError("disk full")

    callbacks.prepare = prepare
    Engine(callbacks, rate=AdaptiveRate(200.0), max_sessions=2, max_attempts=3, run_deadline=time.monotonic() + 30,
           poll_interval=0.01, cancel=threading.Event(), backoff_base=0.005).run(["bad", "good"], {})
    assert recorder.final["good"] == {"status": "ok"} and "bad" not in recorder.calls
    assert recorder.final["bad"]["status"] == "crashed" and "disk full" in recorder.final["bad"]["text"]


def test_throttling_slows_down_and_never_uses_up_attempts():
    recorder = Recorder(script={"n0": [THROTTLED] * 5 + [LAUNCHED]})
    rate = AdaptiveRate(200.0)
    engine(recorder, rate=rate, max_attempts=1).run(["n0", "n1"], {})
    assert recorder.final["n0"] == {"status": "ok"}
    assert recorder.calls["n0"] == [1, 1, 1, 1, 1, 1]  # still the first attempt after 5 throttles
    assert rate.throttles == 5 and rate.rate < 200.0


def test_dropped_launches_are_retried_then_given_up():
    recorder = Recorder(script={"flaky": [RETRY, RETRY, LAUNCHED], "dead": [RETRY]})
    engine(recorder, max_attempts=3).run(["flaky", "dead"], {})
    assert recorder.final["flaky"] == {"status": "ok"}
    assert recorder.calls["dead"] == [1, 2, 3]
    assert recorder.final["dead"] == {"status": "gave_up", "why": "attempts"}


def test_final_launches_and_crashes_are_outcomes():
    recorder = Recorder(script={"gone": [FINAL]})
    original = recorder.launch

    def launch(key, attempt):
        if key == "buggy":
            raise RuntimeError("bug on buggy")
        return original(key, attempt)

    recorder.launch = launch
    engine(recorder).run(["gone", "buggy"], {})
    assert recorder.final["gone"] == {"status": FINAL}
    assert recorder.final["buggy"]["status"] == "crashed" and "bug on buggy" in recorder.final["buggy"]["text"]


def test_waiting_nodes_time_out_at_their_deadline_and_the_run_deadline_stops_launching():
    recorder = Recorder(finish_after_polls=10 ** 6, script={"late": [THROTTLED]})
    engine(recorder, run_deadline=time.monotonic() + 0.3).run(["late"], {"resumed": time.monotonic() + 0.2})
    assert recorder.final["resumed"] == {"status": "gave_up", "why": "node_deadline"}
    assert recorder.final["late"] == {"status": "gave_up", "why": "run_deadline"}


def test_first_ctrl_c_stops_launching_and_waits_for_sessions_in_flight():
    cancel = threading.Event()
    recorder = Recorder(finish_after_polls=10 ** 6)
    release, entered = threading.Event(), []
    original = recorder.launch

    def slow_launch(key, attempt):
        entered.append(key)
        release.wait(5)
        return original(key, attempt)

    recorder.launch = slow_launch

    def press_ctrl_c():
        while len(entered) < 2:
            time.sleep(0.01)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, as a terminal's Ctrl-C sends
        time.sleep(0.1)
        release.set()

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        engine(recorder, max_sessions=2, cancel=cancel).run([f"n{i}" for i in range(10)], {})
    assert not cancel.is_set()  # one Ctrl-C does not end sessions
    assert sorted(recorder.launched) == sorted(recorder.calls)  # in-flight launches were waited for
    assert len(recorder.calls) == 2 and not recorder.final


def test_adaptive_rate_halves_on_throttling_and_recovers():
    now = [0.0]
    rate = AdaptiveRate(2.0, clock=lambda: now[0])
    assert rate.try_acquire() and not rate.try_acquire()
    now[0] = 0.5
    assert rate.try_acquire()
    rate.on_throttled()
    assert rate.rate == 1.0 and rate.delay() > 0
    for _ in range(100):
        rate.on_success()
    assert rate.rate == 2.0


def test_slots_taken_a_little_late_keep_the_rate_and_a_pause_does_not_bank_a_burst():
    now = [0.0]
    rate = AdaptiveRate(2.0, clock=lambda: now[0])
    taken = 0
    for tick in range(100):  # a caller that looks every 0.3 s, for 30 s
        now[0] = tick * 0.3
        taken += rate.try_acquire()
    assert taken >= 59  # the rate set (2/s), not one start per 0.6 s
    now[0] = 1000.0  # after a long pause: one start now, the next one interval later
    assert rate.try_acquire() and not rate.try_acquire()
    now[0] = 1000.49
    assert not rate.try_acquire()


def test_a_slow_poll_does_not_hold_up_launches():
    recorder = Recorder(finish_after_polls=1)
    original_poll, launched_during_poll = recorder.poll, []

    def slow_poll(keys):
        before = len(recorder.calls)
        time.sleep(0.3)
        launched_during_poll.append(len(recorder.calls) - before)
        return original_poll(keys)

    recorder.poll = slow_poll
    engine(recorder, rate=AdaptiveRate(100.0), max_sessions=2).run([f"n{i}" for i in range(20)], {})
    assert set(recorder.final) == {f"n{i}" for i in range(20)}
    assert max(launched_during_poll) >= 5  # launches went on while the first poll was under way


def test_a_node_past_its_deadline_is_not_timed_out_when_the_poll_in_progress_found_it_done():
    recorder = Recorder(finish_after_polls=1)
    original_poll = recorder.poll

    def slow_poll(keys):
        time.sleep(0.3)
        return original_poll(keys)

    recorder.poll = slow_poll
    engine(recorder).run([], {"node": time.monotonic() + 0.1})
    assert recorder.final == {"node": {"status": "ok"}}
