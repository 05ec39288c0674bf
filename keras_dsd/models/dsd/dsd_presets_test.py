import keras
import pytest

from keras_dsd.models import DSDBackbone
from keras_dsd.models import presets

# Totals reported by the paper (Wang & Zhang, arXiv 2511.14716), typed in
# here independently of the presets' metadata.
PAPER_PARAMS = {"dsd_s": 42_000_000, "dsd_m": 118_000_000, "dsd_b": 205_000_000}


def _count_params(name):
    """`count_params()` of the preset's backbone, without initialising it.

    Variables created in a stateless scope with `initialize_variables=False`
    get their shapes but no values, so building `dsd_b` (211M parameters)
    takes a fraction of a second instead of ~10 s; the count only needs the
    shapes. `test_deferred_count_equals_built_count` checks that the two
    ways agree.
    """
    try:
        with keras.StatelessScope(initialize_variables=False):
            backbone = DSDBackbone.from_preset(name)
        return backbone.count_params(), backbone
    finally:
        # Drops the registry of uninitialised variables.
        keras.backend.clear_session()


def test_preset_names():
    assert set(presets) == {"dsd_tiny", "dsd_s", "dsd_m", "dsd_b"}
    for preset in presets.values():
        assert set(preset) == {"metadata", "config"}
        assert preset["metadata"]["description"]


def test_deferred_count_equals_built_count():
    built = DSDBackbone.from_preset("dsd_tiny")
    assert _count_params("dsd_tiny")[0] == built.count_params()


@pytest.mark.parametrize("name", sorted(presets))
def test_parameter_count(name):
    count, backbone = _count_params(name)
    metadata = presets[name]["metadata"]
    assert count == metadata["params"]
    for key, value in presets[name]["config"].items():
        assert getattr(backbone, key) == value
    if name == "dsd_tiny":
        assert count < 2_000_000
        assert metadata["paper_params"] is None
    else:
        assert metadata["paper_params"] == PAPER_PARAMS[name]
        assert abs(count / PAPER_PARAMS[name] - 1.0) <= 0.05
        assert backbone.image_size == 256 and backbone.patch_size == 16
