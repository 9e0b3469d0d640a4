"""A trained run as an ONNX model: `python -m kdlib export --model RUN --onnx FILE`.

The exported graph needs nothing of kdlib or torch to run (onnxruntime, or any ONNX runtime):

- input ``image``: float32 (N, 1, H, W), the slice's grey values / 255 after the model's own
  preprocessing (HU clipped to its window and mapped to 0..255, resized to its size), any N,
  H and W divisible by 16 (T2: only its own size);
- output ``logits``: float32 (N, 1, H, W); the mask is ``logits > threshold``, with the
  threshold of the run's rule (0 for "prob": sigmoid > 0.5; 0.5 for the faithful "logit").

Beside FILE goes FILE.json (`<name>.onnx.json`): that preprocessing, the threshold, the model,
its run and the check below, so the file is usable without this package.

The export is checked before it is kept: onnxruntime runs the ONNX model on check slices
(the run's own test slices when its cache is here, else generated phantom slices at the
model's size, or `check` when given) and its masks must equal torch's pixel for pixel, and
its logits agree within `LOGIT_TOLERANCE`. A failed check keeps nothing. Both files are
written to temporary names and renamed into place; an existing file is never replaced.
The exporter's per-node stack traces, which name the exporting machine's folders, are dropped
(`drop_source_traces`); the node scopes and class names stay.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, KdlibError
from .io import atomic_write_json

LOGIT_TOLERANCE = 1e-3
OPSET = 18
THRESHOLDS = {"prob": 0.0, "logit": 0.5}  # metrics.binarize


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a pinned requirement
        raise ConfigError("onnxruntime is not installed", None,
                          "pip install -r requirements.txt (it pins onnx and onnxruntime)") from None
    return onnxruntime


# torch.export's exporter stores every node's Python stack trace in the model: the absolute
# paths of the machine and checkout that exported it. Published models keep the node scopes
# and class names (pkg.torch.onnx.name_scopes, ...) and drop only these.
SOURCE_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _nodes(graph):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from _nodes(subgraph)


def drop_source_traces(path: Path) -> int:
    """Remove the exporter's stack traces (`SOURCE_TRACE_KEY`) from every node of the ONNX
    file at `path`, in place; returns how many were removed."""
    import onnx

    model = onnx.load(str(path))
    nodes = [*_nodes(model.graph), *(node for function in model.functions for node in function.node)]
    removed = 0
    for node in nodes:
        kept = [prop for prop in node.metadata_props if prop.key != SOURCE_TRACE_KEY]
        removed += len(node.metadata_props) - len(kept)
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))
    return removed


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class _GreyToLogits:
    """torch module factory: grey (N, 1, H, W) -> the network's logits (N, 1, H, W)."""

    @staticmethod
    def build(network):
        import torch

        class GreyToLogits(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, image):
                return self.net(image.expand(-1, 3, -1, -1))["logits"]

        return GreyToLogits(network).eval()


def check_slices(cfg, size: int, faithful: bool, window, check: Path | None, limit: int = 64
                 ) -> tuple[np.ndarray, str]:
    """uint8 (N, size, size) slices to compare torch and ONNX on, and where they came from."""
    if check is not None:
        from .data.cache import SliceCache

        try:
            cache = SliceCache.load(check)
        except KdlibError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"cannot read the check slices ({type(exc).__name__})", check,
                            "give a slice cache folder made by `python -m kdlib preprocess`") from None
        images = np.asarray(cache.images[:limit])
        if images.ndim != 3 or images.shape[1:] != (size, size):
            raise DataError(f"check slices are {images.shape[1:]}, the model takes "
                            f"{size}x{size}", check, f"preprocess them with --size {size}")
        return images, str(check)
    cache_dir = Path(cfg.cache)
    split_path = Path(cfg.split)
    if (cache_dir / "manifest.json").is_file() and split_path.is_file():
        from .data import SliceCache, load_split

        cache, split = SliceCache.load(cache_dir), load_split(split_path)
        rows = list(split.get("test", []))[:limit]
        if rows:
            return np.asarray(cache.images[np.asarray(rows)]), f"{len(rows)} test slices of {cache_dir}"
    from .data.cache import hu_to_uint8
    from .data.phantom import phantom_volume

    image, _ = phantom_volume(np.random.default_rng(0), size, 16)
    slices = np.moveaxis(hu_to_uint8(image, faithful, window), 2, 0)
    return np.ascontiguousarray(slices), f"16 generated phantom slices at {size}x{size}"


def export_onnx(model: str | Path, onnx: str | Path, check: str | Path | None = None
                ) -> dict[str, Any]:
    """Export the finished run `model` to `onnx` (+ `<onnx>.json`), checked against torch."""
    import torch

    from .predict import run_preprocessing
    from .train import is_finished, load_model

    run_dir, dest = Path(model), Path(onnx)
    if not is_finished(run_dir):
        raise DataError("not a finished run folder (no complete metrics.json)", run_dir,
                        "point --model at a run folder (results/<profile>/runs/<name>, or a "
                        "published one under figures/)")
    if dest.suffix != ".onnx":
        raise ConfigError("the ONNX file's name must end in .onnx", dest, "e.g. --onnx s1.onnx")
    sidecar = dest.with_name(dest.name + ".json")
    for path in (dest, sidecar):
        if path.exists():
            raise DataError("refusing to overwrite an existing file", path,
                            "choose another --onnx name or move the file away")
    if not dest.parent.is_dir():
        raise DataError("the folder for the ONNX file does not exist", dest.parent,
                        "create it first")
    cfg, _, size, faithful, window = run_preprocessing(run_dir)
    images, source = check_slices(cfg, size, faithful, window, Path(check) if check else None)

    network = load_model(run_dir, torch.device("cpu"))
    wrapped = _GreyToLogits.build(network)
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255).unsqueeze(1)
    with torch.inference_mode():
        expected = wrapped(x).float().numpy()

    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {"image": {0: batch}}
    if cfg.model != "T2":  # the convolutional networks take any H, W divisible by 16
        dynamic = {"image": {0: batch, 2: 16 * torch.export.Dim("height16", min=1, max=128),
                             3: 16 * torch.export.Dim("width16", min=1, max=128)}}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("torch.onnx"):
            # torch.export's exporter reports its steps on stdout and warns about operators
            # of torchvision, which these networks do not use
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x[:2],), str(tmp), input_names=["image"],
                              output_names=["logits"], dynamic_shapes=dynamic,
                              opset_version=OPSET, dynamo=True, external_data=False,
                              verbose=False)
        drop_source_traces(tmp)
        ort = _onnxruntime()
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(["logits"], {"image": x[i:i + 16].numpy()})[0]
                              for i in range(0, len(x), 16)])
        threshold = THRESHOLDS[cfg.threshold]
        mask_torch, mask_onnx = expected > threshold, got > threshold
        differing = int((mask_torch != mask_onnx).sum())
        max_diff = float(np.abs(got - expected).max())
        if differing or not max_diff <= LOGIT_TOLERANCE:
            raise KdlibError(f"the ONNX model does not reproduce torch: {differing} mask "
                             f"pixels differ, logits up to {max_diff:.2e} apart (tolerance "
                             f"{LOGIT_TOLERANCE:g})", run_dir,
                             "report this with the run folder; nothing was written")
        info = {
            "model": cfg.model, "run": run_dir.name, "name": cfg.name, "role": cfg.role,
            "setting": cfg.setting, "onnx_file": dest.name, "opset": OPSET,
            "input": {"name": "image", "dtype": "float32", "shape": ["N", 1, "H", "W"],
                      "values": "grey / 255 after the preprocessing below",
                      "sizes": "H, W divisible by 16" if cfg.model != "T2" else f"{size}x{size} only"},
            "output": {"name": "logits", "dtype": "float32", "shape": ["N", 1, "H", "W"]},
            "threshold": {"rule": cfg.threshold, "mask": f"logits > {threshold}"},
            "preprocessing": {"size": size, "mode": "faithful" if faithful else "standard",
                              "hu_window": window,
                              "orientation": "the thesis orientation (kdlib's readers orient "
                                             "NIfTI and DICOM from their headers; 2D slices as given)"},
            "check": {"slices": int(len(x)), "source": source, "mask_pixels_differing": differing,
                      "max_abs_logit_difference": max_diff, "tolerance": LOGIT_TOLERANCE},
            "exported_with": {"torch": torch.__version__, "exporter": "torch.export (dynamo)",
                              "onnxruntime": ort.__version__,
                              "python": platform.python_version()},
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        if dest.exists() or sidecar.exists():
            raise DataError("refusing to overwrite a file written meanwhile", dest,
                            "choose another --onnx name")
        atomic_write_json(sidecar, info)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {**info, "onnx": str(dest), "sidecar": str(sidecar)}


def onnx_logits(onnx: str | Path, images_uint8: np.ndarray, threads: int | None = None
                ) -> np.ndarray:
    """Run an exported model on uint8 slices (N, S, S): logits (N, S, S), float32."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(images_uint8, dtype=np.float32)[:, None] / np.float32(255)
    return session.run(["logits"], {"image": x})[0][:, 0]


def describe(path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported model."""
    return json.loads(Path(str(path) + ".json").read_text())
