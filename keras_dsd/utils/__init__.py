from keras_dsd.utils import image_grid
from keras_dsd.utils import validation
