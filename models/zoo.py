"""The model zoo: architecture name -> (frozen config dataclass, nn.Module class).

Training, export, loading and the benchmark find architectures here only, so adding one is
one file plus one line in ``ARCHITECTURES``. Configs travel as plain dicts (JSON in the
artifact manifest) through ``config_to_dict`` / ``config_from_dict``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torch import nn

from lobstream.models.binctabl import BiNCTABL, BiNCTABLConfig
from lobstream.models.causal.cnn import CNNCausal, CNNCausalConfig
from lobstream.models.causal.deeplob import DeepLOBCausal, DeepLOBCausalConfig
from lobstream.models.causal.hrnn import HRNNCausal, HRNNCausalConfig
from lobstream.models.cnn import CNN, CNNConfig
from lobstream.models.deeplob import DeepLOB, DeepLOBConfig
from lobstream.models.hrnn import HRNN, HRNNConfig

logger = logging.getLogger(__name__)

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "cnn": (CNNConfig, CNN),
    "deeplob": (DeepLOBConfig, DeepLOB),
    "hrnn": (HRNNConfig, HRNN),
    "binctabl": (BiNCTABLConfig, BiNCTABL),
    "cnn_causal": (CNNCausalConfig, CNNCausal),
    "deeplob_causal": (DeepLOBCausalConfig, DeepLOBCausal),
    "hrnn_causal": (HRNNCausalConfig, HRNNCausal),
}


def _lookup(arch: str) -> tuple[type, type[nn.Module]]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(
            f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}"
        ) from None


def make_config(arch: str, **cfg: Any) -> Any:
    """The frozen config of ``arch`` with ``cfg`` overriding its defaults.

    Unknown keys are refused with a message naming them and the allowed ones; lists are
    turned into tuples so a config read back from JSON equals the one written.
    """
    config_cls, _ = _lookup(arch)
    allowed = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown} for architecture {arch!r}; "
            f"allowed keys are {sorted(allowed)}"
        )
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return config_cls(**fixed)


def build_model(arch: str, **cfg: Any) -> nn.Module:
    """A freshly initialised model of ``arch`` (see ``ARCHITECTURES``), config from ``cfg``.

    Returns
    -------
    nn.Module
        forward: float32 (B, 1, T, F) -> logits float32 (B, 3), classes down, flat, up.
    """
    _, model_cls = _lookup(arch)
    config = make_config(arch, **cfg)
    logger.debug("building %s with %s", arch, config)
    return model_cls(config)


def build_from_config(config: Any) -> nn.Module:
    """A freshly initialised model for an existing config instance."""
    for config_cls, model_cls in ARCHITECTURES.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"{type(config).__name__} is not the config of any architecture in the zoo")


def arch_of(obj: Any) -> str:
    """The zoo name of a config or model instance."""
    for name, (config_cls, model_cls) in ARCHITECTURES.items():
        if type(obj) is config_cls or type(obj) is model_cls:
            return name
    raise TypeError(f"{type(obj).__name__} is not a config or model of the zoo")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (tuples become lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def config_from_dict(arch: str, d: dict[str, Any]) -> Any:
    """The config of ``arch`` from a dict written by ``config_to_dict``."""
    return make_config(arch, **d)
