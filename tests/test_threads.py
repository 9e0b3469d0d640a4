"""Thread counts chosen from the free cores, with one warning line on a busy machine."""
import logging
import os

import pytest
import torch

from kdlib import threads


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.1, 2),    # idle
    (2, 0.6, 1),    # most of a core taken
    (2, 1.0, 1),
    (2, 5.0, 1),    # oversubscribed: never fewer than one
    (16, 3.2, 13),
    (4, None, 4),   # no load average on this OS: every core
])
def test_threads_fit_the_free_cores(cores, load, expected):
    assert threads.threads_for(cores, load) == expected


def test_usable_cores_follow_the_affinity():
    if hasattr(os, "sched_getaffinity"):
        assert threads.usable_cores() == len(os.sched_getaffinity(0))
    assert threads.usable_cores() >= 1


def test_idle_machine_has_no_warning():
    choice = threads.choose(environ={}, cores=2, load=0.2)
    assert (choice.threads, choice.user_set, choice.warning()) == (2, False, None)


def test_busy_and_oversubscribed_machines_say_what_was_chosen():
    busy = threads.choose(environ={}, cores=2, load=1.2).warning()
    assert "busy" in busy and "load 1.2 on 2 cores" in busy and "1 torch/OpenMP thread" in busy
    over = threads.choose(environ={}, cores=2, load=3.4).warning()
    assert "oversubscribed" in over and "1 torch/OpenMP thread" in over


def test_the_users_thread_count_wins():
    choice = threads.choose(environ={"OMP_NUM_THREADS": "2"}, cores=2, load=1.5)
    assert (choice.threads, choice.user_set, choice.warning()) == (2, True, None)
    over = threads.choose(environ={"OMP_NUM_THREADS": "2"}, cores=2, load=4.0)
    assert "as OMP_NUM_THREADS asks" in over.warning()
    # a value OpenMP would reject is not the user's choice: fall back to the free cores
    assert not threads.choose(environ={"OMP_NUM_THREADS": "lots"}, cores=2, load=0.0).user_set


def test_kernel_environment_sets_only_what_the_user_did_not():
    choice = threads.choose(environ={}, cores=2, load=1.5)
    assert threads.kernel_environment(choice, environ={}) == {
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    user = {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.kernel_environment(threads.choose(environ=user, cores=2, load=0.0),
                                      environ=user) == {"MKL_NUM_THREADS": "2"}


def test_configure_applies_the_choice_to_torch_and_warns_once(monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.5)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="kdlib.threads"):
            choice = threads.configure()
        assert choice.threads == 1 and torch.get_num_threads() == 1
        assert len(caplog.records) == 1 and "oversubscribed" in caplog.records[0].getMessage()
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sees_work_that_runs_now_not_the_last_minute(monkeypatch):
    """A job that just ended still weighs on the 1-minute load average; the CPU times
    sampled now say the cores are free, and they decide."""
    samples = iter([(1000.0, 400.0), (1100.0, 495.0)])  # 95 of 100 jiffies idle
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads, "load_average", lambda: 1.9)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    choice = threads.choose(environ={}, cores=2)
    assert choice.load == pytest.approx(0.1) and choice.threads == 2 and choice.warning() is None


def test_busy_cores_falls_back_to_the_load_average_without_proc_stat(monkeypatch):
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(threads, "load_average", lambda: 1.25)
    assert threads.busy_cores(interval=0) == 1.25
