"""LeRobot's 12-bit depth quantisation: formula, inverse, resolution, and our 0 = invalid rule."""

from __future__ import annotations

import numpy as np
import pytest

from rlbench_sms.data.depth_codec import DepthQuantization, dequantize_depth, quantize_depth

LOG = DepthQuantization(0.01, 10.0, 3.5, True)
LIN = DepthQuantization(0.01, 10.0, 3.5, False)


def test_formula_matches_the_fact_sheet():
    d_mm = np.array([0, 5, 10, 300, 1000, 2500, 9999, 10000, 20000, 65535], dtype=np.uint16)
    d = d_mm / 1000.0
    lo, hi = np.log(0.01 + 3.5), np.log(10.0 + 3.5)
    want = np.clip(np.rint((np.log(np.maximum(d, 0.01) + 3.5) - lo) / (hi - lo) * 4095), 0, 4095)
    got = quantize_depth(d_mm, LOG)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    assert got[0] == 0 and got[2] == 0 and got[7] == 4095 and got[-1] == 4095


def test_linear_variant():
    d_mm = np.array([10, 5005, 10000], dtype=np.uint16)
    np.testing.assert_array_equal(quantize_depth(d_mm, LIN), [0, 2048, 4095])


@pytest.mark.parametrize("q", [LOG, LIN], ids=["log", "linear"])
def test_round_trip_within_half_a_step(q):
    rng = np.random.default_rng(0)
    d_mm = rng.integers(20, 10_000, size=(48, 64)).astype(np.uint16)
    back = dequantize_depth(quantize_depth(d_mm, q), q)
    assert back.dtype == np.uint16 and back.shape == d_mm.shape
    err_mm = np.abs(back.astype(np.int64) - d_mm.astype(np.int64))
    step_mm = np.asarray(q.step_m(d_mm / 1000.0)) * 1000.0
    # half a code of quantisation + a little for the step's variation across a code + rounding to mm
    assert np.all(err_mm <= 0.5 * step_mm * 1.01 + 0.5), err_mm.max()
    # the log scheme is fine up close and coarse far away
    if q.use_log:
        assert 1.1 < float(q.step_m(0.3)) * 1000 < 1.4 and 4.0 < float(q.step_m(10.0)) * 1000 < 4.6


def test_quantize_dequantize_is_idempotent():
    codes = np.arange(4096, dtype=np.uint16)
    mm = dequantize_depth(codes, LOG)
    # every code except 0 survives a second trip (codes are coarser than 1 mm everywhere)
    np.testing.assert_array_equal(quantize_depth(mm, LOG)[1:], codes[1:])


def test_code_zero_is_invalid_not_depth_min():
    codes = np.array([0, 1, 4095], dtype=np.uint16)
    mm = dequantize_depth(codes, LOG)
    assert mm[0] == 0            # LeRobot would return depth_min (10 mm) here
    assert 10 <= mm[1] <= 12 and mm[2] == 10_000
    zeros = np.zeros((4, 4), dtype=np.uint16)
    np.testing.assert_array_equal(dequantize_depth(quantize_depth(zeros, LOG), LOG), zeros)


def test_codes_out_of_range_rejected():
    with pytest.raises(ValueError, match="4095"):
        dequantize_depth(np.array([4096], dtype=np.uint16), LOG)


def test_from_feature_info():
    lerobot = {"is_depth_map": True, "video.codec": "hevc", "video.pix_fmt": "gray12le",
               "video.depth_min": 0.1, "video.depth_max": 4.0, "video.shift": 1.0, "video.use_log": False}
    assert DepthQuantization.from_feature_info(lerobot) == DepthQuantization(0.1, 4.0, 1.0, False)
    legacy = {"video.is_depth_map": True, "video.pix_fmt": "gray12le"}
    assert DepthQuantization.from_feature_info(legacy) == DepthQuantization()
    ours = {"is_depth_map": True, "video.codec": "ffv1", "video.pix_fmt": "gray16le"}
    assert DepthQuantization.from_feature_info(ours) is None
    rgb = {"is_depth_map": False, "video.pix_fmt": "yuv420p"}
    assert DepthQuantization.from_feature_info(rgb) is None
    assert DepthQuantization.from_feature_info(None) is None


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        DepthQuantization(1.0, 0.5, 3.5, True)
