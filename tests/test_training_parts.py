"""Unit tests of the training pieces: step sampler, LR schedule, augmentation, loggers, pretrained start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from rlbench_sms.data.sampler import StepSampler
from rlbench_sms.training.augment import ImageAugment
from rlbench_sms.training.loggers import resolve_wandb_mode, wandb_logged_in
from rlbench_sms.training.module import flow_noise_and_time, step_generator
from rlbench_sms.training.plan import ConfigError
from rlbench_sms.training.schedulers import cosine_decay_with_warmup


def batches(sampler: StepSampler) -> list[list[int]]:
    idx = list(sampler)
    return [idx[i:i + sampler.batch_size] for i in range(0, len(idx), sampler.batch_size)]


def test_step_sampler_is_a_seeded_stream_of_permutations():
    s = StepSampler(10, batch_size=4, total_batches=5, seed=3)
    flat = list(s)
    assert len(flat) == len(s) == 20
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat == list(StepSampler(10, 4, 5, seed=3)) and flat != list(StepSampler(10, 4, 5, seed=4))


def test_step_sampler_resumes_where_it_stopped():
    full = batches(StepSampler(7, 3, 9, seed=1))
    resumed = batches(StepSampler(7, 3, 9, seed=1, start_batch=4))
    assert resumed == full[4:]


def test_step_sampler_ranks_split_each_global_batch():
    single = batches(StepSampler(11, 4, 6, seed=0))                       # global batch 4, one process
    r0 = batches(StepSampler(11, 2, 6, seed=0, rank=0, world_size=2))     # two processes of 2
    r1 = batches(StepSampler(11, 2, 6, seed=0, rank=1, world_size=2))
    for g in range(3):
        assert r0[g] + r1[g] == single[g]


def test_cosine_schedule_matches_smolvla_math():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = cosine_decay_with_warmup(opt, warmup_steps=10, decay_steps=100, decay_lr=2.5e-6)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-4 / 11)                        # 1/(W+1) at step 0
    assert lrs[10] == pytest.approx(2.5e-6 + (1e-4 - 2.5e-6) * 0.5 * (1 + math.cos(math.pi * 10 / 100)))
    assert lrs[100] == pytest.approx(2.5e-6) and lrs[119] == pytest.approx(2.5e-6)
    # A run shorter than decay_steps scales the warmup and decays over its own length.
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    short = cosine_decay_with_warmup(opt2, warmup_steps=10, decay_steps=100, decay_lr=2.5e-6, total_steps=50)
    assert short.lr_lambdas[0](4) == pytest.approx(1.0 * (4 + 1) / (5 + 1))
    assert short.lr_lambdas[0](50) == pytest.approx(2.5e-6 / 1e-4)


def test_flow_time_follows_beta_1p5_1():
    _, t = flow_noise_and_time(200_000, 1, 1, step_generator(0, 1))
    t = (t - 0.001) / 0.999
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    assert float(t.mean()) == pytest.approx(1.5 / 2.5, abs=3e-3)        # Beta(1.5, 1) mean 0.6
    # The same ids give the same numbers (resumable), other ids other numbers.
    assert torch.equal(flow_noise_and_time(2, 3, 4, step_generator(1, 2))[0],
                       flow_noise_and_time(2, 3, 4, step_generator(1, 2))[0])
    assert not torch.equal(flow_noise_and_time(2, 3, 4, step_generator(1, 2))[0],
                           flow_noise_and_time(2, 3, 4, step_generator(1, 3))[0])


def test_augment_jitters_rgb_shifts_all_and_keeps_depth_values():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(3, 3, 16, 20)
    depth = torch.full((3, 1, 16, 20), 0.7)
    out = ImageAugment(max_shift=2)({"observation.images.front": rgb, "observation.images.front_depth": depth,
                                      "observation.state": torch.zeros(3, 6)}, gen)
    assert out["observation.images.front"].shape == rgb.shape
    assert not torch.equal(out["observation.images.front"], rgb)
    assert float(out["observation.images.front"].min()) >= 0 and float(out["observation.images.front"].max()) <= 1
    assert torch.equal(out["observation.images.front_depth"], depth)   # a constant map: shift keeps it
    assert torch.equal(out["observation.state"], torch.zeros(3, 6))
    shifted = ImageAugment(brightness=0, contrast=0, saturation=0, max_shift=3).shift(
        torch.arange(20.0).view(1, 1, 1, 20).expand(1, 1, 5, 20).clone(), torch.Generator().manual_seed(1))
    assert shifted.shape == (1, 1, 5, 20)


def test_wandb_is_offline_unless_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_logged_in()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_logged_in()
    cfg = OmegaConf.create({"wandb": {"_target_": "x", "offline": None}})
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="wandb"):
            resolve_wandb_mode(cfg)
    else:
        assert resolve_wandb_mode(cfg).wandb.offline is False


def test_training_starts_from_a_pretrained_checkpoint(small_sample, tiny_vlm_dir, tmp_path):
    """A plain SmolVLA checkpoint seeds a model with a new force branch: base weights copied exactly."""
    import shutil

    from rlbench_sms.training.build import build_policy
    from rlbench_sms.training.plan import plan_training
    from train_helpers import compose_train, small_run_overrides

    models = tmp_path / "models"
    shutil.copytree(tiny_vlm_dir, models / "tiny_smolvlm")
    base_cfg = compose_train(["experiment=demo", *small_run_overrides(small_sample, models, tmp_path), "modality=rgb"])
    torch.manual_seed(5)
    base = build_policy(base_cfg, plan_training(base_cfg))
    base.save_pretrained(tmp_path / "base")
    cfg = compose_train(["experiment=demo", *small_run_overrides(small_sample, models, tmp_path),
                         "modality=rgb+force", f"policy.pretrained_path={tmp_path / 'base'}"])
    torch.manual_seed(6)
    tuned = build_policy(cfg, plan_training(cfg))
    own = tuned.state_dict()
    for key, value in base.state_dict().items():
        assert torch.equal(own[key], value), key
    assert any(k.startswith("branches.force") for k in own)
    # A checkpoint that does not fit (a weight renamed) is refused with the key named.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "base" / "model.safetensors"))
    weights["model.state_proj.renamed"] = weights.pop("model.state_proj.weight")
    save_file(weights, str(tmp_path / "base" / "model.safetensors"))
    with pytest.raises(Exception, match="model.state_proj"):
        build_policy(cfg, plan_training(cfg))


@pytest.mark.filterwarnings("ignore:Got pickle error")   # torch's guess at why the loky start failed
def test_a_launcher_start_method_is_reset_so_dataloader_workers_start():
    """joblib's loky workers run jobs with loky's start method as the process default; DataLoader
    workers (plain multiprocessing.Process) cannot start with it until it is reset."""
    import multiprocessing

    from joblib.externals.loky.backend import context as loky_context  # noqa: F401  (registers "loky")
    from torch.utils.data import DataLoader

    from rlbench_sms.training.start_method import restore_standard_start_method

    before = multiprocessing.get_start_method(allow_none=True)
    loader = DataLoader(list(range(4)), batch_size=2, num_workers=1)
    try:
        multiprocessing.set_start_method("loky", force=True)   # what a loky worker process has
        with pytest.raises(AttributeError, match="env"):   # loky's Popen wants its own Process
            list(loader)
        assert restore_standard_start_method() == "loky"
        assert multiprocessing.get_start_method() in ("fork", "spawn", "forkserver")
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
        assert restore_standard_start_method() is None   # a standard method is left alone
    finally:
        multiprocessing.set_start_method(before, force=True)
