from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from extremeaug.training.augment import (WARP_MAX, WARP_POINTS, AffineParams, AugmentConfig, IntensityConfig,
                                         apply_intensity, augmented_batch, intensity_draws, patch_corners, patch_table,
                                         sample_params, step_generator)
from extremeaug.training.step import Draws

CPU = torch.device("cpu")


def blobs(n=4, size=256, seed=0):
    """Slices with random bright discs (masks) on a smooth ramp (images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.float32)
    for s in range(n):
        for _ in range(6):
            cy, cx, r = rng.uniform(40, size - 40, 2).tolist() + [rng.uniform(8, 20)]
            masks[s][(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = 1
    images = 0.3 * masks + (xx / size)[None] * 0.5 + 0.1
    return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(masks)


def test_stride_grid():
    assert patch_corners(256) == [(y, x) for y in (0, 64, 128) for x in (0, 64, 128)]
    assert patch_table(2, 256).shape == (18, 3)


def test_parameters_within_bounds_and_seeded():
    cfg = AugmentConfig()
    p = sample_params(20000, cfg, step_generator(3, 7, CPU), CPU)
    deg = torch.rad2deg(p.angle_rad)
    assert deg.abs().max() <= 20 and deg.abs().max() > 19.5
    assert p.scale.min() >= 0.8 and p.scale.max() <= 1.2 and p.scale.max() > 1.19
    assert p.shift_px.abs().max() <= 50 and p.shift_px.abs().max() > 49.5
    q = sample_params(20000, cfg, step_generator(3, 7, CPU), CPU)
    assert torch.equal(p.angle_rad, q.angle_rad)
    r = sample_params(20000, cfg, step_generator(3, 8, CPU), CPU)
    assert not torch.equal(p.angle_rad, r.angle_rad)


def test_mask_gets_the_same_transform_as_the_image():
    """The image here IS the mask, so a correctly shared transform gives identical patches."""
    _, masks = blobs()
    rows = patch_table(4, 256)
    params = sample_params(len(rows), AugmentConfig(), step_generator(0, 0, CPU), CPU)
    img, msk = augmented_batch(masks, masks, rows, params)
    assert torch.equal((img > 0.5).float(), msk)
    assert msk.sum() > 0


def test_intensity_jitter_keeps_every_edge_on_the_mask_boundary():
    """Without noise, a pixel just inside a mask edge stays brighter than its neighbour just outside (all but a
    few where interpolation left the two nearly equal), while the intensities do change: the edge the network
    sees stays where the mask says it is (a shift of one pixel breaks about half of the pairs)."""
    images, masks = blobs()
    rows = patch_table(4, 256)
    params = sample_params(len(rows), AugmentConfig(), step_generator(0, 0, CPU), CPU)
    img, msk = augmented_batch(0.2 + 0.6 * masks, masks, rows, params)
    jittered = apply_intensity(img, intensity_draws(len(img), 1, step_generator(0, 1, CPU), CPU),
                               IntensityConfig(max_noise_sd=0.0))
    assert (jittered - img).abs().mean() > 0.02 and 0 <= jittered.min() and jittered.max() <= 1
    inside, outside = msk[..., :, 1:] > msk[..., :, :-1], msk[..., :, 1:] < msk[..., :, :-1]   # edges along x
    right, left = jittered[..., :, 1:], jittered[..., :, :-1]
    assert inside.sum() > 1000 and outside.sum() > 1000
    kept = torch.cat([right[inside] > left[inside], right[outside] < left[outside]]).float().mean()
    assert kept > 0.995


def test_intensity_changes_only_the_image_and_draws_after_the_geometry():
    """`--intensity` draws from the step's generator after the transforms, so a step's patches and transforms are
    the same with or without it (the geometric draws a seed gives do not move)."""
    images, masks = blobs()
    rows = patch_table(4, 256)
    plain, jittered = (Draws.draw(rows, 7, 3, AugmentConfig(), intensity, slice(None), 1)
                       for intensity in (False, True))
    assert torch.equal(plain.params.angle_rad, jittered.params.angle_rad) and torch.equal(plain.rows, jittered.rows)
    assert plain.intensity is None and jittered.intensity.noise.shape == (len(rows), 1, 128, 128)
    img, msk = augmented_batch(images, masks, rows, jittered.params)
    changed = apply_intensity(img, jittered.intensity)
    assert not torch.allclose(changed, img) and 0 <= changed.min() and changed.max() <= 1


@pytest.mark.parametrize("angle_deg,scale", [(0.0, 1.0), (0.0, 2.0), (30.0, 0.8)])
def test_an_even_elastic_warp_is_a_shift_in_the_patchs_frame(angle_deg, scale):
    """A warp of m patch pixels at every control point moves the content as the shift of -m does, whatever the pose:
    the displacement is in the patch's frame and pixels, like the shift (a wrong frame or unit moves it elsewhere)."""
    images, masks = blobs()
    rows, m = torch.tensor([[0, 64, 64], [1, 64, 64]]), 3.0
    rigid = AffineParams(torch.full((2,), math.radians(angle_deg)), torch.full((2,), scale), torch.zeros(2, 2))
    warp = torch.zeros(2, 2, WARP_POINTS, WARP_POINTS)
    warp[:, 0] = 2 * m / 128
    shifted = AffineParams(rigid.angle_rad, rigid.scale, torch.tensor([[-m, 0.0]] * 2))
    img, msk = augmented_batch(images, masks, rows, rigid, warp=warp)
    ref, ref_msk = augmented_batch(images, masks, rows, shifted)
    assert torch.allclose(img, ref, atol=1e-5) and torch.equal(msk, ref_msk)
    assert not torch.allclose(img, augmented_batch(images, masks, rows, rigid)[0], atol=1e-3)


def test_elastic_draws_come_last_stay_within_bounds_and_bend_image_and_mask_alike():
    """`--elastic` draws after the transforms and intensity changes (a step's other draws do not move), each
    control point within WARP_MAX of the patch; image and mask are bent by the one grid, and the bend is smooth:
    a structure's outline moves by at most about WARP_MAX of the patch, not by noise."""
    _, masks = blobs()
    rows = patch_table(4, 256)
    plain, bent = (Draws.draw(rows, 7, 3, AugmentConfig(elastic=e), True, slice(None), 1) for e in (False, True))
    assert plain.warp is None and bent.warp.shape == (len(rows), 2, WARP_POINTS, WARP_POINTS)
    assert torch.equal(plain.params.angle_rad, bent.params.angle_rad)
    assert torch.equal(plain.intensity.noise, bent.intensity.noise)
    assert bent.warp.abs().max() <= 2 * WARP_MAX and bent.warp.abs().max() > 1.9 * WARP_MAX
    img, msk = augmented_batch(masks, masks, rows, bent.params, warp=bent.warp)
    rigid = augmented_batch(masks, masks, rows, bent.params)[1]
    assert torch.equal((img > 0.5).float(), msk) and not torch.equal(msk, rigid)
    assert 0.9 < msk.sum() / rigid.sum() < 1.1
    moved = (msk != rigid).float().sum() / (rigid[..., 1:, :] != rigid[..., :-1, :]).float().sum()
    assert moved < WARP_MAX * 128 * 1.2 / 0.8   # changed pixels per edge pixel: the outline moves a few pixels


def test_identity_is_a_plain_crop():
    images, masks = blobs()
    rows = patch_table(4, 256)
    params = sample_params(len(rows), AugmentConfig(enabled=False), step_generator(0, 0, CPU), CPU)
    img, msk = augmented_batch(images, masks, rows, params)
    for k, (s, y, x) in enumerate(rows.tolist()):
        assert torch.allclose(img[k, 0], images[s, y:y + 128, x:x + 128], atol=1e-5)
        assert torch.equal(msk[k, 0], masks[s, y:y + 128, x:x + 128])


def test_scale_each_axis_draws_a_second_independent_scale_and_leaves_the_other_draws_as_they_were():
    one, each = (sample_params(20000, AugmentConfig(scale_each_axis=e), step_generator(3, 7, CPU), CPU)
                 for e in (False, True))
    assert one.scale.shape == (20000,) and each.scale.shape == (20000, 2)
    assert torch.equal(each.scale[:, 0], one.scale) and torch.equal(each.angle_rad, one.angle_rad)
    assert torch.equal(each.shift_px, one.shift_px)
    y = each.scale[:, 1]
    assert y.min() >= 0.8 and y.max() <= 1.2 and y.max() > 1.19
    assert abs(np.corrcoef(each.scale[:, 0].numpy(), y.numpy())[0, 1]) < 0.03
    aspect = each.scale[:, 1] / each.scale[:, 0]
    assert aspect.max() > 1.45 and aspect.min() < 1 / 1.45   # one scale keeps every structure's proportions


def test_scale_range_bounds_the_drawn_scales_and_leaves_the_other_draws_as_they_were():
    paper, wide = (sample_params(20000, AugmentConfig(scale_range=r), step_generator(3, 7, CPU), CPU)
                   for r in ((0.8, 1.2), (0.7, 1.4)))
    assert paper.scale.min() >= 0.8 and paper.scale.max() <= 1.2
    assert wide.scale.min() >= 0.7 and wide.scale.max() <= 1.4 and wide.scale.min() < 0.71 and wide.scale.max() > 1.39
    assert torch.equal(wide.angle_rad, paper.angle_rad) and torch.equal(wide.shift_px, paper.shift_px)


@pytest.mark.parametrize("seed,each", [(0, False), (1, False), (2, False), (3, True), (4, True)])
def test_matches_simpleitk_resampling(seed, each):
    """An independent implementation of the documented transform (SimpleITK, nearest) agrees, with one scale for
    both axes and with one per axis."""
    _, masks = blobs(1, seed=seed)
    g = step_generator(seed, 0, CPU)
    params = sample_params(1, AugmentConfig(scale_each_axis=each), g, CPU)
    y0, x0 = 64, 64
    _, msk = augmented_batch(masks, masks, torch.tensor([[0, y0, x0]]), params)
    a, s = float(params.angle_rad[0]), params.scale[0].expand(2).numpy().astype(float)
    assert (s[0] != s[1]) == each
    tx, ty = params.shift_px[0].tolist()
    # output pixel q (x, y) shows input point c + S^-1 R(-a) (q + corner - c - t), c = patch centre, S = diag(sx, sy)
    c = np.array([x0 + 63.5, y0 + 63.5])
    rot = np.diag(1 / s) @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    transform = sitk.AffineTransform(2)
    transform.SetMatrix(rot.ravel().tolist())
    transform.SetCenter((0.0, 0.0))
    transform.SetTranslation((c - rot @ (c + np.array([tx, ty]))).tolist())
    reference = sitk.Image(128, 128, sitk.sitkFloat32)
    reference.SetOrigin((x0, y0))
    expected = sitk.GetArrayFromImage(sitk.Resample(sitk.GetImageFromArray(masks[0].numpy()), reference, transform,
                                                    sitk.sitkNearestNeighbor, 0.0))
    got = msk[0, 0].numpy()
    agreement = (got == expected).mean()
    assert expected.sum() > 0 or got.sum() == 0
    assert agreement > 0.995, agreement


PEAK_SCRIPT = """
import resource, sys, torch
from extremeaug.training.augment import AugmentConfig, EpochOrder, augmented_batch, patch_table, sample_params, step_generator
torch.set_num_threads(1)
n, size, augment = 4, 256, int(sys.argv[1])
images, masks = torch.rand(n, size, size), (torch.rand(n, size, size) > 0.9).float()
patches = patch_table(n, size)
order = EpochOrder(len(patches), augment, 16, 0, torch.device("cpu"))
seen = 0
for k in range(order.steps):
    rows = patches[order.batch(0, k)]
    params = sample_params(len(rows), AugmentConfig(), step_generator(0, k, torch.device("cpu")), torch.device("cpu"))
    augmented_batch(images, masks, rows, params)
    seen += len(rows)
assert seen == len(patches) * augment, seen
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(augment: int) -> int:
    """Peak resident memory of a process that draws a whole epoch of augmented batches."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(augment)], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


def test_memory_flat_in_augmentation_level():
    # 36 patches: a stored 50x copy would be 1800 patches x 2 x 64 KiB = 225 MiB more than at 5x
    p5, p50 = _peak_rss_kib(5), _peak_rss_kib(50)
    assert p50 - p5 < 20 * 1024, (p5, p50)


def test_epoch_order_covers_every_patch_n_times():
    from extremeaug.training.augment import EpochOrder

    order = EpochOrder(37, 7, 16, 0, CPU)
    seen = torch.cat([order.batch(2, k) for k in range(order.steps)])
    assert torch.equal(torch.bincount(seen, minlength=37), torch.full((37,), 7))
    again = EpochOrder(37, 7, 16, 0, CPU)
    assert torch.equal(again.batch(2, 5), order.batch(2, 5))
    assert not torch.equal(order.batch(3, 0), order.batch(2, 0))


def _transforms_seen(order, pool, epoch):
    """{(patch, copy): angle} over one epoch; pool=None draws fresh per-step parameters."""
    from extremeaug.training.augment import AugmentConfig, sample_params, step_generator

    seen = {}
    for k in range(order.steps):
        parts = order.parts(epoch, k)
        idx = torch.cat([i for _, i in parts])
        copies = torch.cat([torch.full((len(i),), r) for r, i in parts])
        params = pool.for_parts(parts) if pool else sample_params(
            len(idx), AugmentConfig(), step_generator(0, epoch * order.steps + k, CPU), CPU)
        for p, r, a in zip(idx.tolist(), copies.tolist(), params.angle_rad.tolist()):
            seen[(p, r)] = a
    return seen


def test_pool_mode_reuses_n_fixed_transforms_per_patch():
    from extremeaug.training.augment import AugmentConfig, EpochOrder, PoolParams

    order, pool = EpochOrder(23, 4, 8, 0, CPU), PoolParams(23, AugmentConfig(), 0, CPU)
    first, second = _transforms_seen(order, pool, 0), _transforms_seen(order, pool, 1)
    assert len(first) == 23 * 4 and first == second            # the same N copies, every epoch
    assert all(len({first[(p, r)] for r in range(4)}) == 4 for p in range(23))   # N distinct ones per patch
    fresh0, fresh1 = _transforms_seen(order, None, 0), _transforms_seen(order, None, 1)
    assert len(set(fresh0.values()) & set(fresh1.values())) == 0   # fresh: never the same transform twice
