"""The daemon config: typed, frozen, unknown keys refused, loopback binds by default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lobstream.engine.config import (
    ConfigError,
    ServeConfig,
    config_from_dict,
    is_loopback,
    load_config,
    load_instruments,
)

REPO = Path(__file__).resolve().parents[1]

MINIMAL = {
    "model": {"path": "m.pt"},
    "instruments": {"instrument": [{"symbol": "GOOG", "tick_size": 0.01}]},
}


def _with(**tables) -> dict:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in MINIMAL.items()}
    for k, v in tables.items():
        d[k] = {**d.get(k, {}), **v}
    return d


def test_example_config_loads():
    cfg = load_config(REPO / "examples" / "serve.toml")
    assert isinstance(cfg, ServeConfig)
    assert cfg.publish.encoding == "binary"
    assert cfg.model.window == 100 and cfg.model.levels == 10
    # relative paths resolve against the config's folder
    assert Path(cfg.model.path).is_absolute()
    reg = load_instruments(cfg)
    assert reg.by_symbol("GOOG").id == 0


def test_demo_config_loads():
    from importlib.resources import files

    path = files("lobstream.engine") / "assets" / "demo.toml"
    cfg = load_config(str(path))
    assert cfg.model.device in ("auto", "cpu")


def test_frozen():
    cfg = config_from_dict(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.max_batch = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_allowed():
    with pytest.raises(ConfigError) as e:
        config_from_dict(_with(model={"max_bacth": 4}))
    msg = str(e.value)
    assert "model.max_bacth" in msg and "max_batch" in msg


def test_unknown_table():
    with pytest.raises(ConfigError, match="unknown key 'ingset'.*ingest"):
        config_from_dict({**MINIMAL, "ingset": {}})


def test_missing_model():
    with pytest.raises(ConfigError, match=r"\[model\]"):
        config_from_dict({"instruments": MINIMAL["instruments"]})


@pytest.mark.parametrize(
    "tables, match",
    [
        ({"model": {"max_batch": "8"}}, "model.max_batch must be an integer"),
        ({"model": {"max_batch": 0}}, "positive"),
        ({"model": {"device": "tpu"}}, "auto, cpu, cuda"),
        ({"publish": {"encoding": "xml"}}, "binary, json"),
        ({"model": {"sha256": "abc"}}, "64 hex"),
        ({"publish": {"endpoint": "udp://1.2.3.4:5"}}, "ZeroMQ endpoint"),
        ({"security": {"allow_remote": "yes"}}, "true or false"),
        ({"metrics": {"address": "9108"}}, "HOST:PORT"),
    ],
)
def test_bad_values(tables, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(_with(**tables))


@pytest.mark.parametrize(
    "endpoint", ["tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555"]
)
def test_remote_bind_refused_unless_allowed(endpoint):
    with pytest.raises(ConfigError, match="allow_remote"):
        config_from_dict(_with(publish={"endpoint": endpoint}))
    cfg = config_from_dict(_with(publish={"endpoint": endpoint}, security={"allow_remote": True}))
    assert cfg.publish.endpoint == endpoint


def test_remote_connect_allowed():
    cfg = config_from_dict(_with(ingest={"endpoints": ["tcp://10.1.2.3:5555"], "mode": "connect"}))
    assert cfg.ingest.endpoints == ("tcp://10.1.2.3:5555",)
    with pytest.raises(ConfigError, match="ingest.endpoints"):
        config_from_dict(_with(ingest={"endpoints": ["tcp://10.1.2.3:5555"], "mode": "bind"}))


def test_metrics_non_loopback_refused():
    with pytest.raises(ConfigError, match="metrics.address"):
        config_from_dict(_with(metrics={"address": "0.0.0.0:9108"}))


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://127.0.0.1:1", True),
        ("tcp://localhost:1", True),
        ("tcp://[::1]:1", True),
        ("tcp://*:1", False),
        ("tcp://192.168.0.1:1", False),
    ],
)
def test_is_loopback(endpoint, expected):
    assert is_loopback(endpoint) is expected


def test_topics_string_becomes_tuple():
    cfg = config_from_dict(_with(ingest={"topics": "md.G"}))
    assert cfg.ingest.topics == ("md.G",)


def test_instruments_required_and_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="no instruments"):
        config_from_dict({"model": {"path": "m.pt"}})
    reg = tmp_path / "reg.toml"
    reg.write_text('[[instrument]]\nsymbol = "A"\ntick_size = 0.5\n')
    with pytest.raises(ConfigError, match="use one of them"):
        config_from_dict(_with(instruments={"registry": str(reg)}))
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[model]\npath = "m.pt"\n[instruments]\nregistry = "reg.toml"\n')
    cfg = load_config(cfg_file)
    assert load_instruments(cfg).by_symbol("A").id == 0
    assert cfg.model.path == str(tmp_path / "m.pt")


def test_bad_toml_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(p)


def test_cpus_checked_against_this_process():
    import os

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("CPU pinning is Linux-only")
    mine = sorted(os.sched_getaffinity(0))
    cfg = config_from_dict(_with(model={"cpus": mine[:1]}, ingest={"cpus": mine[-1:]}))
    assert cfg.model.cpus == tuple(mine[:1]) and cfg.ingest.cpus == tuple(mine[-1:])
    assert config_from_dict(MINIMAL).model.cpus == ()  # default: not pinned
    with pytest.raises(ConfigError, match=r"model\.cpus .*may not use; available"):
        config_from_dict(_with(model={"cpus": [max(mine) + 1000]}))
    with pytest.raises(ConfigError, match=r"ingest\.cpus\[0\] must be an integer"):
        config_from_dict(_with(ingest={"cpus": ["0"]}))


def test_busy_poll_must_not_be_negative():
    assert config_from_dict(_with(ingest={"busy_poll_us": 500})).ingest.busy_poll_us == 500
    with pytest.raises(ConfigError, match=r"ingest\.busy_poll_us = -1; expected >= 0"):
        config_from_dict(_with(ingest={"busy_poll_us": -1}))
