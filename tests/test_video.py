"""Video encode/decode/concat/probe: fidelity, exact depth, exact timestamps, random access, forks."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from rlbench_sms.data.depth_codec import DepthQuantization, dequantize_depth, quantize_depth
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.video import (DepthEncoderConfig, VideoDecoder, VideoEncoder, VideoEncoderConfig,
                                    concatenate_videos, decode_all, frame_times, probe_video,
                                    truncate_video)

H, W, FPS = 48, 64, 30

AV1 = VideoEncoderConfig()
H264 = VideoEncoderConfig(vcodec="h264", crf=23)
FFV1 = DepthEncoderConfig()
HEVC = DepthEncoderConfig(vcodec="hevc", g=2)
# what LeRobot's x265 defaults produce: B-frames and open GOPs, packets out of presentation order
HEVC_BFRAMES = DepthEncoderConfig(vcodec="hevc", g=2, extra_options={"x265-params": "bframes=4:open-gop=1"})


def rgb_frames(n: int, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Camera-like: gradient, texture, a moving square and sigma=3 noise; (n, h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        img = np.stack([60 + 2 * xx, 50 + 3 * yy, 128 + 40 * np.sin(xx / 5 + yy / 7)], axis=-1)
        x0 = (4 * i + 8 * seed) % (w - 12)
        img[10:22, x0:x0 + 12] = (220, 40, 30)
        out[i] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return out


def depth_frames(n: int, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Tilted plane 600..900 mm with ~1-2 mm noise, holes (0) and the extreme 65535; (n, h, w)."""
    rng = np.random.default_rng(seed)
    yy, _ = np.mgrid[:h, :w]
    out = np.empty((n, h, w), dtype=np.uint16)
    for i in range(n):
        d = 600 + 300 * yy / h + 10 * i + rng.normal(0, 1.5, (h, w))
        d = np.clip(np.rint(d), 1, 65534).astype(np.uint16)
        d[rng.random((h, w)) < 0.05] = 0
        d[0, : 3 + i] = 65535
        out[i] = d
    return out


def encode(path: Path, frames: np.ndarray, config, fps: int = FPS) -> dict:
    with VideoEncoder(path, fps, config) as enc:
        for f in frames:
            enc.add(f)
        assert enc.num_frames == len(frames)
    return enc.close()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,floor_db", [(AV1, 26.0), (H264, 30.0)], ids=["av1", "h264"])
def test_rgb_round_trip(tmp_path, config, floor_db):
    frames = rgb_frames(8)
    info = encode(tmp_path / "rgb.mp4", frames, config)
    out = decode_all(tmp_path / "rgb.mp4")
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert psnr(out, frames) > floor_db
    assert info["video.codec"] == ("av1" if config is AV1 else "h264")
    assert info["video.height"] == H and info["video.width"] == W and info["video.fps"] == FPS
    assert info["video.channels"] == 3 and info["video.pix_fmt"] == "yuv420p"
    assert info["has_audio"] is False and info["is_depth_map"] is False
    assert info["video.g"] == 2 and info["video.crf"] == config.crf
    assert {"video.preset", "video.fast_decode", "video.extra_options"} <= info.keys()


def test_ffv1_depth_is_bit_exact(tmp_path):
    frames = depth_frames(6)
    frames[2] = 0                                   # a wholly invalid frame
    frames[3, :, :] = 65535
    info = encode(tmp_path / "d.mp4", frames[..., None], FFV1)      # (H, W, 1) accepted
    out = decode_all(tmp_path / "d.mp4")
    assert out.dtype == np.uint16 and out.shape == frames.shape
    np.testing.assert_array_equal(out, frames)
    assert info["video.codec"] == "ffv1" and info["video.pix_fmt"] == "gray16le"
    assert info["is_depth_map"] is True and info["video.channels"] == 1
    assert "video.depth_min" not in info          # not quantised
    assert DepthQuantization.from_feature_info(info) is None


@pytest.mark.parametrize("config", [HEVC, HEVC_BFRAMES], ids=["hevc", "hevc-bframes"])
def test_lerobot_hevc_depth(tmp_path, config):
    frames = depth_frames(6)
    frames[frames == 65535] = 12_000                # beyond depth_max: clipped to 10 m
    info = encode(tmp_path / "d.mp4", frames, config)
    q = DepthQuantization.from_feature_info(info)
    assert q == DepthQuantization(0.01, 10.0, 3.5, True)
    assert info["video.codec"] == "hevc" and info["video.pix_fmt"] == "gray12le"
    # the codec is lossless: decoding gives back exactly the quantised depth
    out = decode_all(tmp_path / "d.mp4", q)
    np.testing.assert_array_equal(out, dequantize_depth(quantize_depth(frames, q), q))
    # raw codes when no quantisation is given
    codes = decode_all(tmp_path / "d.mp4")
    np.testing.assert_array_equal(codes, quantize_depth(frames, q))
    # error vs the original: within half a 12-bit step (plus mm rounding); holes stay 0
    valid = frames > 0
    clipped = np.minimum(frames, 10_000).astype(np.int64)
    err = np.abs(out.astype(np.int64) - clipped)[valid]
    step_mm = np.asarray(q.step_m(clipped[valid] / 1000.0)) * 1000.0
    assert np.all(err <= 0.5 * step_mm + 0.51)
    assert np.all(out[~valid] == 0)


def test_frame_checks(tmp_path):
    enc = VideoEncoder(tmp_path / "x.mp4", FPS, AV1)
    enc.add(rgb_frames(1)[0])
    with pytest.raises(ValueError, match=r"32x64.*48x64"):
        enc.add(np.zeros((32, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        enc.add(np.zeros((H, W, 3), np.float32))
    enc.close()
    with pytest.raises(ValueError, match="uint16"):
        VideoEncoder(tmp_path / "y.mp4", FPS, FFV1).add(np.zeros((H, W), np.int32))
    with pytest.raises(ValueError, match="no frames"):
        VideoEncoder(tmp_path / "z.mp4", FPS, FFV1).close()


def test_svt_banner_is_silenced(tmp_path, capfd):
    encode(tmp_path / "quiet.mp4", rgb_frames(2), AV1)
    assert "Svt[info]" not in capfd.readouterr().err


def test_aborted_encoder_leaves_no_file(tmp_path):
    path = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError):
        with VideoEncoder(path, FPS, FFV1) as enc:
            enc.add(depth_frames(1)[0])
            raise RuntimeError("camera died")
    assert not path.exists()


def test_config_choices():
    assert H264.preset is None                     # SVT's preset 12 means nothing to x264
    assert VideoEncoderConfig(vcodec="h264", preset="ultrafast").codec_options()["preset"] == "ultrafast"
    assert "fast-decode=1" in VideoEncoderConfig(fast_decode=1).codec_options()["svtav1-params"]
    assert HEVC.pix_fmt == "gray12le"
    assert "lossless=1" in HEVC.codec_options()["x265-params"]
    with pytest.raises(ValueError):
        VideoEncoderConfig(vcodec="mpeg2")
    with pytest.raises(ValueError):
        DepthEncoderConfig(vcodec="hevc", pix_fmt="gray10le")


# ---------------------------------------------------------------------------------------------
# timestamps and random access
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """One file per codec: (path, frames, quantization), 12 frames at 30 fps."""
    root = tmp_path_factory.mktemp("videos")
    out = {}
    for name, config in [("av1", AV1), ("h264", H264), ("ffv1", FFV1), ("hevc", HEVC),
                         ("hevc-bframes", HEVC_BFRAMES)]:
        frames = rgb_frames(12) if not config.is_depth else depth_frames(12)
        info = encode(root / f"{name}.mp4", frames, config)
        out[name] = (root / f"{name}.mp4", frames, DepthQuantization.from_feature_info(info))
    return out


CODECS = ["av1", "h264", "ffv1", "hevc", "hevc-bframes"]


@pytest.mark.parametrize("fps", [30, 7, 15])
def test_timestamps_are_exact(tmp_path, fps):
    encode(tmp_path / "v.mp4", depth_frames(9), FFV1, fps=fps)
    times = frame_times(tmp_path / "v.mp4")
    np.testing.assert_allclose(times, np.arange(9) / fps, rtol=0, atol=1e-6)
    probe = probe_video(tmp_path / "v.mp4")
    assert probe.num_frames == 9 and probe.fps == fps
    assert abs(probe.duration_s - 9 / fps) < 1e-6
    # every frame is found at i/fps with a tolerance far tighter than LeRobot's 1e-4 s
    dec = VideoDecoder(tmp_path / "v.mp4")
    dec.frames_at(np.arange(9) / fps, tolerance_s=1e-6)
    dec.close()


@pytest.mark.parametrize("name", CODECS)
def test_random_access_equals_sequential(videos, name):
    path, _, q = videos[name]
    everything = decode_all(path, q)
    n = len(everything)
    ts = np.arange(n) / FPS
    dec = VideoDecoder(path, q)
    sequential = np.stack([dec.frames_at([t])[0] for t in ts])
    np.testing.assert_array_equal(sequential, everything)
    rng = np.random.default_rng(1)
    for _ in range(3):
        order = rng.permutation(n)
        fresh = VideoDecoder(path, q)
        got = np.stack([fresh.frames_at([ts[i]])[0] for i in order])
        np.testing.assert_array_equal(got, everything[order])
        fresh.close()
    # several at once, unsorted and repeated; the order asked is the order returned
    idx = [7, 2, 2, 11, 0, 5]
    np.testing.assert_array_equal(dec.frames_at(ts[idx]), everything[idx])
    # backwards by one frame after reading forward (needs a seek)
    np.testing.assert_array_equal(dec.frames_at([ts[10]]), everything[[10]])
    np.testing.assert_array_equal(dec.frames_at([ts[9]]), everything[[9]])
    dec.close()


def test_output_shapes_and_values(videos):
    path, frames, _ = videos["ffv1"]
    dec = VideoDecoder(path)
    out = dec.frames_at([0.0, 3 / FPS])
    assert out.shape == (2, H, W) and out.dtype == np.uint16
    np.testing.assert_array_equal(out, frames[[0, 3]])
    assert dec.frames_at([]).shape == (0, H, W)
    rgb = VideoDecoder(videos["av1"][0]).frames_at([1 / FPS])
    assert rgb.shape == (1, H, W, 3) and rgb.dtype == np.uint8
    # a request between frames within tolerance takes the nearest one
    np.testing.assert_array_equal(dec.frames_at([3 / FPS + 4e-5]), frames[[3]])
    np.testing.assert_array_equal(dec.frames_at([4 / FPS - 4e-5]), frames[[4]])


def test_tolerance_violation_names_file(videos):
    path, _, _ = videos["av1"]
    dec = VideoDecoder(path)
    with pytest.raises(DatasetError) as err:
        dec.frames_at([0.5 / FPS])
    msg = str(err.value)
    assert str(path) in msg and "timestamp" in msg and "no frame within 0.0001s of" in msg
    assert "nearest" in msg and "\n" not in msg
    with pytest.raises(DatasetError, match="nearest 0.36666"):
        dec.frames_at([100.0])                    # past the end
    # the decoder is still usable afterwards
    assert dec.frames_at([2 / FPS]).shape == (1, H, W, 3)


def test_decoder_of_missing_file_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="missing.mp4: video: file not found"):
        VideoDecoder(tmp_path / "missing.mp4").frames_at([0.0])


# ---------------------------------------------------------------------------------------------
# concatenation, truncation, probe
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["av1", "h264", "ffv1", "hevc", "hevc-bframes"])
def test_concatenate_three(tmp_path, name):
    config = {"av1": AV1, "h264": H264, "ffv1": FFV1, "hevc": HEVC, "hevc-bframes": HEVC_BFRAMES}[name]
    lengths = [5, 7, 4]
    parts = []
    for k, n in enumerate(lengths):
        frames = depth_frames(n, seed=k) if config.is_depth else rgb_frames(n, seed=k)
        info = encode(tmp_path / f"ep{k}.mp4", frames, config)
        parts.append(tmp_path / f"ep{k}.mp4")
    q = DepthQuantization.from_feature_info(info)
    decoded = [decode_all(p, q) for p in parts]
    out = tmp_path / "file-000.mp4"
    starts = concatenate_videos(parts, out)
    assert starts == [0.0, 5 / FPS, 12 / FPS]
    probe = probe_video(out)
    assert probe.num_frames == 16 and probe.codec == info["video.codec"]
    assert abs(probe.duration_s - 16 / FPS) < 1e-6
    np.testing.assert_allclose(frame_times(out), np.arange(16) / FPS, rtol=0, atol=1e-6)
    dec = VideoDecoder(out, q)
    for k, start in enumerate(starts):
        ts = start + np.arange(lengths[k]) / FPS
        np.testing.assert_array_equal(dec.frames_at(ts, tolerance_s=1e-6), decoded[k])
    # random access across episode boundaries
    np.testing.assert_array_equal(dec.frames_at([starts[2], starts[1] + 6 / FPS, 0.0]),
                                  np.stack([decoded[2][0], decoded[1][6], decoded[0][0]]))
    dec.close()


def test_append_in_place_and_truncate(tmp_path):
    a, b = depth_frames(4, seed=1), depth_frames(3, seed=2)
    encode(tmp_path / "file.mp4", a, FFV1)
    encode(tmp_path / "ep.mp4", b, FFV1)
    starts = concatenate_videos([tmp_path / "file.mp4", tmp_path / "ep.mp4"], tmp_path / "file.mp4")
    assert starts == [0.0, 4 / FPS]
    np.testing.assert_array_equal(decode_all(tmp_path / "file.mp4"), np.concatenate([a, b]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    truncate_video(tmp_path / "file.mp4", 4, tmp_path / "cut.tmp")
    np.testing.assert_array_equal(decode_all(tmp_path / "cut.tmp"), a)
    assert probe_video(tmp_path / "cut.tmp").num_frames == 4


def test_concatenate_refuses_mismatch(tmp_path):
    encode(tmp_path / "a.mp4", depth_frames(2), FFV1)
    encode(tmp_path / "b.mp4", depth_frames(2, h=32), FFV1)
    encode(tmp_path / "c.mp4", depth_frames(2), FFV1, fps=15)
    with pytest.raises(ValueError, match="height"):
        concatenate_videos([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="fps"):
        concatenate_videos([tmp_path / "a.mp4", tmp_path / "c.mp4"], tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()


def test_probe(videos):
    path, frames, _ = videos["av1"]
    p = probe_video(path)
    assert (p.num_frames, p.width, p.height, p.codec, p.pix_fmt) == (12, W, H, "av1", "yuv420p")
    assert p.fps == 30.0 and p.time_base.numerator == 1 and p.time_base.denominator % FPS == 0


def test_probe_missing_and_truncated(tmp_path, videos):
    with pytest.raises(DatasetError, match="nope.mp4: video: file not found"):
        probe_video(tmp_path / "nope.mp4")
    for name in ("av1", "ffv1"):
        data = videos[name][0].read_bytes()
        cut = tmp_path / f"cut-{name}.mp4"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(DatasetError) as err:
            probe_video(cut)
        assert str(cut) in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(DatasetError):
            decode_all(cut)
        with pytest.raises(DatasetError, match=f"cut-{name}.mp4"):
            VideoDecoder(cut).frames_at([11 / FPS])
    tiny = tmp_path / "tiny.mp4"
    tiny.write_bytes(videos["av1"][0].read_bytes()[:64])
    with pytest.raises(DatasetError, match="tiny.mp4: video"):
        probe_video(tiny)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    with pytest.raises(DatasetError, match="junk.mp4: video"):
        probe_video(junk)


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

def _child_reads(dec: VideoDecoder, times: list[float], conn) -> None:
    try:
        conn.send(("ok", dec.frames_at(times)))
    except BaseException as e:       # report anything to the parent instead of dying silently
        conn.send(("error", repr(e)))
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["av1", "ffv1"])
def test_decoder_survives_fork(videos, name):
    path, _, q = videos[name]
    everything = decode_all(path, q)
    dec = VideoDecoder(path, q)
    np.testing.assert_array_equal(dec.frames_at([0.0, 1 / FPS]), everything[:2])   # opened here
    ctx = mp.get_context("fork")
    want = [9 / FPS, 3 / FPS, 4 / FPS]
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_reads, args=(dec, want, child_conn))
    proc.start()
    child_conn.close()
    assert parent_conn.poll(60), "the forked child never answered (deadlocked after fork?)"
    status, got = parent_conn.recv()
    proc.join(timeout=30)
    assert status == "ok", got
    np.testing.assert_array_equal(got, everything[[9, 3, 4]])
    # the parent's sequential position was not disturbed by the child
    np.testing.assert_array_equal(dec.frames_at([2 / FPS]), everything[[2]])
    dec.close()


def test_decoder_pickles_without_its_container(videos):
    import pickle

    path, frames, _ = videos["ffv1"]
    dec = VideoDecoder(path)
    dec.frames_at([0.0])
    clone = pickle.loads(pickle.dumps(dec))
    np.testing.assert_array_equal(clone.frames_at([5 / FPS]), frames[[5]])
