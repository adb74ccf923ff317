"""Extreme augmentation on the training device: random rotation, scale and translation per patch.

Augmented patches are cut directly from the whole (normalised) slices with one batched
`affine_grid`/`grid_sample`, so the area brought in by a rotation or shift is real anatomy rather than
padding, and nothing is stored per augmented copy: memory does not grow with the augmentation level.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..common.config import SCALE_RANGE, WARP_MAX, WARP_POINTS
from ..data.preprocess import SLICE_SIZE

PATCH = 128
STRIDE = 64
POOL_SEED_OFFSET = 104_729   # keeps the pool's draws apart from the per-step (fresh) draws


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 20.0
    scale_range: Tuple[float, float] = SCALE_RANGE
    max_shift_px: float = 50.0
    enabled: bool = True
    scale_each_axis: bool = False              # one scale per in-plane axis (`--scale-each-axis`), else one for both
    elastic: bool = False                      # a smooth random displacement of each patch on top (`--elastic`)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_slices(cls, slice_size: int, enabled: bool = True, scale_each_axis: bool = False,
                   scale_range: Tuple[float, float] = SCALE_RANGE, elastic: bool = False) -> "AugmentConfig":
        """The paper's bounds, with its shift (50 pixels of a 256-pixel slice) in proportion to the slice."""
        return cls(max_shift_px=cls.max_shift_px * slice_size / SLICE_SIZE, enabled=enabled,
                   scale_each_axis=scale_each_axis, scale_range=tuple(scale_range), elastic=elastic and enabled)


@dataclass
class AffineParams:
    angle_rad: torch.Tensor   # [B]
    scale: torch.Tensor       # [B], or [B, 2] as (x, y) with `scale_each_axis`
    shift_px: torch.Tensor    # [B, 2] as (x, y) in slice pixels

    def __getitem__(self, rows) -> "AffineParams":
        return AffineParams(self.angle_rad[rows], self.scale[rows], self.shift_px[rows])

    def __add__(self, other: "AffineParams") -> "AffineParams":
        """The two batches' transforms, one after the other."""
        return AffineParams(torch.cat([self.angle_rad, other.angle_rad]), torch.cat([self.scale, other.scale]),
                            torch.cat([self.shift_px, other.shift_px]))


def patch_size(slice_size: int) -> int:
    """128-pixel patches, or the whole slice when it is smaller (the stride is half a patch)."""
    return min(PATCH, slice_size)


def patch_corners(slice_size: int, patch: int = PATCH, stride: int = STRIDE) -> list:
    starts = list(range(0, slice_size - patch + 1, stride))
    if starts[-1] != slice_size - patch:
        starts.append(slice_size - patch)
    return [(y, x) for y in starts for x in starts]


def patch_table(n_slices: int, slice_size: int, patch: int = PATCH, stride: int = STRIDE) -> torch.Tensor:
    """Every (slice, y0, x0) of the stride grid, as an int64 tensor [n_patches, 3]."""
    corners = patch_corners(slice_size, patch, stride)
    rows = [(s, y, x) for s in range(n_slices) for (y, x) in corners]
    return torch.tensor(rows, dtype=torch.int64)


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator, device: torch.device) -> AffineParams:
    """Uniform draws within the configured bounds; identity when augmentation is off."""
    if not cfg.enabled:
        zeros = torch.zeros(n, device=device)
        return AffineParams(zeros, torch.ones(n, device=device), torch.zeros(n, 2, device=device))
    u = torch.rand(n, 4, generator=generator, device=device)
    angle = (2 * u[:, 0] - 1) * math.radians(cfg.max_rotation_deg)
    lo, hi = cfg.scale_range
    scale = lo + (hi - lo) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * cfg.max_shift_px
    if cfg.scale_each_axis:   # drawn after the others: a run without it draws what it always did
        scale = torch.stack([scale, lo + (hi - lo) * torch.rand(n, generator=generator, device=device)], dim=1)
    return AffineParams(angle, scale, shift)


def patch_theta(corners: torch.Tensor, params: AffineParams, slice_size: int, patch: int = PATCH) -> torch.Tensor:
    """`affine_grid` matrices [B, 2, 3] mapping patch coordinates to slice coordinates.

    The content of the patch is scaled by `scale` along the slice's axes (one factor, or one per axis), rotated by
    `angle` about the patch centre, then shifted by `shift_px`; normalised coordinates use align_corners=False.
    """
    y0, x0 = corners[:, 0].to(params.scale.dtype), corners[:, 1].to(params.scale.dtype)
    cx = 2 * (x0 + patch / 2) / slice_size - 1
    cy = 2 * (y0 + patch / 2) / slice_size - 1
    cos, sin = torch.cos(params.angle_rad), torch.sin(params.angle_rad)
    inv = 1.0 / params.scale
    inv_x, inv_y = (inv[:, 0], inv[:, 1]) if inv.dim() == 2 else (inv, inv)
    k = patch / slice_size
    # S^-1 R(-a), R(-a) = [[cos, sin], [-sin, cos]]: takes output offsets back to input offsets
    a11, a12, a21, a22 = cos * inv_x, sin * inv_x, -sin * inv_y, cos * inv_y
    tx = 2 * params.shift_px[:, 0] / slice_size
    ty = 2 * params.shift_px[:, 1] / slice_size
    theta = torch.stack([
        torch.stack([a11 * k, a12 * k, cx - (a11 * tx + a12 * ty)], dim=1),
        torch.stack([a21 * k, a22 * k, cy - (a21 * tx + a22 * ty)], dim=1),
    ], dim=1)
    return theta


def warp_draws(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """`--elastic`: each patch's control-point displacements [B, 2, G, G] (x, y), uniform within WARP_MAX of the
    patch's side."""
    return (2 * torch.rand(n, 2, WARP_POINTS, WARP_POINTS, generator=generator, device=device) - 1) * (2 * WARP_MAX)


def warped(grid: torch.Tensor, theta: torch.Tensor, warp: torch.Tensor) -> torch.Tensor:
    """`affine_grid`'s sampling grid [B, P, P, 2] displaced by the control points `warp` ([B, 2, G, G], in the
    patch's normalised coordinates), interpolated bicubically over the patch. The displacement is taken in the
    patch's frame, before its rotation and scale (`theta`'s linear part), so it is a fraction of the patch in
    whatever pose; a smooth field bends a structure's outline and locally thickens or thins it (the shape
    variation between patients that one scan's rigid poses never show)."""
    field = F.interpolate(warp, size=grid.shape[1:3], mode="bicubic", align_corners=True)
    return grid + torch.einsum("bij,bjhw->bhwi", theta[:, :, :2], field)


def augmented_batch(images: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor, params: AffineParams,
                    patch: int = PATCH, warp: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cut augmented patches for `rows` ([B, 3]: slice, y0, x0) from slices on their device.

    Args:
        images: slices [n, S, S], or network inputs [n, C, S, S] (2.5D: a slice and its neighbours).
        masks: one channel per structure, [n, K, S, S] (or [n, S, S] for one), any numeric type.
        warp: `--elastic`'s control-point displacements (`warp_draws`), or None for the affine transform alone.

    Returns image patches [B, C, P, P] and masks [B, K, P, P] in {0, 1}. Image and mask channels are stacked
    and sampled by one bilinear `grid_sample`, so all see the very same transform; each mask channel is then
    thresholded at 0.5 on its own (structures may overlap, and a label map's values must not be blended).
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    slice_size, channels = images.shape[-1], images.shape[1]
    idx = rows[:, 0]
    theta = patch_theta(rows[:, 1:], params, slice_size, patch)
    stacked = torch.cat([images[idx], masks[idx].to(images.dtype)], dim=1)
    grid = F.affine_grid(theta, [len(rows), stacked.shape[1], patch, patch], align_corners=False)
    if warp is not None:
        grid = warped(grid, theta, warp)
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :channels], (out[:, channels:] > 0.5).to(images.dtype)


@dataclass(frozen=True)
class IntensityConfig:
    """Bounds of the intensity changes (`--intensity`): scans differ in contrast more than in pose."""
    max_gamma: float = 1.5                     # gamma drawn log-uniformly in [1 / max, max]
    contrast_range: Tuple[float, float] = (0.75, 1.25)
    max_brightness: float = 0.1
    max_bias: float = 0.3                      # log-amplitude of a smooth (bilinear) multiplicative field
    max_noise_sd: float = 0.05


class IntensityDraws(NamedTuple):
    """One step's intensity draws: 7 uniforms per patch (gamma, contrast, brightness, bias field a, b, c, noise
    level) and the unit Gaussian noise [B, C, P, P]."""
    uniforms: torch.Tensor
    noise: torch.Tensor


def intensity_draws(n: int, channels: int, generator: torch.Generator, device: torch.device,
                    patch: int = PATCH) -> IntensityDraws:
    u = torch.rand(n, 7, generator=generator, device=device)
    return IntensityDraws(u, torch.randn((n, channels, patch, patch), generator=generator, device=device))


def apply_intensity(x: torch.Tensor, draws: IntensityDraws, cfg: IntensityConfig = IntensityConfig()) -> torch.Tensor:
    """Per patch [B, C, P, P] in [0, 1]: gamma, contrast about the patch mean, brightness, a smooth bias field
    and Gaussian noise, clipped to [0, 1]. Only the image changes, so the mask stays aligned by construction."""
    n, size, device = x.shape[0], x.shape[-1], x.device
    u = draws.uniforms
    gamma = torch.exp((2 * u[:, 0] - 1) * math.log(cfg.max_gamma)).view(n, 1, 1, 1)
    y = x.clamp(0, 1) ** gamma
    lo, hi = cfg.contrast_range
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * (lo + (hi - lo) * u[:, 1]).view(n, 1, 1, 1) + mean
    y = y + ((2 * u[:, 2] - 1) * cfg.max_brightness).view(n, 1, 1, 1)
    ramp = torch.linspace(-1, 1, size, device=device)
    a, b, c = ((2 * u[:, 3:6] - 1) * cfg.max_bias).unbind(1)
    field = (a.view(n, 1, 1) * ramp.view(1, 1, size) + b.view(n, 1, 1) * ramp.view(1, size, 1)
             + c.view(n, 1, 1) * ramp.view(1, 1, size) * ramp.view(1, size, 1))
    y = y * torch.exp(field).unsqueeze(1)
    return (y + draws.noise * (u[:, 6] * cfg.max_noise_sd).view(n, 1, 1, 1)).clamp(0, 1)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A generator per optimiser step, so a resumed run draws exactly what an uninterrupted one would."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return g


class EpochOrder:
    """One epoch = N shuffled rounds over the patch table; batches are cut from it lazily.

    Only one round's permutation (n indices) exists at a time, whatever N is, and the order depends on
    (seed, epoch) alone, so a run resumed at any step sees the batches an uninterrupted run would.
    """

    def __init__(self, n_patches: int, augment: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.augment, self.batch_size, self.seed, self.device = n_patches, augment, batch_size, seed, device
        self.steps = math.ceil(n_patches * augment / batch_size)
        self._cache = (None, None)

    def _round(self, epoch: int, r: int) -> torch.Tensor:
        if self._cache[0] != (epoch, r):
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch * 1009 + r)
            order = torch.randperm(self.n, generator=g)   # on the CPU: the same order on every device
            if self.device.type == "cuda":   # a pageable copy would wait for the GPU's queue at every round
                order = order.pin_memory()
            self._cache = ((epoch, r), order.to(self.device, non_blocking=True))
        return self._cache[1]

    def parts(self, epoch: int, k: int) -> List[Tuple[int, torch.Tensor]]:
        """Batch k of `epoch` as (round, patch indices) pieces (a batch may straddle two rounds)."""
        start = k * self.batch_size
        stop = min(start + self.batch_size, self.n * self.augment)
        parts, p = [], start
        while p < stop:
            r, offset = divmod(p, self.n)
            take = min(stop - p, self.n - offset)
            parts.append((r, self._round(epoch, r)[offset:offset + take]))
            p += take
        return parts

    def batch(self, epoch: int, k: int) -> torch.Tensor:
        """Patch indices of batch k of `epoch` (the last batch of an epoch may be short)."""
        return torch.cat([idx for _, idx in self.parts(epoch, k)])


class PoolParams:
    """The paper's fixed augmented set (`--augment-mode pool`) without storing it.

    Copy r of every patch has one transform, drawn from a generator seeded with (seed, r) and drawn
    again whenever round r comes back, so each epoch presents the same N transforms of every patch
    (the paper pre-generated N copies and reused them for 100 epochs); memory holds one round's
    parameters (n_patches x 4 numbers) at a time."""

    def __init__(self, n_patches: int, cfg: AugmentConfig, seed: int, device: torch.device):
        self.n, self.cfg, self.seed, self.device = n_patches, cfg, seed, device
        self._cache: dict = {}

    def _round(self, r: int) -> AffineParams:
        if r not in self._cache:
            g = step_generator(self.seed + POOL_SEED_OFFSET, r, self.device)
            self._cache = {r: sample_params(self.n, self.cfg, g, self.device)}
        return self._cache[r]

    def for_parts(self, parts: List[Tuple[int, torch.Tensor]]) -> AffineParams:
        chosen = [(self._round(r), idx) for r, idx in parts]
        return AffineParams(torch.cat([p.angle_rad[i] for p, i in chosen]), torch.cat([p.scale[i] for p, i in chosen]),
                            torch.cat([p.shift_px[i] for p, i in chosen]))
