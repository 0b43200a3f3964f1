"""Loading the instrument registry from TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path

from lobstream.kernels.registry import Registry


def load_registry(path: str | Path) -> Registry:
    """Read a registry TOML file (layout in :mod:`lobstream.kernels.registry`)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Registry.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
