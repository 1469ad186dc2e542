"""What every entry point shares: each error it reports is ONE line on stderr.

- A required setting (``???`` in ``conf/``) left unset is found before anything is built and named
  with its full key and an example value::

      robot.config.port is required, e.g. robot.config.port=/dev/ttyACM0

  The examples live in ``conf/required_examples.yaml``, one table for the whole config tree.
- Any other failure is reduced to its root cause: Hydra's ``InstantiationException`` wrappers are
  unwrapped and the config key whose ``_target_`` failed is named::

      training failed: trainer: MisconfigurationException: No supported gpu backend found! (full traceback: HYDRA_FULL_ERROR=1)

- ``--help`` descriptions are the docstring's first paragraph, never a sentence cut at a line end.

Exit codes: :data:`EXIT_CONFIG` (2) for a config error, :data:`EXIT_FAILED` (1) for a failure;
``HYDRA_FULL_ERROR=1`` re-raises instead, with the full traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml
from omegaconf import DictConfig, ListConfig

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130       # the shell's code for a process ended by Ctrl-C
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
EXAMPLES_FILE = CONF_DIR / "required_examples.yaml"
FULL_ERROR_HINT = "(full traceback: HYDRA_FULL_ERROR=1)"

# OmegaConf's message for a missing value, also inside InterpolationToMissingValueError, whose
# full_key is the key that *interpolates* the missing one rather than the missing one itself.
_MISSING_IN_MESSAGE = re.compile(r"Missing mandatory value: ([^\s]+)")
_TARGET_IN_MESSAGE = re.compile(r"Error (?:in call to|locating) target '([^']+)'")
_FULL_KEY_IN_MESSAGE = re.compile(r"^full_key: (\S+)$", re.MULTILINE)


# ------------------------------------------------------------------ --help
def doc_description(doc: str | None) -> str:
    """An argparse description from a module docstring: its first paragraph as one sentence
    (argparse re-wraps it), with reST ``literal`` marks and a trailing ``::`` made plain."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines())
    text = text.replace("``", "")
    return text[:-1] if text.endswith("::") else text


# ------------------------------------------------------------------ required settings
def _walk(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full key, child node) for every node below ``node``, in config order, without resolving
    interpolations (one pointing at a missing value must not raise here)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        child = node._get_node(key)
        full = f"{prefix}[{key}]" if isinstance(node, ListConfig) else (f"{prefix}.{key}" if prefix else str(key))
        yield full, child
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() \
                and not child._is_interpolation() and not child._is_none():
            yield from _walk(child, full)


def missing_keys(cfg: DictConfig, sections: Sequence[str] | None = None) -> list[str]:
    """Full keys of the values still ``???`` in ``cfg``, in config order.

    ``sections``: only the top-level nodes the entry point uses (default: all but ``hydra``).
    """
    def used(key: str) -> bool:
        top = key.split(".", 1)[0].split("[", 1)[0]
        return top in sections if sections is not None else top != "hydra"

    return [key for key, node in _walk(cfg)
            if used(key) and not node._is_interpolation() and node._is_missing()]


@functools.lru_cache(maxsize=1)
def examples() -> dict[str, str]:
    """``conf/required_examples.yaml``: {key pattern: example value as typed in a shell}."""
    if not EXAMPLES_FILE.is_file():
        return {}
    return {str(k): str(v) for k, v in (yaml.safe_load(EXAMPLES_FILE.read_text()) or {}).items()}


def key_matches(pattern: str, key: str) -> bool:
    """``cameras.*.config.serial_number`` matches ``cameras.front.config.serial_number``."""
    want, parts = pattern.split("."), key.split(".")
    return len(want) == len(parts) and all(w in ("*", p) for w, p in zip(want, parts))


def example_for(key: str) -> str | None:
    """The example value of a required key, as typed in a shell; None when the table has none."""
    return next((value for pattern, value in examples().items() if key_matches(pattern, key)), None)


def required_message(keys: Sequence[str]) -> str:
    """``a is required, e.g. a=1`` / ``a and b are required, e.g. a=1 b=2`` (a command-line tail
    the user can paste)."""
    names = keys[0] if len(keys) == 1 else f"{', '.join(keys[:-1])} and {keys[-1]}"
    verb = "is" if len(keys) == 1 else "are"
    pasteable = [f"{k}={example_for(k)}" for k in keys if example_for(k) is not None]
    return f"{names} {verb} required" + (f", e.g. {' '.join(pasteable)}" if pasteable else "")


def check_required(cfg: DictConfig, sections: Sequence[str] | None = None) -> str | None:
    """The one-line message naming every required setting left unset, or None when all are set."""
    keys = missing_keys(cfg, sections)
    return required_message(keys) if keys else None


# ------------------------------------------------------------------ one-line errors
def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and what caused it, outermost first (``__cause__``, else an unsuppressed
    ``__context__``)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def missing_key(error: BaseException) -> str | None:
    """The full key of the missing value behind ``error`` (anywhere in its chain), or None."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    for e in _chain(error):
        if isinstance(e, (MissingMandatoryValue, InterpolationToMissingValueError)):
            found = _MISSING_IN_MESSAGE.search(str(e))
            return found.group(1) if found else getattr(e, "full_key", None) or "?"
    return None


def _is_wrapper(error: BaseException) -> bool:
    from hydra.errors import InstantiationException

    return isinstance(error, InstantiationException)


def _message(error: BaseException) -> str:
    """The message on one line. Hydra's composition errors (unknown option, bad override) are
    short lines plus a tab-indented list: kept, flattened; their search-path dump is dropped.
    Others: the first line (OmegaConf appends ``full_key:``/``object_type=`` lines)."""
    from hydra.errors import CompactHydraException

    text = str(error).strip()
    if not isinstance(error, CompactHydraException):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].endswith(":"):      # "Error loading 'x':" + the detail
            return f"{lines[0]} {lines[1]}"
        return lines[0] if lines else ""
    parts: list[str] = []
    for line in text.splitlines():
        if line.startswith("Config search path"):
            break
        if not line.strip():
            continue
        if line[0].isspace() and parts:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        else:
            parts.append(line.strip())
    last = len(parts) - 1
    return " ".join(p if i == last or p.endswith((".", ":")) else p + ";" for i, p in enumerate(parts))


def _describe(error: BaseException) -> str:
    from hydra.errors import CompactHydraException

    text = _message(error)
    if isinstance(error, CompactHydraException) and text:
        return text                          # written for users: the class name adds nothing
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _config_key_of_target(cfg: DictConfig | None, target: str) -> str | None:
    """The one key of ``cfg`` whose ``_target_`` names ``target`` (Hydra reports the resolved
    path, ``pytorch_lightning.trainer.trainer.Trainer``, the config may say ``pytorch_lightning.Trainer``)."""
    if cfg is None:
        return None
    targets = [(key.rsplit("._target_", 1)[0], node._value()) for key, node in _walk(cfg)
               if key.endswith("._target_") and isinstance(node._value(), str)]
    exact = [key for key, value in targets if value == target]
    if len(exact) == 1:
        return exact[0]
    short = [key for key, value in targets if value.rsplit(".", 1)[-1] == target.rsplit(".", 1)[-1]]
    return short[0] if len(short) == 1 else None


def _where(chain: list[BaseException], cfg: DictConfig | None) -> str | None:
    """The config key (or target) an instantiation failed at, from the innermost Hydra wrapper."""
    for error in reversed(chain):
        if not _is_wrapper(error):
            continue
        text = str(error)
        full_key = _FULL_KEY_IN_MESSAGE.search(text)
        if full_key:
            return full_key.group(1)
        target = _TARGET_IN_MESSAGE.search(text)
        if target:
            return _config_key_of_target(cfg, target.group(1)) or target.group(1)
    return None


def error_line(error: BaseException, cfg: DictConfig | None = None) -> str:
    """``error`` as one line that carries its root cause.

    A missing value gives :func:`required_message` (every unset key of ``cfg`` when given). Else:
    ``[config key: ]Type: message[ (cause: RootType: message)]``, Hydra's wrappers left out.
    """
    key = missing_key(error)
    if key is not None:
        return required_message((missing_keys(cfg) if cfg is not None else []) or [key])
    chain = _chain(error)
    where = _where(chain, cfg)
    meaningful = [e for e in chain if not _is_wrapper(e)] or chain[-1:]
    first, root = meaningful[0], meaningful[-1]
    text = _describe(first)
    root_text = _message(root)
    if root is not first and not (root_text and root_text in text):
        text += f" (cause: {_describe(root)})"
    return f"{where}: {text}" if where else text


def run_checked(body: Callable[[], int | None], cfg: DictConfig, failure: str,
                sections: Sequence[str] | None = None) -> int:
    """Run an entry point's ``body`` with every error reduced to one line on stderr.

    Required settings are checked first (exit 2, nothing built); a missing value met later (an
    interpolation, a config the code builds) also exits 2; any other exception prints
    ``<failure>: <root cause> (full traceback: HYDRA_FULL_ERROR=1)`` and exits 1. Returns the
    exit code (``body``'s own, 0 for None). With ``HYDRA_FULL_ERROR=1`` exceptions propagate.
    """
    problem = check_required(cfg, sections)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return int(body() or 0)
    except KeyboardInterrupt:              # before or after what handles Ctrl-C itself (the loop)
        print(f"{failure.split()[0]} stopped (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if missing_key(error) is not None:
            print(f"error: {error_line(error, cfg)}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"{failure}: {error_line(error, cfg)} {FULL_ERROR_HINT}", file=sys.stderr)
        return EXIT_FAILED


def hydra_runtime() -> tuple[list[str], bool, str]:
    """(the overrides of this job, whether it is part of a multirun, the launcher's target);
    ``([], False, "")`` when not launched through Hydra (tests calling an app with a composed config)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return list(hc.overrides.task), hc.mode == RunMode.MULTIRUN, str(hc.launcher.get("_target_", ""))
    except ValueError:
        return [], False, ""


def is_multirun() -> bool:
    return hydra_runtime()[1]


def exit_if_missing(cfg: DictConfig, sections: Sequence[str] | None = None) -> None:
    """For an entry script, before its heavy imports (torch takes seconds): exit 2 with the one
    line when a required setting is unset. Does nothing inside a multirun, where each run records
    its own failure and the sweep goes on."""
    problem = None if is_multirun() else check_required(cfg, sections)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def _compositions_to_check(args: Sequence[str], multirun: bool) -> list[list[str]]:
    """The override lists whose composing proves the command line: the line itself, or for a
    sweep every value of each swept key once (the others at their first value), never the
    whole product. A non-enumerable sweep (optuna's ``interval(...)``) leaves the key out."""
    if not multirun:
        return [list(args)]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(args))
    choices: list[list[str]] = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_discrete_sweep():
            choices.append([f"{override.get_key_element()}={value}"
                            for value in override.sweep_string_iterator()])
    base = [options[0] for options in choices]
    checks = [base]
    for i, options in enumerate(choices):
        checks += [base[:i] + [option] + base[i + 1:] for option in options[1:]]
    return checks


def exit_on_bad_overrides(config_name: str, argv: Sequence[str] | None = None) -> None:
    """For an entry script, before ``hydra.main``: exit 2 with one line when the command line does
    not compose (an unknown option such as ``modality=rgb+sonar``, a misspelt key, bad syntax),
    in a single run or in any job of a ``-m`` sweep.

    Hydra reports these itself over several lines with its search path. Composing once more here
    takes ~0.1 s per check. Hydra's other flags (``--help``, ``--cfg``, ...) are left to Hydra; so
    is anything that fails for another reason than the command line, which the run reports.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import CompactHydraException

    args = list(sys.argv[1:] if argv is None else argv)
    multirun = any(arg in ("-m", "--multirun") for arg in args)
    args = [arg for arg in args if arg not in ("-m", "--multirun")]
    if any(arg.startswith("-") for arg in args):
        return
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for overrides in _compositions_to_check(args, multirun):
                compose(config_name, overrides=overrides)
    except CompactHydraException as error:
        bad = getattr(error, "override", None)       # a parse error names the argument it failed on
        print(f"error: {f'{bad}: ' if bad else ''}{_message(error)}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    except Exception:
        return
