from keras_hub.src.utils import preset_utils as _hub_preset_utils

from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.dsd_presets import backbone_presets

# keras-hub's per-class preset table, so that `DSDBackbone.presets` (and
# `keras_hub.models.Backbone.presets`) list them. Not `register_presets`:
# that also fills keras-hub's global table, whose entries must carry a
# `kaggle_handle` to download; ours are architectures without weights, which
# `DSDBackbone.from_preset` builds itself.
_hub_preset_utils.BUILTIN_PRESETS_FOR_BACKBONE[DSDBackbone].update(
    backbone_presets
)
