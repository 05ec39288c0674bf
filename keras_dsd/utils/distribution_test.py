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
    with pytest.raises(
        ValueError, match="batch size 6 is not divisible by the 4 devices"
    ):
        context.per_process_batch_size(6)
    # Processes (torch ranks, JAX hosts) read their own shards.
    processes = distribution.DataParallelContext(
        backend="torch", num_replicas=2, num_processes=2
    )
    assert processes.data_shards == 2
    assert processes.per_process_batch_size(8) == 4
    hosts = distribution.DataParallelContext(
        backend="jax", num_replicas=8, num_processes=2
    )
    assert hosts.data_shards == 2
    assert hosts.per_process_batch_size(16) == 8


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch's gradient buckets"
)
def test_torch_gradient_buckets_on_one_process(tmp_path):
    import numpy as np
    import torch
    import torch.distributed as dist

    from keras_dsd.backend import torch_backend

    with pytest.raises(ValueError, match="bucket_cap_mb must be > 0"):
        torch_backend.GradientBuckets([], bucket_cap_mb=0)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1
    )
    try:
        layer = keras.layers.Dense(3)
        layer.build((None, 4))
        unused = keras.Variable(np.ones(5, "float32"))
        # A 1-byte cap: one bucket per variable, started in reverse order.
        buckets = torch_backend.average_gradients_across_processes(
            [layer.kernel, layer.bias, unused], bucket_cap_mb=2**-20
        )
        assert [len(b) for b in buckets.buckets] == [1, 1, 1]
        x = np.arange(8, dtype="float32").reshape(2, 4)
        torch.sum(layer(x)).backward()
        # d sum(x W + b) / dW[i, j] = sum_n x[n, i]; / db = batch size.
        np.testing.assert_allclose(
            layer.kernel.value.grad.numpy(),
            np.repeat(x.sum(0)[:, None], 3, axis=1),
        )
        np.testing.assert_allclose(layer.bias.value.grad.numpy(), [2.0] * 3)
        # A variable without a gradient gets zeros, so that every process
        # still runs the same all-reduces.
        np.testing.assert_array_equal(unused.value.grad.numpy(), 0.0)
        buckets.remove()
    finally:
        dist.destroy_process_group()
