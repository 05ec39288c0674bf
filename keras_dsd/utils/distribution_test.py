import keras
import pytest

from keras_dsd.utils import distribution


def test_single_device_context():
    context = distribution.setup_data_parallel()
    assert context.backend == keras.backend.backend()
    assert context.num_processes == 1 and context.is_chief
    assert context.per_process_batch_size(8) == 8 // context.num_replicas
    with context.scope():
        pass


def test_batch_size_must_divide_over_devices():
    context = distribution.DataParallelContext(
        backend="jax", num_replicas=4, description="4 gpu device(s)"
    )
    assert context.per_process_batch_size(8) == 8
    with pytest.raises(ValueError, match="batch size 6 is not divisible by "
                                         "the 4 devices"):
        context.per_process_batch_size(6)
    processes = distribution.DataParallelContext(
        backend="torch", num_replicas=2, num_processes=2
    )
    assert processes.per_process_batch_size(8) == 4
