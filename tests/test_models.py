"""Networks: exact parameter counts, feature taps at 256x256, small-input forward passes."""
import json

import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.models import (MODEL_NAMES, PAPER_PARAMS, STUDENTS, TEACHERS, build,
                          count_parameters, describe_models)

# thesis Table 4.1/4.2 counts, written out independently of kdlib.models.PAPER_PARAMS
EXPECTED_PARAMS = {"S1": 57_297, "S2": 227_233, "unet": 31_043_521, "T1": 43_236_036,
                   "T2": 172_625_028}

# (C, H, W) of each tap at 256x256 input (original_implementation.md, "Feature taps")
EXPECTED_TAPS_256 = {
    "S1": {"enc": (32, 64, 64), "bottleneck": (64, 64, 64), "dec": (16, 256, 256)},
    "S2": {"enc": (64, 64, 64), "bottleneck": (128, 64, 64), "dec": (32, 256, 256)},
    "unet": {"enc": (128, 64, 64), "bottleneck": (1024, 16, 16), "dec": (64, 256, 256)},
    "T1": {"enc": (128, 64, 64), "bottleneck": (1024, 16, 16), "dec": (64, 256, 256)},
    "T2": {"enc": (256, 64, 64), "bottleneck": (512, 16, 16), "dec": (16, 256, 256)},
}
MULTITASK = {"T1", "T2"}


@pytest.fixture(scope="module")
def models_256():
    """Every network built once at its full size (T2 is ~700 MB of float32 weights)."""
    torch.manual_seed(0)
    models = {name: build(name).eval() for name in MODEL_NAMES}
    yield models
    models.clear()


def test_registry_constants():
    assert MODEL_NAMES == ("S1", "S2", "unet", "T1", "T2")
    assert TEACHERS == ("unet", "T1", "T2") and STUDENTS == ("S1", "S2")
    assert PAPER_PARAMS == EXPECTED_PARAMS


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count(models_256, name):
    assert count_parameters(models_256[name]) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_taps_at_256(models_256, name):
    model = models_256[name]
    with torch.no_grad():
        out = model(torch.rand(1, 3, 256, 256))
    expected = EXPECTED_TAPS_256[name]
    for tap, shape in expected.items():
        assert tuple(out[tap].shape) == (1,) + shape, tap
        channels, stride = model.feature_info[tap]
        assert (channels, 256 // stride, 256 // stride) == shape
    assert set(model.feature_info) == set(expected)
    assert tuple(out["logits"].shape) == (1, 1, 256, 256)
    if name in MULTITASK:
        assert tuple(out["recon"].shape) == (1, 3, 256, 256)
    else:
        assert "recon" not in out
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_at_64(name):
    torch.manual_seed(0)
    model = build(name, **({"img_size": 64} if name == "T2" else {}))
    x = torch.rand(1, 3, 64, 64)
    out = model(x)
    assert tuple(out["logits"].shape) == (1, 1, 64, 64)
    if name in MULTITASK:
        assert tuple(out["recon"].shape) == (1, 3, 64, 64)
    for tap, (c, s) in model.feature_info.items():
        assert tuple(out[tap].shape) == (1, c, 64 // s, 64 // s)
    loss = out["logits"].mean() + (out["recon"].mean() if name in MULTITASK else 0)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["S1", "S2", "unet", "T1"])
def test_non_square_input(name):
    model = build(name).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 48))
    assert tuple(out["logits"].shape) == (1, 1, 32, 48)


def test_t2_rejects_other_sizes():
    model = build("T2", img_size=32).eval()
    with pytest.raises(ValueError, match="built for 32x32"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ConfigError):
        build("T2", img_size=40)


def test_unet_rejects_size_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        build("unet")(torch.rand(1, 3, 40, 40))


@pytest.mark.parametrize("alias,name", [("s1", "S1"), ("UNET", "unet"), ("t2", "T2"),
                                        ("U-Net-S", "S1"), ("T1", "T1")])
def test_aliases(alias, name):
    with torch.device("meta"):
        assert build(alias).name == name


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build("resnet50")
    for name in MODEL_NAMES:
        assert name in str(err.value)


def test_bad_kwargs_is_config_error():
    with pytest.raises(ConfigError):
        build("S1", img_size=64)


def test_describe_models_256():
    rows = describe_models()
    json.dumps(rows)
    assert [r["name"] for r in rows] == list(MODEL_NAMES)
    for row in rows:
        assert row["params"] == EXPECTED_PARAMS[row["name"]]
        assert {k: tuple(v) for k, v in row["taps"].items()} == EXPECTED_TAPS_256[row["name"]]
        assert row["role"] == ("teacher" if row["name"] in TEACHERS else "student")
        assert "note" not in row


def test_describe_models_small_size_notes_t2():
    rows = {r["name"]: r for r in describe_models(64)}
    assert rows["S1"]["taps"]["dec"] == [16, 64, 64]
    assert rows["T2"]["params"] != EXPECTED_PARAMS["T2"]
    assert "256" in rows["T2"]["note"]
    assert count_parameters(build("T2", img_size=64)) == rows["T2"]["params"]
    with pytest.raises(ConfigError):
        describe_models(100)
