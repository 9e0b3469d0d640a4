"""`kdlib export --onnx`: the ONNX model segments the thesis slices exactly as torch does."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib import export, train
from kdlib.data import SliceCache, preprocess
from kdlib.errors import DataError, KdlibError

from conftest import REPO, published_real_mini, require_shared

MODELS = published_real_mini() / "models"


def _published(model: str) -> Path:
    for run in sorted(MODELS.iterdir()):
        cfg = json.loads((run / "config.json").read_text())
        if cfg["model"] == model and cfg["role"] == "kd":
            return run
    raise AssertionError(f"no published {model} student")


@pytest.fixture(scope="module")
def thesis_cache(tmp_path_factory):
    slices = require_shared("thesis_slices")
    out = tmp_path_factory.mktemp("thesis") / "cache"
    preprocess(slices, out, size=64)
    return out


def _torch_logits(run: Path, images: np.ndarray) -> np.ndarray:
    model = train.load_model(run, torch.device("cpu"))
    x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    with torch.inference_mode():
        return model(x.contiguous())["logits"].float().numpy()[:, 0]


@pytest.mark.parametrize("model", ["S1", "S2"])
def test_onnx_masks_equal_torch_on_the_thesis_slices(model, thesis_cache, tmp_path):
    run = _published(model)
    info = export.export_onnx(run, tmp_path / "m.onnx", check=thesis_cache)
    assert info["check"]["mask_pixels_differing"] == 0
    assert info["check"]["max_abs_logit_difference"] <= 1e-3
    assert info["check"]["slices"] == 64
    # independently of the built-in check: every thesis slice, through onnx_logits
    images = np.asarray(SliceCache.load(thesis_cache).images)
    got = export.onnx_logits(tmp_path / "m.onnx", images)
    expected = _torch_logits(run, images)
    assert got.shape == expected.shape == (len(images), 64, 64)
    assert np.abs(got - expected).max() <= 1e-3
    assert np.array_equal(got > 0, expected > 0)
    assert (expected > 0).any()  # the comparison covers spleen pixels, not only background
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["preprocessing"]["size"] == 64 and sidecar["threshold"]["mask"] == "logits > 0.0"


def test_onnx_takes_other_slice_sizes(tmp_path):
    run = _published("S1")
    export.export_onnx(run, tmp_path / "s1.onnx")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 128, 96), dtype=np.uint8)
    got = export.onnx_logits(tmp_path / "s1.onnx", images, threads=1)
    assert got.shape == (2, 128, 96)
    assert np.abs(got - _torch_logits(run, images)).max() <= 1e-3


def test_the_onnx_file_names_no_folder_of_the_machine_that_exported_it(tmp_path):
    import onnx

    export.export_onnx(_published("S2"), tmp_path / "s2.onnx")
    raw = (tmp_path / "s2.onnx").read_bytes()
    for folder in (REPO, Path(export.__file__).resolve().parent, Path(torch.__file__).resolve().parent):
        assert str(folder).encode() not in raw, folder
    keys = {prop.key for node in onnx.load(str(tmp_path / "s2.onnx")).graph.node
            for prop in node.metadata_props}
    assert "pkg.torch.onnx.name_scopes" in keys  # the scopes stay: only the stack traces go
    assert export.SOURCE_TRACE_KEY not in keys


def test_drop_source_traces_reaches_subgraphs_and_keeps_other_metadata(tmp_path):
    from onnx import TensorProto, helper, save

    def traced(node):
        helper.set_metadata_props(node, {export.SOURCE_TRACE_KEY: "/home/someone/model.py", "scope": "net"})
        return node

    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    branch = helper.make_graph([traced(helper.make_node("Identity", ["x"], ["y"]))], "branch",
                               [], [out])
    graph = helper.make_graph(
        [traced(helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch))], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [out])
    save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert export.drop_source_traces(tmp_path / "m.onnx") == 3  # the If and both branches
    raw = (tmp_path / "m.onnx").read_bytes()
    assert b"/home/someone" not in raw and raw.count(b"scope") == 3


def test_export_refuses_to_overwrite_and_keeps_nothing_on_a_failed_check(tmp_path, monkeypatch):
    run = _published("S1")
    (tmp_path / "taken.onnx").write_bytes(b"user's file")
    with pytest.raises(DataError, match="overwrite"):
        export.export_onnx(run, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"user's file"
    monkeypatch.setattr(export, "LOGIT_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(KdlibError, match="does not reproduce torch"):
        export.export_onnx(run, tmp_path / "new.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kdlib", "export", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_export_cli(tmp_path):
    done = _cli("--model", _published("S2"), "--onnx", tmp_path / "s2.onnx")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["check"]["mask_pixels_differing"] == 0
    bad = _cli("--model", tmp_path, "--onnx", tmp_path / "x.onnx")
    assert bad.returncode == 2 and "not a finished run folder" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad = _cli("--model", _published("S2"), "--onnx", tmp_path / "x.pt")
    assert bad.returncode == 2 and ".onnx" in bad.stderr
    bad = _cli("--model", _published("S2"), "--onnx", tmp_path / "missing" / "x.onnx")
    assert bad.returncode == 2 and "does not exist" in bad.stderr


RELEASES = sorted(p.name for p in (REPO / "figures").glob("release*") if (p / "release.json").is_file())


@pytest.mark.parametrize("model", ["S1", "S2"])
@pytest.mark.parametrize("release", RELEASES)  # the current release and the superseded ones
def test_the_committed_release_onnx_files_equal_torch(release, model, thesis_cache):
    folder = REPO / "figures" / release / model
    images = np.asarray(SliceCache.load(thesis_cache).images)
    got = export.onnx_logits(folder / "model.onnx", images)
    expected = _torch_logits(folder, images)
    assert np.abs(got - expected).max() <= 1e-3
    assert np.array_equal(got > 0, expected > 0)
    assert export.describe(folder / "model.onnx")["check"]["mask_pixels_differing"] == 0
