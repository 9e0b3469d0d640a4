"""The five networks of the thesis: two students, a single-task U-Net and two multi-task teachers.

Every model maps images (B, 3, H, W) to a dict::

    logits      (B, 1, H, W)   segmentation logits (no sigmoid)
    recon       (B, 3, H, W)   reconstruction, T1 and T2 only (no activation)
    enc         encoder feature tap        } the three scales distillation reads;
    bottleneck  bottleneck feature tap     } see each class's docstring and
    dec         decoder feature tap        } `model.feature_info`

`model.feature_info[tap] = (channels, stride)` gives a tap's shape without a forward pass:
(B, channels, H // stride, W // stride). Tap shapes at 256x256 input:

    name  params       enc            bottleneck      dec
    S1    57,297       32 x 64 x 64   64 x 64 x 64    16 x 256 x 256
    S2    227,233      64 x 64 x 64   128 x 64 x 64   32 x 256 x 256
    unet  31,043,521   128 x 64 x 64  1024 x 16 x 16  64 x 256 x 256
    T1    43,236,036   128 x 64 x 64  1024 x 16 x 16  64 x 256 x 256
    T2    172,625,028  256 x 64 x 64  512 x 16 x 16   16 x 256 x 256

Structures follow the thesis author's public code (see
shared/reference/original_implementation.md); the parameter counts equal the thesis's.
All networks accept any H, W divisible by 16; T2 only at the size it was built for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

MODEL_NAMES = ("S1", "S2", "unet", "T1", "T2")
TEACHERS = ("unet", "T1", "T2")
STUDENTS = ("S1", "S2")
LABELS = {"S1": "U-Net-S", "S2": "U-Net", "unet": "SpleenSeg-U-Net",
          "T1": "Multi-Task U-Net", "T2": "Multi-Task TransUNet"}
PAPER_PARAMS = {"S1": 57_297, "S2": 227_233, "unet": 31_043_521, "T1": 43_236_036,
                "T2": 172_625_028}


# ----------------------------------------------------------------------------------------
# building blocks

class ConvBNReLU(nn.Sequential):
    """3x3 conv (bias) + BatchNorm + ReLU: one student block."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two (3x3 conv (bias) + BN + ReLU): one U-Net / TransUNet-decoder block."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class UpConcat(nn.Module):
    """ConvTranspose2d(k2, s2) cin -> cout, concat the skip (cout channels), then `block`."""

    def __init__(self, cin: int, cout: int, block: type[nn.Module]):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = block(2 * cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def _check_size(x: torch.Tensor, multiple: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(f"{name} needs H and W divisible by {multiple}, got {tuple(x.shape[-2:])}")


# ----------------------------------------------------------------------------------------
# students

class StudentUNet(nn.Module):
    """S1 "U-Net-S" (width 16, 57,297 params) and S2 "U-Net" (width 32, 227,233 params).

    Every block is ONE 3x3 conv + BN + ReLU (the thesis figure shows two; the counts need
    one). enc1 3->w at H, maxpool, enc2 w->2w at H/2, maxpool, bottleneck 2w->4w at H/4,
    two transposed-conv up stages with skips, 1x1 head w->1.

    Taps at 256x256 (S1; S2 doubles the channels):
        enc        (B, 32, 64, 64)    enc2 output after its max-pool
        bottleneck (B, 64, 64, 64)
        dec        (B, 16, 256, 256)  last decoder block, before the head
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc1 = ConvBNReLU(3, w)
        self.enc2 = ConvBNReLU(w, 2 * w)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBNReLU(2 * w, 4 * w)
        self.up1 = UpConcat(4 * w, 2 * w, ConvBNReLU)
        self.up2 = UpConcat(2 * w, w, ConvBNReLU)
        self.head = nn.Conv2d(w, 1, 1)
        self.feature_info = {"enc": (2 * w, 4), "bottleneck": (4 * w, 4), "dec": (w, 1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_size(x, 4, type(self).__name__)
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        enc = self.pool(e2)
        b = self.bottleneck(enc)
        dec = self.up2(self.up1(b, e2), e1)
        return {"logits": self.head(dec), "enc": enc, "bottleneck": b, "dec": dec}


# ----------------------------------------------------------------------------------------
# U-Net teachers

class UNetDecoder(nn.Module):
    """Four up stages 1024->512->256->128->64 with skips, then a 1x1 head 64->out_ch.
    Returns (head output, last block's 64-channel features)."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.ups = nn.ModuleList(UpConcat(c, c // 2, DoubleConv) for c in (1024, 512, 256, 128))
        self.head = nn.Conv2d(64, out_ch, 1)

    def forward(self, b: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = b
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x), x


class UNet(nn.Module):
    """Classic U-Net ("unet", SpleenSeg-U-Net, 31,043,521 params) or, with
    `multitask=True`, the multi-task teacher T1 (43,236,036 params): a shared encoder and
    bottleneck feeding a segmentation decoder and an identical reconstruction decoder
    (head 64->3, no activation).

    Encoder blocks 64/128/256/512 (two conv+BN+ReLU each) with max-pools, bottleneck 1024
    at H/16. Taps at 256x256:
        enc        (B, 128, 64, 64)    encoder stage 2 after the second max-pool
        bottleneck (B, 1024, 16, 16)
        dec        (B, 64, 256, 256)   last segmentation-decoder block, before the head
    """

    def __init__(self, multitask: bool = False):
        super().__init__()
        chans = (64, 128, 256, 512)
        self.encoder = nn.ModuleList(DoubleConv(cin, cout) for cin, cout in zip((3,) + chans, chans))
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(512, 1024)
        self.seg_decoder = UNetDecoder(1)
        self.rec_decoder = UNetDecoder(3) if multitask else None
        self.feature_info = {"enc": (128, 4), "bottleneck": (1024, 16), "dec": (64, 1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_size(x, 16, type(self).__name__)
        skips, pooled = [], []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
            pooled.append(x)
        b = self.bottleneck(x)
        logits, dec = self.seg_decoder(b, skips)
        out = {"logits": logits, "enc": pooled[1], "bottleneck": b, "dec": dec}
        if self.rec_decoder is not None:
            out["recon"] = self.rec_decoder(b, skips)[0]
        return out


# ----------------------------------------------------------------------------------------
# TransUNet teacher

class ResBottleneck(nn.Module):
    """ResNet bottleneck block without biases: 1x1 -> 3x3 (dilation 3, carries the stride)
    -> 1x1, BN after each, ReLU; 1x1 strided projection shortcut with BN. The inner width
    equals `cout` (not cout/4 as in ResNet): only that reproduces the thesis's count."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        mid = cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=3, dilation=3, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Attention(nn.Module):
    """Multi-head self-attention with `heads` x `head_dim` inner width (12 x 21 = 252 for
    a 256-wide model, as the original's integer division gave); qkv without bias."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))


class ViTBlock(nn.Module):
    """Post-norm transformer block: x = LN(x + attn(x)); x = LN(x + MLP(x)); dropout 0."""

    def __init__(self, dim: int = 256, heads: int = 12, mlp: int = 2048):
        super().__init__()
        self.attn = Attention(dim, heads, dim // heads)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class BilinearUp(nn.Module):
    """Bilinear x2 (align_corners=True), concat an optional skip, double conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


class TransUNetDecoder(nn.Module):
    """Four bilinear up blocks 512 -> 256 -> 128 -> 64 -> 16 (skips 512, 256, 128, none)
    and a 1x1 head 16->out_ch. Returns (head output, 16-channel last block output)."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.ups = nn.ModuleList([BilinearUp(512 + 512, 256), BilinearUp(256 + 256, 128),
                                  BilinearUp(128 + 128, 64), BilinearUp(64, 16)])
        self.head = nn.Conv2d(16, out_ch, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for up, skip in zip(self.ups, skips + [None]):
            x = up(x, skip)
        return self.head(x), x


class TransUNet(nn.Module):
    """Multi-task TransUNet teacher T2: 172,625,028 params AT img_size=256 ONLY.

    CNN encoder: 7x7/2 stem conv -> 128 (+BN+ReLU), three ResNet bottleneck blocks
    128->256->512->1024 each stride 2. The ViT sees the 1024 x (H/16) x (W/16) map as ONE
    patch token (patch size img_size/16) plus a CLS token: linear 1024*(img_size/16)^2 ->
    256 (262,144 -> 256 at 256 input, 67M params) and back, so the patch size, and hence
    the parameter count, depend on `img_size`, and the network only runs at that input
    size. Learned positional embedding for the 2 tokens, 8 post-norm blocks (no final
    norm), 12 heads of dim 21 (qkv without bias), MLP 2048 GELU, dropout 0. Then a 3x3 conv
    1024->512 (+BN+ReLU) and two decoders (segmentation head 16->1, reconstruction 16->3).
    Details the reference leaves open (inner ResNet width = cout, qkv bias off, conv biases
    in the decoders) were fixed by matching the thesis's exact parameter count.

    Taps at 256x256:
        enc        (B, 256, 64, 64)    first ResNet bottleneck block output
        bottleneck (B, 512, 16, 16)    the post-ViT conv
        dec        (B, 16, 256, 256)   last segmentation-decoder block, before the head
    """

    def __init__(self, img_size: int = 256, dim: int = 256, depth: int = 8, heads: int = 12,
                 mlp: int = 2048):
        super().__init__()
        if img_size <= 0 or img_size % 16:
            raise ConfigError(f"T2 img_size must be a positive multiple of 16, got {img_size}")
        self.img_size = img_size
        self.grid = img_size // 16
        self.stem = nn.Sequential(nn.Conv2d(3, 128, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(128), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList([ResBottleneck(128, 256), ResBottleneck(256, 512),
                                     ResBottleneck(512, 1024)])
        flat = 1024 * self.grid * self.grid
        self.patch_embed = nn.Linear(flat, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.vit = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.unembed = nn.Linear(dim, flat)
        self.post = nn.Sequential(nn.Conv2d(1024, 512, 3, padding=1),
                                  nn.BatchNorm2d(512), nn.ReLU(inplace=True))
        self.seg_decoder = TransUNetDecoder(1)
        self.rec_decoder = TransUNetDecoder(3)
        self.feature_info = {"enc": (256, 4), "bottleneck": (512, 16), "dec": (16, 1)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_size(x, 16, "TransUNet")
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"T2 was built for {self.img_size}x{self.img_size} input, got "
                             f"{tuple(x.shape[-2:])}; build it with build('T2', img_size=...)")
        s2 = self.stem(x)              # 128 x H/2
        s4 = self.blocks[0](s2)        # 256 x H/4
        s8 = self.blocks[1](s4)        # 512 x H/8
        s16 = self.blocks[2](s8)       # 1024 x H/16
        B = x.shape[0]
        tok = self.patch_embed(s16.flatten(1)).unsqueeze(1)
        t = torch.cat([self.cls_token.expand(B, -1, -1), tok], dim=1) + self.pos_embed
        for blk in self.vit:
            t = blk(t)
        y = self.unembed(t[:, 1]).view_as(s16)
        b = self.post(y)               # 512 x H/16
        skips = [s8, s4, s2]
        logits, dec = self.seg_decoder(b, skips)
        recon = self.rec_decoder(b, skips)[0]
        return {"logits": logits, "recon": recon, "enc": s4, "bottleneck": b, "dec": dec}


# ----------------------------------------------------------------------------------------
# registry

_ALIASES = {"s1": "S1", "unet-s": "S1", "u-net-s": "S1", "s2": "S2", "unet": "unet",
            "u-net": "unet", "spleenseg-u-net": "unet", "spleenseg": "unet", "t1": "T1",
            "t2": "T2", "transunet": "T2"}


def canonical_name(name: str) -> str:
    """'s1' -> 'S1', 'UNET' -> 'unet', ...; unknown names raise ConfigError."""
    key = str(name).strip().lower()
    if key not in _ALIASES:
        raise ConfigError(f"unknown model {name!r}",
                          fix=f"use one of {', '.join(MODEL_NAMES)}")
    return _ALIASES[key]


def build(name: str, **kwargs) -> nn.Module:
    """Build a model by name ("S1", "S2", "unet", "T1", "T2", case-insensitive).
    Keyword arguments go to the constructor (T2 takes `img_size`, default 256)."""
    name = canonical_name(name)
    try:
        if name == "S1":
            model = StudentUNet(16, **kwargs)
        elif name == "S2":
            model = StudentUNet(32, **kwargs)
        elif name == "unet":
            model = UNet(multitask=False, **kwargs)
        elif name == "T1":
            model = UNet(multitask=True, **kwargs)
        else:
            model = TransUNet(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name}: {exc}") from None
    model.name = name
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (works for models built on the meta device too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe_models(size: int = 256) -> list[dict]:
    """One row per model: name, label, role, params, input_size, taps {tap: [C, H, W]} for
    one `size` x `size` input slice.

    Built on the meta device (no memory, no forward pass). T2 is built for `size`; its
    parameter count equals the thesis's 172,625,028 only at 256, and rows where the count
    differs from the thesis carry a `note`.
    """
    if size <= 0 or size % 16:
        raise ConfigError(f"size must be a positive multiple of 16, got {size}")
    rows = []
    for name in MODEL_NAMES:
        with torch.device("meta"):
            model = build(name, **({"img_size": size} if name == "T2" else {}))
        params = count_parameters(model)
        row = {"name": name, "label": LABELS[name],
               "role": "teacher" if name in TEACHERS else "student", "params": params,
               "input_size": size,  # the taps below are for one size x size input slice
               "taps": {tap: [c, size // s, size // s] for tap, (c, s) in model.feature_info.items()}}
        if name == "T2" and size != 256:
            row["note"] = (f"T2's ViT patch size depends on the input size; built for {size}x{size} "
                           f"it has {params:,} parameters (the thesis's 172,625,028 hold at 256 only)")
        rows.append(row)
    return rows
