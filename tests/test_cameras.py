"""Cameras without cameras: the OpenCV camera's thread fed by an injected frame source (and by a
real ``cv2.VideoCapture`` on a file), the RealSense camera fed by an ``rs.software_device``
(alignment, depth scale -> mm, intrinsics, synchronisation, stalls), and find_cameras."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from optional_deps import import_or_skip_native
from rlbench_sms.features import depth_key, image_key, rgb_feature
from rlbench_sms.hardware.contracts import DeviceNotConnectedError, HardwareError
from rlbench_sms.hardware.opencv_camera import OpenCVCamera, OpenCVCameraConfig
from rlbench_sms.hardware.realsense import RealSenseCamera, RealSenseCameraConfig, depth_to_mm
from rlbench_sms.hardware.sim.opencv_camera import SyntheticFrameSource
from rlbench_sms.tools import find_cameras

W, H = 64, 48


# -- OpenCV, injected source ---------------------------------------------------------------------
def opencv_camera(fps: float = 100.0, **cfg) -> tuple[OpenCVCamera, SyntheticFrameSource]:
    source = SyntheticFrameSource(W, H, fps=fps, poll_s=0.02)
    config = OpenCVCameraConfig(index_or_path=7, width=W, height=H, fps=int(fps),
                                warmup_s=cfg.pop("warmup_s", 0.0), **cfg)
    return OpenCVCamera(config, source=source), source


def frame_number(color: np.ndarray) -> int:
    # The source writes n mod 256 into BGR's blue channel: RGB channel 2 after conversion.
    return int(color[0, 0, 2])


def test_opencv_features_need_no_hardware_and_read_needs_connect():
    cam = OpenCVCamera(OpenCVCameraConfig(index_or_path="3", width=320, height=240))
    assert cam.config.index_or_path == 3
    assert cam.features("wrist") == [rgb_feature("wrist", 240, 320)]
    assert not cam.is_connected
    with pytest.raises(DeviceNotConnectedError):
        cam.read(0.1)
    with pytest.raises(ValueError):
        OpenCVCameraConfig(color_mode="hsv")


def test_opencv_reads_newest_frame_in_rgb_with_monotonic_timestamps():
    cam, source = opencv_camera()
    with cam:
        assert cam.is_connected and source.opened
        first = cam.read(1.0)
        assert first.color.shape == (H, W, 3) and first.color.dtype == np.uint8
        assert first.depth is None
        assert np.all(first.color[..., 0] == 200)          # BGR red (channel 2) -> RGB channel 0
        time.sleep(0.1)                                    # ~10 frames pile up: only the newest
        latest = cam.read(1.0)
        made = source.frames_made
        assert frame_number(latest.color) >= (made - 3) % 256
        assert frame_number(latest.color) != frame_number(first.color)
        stamps = [first.timestamp, latest.timestamp] + [cam.read(1.0).timestamp for _ in range(4)]
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
        assert stamps[-1] <= time.monotonic()
    assert not cam.is_connected and not source.opened


def test_opencv_read_latest_reuses_a_fresh_frame_without_waiting():
    cam, source = opencv_camera(fps=20)
    with cam:
        cam.read(1.0)
        source.stall()
        time.sleep(0.08)                                # a frame in flight lands
        first = cam.read_latest(max_age_s=10.0, timeout_s=0.0)
        again = cam.read_latest(max_age_s=10.0, timeout_s=0.0)
        assert again is first                           # young enough: reused, no wait
        with pytest.raises(HardwareError, match="no new frame"):
            cam.read_latest(max_age_s=0.01, timeout_s=0.05)


def test_opencv_stalled_camera_times_out_naming_camera_and_timeout():
    cam, source = opencv_camera()
    with cam:
        cam.read(1.0)
        source.stall()
        time.sleep(0.05)
        cam.read_latest(1.0, 0.0)                        # drain the last frame delivered
        t0 = time.monotonic()
        with pytest.raises(HardwareError) as err:
            cam.read(0.1)
        waited = time.monotonic() - t0
        assert 0.09 <= waited < 0.6
        assert "OpenCVCamera(7)" in str(err.value) and "100 ms" in str(err.value)
        assert "last frame" in str(err.value)
        source.resume()
        assert cam.read(1.0).color is not None              # a stall is not fatal


def test_opencv_wrong_size_is_a_clear_error():
    cam, source = opencv_camera()
    with cam:
        cam.read(1.0)
        source.deliver_size(32, 24)
        with pytest.raises(HardwareError, match=r"delivers 32x24 frames .* asks for 64x48"):
            for _ in range(20):
                cam.read(0.5)


def test_opencv_warmup_fails_on_a_camera_that_never_streams():
    cam, source = opencv_camera(warmup_s=0.05, read_timeout_s=0.1)
    source.stall()
    with pytest.raises(HardwareError, match="during warm-up"):
        cam.connect()
    assert not cam.is_connected and not source.opened


def test_opencv_videocapture_on_a_file(tmp_path):
    cv2 = import_or_skip_native("cv2")
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    assert writer.isOpened()
    bgr = np.zeros((H, W, 3), np.uint8)
    bgr[..., 2] = 255                                     # pure red, in OpenCV's BGR
    for _ in range(3):
        writer.write(bgr)
    writer.release()
    config = OpenCVCameraConfig(index_or_path=path, width=W, height=H, warmup_s=0.0,
                                max_consecutive_errors=2)
    with OpenCVCamera(config) as cam:
        frame = cam.read(2.0)
        assert frame.color.shape == (H, W, 3)
        r, g, b = frame.color.reshape(-1, 3).mean(axis=0)
        assert r > 200 and g < 40 and b < 40               # RGB order
        # The file ends: read errors in a row make the camera report itself lost.
        with pytest.raises(HardwareError, match="read errors in a row"):
            for _ in range(10):
                cam.read(1.0)
    with pytest.raises(HardwareError, match="cannot be opened"):
        OpenCVCamera(OpenCVCameraConfig(index_or_path=str(tmp_path / "missing.avi"))).connect()


# -- RealSense, software device ------------------------------------------------------------------
@pytest.fixture(scope="module")
def rs():
    # Installed is not enough: on Linux pyrealsense2 loads only where libusb-1.0 is present.
    return import_or_skip_native("pyrealsense2")


def software_camera(depth_units_m: float = 0.001, **cfg):
    from rlbench_sms.hardware.sim.realsense import SoftwareRealSenseSource

    source = SoftwareRealSenseSource(depth_units_m=depth_units_m,
                                     autoplay=cfg.pop("autoplay", False))
    config = RealSenseCameraConfig(serial_number=cfg.pop("serial_number", "123456789012"),
                                   width=cfg.pop("width", 160), height=cfg.pop("height", 120),
                                   warmup_s=cfg.pop("warmup_s", 0.0), poll_s=0.02, **cfg)
    return RealSenseCamera(config, source=source), source


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_depth_to_mm_rounds_saturates_and_keeps_invalid():
    raw = np.array([0, 1, 4, 5, 5000, 65535], np.uint16)
    np.testing.assert_array_equal(depth_to_mm(raw, 0.0001), [0, 1, 1, 1, 500, 6554])
    np.testing.assert_array_equal(depth_to_mm(raw, np.float32(0.001)), raw)
    np.testing.assert_array_equal(depth_to_mm(np.array([0, 2, 7000], np.uint16), 0.01),
                                  [0, 20, 65535])
    with pytest.raises(TypeError):
        depth_to_mm(raw.astype(np.float32), 0.001)


def test_realsense_features_without_hardware():
    cam = RealSenseCamera(RealSenseCameraConfig(serial_number=123, width=320, height=240))
    assert cam.config.serial_number == "123"
    rgb, depth = cam.features("front")
    assert rgb.key == image_key("front") and rgb.shape == (240, 320, 3)
    assert depth.key == depth_key("front") and depth.shape == (240, 320, 1)
    assert depth.info["aligned_to"] == image_key("front") and depth.info["depth_unit"] == "mm"
    assert "intrinsics" not in depth.info          # no such device here: known once connected
    only_rgb = RealSenseCamera(RealSenseCameraConfig("1", use_depth=False)).features("front")
    assert [f.key for f in only_rgb] == [image_key("front")]


@pytest.mark.parametrize("units", [0.0001, 0.001], ids=["d405_0.1mm", "d435_1mm"])
def test_realsense_depth_aligned_to_colour_in_mm(rs, units):
    cam, source = software_camera(depth_units_m=units)
    with cam:
        assert cam.depth_scale_m == pytest.approx(units, rel=1e-6)
        source.push_scene()
        frame = cam.read(2.0)
    assert cam.partial_framesets >= 1                    # the unmatched priming pair, skipped
    color, depth = frame.color, frame.depth
    assert color.shape == (120, 160, 3) and color.dtype == np.uint8
    assert depth.shape == (120, 160) and depth.dtype == np.uint16
    scene = source.scene
    box_mm, plane_mm = round(scene.box_m * 1000), round(scene.plane_m * 1000)
    assert set(np.unique(depth)) <= {0, box_mm, plane_mm}     # exact millimetres, any unit
    assert (depth == 0).mean() < 0.05
    # Aligned: the box in depth sits where the colour image shows it (red) ...
    box_in_color = np.all(color == np.array([200, 30, 30], np.uint8), axis=-1)
    assert iou(depth == box_mm, box_in_color) > 0.85
    # ... which raw depth (other intrinsics, offset camera) does not.
    _, raw = source.scene_frames()
    assert iou(depth_to_mm(raw, units) == box_mm, box_in_color) < 0.75


def test_realsense_intrinsics_are_the_colour_streams_and_go_into_the_feature(rs):
    cam, source = software_camera()
    before = cam.features("front")[1].info["intrinsics"]     # probed without streaming
    with cam:
        intr = cam.intrinsics
        assert before == intr.to_dict()
        assert intr == source.color_intrinsics
        assert (intr.width, intr.height) == (160, 120) and intr.model == "brown_conrady"
        assert cam.depth_intrinsics == source.depth_intrinsics and cam.depth_intrinsics != intr
        depth = cam.features("front")[1]
        assert depth.info["intrinsics"] == intr.to_dict()
        assert depth.info["depth_scale_m"] == 0.001


def test_realsense_colour_and_depth_come_as_matched_pairs(rs):
    cam, source = software_camera(depth_units_m=0.0001)
    with cam:
        t_prev = 0.0
        for n in range(1, 5):
            color = np.full((120, 160, 3), n * 10, np.uint8)
            depth_raw = np.full((120, 160), 6000 + 1000 * n, np.uint16)      # 0.6 m + n * 0.1 m
            source.push(color, depth_raw)
            frame = cam.read(2.0)
            assert np.all(frame.color == n * 10)
            valid = frame.depth[frame.depth > 0]
            assert valid.size > 0.9 * frame.depth.size
            assert np.all(valid == 600 + 100 * n)
            assert frame.timestamp > t_prev
            t_prev = frame.timestamp


def test_realsense_stalled_camera_times_out(rs):
    cam, source = software_camera(serial_number="stall-1")
    with cam:
        source.push_scene()
        cam.read(2.0)
        t0 = time.monotonic()
        with pytest.raises(HardwareError) as err:
            cam.read(0.15)
        assert time.monotonic() - t0 >= 0.14
        assert "RealSenseCamera(stall-1)" in str(err.value) and "150 ms" in str(err.value)


def test_realsense_streaming_source_with_warmup_and_rgb_only(rs):
    cam, _ = software_camera(autoplay=True, warmup_s=0.05, use_depth=False, fps=60)
    with cam:
        frames = [cam.read(1.0) for _ in range(3)]
    assert all(f.depth is None and f.color.shape == (120, 160, 3) for f in frames)
    assert frames[0].timestamp < frames[1].timestamp < frames[2].timestamp


def test_realsense_unknown_serial_is_a_clear_error(rs):
    cam = RealSenseCamera(RealSenseCameraConfig("000000000000", warmup_s=0.0))
    if find_cameras.list_realsense():
        pytest.skip("a real RealSense is connected")
    with pytest.raises(HardwareError, match=r"RealSenseCamera\(000000000000\): not found"):
        cam.connect()
    assert not cam.is_connected


# -- find_cameras --------------------------------------------------------------------------------
def test_find_cameras_runs_on_this_machine():
    out = io.StringIO()
    assert find_cameras.main([], stdout=out) == 0
    text = out.getvalue()
    assert "OpenCV cameras" in text and "Intel RealSense cameras" in text


def test_find_cameras_prints_tables_and_none_found():
    out = io.StringIO()
    find_cameras.main(["--max-index", "2"], stdout=out,
                      opencv_lister=lambda cands: [find_cameras.OpenCVCameraInfo(0, 640, 480, 30.0,
                                                                                 "V4L2")],
                      realsense_lister=lambda: [])
    text = out.getvalue()
    assert "640x480" in text and "V4L2" in text
    assert text.split("Intel RealSense cameras")[1].strip() == "none found"
