"""Families of one study run side by side; an error in one is raised once all have ended."""

import threading
import time

import pytest

from tuner.study.driver import run_families


def test_families_run_concurrently_and_all_finish():
    running, peak, done = set(), [0], []
    lock = threading.Lock()

    def run_one(family):
        with lock:
            running.add(family)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.2)
        with lock:
            running.discard(family)
            done.append(family)

    run_families(["vit", "swin", "levit"], run_one)
    assert sorted(done) == ["levit", "swin", "vit"] and peak[0] == 3


def test_an_error_in_one_family_is_raised_after_the_others_end():
    done = []

    def run_one(family):
        if family == "bad":
            raise RuntimeError("bad family failed")
        time.sleep(0.2)
        done.append(family)

    with pytest.raises(RuntimeError, match="bad family failed"):
        run_families(["vit", "bad", "swin"], run_one)
    assert sorted(done) == ["swin", "vit"]


def test_one_family_runs_in_the_calling_thread():
    threads = []
    run_families(["vit"], lambda family: threads.append(threading.current_thread()))
    assert threads == [threading.main_thread()]
