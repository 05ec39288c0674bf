"""Starting a script as 2 processes, the way each backend's users do.

- PyTorch: `python -m torch.distributed.run --standalone --nproc_per_node
  2 script ...` (`torchrun`), which starts both processes.
- JAX: 2 processes with `KERAS_DISTRIBUTION_JOB_ADDRESSES`,
  `KERAS_DISTRIBUTION_NUM_PROCESSES=2` and `KERAS_DISTRIBUTION_PROCESS_ID`.
- TensorFlow: 2 processes with a `TF_CONFIG` naming 2 workers.

Addresses are free ports of 127.0.0.1. Every process started here is
killed (by its id) if it outlives the timeout.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

# What `keras.distribution.initialize()` reads.
JAX_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def process_environments(backend, num_processes=2):
    """One environment (the variables to add) per process to start; a
    single one for PyTorch, whose launcher starts the processes."""
    if backend == "torch":
        return [{}]
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_processes)]
    if backend == "jax":
        return [
            {
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": ",".join(addresses),
                "KERAS_DISTRIBUTION_NUM_PROCESSES": str(num_processes),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
            }
            for index in range(num_processes)
        ]
    return [
        {
            "TF_CONFIG": json.dumps(
                {
                    "cluster": {"worker": addresses},
                    "task": {"type": "worker", "index": index},
                }
            )
        }
        for index in range(num_processes)
    ]


def launch(backend, script, args, timeout, env=None, kill_when=None):
    """Runs `script args` as 2 processes of `backend`; returns a list of
    `(returncode, output)`, one per started process (PyTorch: the
    launcher's), with `returncode` None for a process still running at
    `timeout` seconds (then killed).

    `kill_when`: optional `(index, marker)`: once started process `index`
    has printed `marker`, it is killed (SIGKILL), as a crashed host would
    be.
    """
    base = {**os.environ, "KERAS_BACKEND": backend, **(env or {})}
    base.pop("XLA_FLAGS", None)
    prefix = [sys.executable]
    if backend == "torch":
        prefix += [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
        ]
    commands = [
        ([*prefix, script, *args], {**base, **extra})
        for extra in process_environments(backend)
    ]
    return supervise(commands, timeout, kill_when)


def plain_environments(backend, num_processes=2):
    """`process_environments`, but for PyTorch too: the variables
    `torchrun` would set, for processes started without it."""
    if backend != "torch":
        return process_environments(backend, num_processes)
    port = free_ports(1)[0]
    return [
        {
            "WORLD_SIZE": str(num_processes),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        for rank in range(num_processes)
    ]


def launch_each(backend, script, environments, timeout, arguments=None):
    """Runs `script` once per environment of `environments` (the
    variables to add), each as a plain process of `backend`, whatever
    launch settings they hold, with its own list of `arguments` if
    given; returns as `launch` does."""
    base = {**os.environ, "KERAS_BACKEND": backend}
    base.pop("XLA_FLAGS", None)
    for name in ("TF_CONFIG", "WORLD_SIZE", "RANK", *JAX_VARIABLES):
        base.pop(name, None)
    arguments = arguments or [[] for _ in environments]
    commands = [
        ([sys.executable, script, *args], {**base, **extra})
        for extra, args in zip(environments, arguments)
    ]
    return supervise(commands, timeout)


def supervise(commands, timeout, kill_when=None):
    """Starts each `(argv, env)` of `commands`; see `launch`."""
    processes, logs = [], []
    for argv, env in commands:
        logs.append(tempfile.TemporaryFile("w+"))
        processes.append(
            subprocess.Popen(
                argv,
                env=env,
                stdout=logs[-1],
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    timed_out = set()
    try:
        while any(p.poll() is None for p in processes):
            if time.monotonic() > deadline:
                break
            if kill_when is not None:
                index, marker = kill_when
                logs[index].seek(0)
                if marker in logs[index].read():
                    processes[index].kill()
                    kill_when = None
            time.sleep(0.5)
    finally:
        for i, process in enumerate(processes):
            if process.poll() is None:
                timed_out.add(i)
                process.kill()
                process.wait()
    results = []
    for i, (process, log) in enumerate(zip(processes, logs)):
        log.seek(0)
        code = None if i in timed_out else process.returncode
        results.append((code, log.read()))
        log.close()
    return results


def tiny_data_parallel_run(global_batch, steps):
    """For the worker scripts: `(context, model, dataset)`, a tiny
    generator compiled with SGD under the data-parallel context of the
    launch, and `steps` batches of this process's shard of a fixed global
    batch."""
    import keras
    import tensorflow as tf

    from keras_dsd.testing import test_utils
    from keras_dsd.utils import distribution

    context = distribution.setup_data_parallel()
    with context.scope():
        model = test_utils.deterministic_generator(
            test_utils.tiny_backbone(), seed=0
        )
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))
    per_process = context.per_process_batch_size(global_batch)
    images = test_utils.random_images(per_process)
    labels = test_utils.random_labels(per_process)
    dataset = (
        tf.data.Dataset.from_tensors((images, labels)).repeat().take(steps)
    )
    dataset = context.distribute_dataset(dataset)
    context.prepare_model(model)
    return context, model, dataset
