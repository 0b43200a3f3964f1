"""The daemon's configuration: one frozen, typed tree, loaded once from TOML at the CLI boundary.

Every table is a frozen dataclass; unknown keys are refused with a message naming the key and
the allowed ones (a misspelt key must never fall back silently to a default). Binds are
loopback-only unless ``[security] allow_remote = true``. The layout is documented, key by key,
in ``examples/serve.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lobstream.kernels.dtypes import FEATURE_KIND_NAMES
from lobstream.models.manifest import RUNNER_KINDS


class ConfigError(ValueError):
    """A configuration file that cannot be used: says where, what was found and what is expected."""


@dataclass(frozen=True)
class ModelConfig:
    path: str
    sha256: str = ""  # pin the artifact: a different file is refused
    window: int = 100  # expected T of the artifact
    levels: int = 10  # expected L of the artifact
    feature_kind: str = "zscore"  # expected feature kind of the artifact
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 1  # torch intra-op threads on CPU
    max_batch: int = 256  # most windows in one model call
    overlap_batch: int = 16  # batches this large run on an inference thread; 0 = always inline
    reload_poll_s: float = 1.0  # how often the artifact file is checked for change; 0 = never
    cpus: tuple[int, ...] = ()  # CPUs the inference thread may run on (Linux); empty = any
    # causal artifacts on the CPU: push each new row through an incremental runner instead of
    # recomputing the window; false forces whole windows (for comparison)
    incremental: bool = True
    # whole windows on the CPU: auto = a compiled Numba kernel where the arch has one (binctabl;
    # ~5x less per call on a quiet market, README), else torch; torch | numba force one
    runner: str = "auto"
    # a quiet market: a throwaway model call after this many ms without one keeps the model's
    # weights in cache for the next real call (costs CPU); 0 = off
    keep_warm_ms: float = 0.0
    # a round the loop infers itself runs book, rows, selection, model and records in one
    # compiled call where the model is a kernel (compiled or incremental); false: stage by
    # stage (for comparison; the signals are the same)
    fused: bool = True


@dataclass(frozen=True)
class InstrumentConfig:
    symbol: str
    tick_size: float
    price_scale: dict = field(default_factory=dict)


@dataclass(frozen=True)
class InstrumentsConfig:
    registry: str = ""  # a registry TOML file; or list them inline as [[instruments.instrument]]
    instrument: tuple[InstrumentConfig, ...] = ()


@dataclass(frozen=True)
class CurveConfig:
    secret_key: str = ""  # our own certificate (zmq.auth secret file); empty = no CurveZMQ
    server_public_key: str = ""  # the peer server's public certificate, when this side connects
    authorized_keys: str = ""  # folder of allowed client public certificates, when this side binds


@dataclass(frozen=True)
class IngestConfig:
    endpoints: tuple[str, ...] = ("ipc:///tmp/lobstream-md",)
    mode: str = "connect"  # connect | bind
    topics: tuple[str, ...] = ("md.",)  # subscription prefixes: a daemon can take a shard
    rcvhwm: int = 100_000  # messages queued in ZeroMQ before the publisher drops
    max_drain: int = 2048  # messages taken per round before the next inference
    cpus: tuple[int, ...] = ()  # CPUs the loop thread (ingest, book, publish) may run on
    busy_poll_us: int = 0  # spin this long for market data before blocking; 0 = always block
    # a message with a ts_event further than this ahead of the instrument's last accepted one
    # is dropped, not adopted (a clear, which opens a snapshot, restarts the clock); 0 = off
    max_ts_jump_s: float = 86_400.0
    # ... or further than this ahead of this host's clock (UTC); 0 = off
    max_clock_lead_s: float = 60.0
    # no market-data message for longer than this is a feed pause, counted (and its end);
    # nothing else changes; 0 = not counted
    idle_after_s: float = 5.0
    curve: CurveConfig = CurveConfig()


@dataclass(frozen=True)
class PublishConfig:
    endpoint: str = "ipc:///tmp/lobstream-sig"
    mode: str = "bind"  # bind | connect
    encoding: str = "binary"  # binary | json
    status_topic: str = "status"
    status_interval_s: float = 1.0
    sndhwm: int = 100_000
    linger_ms: int = 200
    curve: CurveConfig = CurveConfig()


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1:9108"  # host:port of the Prometheus endpoint; empty = off


@dataclass(frozen=True)
class LoggingConfig:
    max_per_s: float = 5.0  # per message kind; the rest are counted and summarised


@dataclass(frozen=True)
class SecurityConfig:
    allow_remote: bool = False  # allow binds on non-loopback interfaces


@dataclass(frozen=True)
class ServeConfig:
    model: ModelConfig
    instruments: InstrumentsConfig = InstrumentsConfig()
    ingest: IngestConfig = IngestConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    security: SecurityConfig = SecurityConfig()
    source: str = ""  # the file it was read from (set by the loader, not a TOML key)


_CHOICES = {
    ("model", "device"): ("auto", "cpu", "cuda"),
    ("model", "feature_kind"): FEATURE_KIND_NAMES,
    ("model", "runner"): RUNNER_KINDS,
    ("ingest", "mode"): ("connect", "bind"),
    ("publish", "mode"): ("connect", "bind"),
    ("publish", "encoding"): ("binary", "json"),
}
_POSITIVE = {
    ("model", "window"),
    ("model", "levels"),
    ("model", "threads"),
    ("model", "max_batch"),
    ("ingest", "rcvhwm"),
    ("ingest", "max_drain"),
    ("publish", "status_interval_s"),
    ("publish", "sndhwm"),
    ("logging", "max_per_s"),
}


def load_config(path: str | Path) -> ServeConfig:
    """Read and check a daemon configuration file.

    Parameters
    ----------
    path : str or Path
        A TOML file laid out as ``examples/serve.toml``. Relative file paths inside it (model,
        registry, keys) are resolved against the file's folder.

    Returns
    -------
    ServeConfig
        The frozen configuration tree.

    Raises
    ------
    ConfigError
        Unreadable TOML, an unknown key, a wrong type, a value out of range, or a non-loopback
        bind without ``allow_remote``; the message names the file and the key.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, source=path)


def config_from_dict(data: dict, source: str | Path = "<dict>") -> ServeConfig:
    """Build a :class:`ServeConfig` from a parsed TOML mapping (see :func:`load_config`)."""
    if "model" not in data:
        raise ConfigError(f"{source}: missing table [model]; it needs at least path = 'MODEL.pt'")
    cfg = _build(ServeConfig, data, str(source), "")
    base = Path(source).resolve().parent if source != "<dict>" else Path.cwd()
    cfg = _resolve_paths(cfg, base)
    _check(cfg, str(source))
    return dataclasses.replace(cfg, source=str(source))


def _build(cls, data, source: str, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(
            f"{source}: unknown key {name!r}; allowed in [{where or 'top level'}]: "
            f"{', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [
            n
            for n, f in fields.items()
            if n not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        raise ConfigError(f"{source}: [{where}] is missing required key(s) {missing}") from exc


def _coerce(tp, value, source: str, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, key)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) and inner is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, found {value!r}")
        return tuple(_coerce(inner, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a table, found {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, found {value!r}")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in the tree today
        raise ConfigError(f"{source}: {key}: unsupported type {tp}")
    raise ConfigError(f"{source}: {key}: unsupported type {tp}")  # pragma: no cover


def _resolve(base: Path, p: str) -> str:
    if not p:
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _resolve_curve(c: CurveConfig, base: Path) -> CurveConfig:
    return CurveConfig(
        secret_key=_resolve(base, c.secret_key),
        server_public_key=_resolve(base, c.server_public_key),
        authorized_keys=_resolve(base, c.authorized_keys),
    )


def _resolve_paths(cfg: ServeConfig, base: Path) -> ServeConfig:
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, path=_resolve(base, cfg.model.path)),
        instruments=dataclasses.replace(
            cfg.instruments, registry=_resolve(base, cfg.instruments.registry)
        ),
        ingest=dataclasses.replace(cfg.ingest, curve=_resolve_curve(cfg.ingest.curve, base)),
        publish=dataclasses.replace(cfg.publish, curve=_resolve_curve(cfg.publish.curve, base)),
    )


def _check(cfg: ServeConfig, source: str) -> None:
    for (table, key), allowed in _CHOICES.items():
        value = getattr(getattr(cfg, table), key)
        if value not in allowed:
            raise ConfigError(
                f"{source}: {table}.{key} = {value!r}; expected one of {', '.join(allowed)}"
            )
    for table, key in _POSITIVE:
        value = getattr(getattr(cfg, table), key)
        if value <= 0:
            raise ConfigError(f"{source}: {table}.{key} = {value!r}; expected a positive number")
    if not cfg.model.keep_warm_ms >= 0 or cfg.model.keep_warm_ms == float("inf"):
        raise ConfigError(
            f"{source}: model.keep_warm_ms = {cfg.model.keep_warm_ms!r}; expected a finite "
            "number of milliseconds >= 0 (0 turns it off)"
        )
    if cfg.model.overlap_batch < 0:
        raise ConfigError(
            f"{source}: model.overlap_batch = {cfg.model.overlap_batch}; expected >= 0 "
            "(0 runs every model call inline)"
        )
    for key in ("max_ts_jump_s", "max_clock_lead_s", "idle_after_s"):
        value = getattr(cfg.ingest, key)
        if not value >= 0 or value == float("inf"):
            raise ConfigError(
                f"{source}: ingest.{key} = {value!r}; expected a finite number of seconds >= 0 "
                "(0 turns the check off)"
            )
    if cfg.ingest.busy_poll_us < 0:
        raise ConfigError(
            f"{source}: ingest.busy_poll_us = {cfg.ingest.busy_poll_us}; expected >= 0 "
            "(0 blocks as soon as nothing is left)"
        )
    for key, cpus in (("model.cpus", cfg.model.cpus), ("ingest.cpus", cfg.ingest.cpus)):
        _check_cpus(cpus, key, source)
    sha = cfg.model.sha256.lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(
            f"{source}: model.sha256 = {cfg.model.sha256!r}; expected 64 hex digits "
            "(sha256sum MODEL.pt), or leave it out"
        )
    if not cfg.ingest.endpoints:
        raise ConfigError(f"{source}: ingest.endpoints is empty; give at least one endpoint")
    if not cfg.instruments.registry and not cfg.instruments.instrument:
        raise ConfigError(
            f"{source}: no instruments; set instruments.registry = 'FILE.toml' or list "
            "[[instruments.instrument]] tables with symbol and tick_size"
        )
    if cfg.instruments.registry and cfg.instruments.instrument:
        raise ConfigError(
            f"{source}: both instruments.registry and inline [[instruments.instrument]] given; "
            "use one of them"
        )
    binds = [(f"ingest.endpoints[{i}]", e) for i, e in enumerate(cfg.ingest.endpoints)]
    binds = binds if cfg.ingest.mode == "bind" else []
    if cfg.publish.mode == "bind":
        binds.append(("publish.endpoint", cfg.publish.endpoint))
    for key, endpoint in binds:
        _check_endpoint(endpoint, key, source)
        if not cfg.security.allow_remote and not is_loopback(endpoint):
            raise ConfigError(
                f"{source}: {key} = {endpoint!r} binds beyond this host; binds are loopback-only "
                "by default: use tcp://127.0.0.1:PORT or ipc://, or set "
                "[security] allow_remote = true (and consider CurveZMQ keys)"
            )
    for key, endpoint in [("publish.endpoint", cfg.publish.endpoint)] + [
        (f"ingest.endpoints[{i}]", e) for i, e in enumerate(cfg.ingest.endpoints)
    ]:
        _check_endpoint(endpoint, key, source)
    if cfg.metrics.address:
        host, _, port = cfg.metrics.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"{source}: metrics.address = {cfg.metrics.address!r}; expected HOST:PORT "
                "such as 127.0.0.1:9108, or an empty string to turn metrics off"
            )
        if not cfg.security.allow_remote and not _host_is_loopback(host):
            raise ConfigError(
                f"{source}: metrics.address = {cfg.metrics.address!r} is not loopback; use "
                "127.0.0.1 or set [security] allow_remote = true"
            )


def _check_cpus(cpus: tuple[int, ...], key: str, source: str) -> None:
    if not cpus:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError(
            f"{source}: {key} = {list(cpus)}; CPU pinning needs Linux (sched_setaffinity): "
            "leave it out on this system"
        )
    allowed = sorted(os.sched_getaffinity(0))
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise ConfigError(
            f"{source}: {key} = {list(cpus)} names CPU(s) {bad} this process may not use; "
            f"available: {allowed}"
        )


def _check_endpoint(endpoint: str, key: str, source: str) -> None:
    scheme = endpoint.partition("://")[0]
    if scheme not in ("tcp", "ipc", "inproc") or "://" not in endpoint:
        raise ConfigError(
            f"{source}: {key} = {endpoint!r}; expected a ZeroMQ endpoint "
            "tcp://HOST:PORT, ipc://PATH or inproc://NAME"
        )


def _host_is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or "*": not provably loopback


def is_loopback(endpoint: str) -> bool:
    """Whether binding ``endpoint`` stays on this host (ipc://, inproc://, tcp on loopback)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0]
    return _host_is_loopback(host)


def load_instruments(cfg: ServeConfig):
    """The instrument registry the config names (a registry file or the inline list).

    Returns
    -------
    lobstream.kernels.registry.Registry
    """
    from lobstream.kernels.registry import Registry, load_registry

    if cfg.instruments.registry:
        try:
            return load_registry(cfg.instruments.registry)
        except OSError as exc:
            raise ConfigError(
                f"{cfg.source}: instruments.registry: cannot read {cfg.instruments.registry}: {exc}"
            ) from None
    reg = Registry()
    for inst in cfg.instruments.instrument:
        try:
            reg.add(inst.symbol, str(inst.tick_size), inst.price_scale)
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: instruments: {exc}") from None
    return reg
