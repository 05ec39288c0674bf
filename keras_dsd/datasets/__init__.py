from keras_dsd.datasets.digits import load_mnist_digits
from keras_dsd.datasets.digits import mnist_5k_path
