"""Issue 21: `train_all(workers=2)` trains runs in two 1-thread processes, and each run's result
is the one the same configuration gives when trained alone in a 1-thread process; a failing
run stops the batch with one error that names it, and what finished stays finished."""
import json
from dataclasses import replace

import pytest
import torch

from kdlib import pipeline, train
from kdlib.errors import KdlibError


def _configs(tiny, seeds=(42, 43, 44)):
    cfg = train.baseline_config("S1", tiny / "cache", tiny / "split.json", epochs=2, batch_size=8,
                                precision="fp32")
    return [replace(cfg, seed=s) for s in seeds]


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_two_workers_give_each_run_its_one_thread_result(tiny, tmp_path, capsys):
    configs = _configs(tiny)
    if torch.get_num_threads() < 2:
        pytest.skip("needs 2 torch threads to split between 2 workers")
    done = pipeline.train_all(tmp_path / "parallel", configs, workers=2)
    out = capsys.readouterr().out
    assert "2 at a time" in out and out.count("on 1 thread(s)") == 3  # one line per run, in the parent
    assert [d.name for d in done] == [c.run_dir(tmp_path / "parallel" / "runs").name
                                      for c in pipeline.training_order(configs)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = [train.train(c, tmp_path / "alone" / "runs", progress=False) for c in configs]
    finally:
        torch.set_num_threads(previous)
    for run in alone:
        twin = _metrics(tmp_path / "parallel" / "runs" / run.name)
        mine = _metrics(run)
        assert twin["train_threads"] == 1 and mine["train_threads"] == 1
        assert twin["pooled"] == mine["pooled"] and twin["loss"] == mine["loss"]
    # a second call finds every run finished and starts no process
    pipeline.train_all(tmp_path / "parallel", configs, workers=2)
    assert "3 already finished, 0 to train" in capsys.readouterr().out


def test_a_failing_run_stops_the_batch_with_its_name(tiny, tmp_path):
    good = _configs(tiny, seeds=(42,))
    split = json.loads((tiny / "split.json").read_text())
    split[good[0].train_subset] = []  # fails inside the worker: nothing to train on
    (tmp_path / "empty.json").write_text(json.dumps(split))
    bad = replace(good[0], seed=43, split=str(tmp_path / "empty.json"))
    with pytest.raises(KdlibError, match="empty"):
        pipeline.train_all(tmp_path / "out", good + [bad], workers=2)
    assert train.is_finished(good[0].run_dir(tmp_path / "out" / "runs"))  # kept: not retrained next time
    assert not train.is_finished(bad.run_dir(tmp_path / "out" / "runs"))
