"""What an artifact's manifest says about its inputs and labels, read in one place.

The label definition (:class:`LabelDef`) is what training writes into ``manifest["label"]``
and what the backtest, the trading simulation and the daemon read back; the feature spec is
``manifest["feature"]``. A horizon is kept as the user gave it (rows, or seconds) and turned
into kernel units by :func:`kernel_horizon` alone, so the dataset's gaps, the labels, the
holding horizon of the trading simulation and the backtest's lookahead agree to the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lobstream.kernels.features import FeatureSpec
from lobstream.kernels.labels import LABEL_KINDS

if TYPE_CHECKING:
    from lobstream.models.baselines import TrendBaseline

NS_PER_SECOND = 1_000_000_000
HORIZON_UNITS = ("events", "seconds")
# How whole windows are run on the CPU (models.runner.window_runner); here so that configs
# and command lines can check the name without importing torch.
RUNNER_KINDS = ("auto", "torch", "numba")


def kernel_horizon(horizon: float, unit: str) -> tuple[int, str]:
    """A horizon in the kernels' units: ``(rows, "events")`` or ``(nanoseconds, "ns")``.

    Rows are rounded and at least one (a holding horizon below one row still closes at the
    next row); seconds become whole nanoseconds of ``ts_event``."""
    if unit == "events":
        return max(1, int(round(horizon))), "events"
    if unit == "seconds":
        return int(round(horizon * NS_PER_SECOND)), "ns"
    raise ValueError(f"horizon unit must be one of {HORIZON_UNITS}, got {unit!r}")


@dataclass(frozen=True)
class LabelDef:
    """What a label means: horizon ``k`` in ``unit`` ("events" or "seconds"), threshold
    ``alpha`` (None: chosen on the training part) and ``kind`` (see
    :mod:`lobstream.kernels.labels`).

    ``kind`` defaults to the leak-free ``"future"``, as ``lobstream train`` does; a manifest
    without a kind means ``"smoothed"`` (:func:`label_def_from_manifest` says so).
    """

    horizon: float
    unit: str = "events"
    alpha: float | None = None
    kind: str = "future"

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if self.unit not in HORIZON_UNITS:
            raise ValueError(f"horizon unit must be 'events' or 'seconds', got {self.unit!r}")
        if not self.horizon > 0:
            raise ValueError(f"horizon must be positive, got {self.horizon}")
        if self.unit == "events" and int(self.horizon) != self.horizon:
            raise ValueError(f"a horizon in events must be a whole number, got {self.horizon}")

    def kernel_args(self) -> tuple[int, str]:
        """``(horizon, unit)`` as :func:`lobstream.kernels.labels.label_change` takes them."""
        return kernel_horizon(self.horizon, self.unit)


def spec_from_manifest(manifest: dict[str, Any]) -> FeatureSpec:
    """The :class:`FeatureSpec` stored in an artifact manifest."""
    feature = manifest.get("feature")
    if not isinstance(feature, dict) or "kind" not in feature or "params" not in feature:
        raise ValueError(
            f"model manifest has no usable 'feature' spec (found {feature!r}); expected "
            "{'kind', 'levels', 'params'}: re-export the model with lobstream train"
        )
    return FeatureSpec.from_dict({"levels": manifest.get("L"), **feature})


def label_unit(label: dict[str, Any]) -> str:
    """The horizon unit of a manifest's label dict: "events" (the default) or "seconds"."""
    unit = label.get("unit", "events")
    return "seconds" if unit == "s" else unit  # older manifests abbreviated seconds


def label_def_from_manifest(manifest: dict[str, Any]) -> LabelDef:
    """The label definition stored in an artifact manifest (horizon, unit, alpha, kind).

    A manifest written before label kinds existed has no ``kind``: its labels were the smoothed
    ones (the only kind then), so it reads as ``"smoothed"``."""
    d = manifest.get("label")
    if not d or "horizon" not in d or "alpha" not in d:
        raise ValueError(
            f"model manifest has no usable label definition (found {d!r}); expected "
            "{'horizon', 'unit', 'alpha'}: re-export the model with lobstream train"
        )
    kind = d.get("kind", "smoothed")
    if kind not in LABEL_KINDS:
        raise ValueError(
            f"model manifest has label kind {kind!r}; this version knows {LABEL_KINDS}"
        )
    unit = label_unit(d)
    horizon = float(d["horizon"]) if unit == "seconds" else int(d["horizon"])
    return LabelDef(horizon, unit, float(d["alpha"]), kind)


def majority_from_manifest(manifest: dict[str, Any]) -> int | None:
    """The majority baseline's class: the most frequent training label (None: not recorded)."""
    bal = ((manifest.get("trained_on") or {}).get("class_balance") or {}).get("train")
    return int(np.argmax(bal)) if bal else None


def trend_from_manifest(manifest: dict[str, Any]) -> tuple[TrendBaseline | None, dict]:
    """The trend baseline of an artifact and how it was chosen.

    The rule fitted at training (``baselines.trend.rule``: direction, lookback) when the
    manifest has one; else momentum over the label horizon (horizon in events, capped at T),
    for manifests from before the trend baseline; else (time horizon) none.

    Returns
    -------
    (baseline or None, rule dict for the report, with ``source``).
    """
    # torch comes with the baselines: only readers of baselines pay for it
    from lobstream.models.baselines import TrendBaseline

    label = label_def_from_manifest(manifest)
    rule = ((manifest.get("baselines") or {}).get("trend") or {}).get("rule")
    if rule:
        d = 1 if rule["direction"] == "momentum" else -1
        tb = TrendBaseline(int(rule["lookback_rows"]), label.alpha, d)
        return tb, {**tb.rule(), "source": "fitted at training (manifest)"}
    if label.unit == "events":
        tb = TrendBaseline(max(1, min(int(label.horizon), int(manifest["T"]))), label.alpha, 1)
        return tb, {**tb.rule(), "source": "momentum over the label horizon (none in manifest)"}
    return None, {"source": "none: the manifest has no trend rule and the horizon is in time"}
