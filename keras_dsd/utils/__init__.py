from keras_dsd.utils import distribution
from keras_dsd.utils import file_utils
from keras_dsd.utils import image_grid
from keras_dsd.utils import schedules
from keras_dsd.utils import validation
