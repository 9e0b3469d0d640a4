"""The command line: help texts, bounds, several inputs, one-line errors and warnings."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, write_msd, write_slices, assert_one_error, run_cli
from kdlib.cli import build_parser


pytestmark = pytest.mark.usefixtures("no_progress_bars")


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_is_explained_with_its_default(name):
    command = _commands()[name]
    text = command.format_help()
    for action in command._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{name} {action.option_strings} has no help text"
        if not action.required:
            assert f"(default: {action.default})" in " ".join(text.split()) or \
                "(default" in action.help, f"{name} {action.option_strings}: default not shown"


def test_format_lists_every_accepted_value():
    for name in ("preprocess", "predict", "evaluate"):
        command = _commands()[name]
        fmt = next(a for a in command._actions if "--format" in a.option_strings)
        assert set(fmt.choices) == {"auto", "msd", "slices", "dicom", "nifti"}
        for value in fmt.choices:
            assert value in fmt.help, (name, value)


def test_help_runs_without_heavy_imports():
    done = subprocess.run([sys.executable, "-m", "kdlib", "evaluate", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--case-pattern" in done.stdout


def test_models_says_at_which_size_taps_are_given(capsys):
    code, out, _ = run_cli(capsys, "models", "--size", "64")
    assert code == 0 and "64x64 input" in out.splitlines()[0]
    code, out, _ = run_cli(capsys, "models", "--size", "64", "--json")
    assert all(row["input_size"] == 64 for row in json.loads(out))


@pytest.mark.parametrize("command", [["models"], ["phantom", "--out", "{tmp}/p"],
                                     ["preprocess", "--input", "{tmp}", "--out", "{tmp}/c"]])
@pytest.mark.parametrize("size", ["100000", "4"])
def test_size_is_bounded(tmp_path, capsys, command, size):
    args = [a.format(tmp=tmp_path) for a in command] + ["--size", size]
    code, _, err = run_cli(capsys, *args)
    assert_one_error(code, err, "--size" if command[0] != "preprocess" else "size", "2048")
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("style", ["repeated", "comma"])
def test_preprocess_uses_every_input(tmp_path, capsys, style):
    a = write_msd(tmp_path / "a", cases=("spleen_1", "spleen_2"))
    b = write_msd(tmp_path / "b", cases=("spleen_5",))
    inputs = ["--input", a, "--input", b] if style == "repeated" else ["--input", f"{a},{b}"]
    code, out, _ = run_cli(capsys, "preprocess", *inputs, "--size", "16", "--out", tmp_path / "c")
    assert code == 0 and json.loads(out)["cases"] == 3


def test_preprocess_out_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    code, _, err = run_cli(capsys, "preprocess", "--input", write_msd(tmp_path / "a"), "--size",
                        "16", "--out", tmp_path / "taken")
    assert_one_error(code, err, "taken", "is a file")
    assert (tmp_path / "taken").read_text() == "x"


def test_preprocess_orient_turns_slices(tmp_path, capsys):
    from kdlib.data import SliceCache

    root = write_slices(tmp_path / "s", size=32)
    assert run_cli(capsys, "preprocess", "--input", root, "--size", "32", "--out", tmp_path / "c0")[0] == 0
    assert run_cli(capsys, "preprocess", "--input", root, "--size", "32", "--orient", "rot90",
                "--out", tmp_path / "c1")[0] == 0
    plain, turned = SliceCache.load(tmp_path / "c0"), SliceCache.load(tmp_path / "c1")
    assert np.array_equal(turned.images, np.rot90(plain.images, 1, axes=(1, 2)))
    assert np.array_equal(turned.masks, np.rot90(plain.masks, 1, axes=(1, 2)))
    assert "rot90" in turned.manifest["params"]["orient"]


def test_colour_slices_warn_once_in_one_line(tmp_path, capsys):
    from PIL import Image

    from kdlib.data import SliceCache

    root = write_slices(tmp_path / "s", size=16)
    for name in ("spleen_3_0.png", "spleen_6_1.png"):
        grey = np.asarray(Image.open(root / "images" / name))
        rgba = np.stack([grey, grey // 2, grey, np.full_like(grey, 255)], axis=2)
        Image.fromarray(rgba, "RGBA").save(root / "images" / name)
    code, out, err = run_cli(capsys, "preprocess", "--input", root, "--size", "16",
                          "--out", tmp_path / "c")
    assert code == 0 and len(err) == 1 and err[0].startswith("kdlib: warning:")
    assert "2 colour" in err[0] and "flattened to grey" in err[0]
    assert SliceCache.load(tmp_path / "c").manifest["colour_flattened"]["files"] == 2


def test_grey_stored_as_rgb_is_not_a_conversion_worth_a_warning(tmp_path, capsys):
    from PIL import Image

    root = write_slices(tmp_path / "s", size=16)
    grey = np.asarray(Image.open(root / "images" / "spleen_3_0.png"))
    Image.fromarray(np.stack([grey] * 3, axis=2), "RGB").save(root / "images" / "spleen_3_0.png")
    code, _, err = run_cli(capsys, "preprocess", "--input", root, "--size", "16", "--out", tmp_path / "c")
    assert code == 0 and not err


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "somewhere"))

    monkeypatch.setattr("kdlib.data.phantom.write_phantom_msd", refuse)
    code, _, err = run_cli(capsys, "phantom", "--out", tmp_path / "p", "--size", "16")
    assert_one_error(code, err, "somewhere", "permission denied")


def test_subprocess_error_has_no_traceback(tmp_path):
    (tmp_path / "pred").mkdir()
    done = subprocess.run([sys.executable, "-m", "kdlib", "evaluate", "--pred", str(tmp_path / "pred"),
                           "--truth", str(tmp_path / "missing")], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_download_needs_a_dataset_and_lists_them_without_downloading(tmp_path, capsys, monkeypatch):
    """Issue 19: `download` alone no longer starts the 1.5 GB MSD download; `--list` shows
    each data set's size, licence and address and fetches nothing."""
    import urllib.request

    from kdlib.data import download as dl

    def no_network(*args, **kwargs):
        raise AssertionError("--list and a missing --dataset must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    code, _, err = run_cli(capsys, "download", "--out", tmp_path / "o")
    assert_one_error(code, err, "--dataset", "msd", "ircadb", "thesis-slices", "--list")
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli(capsys, "download", "--list")
    lines = out.strip().splitlines()
    assert code == 0 and not err and len(lines) == len(dl.DATASETS)
    for name, line in zip(dl.DATASETS, lines):
        info = dl.DATASET_INFO[name]
        assert line.startswith(f"{name}:") and info["licence"] in line and info["url"] in line
        assert info["download"] in line
    assert "1.5 GB" in lines[0] and "CC BY-NC-ND 4.0" in lines[1]
