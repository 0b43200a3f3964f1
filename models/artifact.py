"""Model artifacts (contract 3): a TorchScript archive with ``manifest.json`` inside.

``export_model`` is the only writer and ``load_model`` the only reader, so a later switch from
TorchScript to ``torch.export`` touches this file alone. The archive holds the scripted module
in eval mode, unfrozen: freezing inlines the weights as graph constants, which ties them to the
device they were frozen on; the runner freezes and optimises after moving the module to its
device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lobstream.kernels.dtypes import CLASS_NAMES
from lobstream.models.heads import check_heads
from lobstream.models.zoo import arch_of, config_from_dict, config_to_dict

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Keys the caller must supply; export fills format_version, arch, config, T, L, F,
# class_names, created and (causal models only) causal from the model itself.
CALLER_KEYS = ("feature", "label", "trained_on", "metrics")
# Eager vs scripted on the probe batch at export; float32 re-association stays far below this.
EXPORT_PARITY_ATOL = 1e-4


class ArtifactError(ValueError):
    """An artifact is unreadable, malformed, or does not match what the caller expects."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_ready(obj: Any, where: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ArtifactError(
            f"manifest field {where!r} is not JSON-serialisable ({e}); "
            "pass plain numbers, strings, lists and dicts (numpy: .tolist())"
        ) from None


def build_manifest(model: nn.Module, manifest: dict[str, Any]) -> dict[str, Any]:
    """The full manifest for ``model``: the caller's fields plus those derived from the model.

    Caller fields that contradict the model (for instance ``T`` or ``arch``) are refused.
    """
    missing = [k for k in CALLER_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(
            f"manifest lacks {missing}; export needs {list(CALLER_KEYS)}: feature "
            "{kind, params}, label {horizon, unit, alpha, smoothing}, trained_on (what data), "
            "metrics (validation classification_report)"
        )
    feature = manifest["feature"]
    if not isinstance(feature, dict) or "kind" not in feature or "params" not in feature:
        raise ArtifactError(
            f"manifest 'feature' must be a dict with 'kind' and 'params', got {feature!r}"
        )
    config = model.config
    derived = {
        "format_version": FORMAT_VERSION,
        "arch": arch_of(model),
        "config": config_to_dict(config),
        "T": int(config.T),
        "L": int(config.levels),
        "F": int(config.F),
        "class_names": list(CLASS_NAMES),
    }
    if getattr(model, "causal", False):
        # Streaming-native models: what incremental inference needs to cache per row. A
        # scripted module does not keep the class attribute, so the manifest carries it;
        # artifacts without this key are simply not causal.
        derived["causal"] = {
            "receptive_field": int(model.receptive_field),
            "feature_dim": int(model.feature_dim),
        }
    for k, v in derived.items():
        if k in manifest and _json_ready(manifest[k], k) != v:
            raise ArtifactError(
                f"manifest gives {k}={manifest[k]!r} but the model has {k}={v!r}; "
                f"drop {k!r} from the manifest (export derives it) or fix the model"
            )
    out = {**_json_ready(manifest, "manifest"), **derived}
    bad = check_heads(out)
    if bad:
        raise ArtifactError(f"manifest heads: {bad}")
    out.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
    return out


def export_model(model: nn.Module, path: str | os.PathLike, manifest: dict[str, Any]) -> str:
    """Script ``model`` and write it with its manifest to ``path``.

    Parameters
    ----------
    model : nn.Module
        A zoo model (has ``.config``). Put in eval mode (it stays so) and exported from CPU
        copies of its weights; the caller's module is otherwise unchanged.
    path : path-like
        Destination ``*.pt``; written to a temporary file and renamed, so a reader never sees
        half an archive.
    manifest : dict
        Must hold ``feature`` ({kind, params}), ``label``, ``trained_on`` and ``metrics``; other
        JSON-ready keys are kept. See ``build_manifest``.

    Returns
    -------
    str
        Hex SHA-256 of the written file (what a config may pin).
    """
    model.eval()
    full = build_manifest(model, manifest)
    cpu_model = model if _on_cpu(model) else _cpu_copy(model)
    scripted = script_module(cpu_model)
    cfg = cpu_model.config
    probe = torch.randn(2, 1, cfg.T, cfg.F, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((scripted(probe) - cpu_model(probe)).abs().max())
    if not diff <= EXPORT_PARITY_ATOL:
        raise ArtifactError(
            f"scripted {full['arch']} differs from eager by {diff:.3g} on a probe batch, "
            f"expected at most {EXPORT_PARITY_ATOL}; the module does something TorchScript "
            "compiles differently"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        extra = {MANIFEST_NAME: json.dumps(full, indent=2, sort_keys=True)}
        with quiet_jit():
            torch.jit.save(scripted, tmp, _extra_files=extra)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    digest = sha256_file(path)
    logger.info("exported %s to %s (sha256 %s)", full["arch"], path, digest)
    return digest


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence TorchScript's deprecation warnings: the project keeps TorchScript behind this
    file on purpose (see the module docstring), so the warning would only be noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def script_module(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of ``model`` (not modified), without the deprecation warning."""
    with quiet_jit():
        return torch.jit.script(model)


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).cpu().eval()


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(
            f"device {str(device)!r} requested but CUDA is not available here; "
            "use device='auto' or 'cpu'"
        )
    return dev


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an artifact, without building the module on a device."""
    return load_model(path, device="cpu")[1]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _lookup(manifest: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = manifest
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(a: Any, b: Any) -> bool:
    a, b = _json_ready(a, "expect"), _json_ready(b, "expect")
    if isinstance(a, float | int) and isinstance(b, float | int):
        return float(a) == float(b) or abs(float(a) - float(b)) <= 1e-9 * max(abs(a), abs(b))
    return a == b


def check_manifest(manifest: dict[str, Any], expect: dict[str, Any], source: str) -> None:
    """Raise ``ArtifactError`` naming both values for the first key of ``expect`` that differs.

    ``expect`` keys may be nested dicts or dotted paths (``"feature.kind"``); only the keys
    given are checked.
    """
    for key, want in _flatten(expect).items():
        found, have = _lookup(manifest, key)
        if not found:
            raise ArtifactError(
                f"{source}: manifest has no {key!r}, but the config expects {key}={want!r}; "
                "re-export the model with that field or drop it from the config"
            )
        if not _same(have, want):
            raise ArtifactError(
                f"{source}: model artifact has {key}={have!r} but the config expects "
                f"{key}={want!r}; use a model trained for this config or change the config"
            )


def _not_torchscript(path: Path) -> str:
    """Why ``path`` is not a TorchScript archive, in one line: torch's own message talks of
    its zip reader's internals, which do not tell a user what the file is."""
    expected = "expected a model file written by lobstream train (export_model)"
    size = path.stat().st_size
    if size == 0:
        what = "the file is empty (0 bytes)"
    elif not zipfile.is_zipfile(path):
        what = f"not a zip archive, or a truncated one ({size:,} bytes)"
    else:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names):
            what = "a torch.save archive (weights or a pickled module), not TorchScript"
        else:
            what = "a zip archive without TorchScript code"
    return f"not a TorchScript archive: {what}; {expected}"


def load_model(
    path: str | os.PathLike,
    *,
    expect: dict[str, Any] | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Load an artifact written by ``export_model`` and check it.

    Parameters
    ----------
    path : path-like
        The ``*.pt`` archive.
    expect : dict, optional
        Manifest values the caller requires (for instance ``{"T": 100, "L": 10,
        "feature": {"kind": "zscore"}}``); a difference is refused naming both values.
    sha256 : str, optional
        Pinned hex digest of the file; a different file is refused before it is unpickled.
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns
    -------
    (torch.jit.ScriptModule, dict)
        The module in eval mode on ``device`` (forward: float32 (B, 1, T, F) -> logits (B, 3),
        or (B, 3 H) for the H heads of ``manifest["heads"]``) and the manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"model artifact {path} not found; give the path of a *.pt file")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != sha256.strip().lower():
            raise ArtifactError(
                f"{path}: SHA-256 is {actual} but the config pins {sha256.strip()}; the file "
                "changed since it was pinned: pin the new digest only if you trust the file"
            )
    dev = resolve_device(device)
    extra = {MANIFEST_NAME: ""}
    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location=dev, _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as e:
        logger.debug("%s: torch.jit.load failed: %s", path, e)
        raise ArtifactError(f"{path}: {_not_torchscript(path)}") from None
    raw = extra[MANIFEST_NAME]
    if not raw:
        raise ArtifactError(
            f"{path}: TorchScript archive without {MANIFEST_NAME}; expected a file written by "
            "lobstream's export_model (plain torch.jit.save archives carry no manifest)"
        )
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path}: {MANIFEST_NAME} is not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: manifest format_version is {version!r}, this lobstream reads "
            f"{FORMAT_VERSION}; re-export the model with this version"
        )
    # Rebuilding the config validates the stored sizes against the zoo.
    config_from_dict(manifest["arch"], manifest["config"])
    bad = check_heads(manifest)
    if bad:
        raise ArtifactError(f"{path}: manifest heads: {bad}")
    if expect:
        check_manifest(manifest, expect, str(path))
    module.eval()
    logger.info("loaded %s model from %s on %s", manifest["arch"], path, dev)
    return module, manifest
