import keras
import pytest

from keras_dsd.utils import distribution


def test_single_device_context():
    context = distribution.setup_data_parallel()
    assert context.backend == keras.backend.backend()
    assert context.num_processes == 1 and context.is_chief
    assert context.data_shards == 1
    assert context.per_process_batch_size(8) == 8
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
    # torch processes read their own shards; JAX hosts get the global
    # stream, which Keras splits.
    processes = distribution.DataParallelContext(
        backend="torch", num_replicas=2, num_processes=2
    )
    assert processes.data_shards == 2
    assert processes.per_process_batch_size(8) == 4
    hosts = distribution.DataParallelContext(
        backend="jax", num_replicas=8, num_processes=2
    )
    assert hosts.data_shards == 1
    assert hosts.per_process_batch_size(16) == 16
