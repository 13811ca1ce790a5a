"""Unit tests of the scoring core on tiny tensors."""

import ctypes
import sys

import numpy as np
import pytest
import torch

from model.method.calibration import best_f1_threshold, calibrate_on_good, far_threshold
from model.method.coreset import greedy_coreset
from model.method.features import select_dims
from model.method.fusion import LayerConcat
from model.method.gaussian import GaussianAccumulator, GaussianModel, neighbourhood_shifts
from model.jobs.host import keep_freed_memory
from model.method.memory_bank import MemoryBank
from model.method.amc import AnomalyMapCombiner, blur_matrix, gaussian_kernel1d, image_scores
from benchmarks.amc_blur import convolutions  # the reflect-padded convolutions the blur replaced
from model.runtime.verdict import find_regions, normalized_score


def test_coreset_picks_far_points_first():
    # Two tight clusters far apart plus one outlier: 3 centres must hit all three groups.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 8, generator=gen) * 0.01
    b = torch.randn(50, 8, generator=gen) * 0.01 + 10
    outlier = torch.full((1, 8), -20.0)
    x = torch.cat([a, b, outlier])
    idx = greedy_coreset(x, 3, proj_dim=8, seed=1)
    groups = {0 if i < 50 else 1 if i < 100 else 2 for i in idx.tolist()}
    assert groups == {0, 1, 2}
    assert len(set(idx.tolist())) == 3


def test_coreset_matches_naive_greedy():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    idx = greedy_coreset(x, 20, proj_dim=64, seed=5)  # proj_dim >= C: exact distances
    chosen = [int(idx[0])]
    min_d = ((x - x[chosen[0]]) ** 2).sum(1)
    for _ in range(19):
        nxt = int(min_d.argmax())
        chosen.append(nxt)
        min_d = torch.minimum(min_d, ((x - x[nxt]) ** 2).sum(1))
    assert idx.tolist() == chosen


def test_coreset_returns_everything_when_asked_for_more():
    assert greedy_coreset(torch.randn(5, 3), 10).tolist() == [0, 1, 2, 3, 4]


def test_memory_bank_nearest_distance_matches_cdist_with_small_chunks():
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(37, 6, generator=gen)
    feats = torch.randn(2, 6, 5, 7, generator=gen)
    d = MemoryBank(bank, chunk=4)(feats)
    q = feats.permute(0, 2, 3, 1).reshape(-1, 6)
    ref = torch.cdist(q, bank).min(1).values.view(2, 5, 7)
    assert d.shape == (2, 5, 7)
    assert torch.allclose(d, ref, atol=1e-4)


def test_memory_bank_zero_distance_for_bank_members():
    bank = torch.randn(10, 4)
    feats = bank[:6].T.reshape(1, 4, 2, 3)
    assert MemoryBank(bank)(feats).abs().max() < 1e-3


def test_gaussian_matches_numpy_per_position():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(40, 3, 2, 2, generator=gen) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    acc = GaussianAccumulator()
    acc.update(train[:15])
    acc.update(train[15:])  # streaming == one pass
    mean, inv = acc.finalize(reg=0.01)
    test = torch.randn(2, 3, 2, 2, generator=gen)
    got = GaussianModel(mean, inv)(test)
    x = train.flatten(2).permute(2, 0, 1).double().numpy()  # [P, N, D]
    for p in range(4):
        mu = x[p].mean(0)
        cov = np.cov(x[p], rowvar=False) + 0.01 * np.eye(3)
        for b in range(2):
            d = test[b].flatten(1)[:, p].double().numpy() - mu
            ref = np.sqrt(d @ np.linalg.inv(cov) @ d)
            assert got[b].flatten()[p].item() == pytest.approx(ref, rel=1e-4)


def test_gaussian_round_trips_through_packed_triangles():
    a = torch.randn(3, 5, 5)
    sym = a @ a.transpose(1, 2)
    model = GaussianModel(torch.zeros(3, 5), sym)
    packed = model.tensors()["inv_cov_triu"]
    assert packed.shape == (3, 15)
    assert torch.equal(GaussianModel.from_tensors(model.tensors()).inv_cov, sym)


def test_shift_tolerance_accepts_a_moved_part():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(30, 2, 8, 8, generator=gen) * 0.1
    train[:, :, 3, 3] += 5.0  # a feature that always sits at cell (3, 3)
    test = torch.randn(1, 2, 8, 8, generator=gen) * 0.1
    test[:, :, 3, 4] += 5.0  # the part moved by one cell
    dist = {}
    for r in (0, 1):
        acc = GaussianAccumulator(shift_tolerance=r)
        acc.update(train)
        dist[r] = GaussianModel(*acc.finalize(0.01))(test).max().item()
    assert dist[1] < dist[0] / 5


def test_shift_tolerance_equals_training_on_shifted_copies():
    x = torch.randn(6, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    fast = GaussianAccumulator(shift_tolerance=2)
    fast.update(x)
    explicit = GaussianAccumulator()
    for shifted in neighbourhood_shifts(x, 2):
        explicit.update(shifted)
    for a, b in zip(fast.finalize(0.01), explicit.finalize(0.01), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_neighbourhood_shifts_count_and_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    shifts = list(neighbourhood_shifts(x, 1))
    assert len(shifts) == 9 and all(s.shape == x.shape for s in shifts)
    assert torch.equal(shifts[4], x)  # the centre is the unshifted map
    assert torch.equal(shifts[0][0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 2.0]))  # replicated edge


def test_gaussian_needs_two_images():
    acc = GaussianAccumulator()
    acc.update(torch.randn(1, 2, 2, 2))
    with pytest.raises(ValueError):
        acc.finalize(0.01)


def test_layer_concat_uses_the_finest_selected_grid():
    feats = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 5, 2, 2)]
    assert LayerConcat((1, 2, 3))(feats).shape == (2, 12, 8, 8)
    assert LayerConcat((2, 3))(feats).shape == (2, 9, 4, 4)
    plain = LayerConcat((2,), pool_size=1)(feats)
    assert torch.equal(plain, feats[1])


def test_select_dims_is_seeded_and_sorted():
    a, b = select_dims(192, 100, 0), select_dims(192, 100, 0)
    assert torch.equal(a, b) and len(set(a.tolist())) == 100 and torch.all(a[1:] > a[:-1])
    assert not torch.equal(a, select_dims(192, 100, 1))
    assert torch.equal(select_dims(10, 50, 0), torch.arange(10))


def test_amc_is_product_then_smoothing():
    comb = AnomalyMapCombiner(image_size=32, sigma=0)
    a, b = torch.rand(1, 4, 4) + 0.5, torch.rand(1, 4, 4) + 0.5
    out = comb([a, b])
    up = torch.nn.functional.interpolate
    ref = up(a[:, None], size=(32, 32), mode="bilinear") * up(b[:, None], size=(32, 32), mode="bilinear")
    assert torch.allclose(out, ref[:, 0])
    smooth = AnomalyMapCombiner(image_size=32, sigma=4)([a, b])
    assert smooth.shape == (1, 32, 32)
    assert smooth.max() < out.max() and smooth.mean() == pytest.approx(out.mean().item(), rel=0.05)


@pytest.mark.parametrize("size", [64, 96])
def test_amc_blur_is_the_reflect_padded_separable_convolution(size):
    k = gaussian_kernel1d(4.0)
    m = torch.rand(3, 1, size, size)
    assert torch.allclose(AnomalyMapCombiner(size, 4.0).smooth(m), convolutions(m, k), atol=1e-6)
    assert torch.allclose(blur_matrix(size, k).sum(0), torch.ones(size))  # each output's weights sum to 1
    with pytest.raises(ValueError, match="radius 16"):
        blur_matrix(16, k)


@pytest.mark.parametrize("sigma", [0, 4])
def test_amc_upsamples_and_blurs_at_grid_resolution_as_it_would_at_full(sigma):
    comb = AnomalyMapCombiner(64, sigma)
    m, boost = torch.rand(2, 8, 12), torch.rand(2, 8, 12)
    assert torch.allclose(comb.upsample_smooth(m), comb.smooth(comb.upsample(m)), atol=1e-6)
    full = comb.smooth(comb.upsample(m)) * (1 + comb.smooth(comb.upsample(boost)))
    assert torch.allclose(comb([m], boost), full[:, 0], atol=1e-6)


def test_gaussian_kernel_is_normalised_and_sized_like_anomalib():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33 and k.sum().item() == pytest.approx(1.0)


def test_image_score_is_max():
    m = torch.zeros(2, 8, 8)
    m[0, 3, 4] = 5
    m[1, 0, 0] = 2
    assert image_scores(m).tolist() == [5.0, 2.0]


def test_normalized_score_threshold_is_half():
    assert normalized_score(10.0, 10.0, 2.0) == 0.5
    assert normalized_score(12.0, 10.0, 2.0) == 1.0
    assert normalized_score(9.0, 10.0, 2.0) == 0.25
    assert normalized_score(-100.0, 10.0, 2.0) == 0.0
    assert normalized_score(float("inf"), 10.0, 2.0) == 1.0


def test_find_regions_boxes_and_peaks():
    amap = np.zeros((20, 20), np.float32)
    amap[2:5, 3:7] = 1.0
    amap[3, 4] = 3.0
    amap[15:18, 15:16] = 2.0
    regions = find_regions(amap, amap > 0.5)
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [(3, 2, 4, 3, 12), (15, 15, 1, 3, 3)]
    assert [r.peak for r in regions] == [3.0, 2.0]


def test_far_threshold_extrapolates_above_sample_max():
    scores = np.random.default_rng(0).lognormal(1.0, 0.1, size=20)
    t = far_threshold(scores, 0.001)
    assert t > scores.max()
    assert far_threshold(scores, 0.5) < t


def test_calibration_scale_and_pixel_threshold():
    maps = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    scores = maps.reshape(4, -1).max(1)
    th = calibrate_on_good(scores, maps, 0.01, 0.01)
    assert np.mean(maps > th.pixel) == pytest.approx(0.01, abs=0.003)
    assert th.scale == pytest.approx(th.image - float(scores.min()), rel=1e-5)


def test_best_f1_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.35])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t, f1 = best_f1_threshold(scores, labels)
    assert 0.3 < t < 0.35 and f1 == 1.0 and np.array_equal(scores > t, labels == 1)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc settings")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    """After ``keep_freed_memory`` a 64 MB block (above glibc's largest mmap threshold) comes
    from the brk heap, below the program break, instead of a fresh mapping."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
    libc.malloc.argtypes, libc.sbrk.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_ssize_t], [ctypes.c_void_p]
    assert keep_freed_memory()
    block = libc.malloc(64 << 20)
    try:
        assert block and block < libc.sbrk(0)
    finally:
        libc.free(block)


def test_image_score_is_the_mean_of_the_top_fraction():
    m = torch.zeros(2, 10, 10)
    m[0, 0, :5] = torch.tensor([9.0, 4.0, 3.0, 2.0, 1.0])
    m[1, 5, 5] = 7.0
    assert image_scores(m, 0.0).tolist() == [9.0, 7.0]
    assert image_scores(m, 0.004).tolist() == [9.0, 7.0]  # under one pixel: the maximum
    assert image_scores(m, 0.03).tolist() == pytest.approx([16 / 3, 7 / 3])
