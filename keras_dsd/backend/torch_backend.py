import keras
import torch


def compile_inference_function(fn, variables):
    def run(*args):
        with torch.no_grad():
            args = [keras.ops.convert_to_tensor(a) for a in args]
            outputs = fn(*args)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, outputs)

    return run


def _process_group():
    """`(rank, world_size)` of an initialised process group, else `None`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(), dist.get_world_size()


def replica_id():
    group = _process_group()
    if group is None or group[1] == 1:
        return None
    return group[0]


def broadcast_variables(variables, source=0):
    """Copies the variables' values from process `source` to all others."""
    import torch.distributed as dist

    with torch.no_grad():
        for variable in variables:
            dist.broadcast(variable.value.data, src=source)


def average_gradients_across_processes(variables):
    """Makes `backward()` leave the process-average gradient in each
    variable, as DistributedDataParallel does, so that Keras' own
    `train_step` and optimizer apply the same update on every process.

    One all-reduce per variable, issued by a hook as soon as that
    variable's gradient is accumulated. Returns the hook handles.
    """
    import torch.distributed as dist

    world_size = dist.get_world_size()

    def hook(parameter):
        dist.all_reduce(parameter.grad)  # gloo has no AVG: sum, then divide
        parameter.grad.div_(world_size)

    return [
        variable.value.register_post_accumulate_grad_hook(hook)
        for variable in variables
    ]


def default_jit_compile():
    # `torch.compile` costs minutes before the first step on small CPUs.
    return False


def scale_loss_for_replicas(loss):
    return loss


def gather_replicas(x):
    """`x` of every process, concatenated along axis 0, in a multi-process
    run; else `x`. For logged values only: no gradient flows back."""
    import torch.distributed as dist

    group = _process_group()
    if group is None or group[1] == 1:
        return x
    x = x.detach().contiguous()
    pieces = [torch.empty_like(x) for _ in range(group[1])]
    dist.all_gather(pieces, x)
    return torch.cat(pieces, dim=0)
