"""One writer per folder: folder_lock between threads and processes, stale locks, and train."""
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from kdlib.errors import KdlibError
from kdlib.locks import LOCK_NAME, folder_lock

HOLD = """
import sys, time
from kdlib.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on tmp_path/'folder' until the test ends."""
    folder = tmp_path / "folder"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def test_lock_held_by_another_process_names_its_pid(holder):
    folder, proc = holder
    with pytest.raises(KdlibError, match=f"PID {proc.pid}") as info:
        with folder_lock(folder):
            pass
    assert str(folder) in str(info.value)


def test_lock_of_a_killed_process_is_taken_over(holder):
    folder, proc = holder
    proc.kill()  # SIGKILL: no cleanup ran, the lock file with its PID stays behind
    proc.wait()
    assert (folder / LOCK_NAME).read_text().strip() == str(proc.pid)
    with folder_lock(folder):
        assert (folder / LOCK_NAME).read_text().strip() != str(proc.pid)
    assert not (folder / LOCK_NAME).exists()  # released: nothing left in the folder


def test_two_threads_exclude_each_other(tmp_path):
    results, inside = [], threading.Event()

    def first():
        with folder_lock(tmp_path):
            inside.set()
            time.sleep(0.5)
            results.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with pytest.raises(KdlibError, match="in use by another kdlib process"):
        with folder_lock(tmp_path):
            results.append("second got in")
    thread.join()
    assert results == ["first done"]
    with folder_lock(tmp_path):  # free again once the first let go
        pass


def test_train_refuses_a_run_folder_another_process_trains(holder, tmp_path):
    """Two processes never train the same run: the second stops with the holder's PID."""
    from kdlib import train
    from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd

    folder, proc = holder
    data = write_phantom_msd(tmp_path / "phantom", cases=3, seed=1, size=32, slices=6)
    preprocess(data, tmp_path / "cache", size=32)
    save_split(make_split(SliceCache.load(tmp_path / "cache"), seed=0), tmp_path / "split.json")
    cfg = train.baseline_config("S1", tmp_path / "cache", tmp_path / "split.json", epochs=1)
    # the other process holds exactly this run's folder
    run_dir = cfg.run_dir(tmp_path / "runs")
    run_dir.parent.mkdir(parents=True)
    folder.rename(run_dir)
    with pytest.raises(KdlibError, match=f"PID {proc.pid}"):
        train.train(cfg, tmp_path / "runs", progress=False)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "config.json").exists()
    proc.kill()
    proc.wait()
    assert train.is_finished(train.train(replace(cfg), tmp_path / "runs", progress=False))
