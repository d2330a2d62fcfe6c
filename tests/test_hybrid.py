"""The hybrid backend (MAX encoder + PyTorch decoder) gives the reference's tokens, and `compare`
reports every encoder stage within tolerance."""

import numpy as np
import pytest

from max_whisper.decoding import DecodingOptions
from support import (
    FEATURES_ATOL,
    MODEL_NAMES,
    STAGE_MIN_COSINE,
    STAGE_RELATIVE_ATOL,
    requires_reference,
    requires_shared_audio,
    shared_clip,
)

pytestmark = [requires_reference, requires_shared_audio]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hybrid_tokens_match_reference(models, reference, clips, name):
    model = models.get(name, "hybrid")
    for clip in clips:
        ours = model.decode(reference.mel(name, clip)[None], DecodingOptions(language="en"))[0]
        assert ours.tokens == reference.tokens(name, clip), clip.name


def test_compare_reports_every_stage():
    from max_whisper.diagnostics import compare_encoders

    rows = compare_encoders("tiny.en", str(shared_clip("librivox-0880")), "cpu")
    assert [r["tensor"] for r in rows] == [
        "stem",
        "block.0",
        "block.1",
        "block.2",
        "block.3",
        "ln_post",
    ]
    assert {r["dtype"] for r in rows} == {"float32"}
    for row in rows:
        print(f"{row['tensor']}: max|diff| {row['max_abs']:.2e} cosine {row['cosine']:.8f}")
        scale = max(abs(row["ref_min"]), abs(row["ref_max"]))  # the residual stream grows to ~1e3
        assert row["max_abs"] <= STAGE_RELATIVE_ATOL * scale and row["cosine"] > STAGE_MIN_COSINE, (
            row["tensor"]
        )
    assert (
        rows[-1]["max_abs"] <= FEATURES_ATOL
    )  # loose: float32 evaluations differ by ~1e-3 with the CPU
    assert np.isclose(rows[-1]["ref_std"], rows[-1]["max_std"], rtol=1e-3)
