"""Losses and the Distiller: reference values computed by hand or with numpy."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdlib.errors import ConfigError
from kdlib.losses import (Distiller, KDConfig, dice_bce_loss, dice_loss, feature_mse, info_nce,
                          kd_config_for, pmd_loss, recon_mse, soft_dice_per_image)
from kdlib.models import build

BIG = 60.0  # sigmoid(60) == 1 and sigmoid(-60) ~ 9e-27 in float64


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


def np_dice(p, t, smooth=1.0):
    return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


# ---------------------------------------------------------------------------------------
# Dice / BCE / MSE

@pytest.mark.parametrize("logits,target,expected", [
    # p = 0.5 everywhere (logit 0), 4 pixels
    ([[0.0, 0.0], [0.0, 0.0]], [[0, 0], [0, 0]], 1 - 1 / 3),          # empty target
    ([[0.0, 0.0], [0.0, 0.0]], [[1, 1], [1, 1]], 1 - 5 / 7),          # full target
    ([[0.0, 0.0], [0.0, 0.0]], [[1, 0], [0, 0]], 1 - 2 / 4),          # (2*.5+1)/(2+1+1)
    # (near) hard predictions
    ([[-BIG, -BIG], [-BIG, -BIG]], [[0, 0], [0, 0]], 0.0),            # empty pred, empty target
    ([[-BIG, -BIG], [-BIG, -BIG]], [[1, 1], [0, 0]], 1 - 1 / 3),      # empty pred
    ([[BIG, BIG], [-BIG, -BIG]], [[1, 1], [0, 0]], 0.0),              # perfect
    ([[BIG, -BIG], [-BIG, -BIG]], [[1, 1], [0, 0]], 1 - 3 / 4),       # half found
    ([[BIG, BIG], [BIG, BIG]], [[0, 0], [0, 0]], 1 - 1 / 5),          # all wrong
    ([[0.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]], 1 - 3 / 5),  # soft target
])
def test_dice_loss_hand_values(logits, target, expected):
    x, t = t64(logits)[None, None], t64(target)[None, None]
    assert dice_loss(x, t).item() == pytest.approx(expected, abs=1e-12)


def test_dice_loss_pools_the_batch():
    torch.manual_seed(0)
    z, t = torch.randn(3, 1, 8, 8, dtype=torch.float64), (torch.rand(3, 1, 8, 8) > 0.6).double()
    p, tn = np_sigmoid(z.numpy()), t.numpy()
    assert dice_loss(z, t).item() == pytest.approx(np_dice(p, tn), rel=1e-12)
    per_image = np.mean([np_dice(p[i], tn[i]) for i in range(3)])
    assert soft_dice_per_image(z, t).item() == pytest.approx(per_image, rel=1e-12)
    assert abs(dice_loss(z, t).item() - per_image) > 1e-4


def test_soft_dice_per_image_hand_values():
    z = t64([[[[0.0, 0.0]]], [[[-BIG, -BIG]]]])           # image 0: p=.5,.5 ; image 1: p=0,0
    t = t64([[[[1, 1]]], [[[0, 0]]]])
    # image 0: 1 - (2*1+1)/(1+2+1) = 1/4; image 1: 1 - 1/1 = 0
    assert soft_dice_per_image(z, t).item() == pytest.approx(0.125, abs=1e-12)
    # pooled: 1 - (2*1 + 1) / (1 + 2 + 1)
    assert dice_loss(z, t).item() == pytest.approx(0.25, abs=1e-12)


def test_dice_bce_matches_numpy():
    torch.manual_seed(1)
    z, t = torch.randn(2, 1, 5, 7, dtype=torch.float64), torch.rand(2, 1, 5, 7, dtype=torch.float64)
    p, tn = np_sigmoid(z.numpy()), t.numpy()
    bce = -np.mean(tn * np.log(p) + (1 - tn) * np.log(1 - p))
    assert dice_bce_loss(z, t).item() == pytest.approx(bce + np_dice(p, tn), rel=1e-10)


def test_bce_hand_value():
    # logit 0 -> p = .5: BCE = log 2 whatever the target; dice = 1 - (2*.5*1+1)/(.5+1+1)
    z, t = t64([[[[0.0]]]]), t64([[[[1.0]]]])
    assert dice_bce_loss(z, t).item() == pytest.approx(math.log(2) + 1 - 2 / 2.5, abs=1e-12)


def test_recon_and_feature_mse():
    a = t64([[[[1.0, 2.0]]]]).expand(1, 3, 1, 2)
    b = torch.zeros_like(a)
    assert recon_mse(a, b).item() == pytest.approx(2.5)
    assert feature_mse(a, b).item() == pytest.approx(2.5)


def test_half_precision_inputs_give_float32():
    z = torch.randn(2, 1, 4, 4).to(torch.bfloat16)
    t = (torch.rand(2, 1, 4, 4) > 0.5).float()
    assert dice_loss(z, t).dtype == torch.float32
    assert dice_bce_loss(z, t).dtype == torch.float32


# ---------------------------------------------------------------------------------------
# InfoNCE

@pytest.mark.parametrize("batch,dim,temperature", [(2, 3, 0.1), (5, 17, 0.4), (20, 64, 0.07),
                                                  (1, 8, 0.4), (7, 4096, 1.0)])
def test_info_nce_equals_package(batch, dim, temperature):
    from info_nce import InfoNCE

    g = torch.Generator().manual_seed(batch * 1000 + dim)
    q = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    ours = info_nce(q, k, temperature)
    ref = InfoNCE(temperature=temperature)(q, k)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)


def test_info_nce_hand_value():
    # orthonormal students equal to their teachers: similarities I / tau
    q = torch.eye(2, dtype=torch.float64) * 3.0
    tau = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    assert info_nce(q, q.clone(), tau).item() == pytest.approx(expected, rel=1e-12)
    # one direction: student queries against teacher keys, not symmetric
    s, t = t64([[1.0, 0.0], [1.0, 1.0]]), t64([[1.0, 1.0], [0.0, 1.0]])
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(0)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    assert info_nce(s, t, tau).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        info_nce(torch.randn(3, 4), torch.randn(3, 5), 0.1)


# ---------------------------------------------------------------------------------------
# PMD

def test_pmd_faithful_is_exactly_zero_in_value_and_gradient():
    torch.manual_seed(0)
    s = (torch.randn(4, 1, 8, 8) * 5).requires_grad_()
    t = torch.randn(4, 1, 8, 8) * 5
    loss = pmd_loss(s, t, "faithful", T=4.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_pmd_faithful_is_not_zero_with_two_channels():
    # the formula itself works; it is the single logit channel that kills it
    torch.manual_seed(0)
    assert pmd_loss(torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3), "faithful").item() > 0


def test_pmd_binary_matches_numpy():
    torch.manual_seed(2)
    s, t = torch.randn(2, 1, 4, 4, dtype=torch.float64) * 3, torch.randn(2, 1, 4, 4, dtype=torch.float64) * 3
    T = 4.0
    ps, pt = np_sigmoid(s.numpy() / T), np_sigmoid(t.numpy() / T)
    kl = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    assert pmd_loss(s, t, "binary", T).item() == pytest.approx(kl.mean() * T * T, rel=1e-10)


def test_pmd_binary_zero_at_agreement_and_gradcheck():
    s = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    assert pmd_loss(s, s.clone(), "binary").item() == pytest.approx(0.0, abs=1e-14)
    s.requires_grad_()
    t = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: pmd_loss(a, b, "binary", 2.0),
                                    (s, t.requires_grad_()))


def test_pmd_binary_is_a_pixel_mean_not_batchmean():
    """The documented scale: the mean over pixels, i.e. the original's `batchmean` KL divided
    by H*W, so the same w_pmd weighs the same at every resolution."""
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    T = 4.0
    ps, pt = torch.sigmoid(s / T), torch.sigmoid(t / T)
    per_pixel = pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))
    batchmean = per_pixel.sum() / s.shape[0] * T * T
    assert pmd_loss(s, t, "binary", T).item() == pytest.approx(batchmean.item() / 64, rel=1e-10)
    # every pixel repeated 2x2 (a 16x16 image with the same content): the same value
    up = lambda x: x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert pmd_loss(up(s), up(t), "binary", T).item() == pytest.approx(pmd_loss(s, t, "binary", T).item(), rel=1e-10)


def test_random_projectors_draw_from_the_given_generator_only():
    _, dist, s_out, t_out, target = make("T1", "S1", projector="random", scales=("B",), pmd="off")
    values = []
    for consume in (0, 1000):
        dist.generator = torch.Generator().manual_seed(9)
        torch.rand(consume)  # whatever the global RNG did before
        with torch.no_grad():
            values.append((dist(s_out, t_out, target)["B"].item(), dist(s_out, t_out, target)["B"].item()))
    assert values[0] == values[1] and values[0][0] != values[0][1]


def test_pmd_bad_mode():
    with pytest.raises(ValueError):
        pmd_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), "softmax")


# ---------------------------------------------------------------------------------------
# projector: 1x1 conv commutes with bilinear resizing

@pytest.mark.parametrize("size_in,size_out", [((4, 4), (16, 16)), ((16, 16), (64, 64)),
                                              ((5, 7), (12, 9)), ((16, 16), (8, 8))])
def test_projection_commutes_with_bilinear_resize(size_in, size_out):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(48, 8, 1)
    x = torch.randn(3, 48, *size_in)
    with torch.no_grad():
        a = conv(F.interpolate(x, size=size_out, mode="bilinear", align_corners=False))
        b = F.interpolate(conv(x), size=size_out, mode="bilinear", align_corners=False)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------
# KDConfig

@pytest.mark.parametrize("pair,weights,temperature", [
    (("T1", "S1"), dict(w_seg=0.4, w_bn=0.2, w_pmd=0.2, w_enc=0.1, w_dec=0.1), 0.4),
    (("T1", "S2"), dict(w_seg=0.4, w_bn=0.2, w_pmd=0.2, w_enc=0.1, w_dec=0.1), 0.1),
    (("T2", "S1"), dict(w_seg=0.5, w_bn=0.2, w_pmd=0.1, w_enc=0.1, w_dec=0.1), 0.4),
    (("T2", "S2"), dict(w_seg=0.5, w_bn=0.3, w_pmd=0.2), 0.4),
])
def test_kd_config_for_original_defaults(pair, weights, temperature):
    cfg = kd_config_for(*pair)
    for k, v in weights.items():
        assert getattr(cfg, k) == v, k
    assert cfg.temperature == temperature
    assert cfg.seg_loss == "dice"
    assert cfg.pmd_temperature == 4.0
    assert cfg.scales == (("B",) if pair == ("T2", "S2") else ("E", "B", "D"))


def test_kd_config_overrides_and_aliases():
    cfg = kd_config_for("t1", "s1", scales=("B",), pmd="binary", projector="learned")
    assert cfg.scales == ("B",) and cfg.pmd == "binary" and cfg.projector == "learned"
    assert kd_config_for("T1", "S1", scales="D+E").scales == ("E", "D")
    assert kd_config_for("unet", "S1").w_seg == 0.4


@pytest.mark.parametrize("scales", [("E",), ("D",), ("E", "B", "D")])
def test_t2_s2_rejects_encoder_and_decoder(scales):
    with pytest.raises(ConfigError, match="T2->S2"):
        kd_config_for("T2", "S2", scales=scales)


@pytest.mark.parametrize("kwargs", [
    dict(scales=("X",)), dict(scales=("B", "B")), dict(loss="kl"), dict(pmd="on"),
    dict(projector="fixed"), dict(seg_loss="bce"), dict(w_seg=-1.0), dict(w_bn=float("nan")),
    dict(temperature=0.0), dict(pmd_temperature=-4.0), dict(w_enc="0.1"), dict(w_dec=True),
])
def test_kd_config_validation(kwargs):
    with pytest.raises(ConfigError):
        KDConfig(**kwargs)


def test_kd_config_unknown_fields_and_pairs():
    with pytest.raises(ConfigError, match="unknown"):
        kd_config_for("T1", "S1", w_foo=1.0)
    with pytest.raises(ConfigError):
        kd_config_for("S1", "T1")
    with pytest.raises(ConfigError, match="unknown"):
        KDConfig.from_dict({"scales": ["B"], "bogus": 1})


def test_kd_config_dict_round_trip():
    cfg = kd_config_for("T2", "S1", loss="mse", pmd="binary", projector="learned", w_seg=1)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["scales"] == ["E", "B", "D"] and d["w_seg"] == 1.0
    assert KDConfig.from_dict(d) == cfg
    assert KDConfig.from_dict(d).to_dict() == cfg.to_dict()


# ---------------------------------------------------------------------------------------
# Distiller

def feature_info(name):
    with torch.device("meta"):
        return build(name).feature_info


def fake_outputs(name, batch, size, dtype=torch.float32, grad=False, seed=0):
    """Random tensors shaped like model `name`'s outputs at `size` x `size`."""
    g = torch.Generator().manual_seed(seed)
    out = {"logits": torch.randn(batch, 1, size, size, generator=g)}
    for tap, (c, s) in feature_info(name).items():
        out[tap] = torch.randn(batch, c, size // s, size // s, generator=g)
    out = {k: v.to(dtype).requires_grad_(grad) for k, v in out.items()}
    return out


def make(teacher, student, batch=4, size=32, **overrides):
    cfg = kd_config_for(teacher, student, **overrides)
    dist = Distiller(cfg, feature_info(teacher), feature_info(student), teacher, student)
    s_out = fake_outputs(student, batch, size, grad=True, seed=1)
    t_out = fake_outputs(teacher, batch, size, seed=2)
    target = (torch.rand(batch, 1, size, size) > 0.7).float()
    return cfg, dist, s_out, t_out, target


@pytest.mark.parametrize("pair", [("T1", "S1"), ("T1", "S2"), ("T2", "S1"), ("unet", "S2")])
@pytest.mark.parametrize("scales", [(), ("B",), ("E",), ("D",), ("E", "D"), ("E", "B", "D")])
@pytest.mark.parametrize("pmd", ["off", "faithful", "binary"])
def test_distiller_terms_present_per_config(pair, scales, pmd):
    cfg, dist, s_out, t_out, target = make(*pair, scales=scales, pmd=pmd)
    terms = dist(s_out, t_out, target)
    expected = {"total", "seg", *scales} | ({"pmd"} if pmd != "off" else set())
    assert set(terms) == expected
    w = {"seg": cfg.w_seg, "E": cfg.w_enc, "B": cfg.w_bn, "D": cfg.w_dec, "pmd": cfg.w_pmd}
    total = sum(w[k] * v for k, v in terms.items() if k != "total")
    assert torch.allclose(terms["total"], total)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    if pmd == "faithful":
        assert terms["pmd"].item() == 0.0
    terms["total"].backward()
    assert s_out["logits"].grad is not None


def test_distiller_t2_s2_bottleneck_only():
    _, dist, s_out, t_out, target = make("T2", "S2")
    assert set(dist(s_out, t_out, target)) == {"total", "seg", "B", "pmd"}
    with pytest.raises(ConfigError, match="T2->S2"):
        Distiller(KDConfig(scales=("E", "B")), feature_info("T2"), feature_info("S2"), "T2", "S2")


@pytest.mark.parametrize("pair,plan", [
    (("T1", "S1"), {"E": ("teacher", 128, 32), "B": ("teacher", 1024, 64), "D": ("student", 16, 64)}),
    (("T1", "S2"), {"E": ("teacher", 128, 64), "B": ("teacher", 1024, 128), "D": ("student", 32, 64)}),
    (("T2", "S1"), {"E": ("teacher", 256, 32), "B": ("teacher", 512, 64), "D": None}),
    (("T2", "S2"), {"B": ("teacher", 512, 128)}),
])
def test_projection_plan_follows_tap_table(pair, plan):
    _, dist, *_ = make(*pair)
    assert dist.plan == plan


def test_bottleneck_projected_then_resized_to_student_size():
    _, dist, s_out, t_out, _ = make("T1", "S1", size=256, batch=2, projector="learned")
    s, t = dist.match("B", s_out["bottleneck"], t_out["bottleneck"])
    assert s.shape == t.shape == (2, 64, 64, 64)
    conv = dist.projectors["B"]
    with torch.no_grad():
        slow = conv(F.interpolate(t_out["bottleneck"], size=(64, 64), mode="bilinear",
                                  align_corners=False))
    assert torch.allclose(t.detach(), slow, atol=1e-5)


def test_distiller_matches_hand_computed_terms():
    cfg, dist, s_out, t_out, target = make("T2", "S1", scales=("E", "B", "D"), pmd="binary",
                                           projector="learned")
    terms = dist(s_out, t_out, target)
    n = target.shape[0]
    with torch.no_grad():
        e_t = dist.projectors["E"](t_out["enc"])
        b_t = F.interpolate(dist.projectors["B"](t_out["bottleneck"]), size=s_out["bottleneck"].shape[-2:],
                            mode="bilinear", align_corners=False)
        ref = {"seg": dice_loss(s_out["logits"], target),
               "E": info_nce(s_out["enc"].reshape(n, -1), e_t.reshape(n, -1), cfg.temperature),
               "B": info_nce(s_out["bottleneck"].reshape(n, -1), b_t.reshape(n, -1), cfg.temperature),
               "D": info_nce(s_out["dec"].reshape(n, -1), t_out["dec"].reshape(n, -1), cfg.temperature),
               "pmd": pmd_loss(s_out["logits"], t_out["logits"], "binary", 4.0)}
    for k, v in ref.items():
        assert torch.allclose(terms[k].detach(), v, rtol=1e-5), k


def test_mse_loss_mode():
    _, dist, s_out, t_out, target = make("T2", "S1", scales=("D",), loss="mse", pmd="off")
    terms = dist(s_out, t_out, target)
    assert torch.allclose(terms["D"], F.mse_loss(s_out["dec"], t_out["dec"]))


def test_learned_projectors_are_parameters_and_in_state_dict():
    _, dist, s_out, t_out, target = make("T1", "S1", projector="learned")
    names = {n for n, _ in dist.named_parameters()}
    assert names == {f"projectors.{s}.{p}" for s in "EBD" for p in ("weight", "bias")}
    assert set(dist.state_dict()) == names
    assert dist.projectors["B"].weight.shape == (64, 1024, 1, 1)
    assert dist.projectors["D"].weight.shape == (64, 16, 1, 1)
    # an optimiser step changes them
    opt = torch.optim.SGD(dist.parameters(), lr=0.1)
    before = dist.projectors["E"].weight.detach().clone()
    dist(s_out, t_out, target)["total"].backward()
    assert all(p.grad is not None for p in dist.parameters())
    opt.step()
    assert not torch.equal(before, dist.projectors["E"].weight)
    # and a fresh distiller restores them
    other = Distiller(dist.cfg, feature_info("T1"), feature_info("S1"))
    other.load_state_dict(dist.state_dict())
    with torch.no_grad():
        assert torch.equal(other(s_out, t_out, target)["total"], dist(s_out, t_out, target)["total"])


def test_random_projector_is_fresh_each_call_and_seeded():
    _, dist, s_out, t_out, target = make("T1", "S1", projector="random", scales=("B",), pmd="off")
    assert list(dist.parameters()) == [] and dist.state_dict() == {}
    with torch.no_grad():
        torch.manual_seed(123)
        a = dist(s_out, t_out, target)["B"]
        b = dist(s_out, t_out, target)["B"]
        torch.manual_seed(123)
        c = dist(s_out, t_out, target)["B"]
    assert a.item() != b.item()
    assert a.item() == c.item()


def test_short_last_batch():
    _, dist, *_ = make("T1", "S1", projector="learned", pmd="binary")
    for batch in (20, 7, 1):
        s_out = fake_outputs("S1", batch, 32, grad=True, seed=batch)
        t_out = fake_outputs("T1", batch, 32, seed=batch + 1)
        terms = dist(s_out, t_out, torch.zeros(batch, 1, 32, 32))
        assert torch.isfinite(terms["total"])
        terms["total"].backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_cached_teacher(dtype):
    _, dist, s_out, _, target = make("T1", "S1", projector="learned", pmd="binary")
    t_out = fake_outputs("T1", 4, 32, dtype=dtype, seed=2)
    terms = dist(s_out, t_out, target)
    assert terms["total"].dtype == torch.float32
    ref = dist(s_out, {k: v.float() for k, v in t_out.items()}, target)
    assert torch.allclose(terms["total"], ref["total"])


def test_teacher_out_needs_only_the_taps_in_use():
    _, dist, s_out, t_out, target = make("T1", "S1", scales=("B",), pmd="off")
    terms = dist(s_out, {"bottleneck": t_out["bottleneck"]}, target)
    assert set(terms) == {"total", "seg", "B"}


def test_with_real_models_one_training_step():
    torch.manual_seed(0)
    teacher, student = build("T1").eval(), build("S1")
    cfg = kd_config_for("T1", "S1", projector="learned", pmd="binary")
    dist = Distiller(cfg, teacher.feature_info, student.feature_info, "T1", "S1")
    opt = torch.optim.RMSprop(list(student.parameters()) + list(dist.parameters()), lr=1e-2)
    x, y = torch.rand(3, 3, 64, 64), (torch.rand(3, 1, 64, 64) > 0.8).float()
    with torch.no_grad():
        t_out = {k: v.half() for k, v in teacher(x).items()}
    terms = dist(student(x), t_out, y)
    opt.zero_grad()
    terms["total"].backward()
    opt.step()
    assert set(terms) == {"total", "seg", "E", "B", "D", "pmd"}
    assert all(p.grad is None for p in teacher.parameters())
