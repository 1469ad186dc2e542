"""The install contract: no torchvision, torch within the declared range, and the dataset side of
the package usable on a robot PC without torch."""

import importlib.util
import subprocess
import sys

import torch


def test_torchvision_is_not_installed():
    assert importlib.util.find_spec("torchvision") is None


def test_torch_is_the_pinned_major():
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    assert (2, 4) <= (major, minor) < (2, 15)


def test_dataset_io_does_not_import_torch():
    code = ("import sys; import rlbench_sms.data.writer, rlbench_sms.data.reader, "
            "rlbench_sms.data.validate, rlbench_sms.data.sample; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
