"""Issue 20: the GPU path, checked on a CUDA device (marker `cuda`; on a machine without one
every test here is skipped with a message, see conftest.py). `benchmarks/gpu_check.py` runs
them first. Data: a numpy-only phantom cache (no nibabel), 32x32.

Only `pytest.mark`, `pytest.skip` and the `tmp_path` argument are used, so gpu_check can run
these functions with a stand-in for pytest on a machine that lacks it."""
import json
from dataclasses import replace

import pytest

pytestmark = pytest.mark.cuda


def _torch():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: cuda-marked tests run on a GPU (benchmarks/gpu_check.py)")
    return torch


def _tiny(tmp_path, size=32):
    from kdlib.data import SliceCache, make_split, save_split
    from kdlib.data.phantom import write_phantom_cache

    cache = write_phantom_cache(tmp_path / "cache", cases=4, seed=3, size=size, slices=12)
    save_split(make_split(SliceCache.load(cache), mode="patient", seed=0), tmp_path / "split.json")
    return cache, tmp_path / "split.json"


def _batch(torch, n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 1, size, size, generator=g).expand(-1, 3, -1, -1).contiguous()
    mask = (torch.rand(n, 1, size, size, generator=g) > 0.7).float()
    return image, mask


def test_bf16_autocast_step(tmp_path):
    torch = _torch()
    from kdlib import losses, models, train

    dev = torch.device("cuda")
    for name in ("S1", "T1"):
        model = models.build(name).to(dev)
        image, mask = (t.to(dev) for t in _batch(torch))
        with train.autocast(dev, "bf16"):
            out = model(image)
            loss = losses.dice_loss(out["logits"], mask)
        assert out["logits"].dtype == torch.bfloat16  # autocast is on
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    assert train.resolve_precision("auto", dev) == "bf16"


def test_channels_last_step_matches_nchw(tmp_path):
    torch = _torch()
    from kdlib import losses, models, train

    dev = torch.device("cuda")
    assert train.memory_format("S1", dev, "bf16") == torch.channels_last
    torch.manual_seed(0)
    nchw = models.build("S2").to(dev)
    last = models.build("S2").to(dev)
    last.load_state_dict(nchw.state_dict())
    last = last.to(memory_format=torch.channels_last)
    image, mask = (t.to(dev) for t in _batch(torch))
    results = []
    for model, x in ((nchw, image), (last, image.contiguous(memory_format=torch.channels_last))):
        with train.autocast(dev, "bf16"):
            loss = losses.dice_loss(model(x)["logits"], mask)
        loss.backward()
        results.append((float(loss), torch.cat([p.grad.flatten().float() for p in model.parameters()])))
    (la, ga), (lb, gb) = results
    assert abs(la - lb) < 2e-2 and float((ga - gb).norm() / ga.norm()) < 5e-2


def test_teacher_outputs_cache_on_the_device(tmp_path):
    torch = _torch()
    from kdlib import train
    from kdlib.data import SliceCache, load_split

    cache, split = _tiny(tmp_path)
    teacher = train.train(train.teacher_config("unet", cache, split, epochs=1), tmp_path / "runs",
                          device="cuda", progress=False)
    dev = torch.device("cuda")
    data = train.SliceTensors(SliceCache.load(cache), load_split(split)["student_train"], dev)
    train._TEACHER_OUTPUTS.clear()
    got = train.teacher_outputs(teacher, data, ("bottleneck", "logits"), dev)
    assert set(got) == {"bottleneck", "logits"}
    assert all(t.device.type == "cuda" and t.dtype == torch.bfloat16 and len(t) == len(data) for t in got.values())
    assert train.teacher_outputs_bytes() == sum(t.numel() * 2 for t in got.values())
    train._TEACHER_OUTPUTS.clear()


def test_cuda_run_resumes(tmp_path):
    _torch()
    from kdlib import losses, train

    cache, split = _tiny(tmp_path)
    teacher = train.train(train.teacher_config("unet", cache, split, epochs=1), tmp_path / "runs",
                          device="cuda", progress=False)
    kd = losses.kd_config_for("T1", "S1", scales=("B",), pmd="binary")
    cfg = train.kd_run_config(teacher, "S1", kd, cache, split, epochs=3, batch_size=8, precision="auto")
    try:
        train.train(cfg, tmp_path / "runs", device="cuda", stop_after_epoch=1, progress=False)
    except KeyboardInterrupt:
        pass
    run = cfg.run_dir(tmp_path / "runs")
    assert (run / "checkpoints" / "last.pt").exists() and not (run / "metrics.json").exists()
    train.train(cfg, tmp_path / "runs", device="cuda", progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "config.json").read_text())["provenance"]
    assert metrics["epochs_run"] == 3 and metrics["device"] == "cuda" and metrics["precision"] == "bf16"
    assert record["resumed"][0]["device"] == "cuda" and record["resumed"][0]["after_epoch"] == 1
    assert 0.0 <= metrics["pooled"]["dice"] <= 1.0


def test_cpu_and_cuda_forward_passes_agree(tmp_path):
    torch = _torch()
    from kdlib import models

    image, _ = _batch(torch, n=2, size=64)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both
    try:
        for name in models.MODEL_NAMES:
            torch.manual_seed(0)
            model = models.build(name, **({"img_size": 64} if name == "T2" else {})).eval()
            with torch.no_grad():
                cpu = model(image)["logits"]
                gpu = model.to("cuda")(image.to("cuda"))["logits"].cpu()
            scale = float(cpu.abs().max()) or 1.0
            assert float((cpu - gpu).abs().max()) / scale < 1e-3, name
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_stacked_students_match_sequential_on_cuda(tmp_path):
    """The vmap path gpu_check measures: a forward of stacked S1 students equals each one's own."""
    torch = _torch()
    from torch.func import functional_call, stack_module_state

    from kdlib import models

    members = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        members.append(models.build("S1").to("cuda").eval())
    params, buffers = stack_module_state(members)
    base = models.build("S1").to("meta").eval()
    image, _ = _batch(torch, n=2)
    image = image.cuda()

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))["logits"]

    with torch.no_grad():
        stacked = torch.vmap(one, in_dims=(0, 0, None))(params, buffers, image)
        for i, m in enumerate(members):
            assert torch.allclose(stacked[i], m(image)["logits"], atol=1e-4, rtol=1e-3)
