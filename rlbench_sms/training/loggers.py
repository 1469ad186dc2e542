"""Logger helpers: wandb goes offline unless the user is logged in."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def wandb_logged_in() -> bool:
    """True when wandb has an API key: WANDB_API_KEY, or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_wandb_mode(logger_cfg: DictConfig) -> DictConfig:
    """Fill ``wandb.offline: null`` with "offline unless logged in"; check wandb is installed."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        from rlbench_sms.training.plan import ConfigError

        raise ConfigError("logger=wandb: the wandb package is not installed (pip install -e '.[wandb]')") from None
    cfg = OmegaConf.create(OmegaConf.to_container(logger_cfg, resolve=True))
    if cfg.wandb.get("offline") is None:
        cfg.wandb.offline = not wandb_logged_in()
    return cfg
