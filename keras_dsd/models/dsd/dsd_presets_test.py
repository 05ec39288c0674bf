import gc

import keras
import pytest

from keras_dsd.models import DSDBackbone
from keras_dsd.models import presets

# Totals reported by the paper (Wang & Zhang, arXiv 2511.14716), typed in
# here independently of the presets' metadata.
PAPER_PARAMS = {"dsd_s": 42_000_000, "dsd_m": 118_000_000,
                "dsd_b": 205_000_000}


def test_preset_names():
    assert set(presets) == {"dsd_tiny", "dsd_s", "dsd_m", "dsd_b"}
    for preset in presets.values():
        assert set(preset) == {"metadata", "config"}
        assert preset["metadata"]["description"]


@pytest.mark.parametrize("name", sorted(presets))
def test_parameter_count(name):
    backbone = DSDBackbone.from_preset(name)
    try:
        count = backbone.count_params()
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
    finally:
        del backbone
        keras.backend.clear_session()
        gc.collect()
