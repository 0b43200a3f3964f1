"""Fine-tuning: start training from a trained artifact, optionally with its feature layers frozen.

``init_from_artifact`` rebuilds the eager module of an artifact (the zoo config in its
manifest, the scripted module's weights) after checking that the window, levels and feature
kind the new run asks for are the ones the parent was trained on: a network trained on
T = 100 rows of z-scored prices means nothing on 50 rows of ticks from mid. The label may
differ (horizon, kind, alpha): only the head's meaning changes, which is what training fixes.

``freeze(model, "conv")`` stops gradients into the feature layers (``FEATURE_LAYERS``) and
leaves the rest to train; the optimizer in :func:`lobstream.models.train.train_model` takes
only trainable parameters, and frozen BatchNorm layers stay in eval mode, so the frozen
part stays the parent's to the bit (running statistics included).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from lobstream.models.artifact import ArtifactError, load_model, sha256_file
from lobstream.models.heads import n_heads
from lobstream.models.zoo import arch_of, build_from_config, config_from_dict

logger = logging.getLogger(__name__)

FREEZE_CHOICES = ("none", "conv")

# Per architecture, the submodules that make the features ("conv" in --freeze conv); the rest
# is the head that fine-tuning retrains. Causal models: everything row_features uses.
FEATURE_LAYERS: dict[str, tuple[str, ...]] = {
    "cnn": ("features",),  # the conv/pool stack; the dense head trains
    "cnn_causal": ("convs",),  # row_features; the MLP head trains
    # convolutions and inception branches; the LSTM and the final linear layer train
    "deeplob": ("block1", "block2", "block3", "branch1", "branch2", "branch3"),
    "deeplob_causal": ("block1", "block2", "block3", "branch1", "branch2", "branch3"),
    # BiN normalisation and both bilinear layers; the final TABL classifier trains
    "binctabl": ("bin", "bl1", "bl2"),
    # both LSTMs (per level, then over time); the final linear layer trains
    "hrnn": ("level_lstm", "time_lstm"),
    # row_features: the level LSTM, the row summary and the time convolution; the decays of
    # the recurrence and the MLP head train
    "hrnn_causal": ("level_lstm", "summary", "time_conv"),
}


def init_from_artifact(
    path: str | os.PathLike, expect: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """The eager zoo model of artifact ``path`` with its trained weights, and the parent's info.

    Parameters
    ----------
    path : path-like
        A ``*.pt`` artifact written by ``export_model``.
    expect : dict
        What the new run builds: any of ``T``, ``L``, ``feature_kind``, ``arch``, ``heads``. A value the
        artifact does not share raises ``ArtifactError`` naming both.

    Returns
    -------
    (nn.Module, dict)
        The model (train-ready, on CPU) and ``{"artifact", "sha256", "arch", "T", "L",
        "feature_kind", "label"}`` of the parent, for the new manifest.
    """
    path = Path(path)
    # hash first: the digest must be that of the very bytes whose weights we load
    digest = sha256_file(path) if path.is_file() else None
    scripted, manifest = load_model(path, sha256=digest, device="cpu")
    have = {
        "arch": manifest["arch"],
        "T": int(manifest["T"]),
        "L": int(manifest["L"]),
        "feature_kind": manifest["feature"]["kind"],
        "heads": n_heads(manifest),
    }
    flags = {
        "arch": "--arch",
        "T": "--window",
        "L": "--levels",
        "feature_kind": "--features",
        "heads": "--horizons (heads)",
    }
    for key, want in expect.items():
        if key not in have:
            raise ValueError(f"cannot check {key!r}; expected keys among {sorted(have)}")
        if want != have[key]:
            raise ArtifactError(
                f"--init {path} was trained with {flags[key]} {have[key]} but this run asks "
                f"for {flags[key]} {want}; use {flags[key]} {have[key]} or another parent"
            )
    config = config_from_dict(manifest["arch"], manifest["config"])
    model = build_from_config(config)
    # a scripted module's state_dict also holds non-persistent buffers (constants the
    # constructor rebuilds, e.g. binctabl's tabl.eye): keep only what the eager one saves
    wanted = set(model.state_dict())
    buffers = {n for n, _ in model.named_buffers()}
    state = {k: v for k, v in scripted.state_dict().items() if k in wanted or k not in buffers}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"{path}: weights do not fit a {manifest['arch']} of its own config "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})"
        )
    model.train()
    info = {
        "artifact": str(path),
        "sha256": digest,
        **have,
        "label": manifest.get("label"),
    }
    logger.info("initialised %s from %s (sha256 %s)", have["arch"], path, digest)
    return model, info


def freeze(model: nn.Module, what: str) -> list[str]:
    """Freeze the feature layers of ``model`` (``what="conv"``) or nothing (``"none"``).

    Returns the names of the frozen parameters (empty for ``"none"``). The parameters get
    ``requires_grad = False``; see the module docstring for how training keeps them fixed.
    """
    if what not in FREEZE_CHOICES:
        raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {what!r}")
    if what == "none":
        return []
    arch = arch_of(model)
    frozen: list[str] = []
    for name in FEATURE_LAYERS[arch]:
        sub = getattr(model, name)
        for pname, p in sub.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:  # a head always exists today; guard a future architecture's table
        raise ValueError(f"freezing {FEATURE_LAYERS[arch]} of {arch} leaves nothing to train")
    return frozen
