"""The operations kit agrees with the code: ``lobstream --version``, the Grafana dashboard and
docs/METRICS.md against what the daemon and the feed export on their /metrics pages, the
systemd unit, the Docker image (built where a Docker daemon answers)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from fnmatch import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from lobstream import cli
from lobstream.bench.harness import lobstream_cmd
from lobstream.live.metrics import FeedMetrics
from lobstream.replay.feed.synthetic import synthetic_events
from tests.test_daemon import Running, export_test_model, make_cfg

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "lobstream.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"
UNIT = REPO / "deploy" / "lobstream.service"
# labels Prometheus adds to every series it scrapes (not on the /metrics page)
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_created")


# ------------------------------------------------------------------------------ version ---
def test_version_prints_the_package_version():
    res = CliRunner().invoke(cli.main, ["--version"])
    assert res.exit_code == 0, res.output
    want = importlib.metadata.version("lobstream")
    assert res.output == f"lobstream {want}\n"
    # the installed metadata is this tree's pyproject (an editable install of it)
    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == want


def test_version_in_a_fresh_process_imports_no_subcommand():
    code = (
        "import sys; sys.argv = ['lobstream', '--version']\n"
        "from lobstream.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('lobstream.cli.'))\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    version_line, loaded = out.splitlines()
    assert version_line == f"lobstream {importlib.metadata.version('lobstream')}"
    assert loaded == "[]"


# ------------------------------------------------------------------------------ metrics ---
class Exported:
    """Metric families of one /metrics page: name -> (type, label names, label values)."""

    def __init__(self, text: str) -> None:
        self.families: dict[str, str] = {}
        self.labels: dict[str, set[str]] = {}
        self.values: dict[tuple[str, str], set[str]] = {}
        self.samples: dict[str, str] = {}  # sample name -> family
        for fam in text_string_to_metric_families(text):
            self.families[fam.name] = fam.type
            self.labels[fam.name] = set()
            for s in fam.samples:
                self.samples[s.name] = fam.name
                for k, v in s.labels.items():
                    self.labels[fam.name].add(k)
                    self.values.setdefault((fam.name, k), set()).add(v)
        # the text format writes a counter's or histogram's _created samples as a gauge family
        # of their own: they belong to the family they describe
        for name in [n for n in self.families if n.endswith("_created")]:
            base = name.removesuffix("_created")
            if self.families.get(base) in ("counter", "histogram"):
                del self.families[name], self.labels[name]
                for s in [s for s, f in self.samples.items() if f == name]:
                    self.samples[s] = base

    def documented_names(self) -> set[str]:
        """The names docs/METRICS.md lists: counters with ``_total``, the rest as the family."""
        return {n + "_total" if t == "counter" else n for n, t in self.families.items()}

    def __or__(self, other: Exported) -> Exported:
        out = Exported("")
        for d in ("families", "labels", "values", "samples"):
            setattr(out, d, getattr(self, d) | getattr(other, d))
        return out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """What ``lobstream serve`` and ``lobstream feed`` serve on /metrics: the daemon on a thread
    with its metrics endpoint on 127.0.0.1 after some market data, and the feed's metrics
    endpoint (the registry ``lobstream feed binance`` serves) for one symbol."""
    import tempfile

    ipc_dir = tempfile.mkdtemp(prefix="lob", dir="/tmp")
    model = tmp_path_factory.mktemp("model") / "cnn.pt"
    export_test_model(model)
    symbols = ["AAA", "BBB"]
    cfg = make_cfg(ipc_dir, model, symbols, metrics={"address": "127.0.0.1:0"})
    run = Running(cfg, symbols)
    try:
        run.wait_messages(run.send(synthetic_events(400, 2, seed=1, levels=4)))
        run.collect(idle_s=0.2)
        daemon_text = _get(f"http://127.0.0.1:{run.daemon.metrics_port}/metrics")
    finally:
        run.stop()
        shutil.rmtree(ipc_dir, ignore_errors=True)
    feed = FeedMetrics(["BTCUSDT"])
    port = feed.serve_http("127.0.0.1:0")
    try:
        feed_text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        feed.close_http()
    daemon, feed_ = Exported(daemon_text), Exported(feed_text)
    assert "lobstream_events" in daemon.families and "lobstream_feed_events" in feed_.families
    assert not set(daemon.families) & set(feed_.families)
    return daemon | feed_


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# a metric name with an optional selector: name{label="v", label=~"re"}
_SELECTOR = re.compile(r"\b(lobstream_[a-zA-Z0-9_]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# label names in by (...) / without (...) / on (...) / ignoring (...)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def test_dashboard_queries_name_only_exported_metrics_and_labels(exported):
    queries = dashboard_queries()
    assert len(queries) >= 20
    used: set[str] = set()
    for expr in queries:
        names = _SELECTOR.findall(expr)
        assert names, f"a query of no lobstream metric: {expr}"
        for sample, selector in names:
            assert sample in exported.samples, f"{sample} is not exported ({expr})"
            fam = exported.samples[sample]
            used.add(fam)
            allowed = exported.labels[fam] | TARGET_LABELS
            for label, op, value in _MATCHER.findall(selector):
                assert label in allowed, f"{sample} has no label {label!r} ({expr})"
                if op == "=" and label not in TARGET_LABELS:
                    assert value in exported.values[fam, label], (label, value, expr)
        groups = {g.strip() for m in _GROUPING.findall(expr) for g in m.split(",") if g.strip()}
        fams = {exported.samples[s] for s, _ in names}
        for g in groups - TARGET_LABELS:
            assert all(g in exported.labels[f] for f in fams), f"no label {g!r} in {expr}"
        # label_values(metric, label)
        for metric, label in re.findall(r"label_values\((\w+),\s*(\w+)\)", expr):
            assert (
                metric in exported.samples
                and label in TARGET_LABELS | exported.labels[exported.samples[metric]]
            ), expr
    # and every exported metric has a panel
    assert used == set(exported.families), set(exported.families) ^ used


def test_dashboard_layout_is_importable():
    """Unique panel ids, panels inside the 24-column grid, no two panels on the same cells,
    every query panel on the datasource variable."""
    dash = json.loads(DASHBOARD.read_text())
    ids, cells = set(), set()
    for p in dash["panels"]:
        assert p["id"] not in ids, p["title"]
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["y"] + dy, g["x"] + dx) for dy in range(g["h"]) for dx in range(g["w"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names[0] == "datasource" and len(set(names)) == len(names)


def test_histogram_panels_use_the_bucket_series(exported):
    for expr in dashboard_queries():
        for sample, _ in _SELECTOR.findall(expr):
            fam = exported.samples[sample]
            if exported.families[fam] == "histogram":
                assert sample != fam and sample.endswith(HISTOGRAM_SUFFIXES), expr
            if "histogram_quantile" in expr and exported.families[fam] == "histogram":
                assert sample.endswith("_bucket") and "le" in expr, expr


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """Rows of docs/METRICS.md's tables: name -> (type, labels)."""
    rows = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].startswith("`lobstream"):
            name = cells[0].strip("`")
            assert name not in rows, f"{name} listed twice"
            rows[name] = (cells[1], set(re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_metrics_doc_lists_exactly_the_exported_metrics(exported):
    doc = documented_metrics()
    assert set(doc) == exported.documented_names(), set(doc) ^ exported.documented_names()
    for name, (kind, labels) in doc.items():
        fam = exported.samples.get(name, name)
        assert kind == exported.families[fam], name
        assert labels == exported.labels[fam] - {"le"}, name


def test_metrics_doc_lists_every_label_value(exported):
    """Every value of reason, condition and stage the daemon creates at start is described."""
    text = METRICS_DOC.read_text()
    for fam, label in (
        ("lobstream_rejected", "reason"),
        ("lobstream_book_conditions", "condition"),
        ("lobstream_stage_seconds", "stage"),
        ("lobstream_feed_reconnects", "reason"),
        ("lobstream_feed_malformed", "reason"),
    ):
        for value in exported.values[fam, label]:
            assert f"`{value}`" in text, (fam, label, value)


# ------------------------------------------------------------------------------ systemd ---
def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_stops_with_sigterm_reloads_with_sighup_and_restarts():
    s = unit_settings()
    assert s["KillSignal"] == ["SIGTERM"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert any(v.endswith("serve --config /etc/lobstream/lobstream.toml") for v in s["ExecStart"])
    # the signals the unit sends are the ones the service handles
    from lobstream.engine import service

    src = Path(service.__file__).read_text()
    assert "signal.signal(signal.SIGTERM" in src and "signal.signal(signal.SIGHUP" in src


def test_systemd_unit_verifies(tmp_path):
    """``systemd-analyze verify`` finds nothing to say (the binary pointed at this venv's)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    exe = Path(sys.executable).parent / "lobstream"
    if not exe.exists():
        pytest.skip(f"no lobstream script beside {sys.executable}")
    unit = tmp_path / "lobstream.service"
    unit.write_text(UNIT.read_text().replace("/opt/lobstream/bin/lobstream", str(exe)))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


# ------------------------------------------------------------------------------- docker ---
def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def test_dockerignore_keeps_what_the_build_needs():
    """Every package folder of pyproject, pyproject.toml itself, README.md (its readme) and the
    LICENSE reach the build context."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    needed = {"pyproject.toml", "README.md", "LICENSE"}
    needed |= {d.split("/")[0] for d in project["tool"]["setuptools"]["package-dir"].values()}
    patterns = dockerignore_patterns()
    for path in needed:
        assert (REPO / path).exists(), path
        assert not any(fnmatch(path, p) for p in patterns), f".dockerignore drops {path}"
    text = (REPO / "Dockerfile").read_text()
    assert 'CMD ["serve", "--config", "/etc/lobstream/lobstream.toml"]' in text
    assert "torch==${TORCH_VERSION}" in text and "ARG TORCH_VERSION=2.13.0" in text


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        ok = subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if ok else None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_docker_image_builds_and_prints_its_version():
    docker = _docker_daemon()
    if docker is None:
        pytest.skip("no Docker daemon answers here (docker info fails or docker is absent)")
    tag = "lobstream-test:ops"
    subprocess.run([docker, "build", "-t", tag, str(REPO)], check=True, timeout=3600)
    try:
        out = subprocess.run(
            [docker, "run", "--rm", tag, "--version"],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip
        assert out.strip() == f"lobstream {importlib.metadata.version('lobstream')}"
    finally:
        subprocess.run([docker, "image", "rm", "-f", tag], capture_output=True, timeout=120)


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text
    assert all(f"\n   {n}. " in text for n in range(1, 10))  # the nine sections
    with open(REPO / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["license"] == {"text": "Apache-2.0"}


def test_lobstream_cmd_version_matches():
    """The ``lobstream`` the benchmarks and spawned daemons run reports the same version."""
    out = subprocess.run(
        [*lobstream_cmd(), "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.strip() == f"lobstream {importlib.metadata.version('lobstream')}"


# ------------------------------------------------------------------------- dependencies ---
def test_every_core_dependency_is_imported_by_the_package():
    """A dependency nothing imports is dead weight for every install (zstandard was one: DBN
    zstd is decoded by databento-dbn, Parquet's by polars)."""
    with open(REPO / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    dists = {re.match(r"[A-Za-z0-9._-]+", d).group(0) for d in project["dependencies"]}
    norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()  # noqa: E731
    modules: dict[str, set[str]] = {}
    for mod, owners in importlib.metadata.packages_distributions().items():
        for owner in owners:
            modules.setdefault(norm(owner), set()).add(mod)
    with open(REPO / "pyproject.toml", "rb") as f:
        package_dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    dirs = {d.split("/")[0] for d in package_dirs}
    imported: set[str] = set()
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
    for d in dirs:
        for f in (REPO / d).rglob("*.py"):
            imported |= set(pattern.findall(f.read_text(errors="replace")))
    unused = [d for d in dists if not modules.get(norm(d), set()) & imported]
    assert not unused, f"declared in pyproject but never imported: {unused}"
