"""Issue 20: the grid on a cluster. `--executor local` (submitit's LocalExecutor: one process
per run) trains a tiny grid; its merged records give the same tables as a serial run, and a
second invocation submits nothing."""
import time

import pytest
import yaml

from kdlib import executor, pipeline, tables, train
from kdlib.errors import KdlibError

submitit = pytest.importorskip("submitit")

TINY = {
    "common": {"data": "phantom"},
    "01_preprocess": {"phantom_cases": 5, "phantom_size": 32, "size": 32, "settings": ["corrected"]},
    "02_teacher": {"teachers": ["T1"], "faithful_teachers": [], "epochs": 1},
    "03_student": {"epochs": 1, "seeds": [42]},
    "04_ablations": {"epochs": 1, "seeds": [42], "grid": "none", "faithful_grid": False},
}


def _prepare(out):  # notebook 01 with the profile's values
    p = TINY["01_preprocess"]
    inputs = pipeline.data_inputs("phantom", out, p["phantom_cases"], p["phantom_size"], 0)
    return pipeline.prepare(out, inputs, size=32, hu_window=[-160, 240], settings=["corrected"])


@pytest.mark.slow
def test_local_executor_grid_gives_the_serial_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # six task processes share the cores
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    cluster, serial = tmp_path / "cluster", tmp_path / "serial"
    _prepare(cluster)
    with pytest.raises(KdlibError, match="teacher runs are not finished"):  # teachers first
        executor.stage_runs("tiny", "03", out=cluster, profiles_dir=profiles)
    t0 = time.monotonic()
    first = executor.submit_stage("tiny", "02", "local", out=cluster, profiles_dir=profiles)
    assert first["submitted"] == 1 and (cluster / "teachers.json").exists()
    print("stage 02", time.monotonic() - t0)
    students = executor.submit_stage("tiny", "03", "local", out=cluster, profiles_dir=profiles)
    assert students["submitted"] == 6 and all(r["status"] == "finished" for r in students["results"])
    print("stage 03", time.monotonic() - t0)
    again = executor.submit_stage("tiny", "03", "local", out=cluster, profiles_dir=profiles)
    assert again["submitted"] == 0 and again["finished_before"] == 6  # a second invocation skips them

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tasks: another thread count sums in another order
    try:
        _serial(serial)
    finally:
        torch.set_num_threads(threads)
    a, b = train.load_runs(cluster / "runs"), train.load_runs(serial / "runs")
    assert sorted(r["run_dir"].split("/")[-1] for r in a) == sorted(r["run_dir"].split("/")[-1] for r in b)
    for table_id in ("4.1", "4.2"):
        assert tables.table(table_id, a).equals(tables.table(table_id, b)), table_id


def _serial(serial):
    prepared = _prepare(serial)  # the same, in one process, as the notebooks do it
    pipeline.train_teachers(serial, pipeline.teacher_plan(prepared, "corrected", ["T1"], []), epochs=1,
                            precision="auto", patience=0, min_delta=0.0, min_epochs=0, keep_last=False,
                            select_on="loss")
    pipeline.train_all(serial, pipeline.student_configs(serial, "corrected", epochs=1, seeds=[42], precision="auto",
                                                        patience=0, min_epochs=0, select_on="loss",
                                                        keep_last=False))


def test_locked_runs_are_left_to_their_job(tmp_path):
    from kdlib.locks import folder_lock, is_locked

    run = tmp_path / "run"
    assert not is_locked(run) and not run.exists()  # looking creates nothing
    with folder_lock(run):
        assert is_locked(run)
    assert not is_locked(run)
