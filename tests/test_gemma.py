"""The second real model, Gemma 3 270M (post-norms, QK-norm, sliding windows, a 262k vocabulary): the identities of
the analysis methods, validation at load and weight edits on real pretrained weights. All slow; one session fixture."""
import pytest

from workbench.lenses import direct_logit_attribution, logit_lens

from conftest import IOI_CLEAN, IOI_CORRUPT

pytestmark = pytest.mark.slow


def test_dla_and_lens_identities_on_gemma(gemma):
    """DLA sums to the logit difference (it was off by 5.88 on 5.22 before the post-norm scales were frozen);
    the lens's last layer is the model's probability."""
    res = direct_logit_attribution(gemma, [IOI_CLEAN, IOI_CORRUPT], [" Mary", " John"], [" John", " Mary"])
    assert res.meta["identity_error"] < 1e-4 * max(abs(d) for d in res.meta["logit_diff"])
    assert res.meta["logit_diff"][0] > 3  # the model does IOI
    lens = logit_lens(gemma, ["The Eiffel Tower is located in the city of"], " Paris")
    assert abs(lens["prob"].values[0, -1] - lens["prob"].meta["model_prob"][0]) < 1e-5
    assert lens["prob"].values[0, 0] < 0.01 < 0.5 < lens["prob"].values[0, -1]


def test_validation_at_load_passes_on_gemma(gemma):
    from workbench.core.validate import validate_model

    errors = validate_model(gemma)
    assert max(errors.values()) < 1e-5, errors
