from keras_dsd.metrics.digit_classifier import build_digit_classifier
from keras_dsd.metrics.digit_classifier import classify_digits
from keras_dsd.metrics.digit_classifier import train_digit_classifier
from keras_dsd.metrics.feature_extractors import EfficientNetLite0Features
from keras_dsd.metrics.feature_extractors import InceptionV3Features
from keras_dsd.metrics.feature_extractors import (
    convert_efficientnet_lite0_weights,
)
from keras_dsd.metrics.frechet import feature_statistics
from keras_dsd.metrics.frechet import frechet_distance
from keras_dsd.metrics.generative_metrics import FrechetDistance
from keras_dsd.metrics.generative_metrics import FrechetInceptionDistance
from keras_dsd.metrics.generative_metrics import InceptionScore
from keras_dsd.metrics.generative_metrics import PrecisionRecall
from keras_dsd.metrics.generative_metrics import precision_recall
from keras_dsd.metrics.generative_metrics import psnr
from keras_dsd.metrics.linear_probe import linear_probe_accuracy
from keras_dsd.metrics.linear_probe import probe_accuracy
from keras_dsd.models.dsd.latent_metrics import covariance_eigenvalues
from keras_dsd.models.dsd.latent_metrics import effective_rank
from keras_dsd.models.dsd.latent_metrics import latent_std
