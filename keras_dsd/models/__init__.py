from keras_dsd.models.dsd.dsd_backbone import DSDBackbone
from keras_dsd.models.dsd.dsd_image_generator import DSDImageGenerator
from keras_dsd.models.dsd.dsd_presets import backbone_presets as presets
