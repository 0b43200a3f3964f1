"""Artifacts: manifest of contract 3, eager vs scripted vs reloaded parity, refusals."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from lobstream.models.artifact import (
    EXPORT_PARITY_ATOL,
    FORMAT_VERSION,
    ArtifactError,
    export_model,
    load_model,
    quiet_jit,
    script_module,
    sha256_file,
)
from lobstream.models.zoo import ARCHITECTURES, build_model

# Parity tolerance for eager vs scripted vs reloaded, float32 on CPU under no_grad in eval
# mode: the same kernels run, so differences are at most re-association noise.
PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-5


def _manifest(**over) -> dict:
    m = {
        "feature": {"kind": "zscore", "params": [100.0, 5.0, 300.0, 200.0]},
        "label": {"horizon": 20, "unit": "events", "alpha": 2e-5, "smoothing": "mean"},
        "trained_on": {"files": ["GOOG_2012-06-21_message_10.csv.gz"], "windows": 1000},
        "metrics": {"f1_macro": 0.5},
    }
    m.update(over)
    return m


def _trained_ish(arch: str, **cfg) -> torch.nn.Module:
    """A model whose BatchNorm running stats are not the defaults, so eval mode matters."""
    torch.manual_seed(0)
    model = build_model(arch, **cfg)
    model.train()
    c = model.config
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, c.T, c.F) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_parity_eager_scripted_reloaded(arch: str, tmp_path: Path) -> None:
    model = _trained_ish(arch, T=40, levels=5)
    x = torch.randn(6, 1, 40, 20, generator=torch.Generator().manual_seed(1))
    path = tmp_path / f"{arch}.pt"
    digest = export_model(model, path, _manifest())
    loaded, manifest = load_model(path, sha256=digest)
    with torch.no_grad():
        eager = model(x)
        scripted = script_module(model)(x)
        reloaded = loaded(x)
    torch.testing.assert_close(scripted, eager, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    torch.testing.assert_close(reloaded, eager, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert not loaded.training
    assert manifest["arch"] == arch
    assert (manifest["T"], manifest["L"], manifest["F"]) == (40, 5, 20)
    assert manifest["config"]["T"] == 40 and manifest["config"]["levels"] == 5
    assert EXPORT_PARITY_ATOL >= PARITY_ATOL


def test_manifest_fields_of_contract_3(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    digest = export_model(_trained_ish("cnn"), path, _manifest(extra_note="kept"))
    assert digest == sha256_file(path) and len(digest) == 64
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/manifest.json"))
        raw = json.loads(z.read(name))
    for key in (
        "format_version",
        "arch",
        "config",
        "T",
        "L",
        "F",
        "feature",
        "class_names",
        "label",
        "trained_on",
        "metrics",
        "created",
    ):
        assert key in raw, key
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["class_names"] == ["down", "flat", "up"]
    assert raw["extra_note"] == "kept"
    _, manifest = load_model(path)
    assert manifest == raw


def test_export_leaves_model_usable_and_in_eval(tmp_path: Path) -> None:
    model = build_model("hrnn", T=10, levels=2).train()
    export_model(model, tmp_path / "h.pt", _manifest())
    assert not model.training


def test_missing_caller_fields_refused(tmp_path: Path) -> None:
    m = _manifest()
    del m["label"]
    with pytest.raises(ArtifactError, match=r"lacks \['label'\]"):
        export_model(build_model("cnn"), tmp_path / "x.pt", m)
    with pytest.raises(ArtifactError, match="'kind' and 'params'"):
        export_model(build_model("cnn"), tmp_path / "x.pt", _manifest(feature={"kind": 0}))
    assert not (tmp_path / "x.pt").exists()


def test_contradicting_derived_field_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest gives T=50 but the model has T=100"):
        export_model(build_model("cnn"), tmp_path / "x.pt", _manifest(T=50))


def test_non_json_manifest_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not JSON-serialisable"):
        export_model(build_model("cnn"), tmp_path / "x.pt", _manifest(trained_on={1, 2}))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("art") / "cnn.pt"
    return path, export_model(build_model("cnn", T=20, levels=2), path, _manifest())


def test_expect_match_accepted(artifact) -> None:
    path, _ = artifact
    _, m = load_model(
        path,
        expect={
            "T": 20,
            "L": 2,
            "arch": "cnn",
            "feature": {"kind": "zscore"},
            "label.horizon": 20,
            "label.alpha": 2e-5,
        },
    )
    assert m["T"] == 20


@pytest.mark.parametrize(
    ("expect", "match"),
    [
        ({"T": 100}, "model artifact has T=20 but the config expects T=100"),
        (
            {"feature": {"kind": "ticks_from_mid"}},
            "has feature.kind='zscore' but the config expects feature.kind='ticks_from_mid'",
        ),
        ({"label.horizon": 50}, "label.horizon=20 but the config expects label.horizon=50"),
        ({"venue": "x"}, "manifest has no 'venue'"),
    ],
)
def test_expect_mismatch_names_both_values(artifact, expect, match) -> None:
    path, _ = artifact
    with pytest.raises(ArtifactError, match=match):
        load_model(path, expect=expect)


def test_sha256_pin(artifact) -> None:
    path, digest = artifact
    load_model(path, sha256=digest.upper())
    wrong = "0" * 64
    with pytest.raises(ArtifactError, match=f"SHA-256 is {digest} but the config pins {wrong}"):
        load_model(path, sha256=wrong)


def test_not_an_artifact_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="not a TorchScript archive"):
        load_model(junk)
    with pytest.raises(ArtifactError, match="not found"):
        load_model(tmp_path / "missing.pt")
    plain = tmp_path / "plain.pt"
    with quiet_jit():
        torch.jit.save(script_module(build_model("cnn", T=16, levels=2)), str(plain))
    with pytest.raises(ArtifactError, match="without manifest.json"):
        load_model(plain)


def test_cuda_refused_without_cuda(artifact) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ArtifactError, match="CUDA is not available"):
        load_model(artifact[0], device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_on_cuda_parity(artifact) -> None:
    path, _ = artifact
    cpu, _ = load_model(path)
    gpu, _ = load_model(path, device="cuda")
    x = torch.randn(4, 1, 20, 8)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-4, rtol=1e-4)
