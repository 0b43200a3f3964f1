"""The bundled model's claimed test metrics are re-measured from the bundled data, not trusted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobstream.models.artifact import load_model
from lobstream.models.manifest import LabelDef
from lobstream.models.metrics import classification_report
from lobstream.models.runner import ModelRunner
from lobstream.replay.samples import GOOG_MESSAGE_10
from lobstream.replay.training.dataset import build_dataset
from tests.conftest import REPO

ARTIFACT = REPO / "models" / "assets" / "binctabl_goog.pt"


@pytest.fixture(scope="module")
def bundled():
    module, manifest = load_model(ARTIFACT)
    lab = manifest["label"]
    ds = build_dataset(
        [GOOG_MESSAGE_10],
        LabelDef(lab["horizon"], lab["unit"], lab["alpha"], lab.get("kind", "smoothed")),
        window=manifest["T"],
        levels=manifest["L"],
    )
    return module, manifest, ds


def test_rebuilt_split_and_normalisation_match_the_manifest(bundled):
    _, manifest, ds = bundled
    assert {k: len(w) for k, w in ds.parts.items()} == manifest["trained_on"]["split_windows"]
    # z-score statistics come from the training rows only, so they must be reproduced exactly
    np.testing.assert_allclose(ds.spec.params, manifest["feature"]["params"], rtol=1e-12)


def test_test_split_metrics_are_what_the_manifest_claims(bundled):
    module, manifest, ds = bundled
    torch.set_num_threads(1)
    runner = ModelRunner(module, manifest, device="cpu", max_batch=512, threads=1)
    test = ds.parts["test"]
    probs = runner.predict(test.batch(np.arange(len(test))))
    got = classification_report(test.labels, probs.argmax(axis=1))
    claimed = manifest["metrics"]["test"]
    # tolerance: the artifact was re-exported (same weights, algebraically equal forward) after
    # training; logits moved by < 1e-6, which may flip a handful of near-tie predictions
    assert abs(got["f1_macro"] - claimed["f1_macro"]) < 2e-3
    assert abs(got["accuracy"] - claimed["accuracy"]) < 2e-3
    # every baseline the manifest holds (trend too, where it was fitted)
    for name, base in manifest["baselines"].items():
        assert got["f1_macro"] > base["test"]["f1_macro"], name
