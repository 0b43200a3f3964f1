"""Metrics.observe_many (numpy bucket counts) equals observing each value in turn."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.engine.metrics import LATENCY_BUCKETS, Metrics


def _samples(m: Metrics, stage: str) -> dict:
    return {
        (s.name, s.labels.get("le")): s.value
        for fam in m.registry.collect()
        if fam.name == "lobstream_stage_seconds"
        for s in fam.samples
        if s.labels.get("stage") == stage and not s.name.endswith("_created")
    }


values = st.lists(
    st.one_of(
        st.sampled_from(LATENCY_BUCKETS),  # exactly on a bound: counted in that bucket
        st.floats(0.0, 10.0, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(values)
def test_observe_many_equals_one_by_one(xs: list[float]) -> None:
    batch, single = Metrics(), Metrics()
    batch.observe_many("end_to_end", np.asarray(xs, np.float64))
    for x in xs:
        single.observe("end_to_end", x)
    got, want = _samples(batch, "end_to_end"), _samples(single, "end_to_end")
    assert got.keys() == want.keys()
    for k, v in want.items():
        if k[0].endswith("_sum"):  # summed in another order: equal up to rounding
            assert np.isclose(got[k], v, rtol=1e-12, atol=1e-15), k
        else:
            assert got[k] == v, k
