from keras_dsd.datasets.digits import load_mnist_digits
from keras_dsd.datasets.digits import mnist_5k_path
from keras_dsd.datasets.image_folder import IMAGE_EXTENSIONS
from keras_dsd.datasets.image_folder import ImageFolder
from keras_dsd.datasets.image_folder import adm_center_crop
from keras_dsd.datasets.imagenet import IMAGENET_NUM_CLASSES
from keras_dsd.datasets.imagenet import imagenet_folder
from keras_dsd.datasets.imagenet import imagenet_tfds
