import os
import signal
import threading
import time

import pytest

from collectors.runner import fan_out


def test_every_item_gets_one_result_and_concurrency_is_bounded():
    lock, running, peak, results = threading.Lock(), [0], [0], {}

    def work(item):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return item * 2

    fan_out(range(20), work, max_workers=3, on_result=results.__setitem__, on_crash=lambda i, t: None,
            cancel=threading.Event())
    assert results == {i: i * 2 for i in range(20)}
    assert peak[0] <= 3


def test_a_crash_on_one_item_is_a_result_not_an_exception():
    results = {}

    def work(item):
        if item == 2:
            raise RuntimeError("boom on 2")
        return "ok"

    fan_out(range(4), work, max_workers=2, on_result=results.__setitem__,
            on_crash=lambda item, text: f"crash: {text.strip().splitlines()[-1]}", cancel=threading.Event())
    assert results[2] == "crash: RuntimeError: boom on 2"
    assert [results[i] for i in (0, 1, 3)] == ["ok", "ok", "ok"]


def test_ctrl_c_stops_launching_and_collects_in_flight_results():
    cancel, started, results = threading.Event(), [], {}
    interrupted = {"done": False}

    def work(item):
        started.append(item)
        cancel.wait(5)  # an in-flight session ends promptly once cancel is set
        return "interrupted" if cancel.is_set() else "ok"

    def on_result(item, result):
        results[item] = result

    def press_ctrl_c():
        while len(started) < 2:
            time.sleep(0.01)
        interrupted["done"] = True
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, as a terminal's Ctrl-C sends

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        fan_out(range(10), work, max_workers=2, on_result=on_result, on_crash=lambda i, t: None, cancel=cancel)
    assert interrupted["done"] and cancel.is_set()
    assert set(results) == set(started)  # in-flight items reported; never-started items have no result
    assert all(value == "interrupted" for value in results.values())
    assert len(started) < 10
