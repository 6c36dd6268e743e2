"""The IoU positive-pair sampler of the IoU-positives thesis (Algorithm 1, spec ssl4ct §2.1).

IoUs are recomputed here from the crops' pixel content by rasterising both boxes, independently
of the sampler's own arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.transforms import IoUPairCropd

INTERVALS = [(0.3, 0.6), (0.0001, 0.3), (0.6, 1.0), (0.0, 0.0), (0.0, 1.0)]


def _coordinate_image(*spatial: int) -> torch.Tensor:
    """(1, *spatial) image whose value at each pixel is its flat index, so a crop reveals its box."""
    return torch.arange(int(np.prod(spatial)), dtype=torch.float64).reshape(1, *spatial)


def _start_of(crop: torch.Tensor, spatial: tuple[int, ...]) -> tuple[int, ...]:
    start = np.unravel_index(int(crop.reshape(-1)[0]), spatial)
    size = crop.shape[1]
    # The crop is the contiguous block starting there (its far corner sits size-1 further along).
    end = np.unravel_index(int(crop.reshape(-1)[-1]), spatial)
    assert all(e - s == size - 1 for s, e in zip(start, end, strict=True))
    return tuple(int(s) for s in start)


def _raster_iou(a: tuple[int, ...], b: tuple[int, ...], size: int, spatial: tuple[int, ...]) -> float:
    ma, mb = np.zeros(spatial, bool), np.zeros(spatial, bool)
    ma[tuple(slice(s, s + size) for s in a)] = True
    mb[tuple(slice(s, s + size) for s in b)] = True
    return (ma & mb).sum() / (ma | mb).sum()


@pytest.mark.parametrize(("i_min", "i_max"), INTERVALS)
def test_found_pairs_have_iou_in_the_closed_interval(i_min, i_max):
    rng = np.random.default_rng(7)
    found = 0
    for seed in range(100):
        spatial = (int(rng.integers(96, 400)), int(rng.integers(96, 400)))
        t = IoUPairCropd("img", crop_size=96, min_iou=i_min, max_iou=i_max, info_key="pair")
        out = t.set_random_state(seed=seed)({"img": _coordinate_image(*spatial)})
        assert out["img1"].shape == out["img2"].shape == (1, 96, 96)
        iou = _raster_iou(_start_of(out["img1"], spatial), _start_of(out["img2"], spatial), 96, spatial)
        in_range = i_min - 1e-12 <= iou <= i_max + 1e-12
        # A pair is reported found exactly when it satisfies the interval.
        assert out["pair"]["found"] == in_range, (seed, spatial, iou)
        assert out["pair"]["iou"] == pytest.approx(iou)
        found += in_range
    assert found >= 80  # narrow slices (near 96) cannot meet some intervals; most pairs are found


def test_three_dimensional_pairs_respect_the_interval():
    spatial = (40, 44, 36)
    for seed in range(40):
        t = IoUPairCropd("img", crop_size=16, min_iou=0.3, max_iou=0.6, spatial_dims=3, info_key="pair")
        out = t.set_random_state(seed=seed)({"img": _coordinate_image(*spatial)})
        iou = _raster_iou(_start_of(out["img1"], spatial), _start_of(out["img2"], spatial), 16, spatial)
        assert out["pair"]["found"] and 0.3 <= iou <= 0.6


def test_interval_ends_are_inclusive():
    # On a 96×97 slice two 96-crops coincide (IoU 1) or are shifted by one pixel (IoU 95/97).
    spatial = (96, 97)
    one_off = 95 / 97
    identical = IoUPairCropd("img", crop_size=96, min_iou=1.0, max_iou=1.0).set_random_state(0)
    shifted = IoUPairCropd("img", crop_size=96, min_iou=one_off, max_iou=one_off).set_random_state(0)
    disjoint = IoUPairCropd("img", crop_size=50, min_iou=0.0, max_iou=0.0).set_random_state(0)
    for _ in range(20):
        out = identical({"img": _coordinate_image(*spatial)})
        assert torch.equal(out["img1"], out["img2"]) and identical.last_pair.found
        out = shifted({"img": _coordinate_image(*spatial)})
        a, b = _start_of(out["img1"], spatial), _start_of(out["img2"], spatial)
        assert _raster_iou(a, b, 96, spatial) == pytest.approx(one_off) and shifted.last_pair.found
        out = disjoint({"img": _coordinate_image(150, 150)})
        a, b = _start_of(out["img1"], (150, 150)), _start_of(out["img2"], (150, 150))
        assert _raster_iou(a, b, 50, (150, 150)) == 0 and disjoint.last_pair.found


def test_impossible_interval_falls_back_and_is_counted_not_printed(capsys):
    # On a 96×100 slice any two 96-crops overlap by ≥ 92 %, so IoU = 0 can never be met.
    t = IoUPairCropd("img", crop_size=96, min_iou=0.0, max_iou=0.0, info_key="pair").set_random_state(3)
    for _ in range(5):
        out = t({"img": _coordinate_image(96, 100)})
        assert out["img1"].shape == out["img2"].shape == (1, 96, 96)
        assert out["pair"]["found"] is False
        assert t.last_pair.draws == 120  # r2 = 4 rounds × r1 = 30 second-crop draws
    assert (t.num_pairs, t.num_fallbacks, t.fallback_rate) == (5, 5, 1.0)
    assert t.stats == {"pairs": 5, "fallbacks": 5, "fallback_rate": 1.0}
    assert capsys.readouterr().out == ""
    t.reset_stats()
    assert t.stats["pairs"] == 0


def test_no_fallback_is_counted_when_pairs_are_found():
    t = IoUPairCropd("img", crop_size=96, min_iou=0.3, max_iou=0.6).set_random_state(1)
    for _ in range(10):
        t({"img": torch.zeros(1, 200, 200)})
    assert t.stats == {"pairs": 10, "fallbacks": 0, "fallback_rate": 0.0}


class _RecordingState:
    """A RandomState stand-in that logs every randint(low, high) range it is asked for."""

    def __init__(self, seed: int) -> None:
        self._rs = np.random.RandomState(seed)
        self.calls: list[tuple[int, int]] = []
        self.values: list[int] = []

    def randint(self, low: int, high: int) -> int:
        self.calls.append((low, high))
        self.values.append(self._rs.randint(low, high))
        return self.values[-1]


@pytest.mark.parametrize(("r1", "budget", "rounds"), [(30, 120, 4), (20, 60, 3), (30, 100, 4)])
def test_retry_scheme_resamples_the_first_crop_every_r1_draws(r1, budget, rounds):
    t = IoUPairCropd(
        "img", crop_size=96, min_iou=0.0, max_iou=0.0, max_retries_existing=r1, max_retries_total=budget
    )
    t.R = rec = _RecordingState(0)
    t({"img": torch.zeros(1, 96, 100)})
    # Each round: the first crop (2 draws over the whole image), then r1 second crops (2 draws each).
    assert len(rec.calls) == rounds * (2 + 2 * r1)
    firsts = [rec.calls[i * (2 + 2 * r1) : i * (2 + 2 * r1) + 2] for i in range(rounds)]
    assert all(f == [(0, 5), (0, 1)] for f in firsts)  # axis 1 (x) drawn before axis 0 (y)


def test_second_crop_is_drawn_near_the_first_when_min_iou_is_positive():
    t = IoUPairCropd("img", crop_size=96, min_iou=0.9, max_iou=0.95)
    t.R = rec = _RecordingState(5)
    t({"img": torch.zeros(1, 600, 700)})
    (x_low, x_high), (y_low, y_high) = rec.calls[0], rec.calls[1]
    assert (x_low, x_high, y_low, y_high) == (0, 700 - 96 + 1, 0, 600 - 96 + 1)
    first = (rec.values[1], rec.values[0])  # (y, x) of the first crop of the first round
    (sx_low, sx_high), (sy_low, sy_high) = rec.calls[2], rec.calls[3]
    assert (sy_low, sy_high) == (max(first[0] - 96, 0), min(first[0] + 96, 600 - 96) + 1)
    assert (sx_low, sx_high) == (max(first[1] - 96, 0), min(first[1] + 96, 700 - 96) + 1)


def test_same_seed_gives_same_pairs_and_other_seeds_differ():
    def pairs(seed: int) -> list:
        t = IoUPairCropd("img", crop_size=64, min_iou=0.3, max_iou=0.6).set_random_state(seed=seed)
        out = []
        for _ in range(6):
            t({"img": torch.zeros(1, 180, 170)})
            out.append((t.last_pair.start1, t.last_pair.start2))
        return out

    assert pairs(11) == pairs(11)
    assert pairs(11) != pairs(12)


def test_every_key_gets_the_same_boxes():
    img = _coordinate_image(130, 140)
    t = IoUPairCropd(["img", "label"], crop_size=96, min_iou=0.3, max_iou=0.6).set_random_state(2)
    out = t({"img": img, "label": img.clone(), "case": "FLARE22_Tr_0001"})
    assert torch.equal(out["img1"], out["label1"]) and torch.equal(out["img2"], out["label2"])
    assert "img" not in out and "label" not in out and out["case"] == "FLARE22_Tr_0001"
    kept = IoUPairCropd("img", keep_original=True)({"img": img})
    assert torch.equal(kept["img"], img)


def test_crop_larger_than_the_image_is_a_clear_error():
    t = IoUPairCropd("img", crop_size=96)
    with pytest.raises(ValueError, match=r"crop_size 96 is larger than the image: spatial shape \(80, 200\)"):
        t({"img": torch.zeros(1, 80, 200)})


def test_invalid_arguments_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="min_iou <= max_iou"):
        IoUPairCropd("img", min_iou=0.6, max_iou=0.3)
    with pytest.raises(ValueError, match="<= 1"):
        IoUPairCropd("img", min_iou=0.3, max_iou=1.5)
    with pytest.raises(ValueError, match="crop_size"):
        IoUPairCropd("img", crop_size=0)
    expected = r"channel-first image with 2 spatial dims \(3 dims\), found shape \(96, 96\)"
    with pytest.raises(ValueError, match=expected):
        IoUPairCropd("img")({"img": torch.zeros(96, 96)})
    with pytest.raises(ValueError, match="share one spatial shape"):
        IoUPairCropd(["img", "label"])({"img": torch.zeros(1, 96, 96), "label": torch.zeros(1, 100, 96)})
