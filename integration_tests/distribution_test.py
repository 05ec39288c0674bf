"""Data-parallel training on 2 devices or 2 processes equals 1-device training.

Each backend runs `distributed_step.py` in fresh processes (the device count
is fixed when the backend starts): in one process, JAX `DataParallel` over 2
host CPU devices and TensorFlow `MirroredStrategy` over 2 logical CPUs; as 2
processes started the way each backend's users start them
(`multi_process.launch`: PyTorch gloo under `torchrun`, JAX with
`KERAS_DISTRIBUTION_*` and gloo CPU collectives, TensorFlow
`MultiWorkerMirroredStrategy` from `TF_CONFIG`). After 2 SGD steps on the
same global batches, the loss and every weight (network, teacher, EMA) must
match the 1-device run. Tolerance 5e-5: the runs differ only in how the
reductions over the batch are split (measured here with per-example times in
(0.2, 0.8): 1e-5 TF; with one time 0.5 for every example it was 6e-8 JAX,
3e-6 TF, 9e-7 torch), while a wrong gradient scale or a missing all-reduce
moves weights by about 1e-2 (the steps change them by 0.18). The logged
`latent_effective_rank` and `latent_std` must match too, and the processes
must hold the same weights.
"""

import json
import os
import re
import subprocess
import sys
import time

import keras
import multi_process
import pytest

BACKEND = keras.backend.backend()
WORKER = os.path.join(os.path.dirname(__file__), "distributed_step.py")
DYING = os.path.join(os.path.dirname(__file__), "dying_process.py")


def _check(summary):
    assert summary["num_replicas"] == 2, summary
    assert summary["max_weight_change"] > 1e-2, summary
    assert summary["max_weight_difference"] < 5e-5, summary
    # The logged loss is the global batch's mean on every backend (each
    # PyTorch process's own metrics see only its shard). It averages both
    # steps, so the second sees the weights' differences: 1.7e-5 relative
    # on TF (Zen 2 CPU), while the first step's 2-image shards have losses
    # 3.1 and 10.4 against the global batch's 6.7.
    assert summary["multi_loss"] == pytest.approx(
        summary["single_loss"], rel=1e-4
    )
    # The latent metrics are computed on the gathered global batch, so 1
    # and 2 devices log the same values (per-replica slices would give a
    # different effective rank).
    for key, value in summary["single_latent"].items():
        assert summary["multi_latent"][key] == pytest.approx(value, rel=1e-4), (
            key
        )
    first, *others = summary["weight_sums_of_processes"]
    assert all(other == first for other in others), summary


# 20-25 s: JAX keeps it in the fast tier (with PyTorch's 2 processes).
@pytest.mark.large(only_backend="tensorflow")
@pytest.mark.skipif(
    BACKEND == "torch", reason="PyTorch runs one process per device"
)
def test_two_devices_match_one_device(tmp_path):
    out = tmp_path / "summary.json"
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    for name in ("TF_CONFIG", *multi_process.JAX_VARIABLES):
        env.pop(name, None)
    if BACKEND == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "")
            + " --xla_force_host_platform_device_count=2"
        )
    result = subprocess.run(
        [sys.executable, WORKER, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["num_processes"] == 1, summary
    _check(summary)


# Two JAX or TensorFlow processes start their runtimes and compile twice:
# about 1-2 min here, so in the full tier (PyTorch's: about 20 s).
@pytest.mark.large(except_backend="torch")
def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "summary.json"
    results = multi_process.launch(BACKEND, WORKER, [str(out)], timeout=600)
    for code, output in results:
        assert code == 0, output[-3000:]
    summary = json.loads(out.read_text())
    assert summary["num_processes"] == 2, summary
    _check(summary)


@pytest.mark.skipif(
    BACKEND != "torch", reason="PyTorch's own gradient all-reduce"
)
def test_accumulation_all_reduces_once_per_update(tmp_path):
    # 2 batches of 4, 2 per update: one update, whose gradient is the mean
    # over both processes and both micro-batches, after one all-reduce of
    # each gradient bucket (the first micro-batch communicates nothing).
    out = tmp_path / "summary.json"
    results = multi_process.launch(
        BACKEND,
        WORKER,
        [str(out)],
        timeout=600,
        env={"DSD_TEST_GRAD_ACCUM": "2"},
    )
    for code, output in results:
        assert code == 0, output[-3000:]
    summary = json.loads(out.read_text())
    _check(summary)
    assert summary["buckets"] > 1, summary
    assert summary["all_reduces"] == summary["buckets"], summary


@pytest.mark.large
def test_a_dying_process_stops_the_other(tmp_path):
    # Process 1 exits after step 2 of 200; process 0 must fail (an error
    # from its next collective, or JAX's and TensorFlow's coordination
    # service once the heartbeats stop; JAX's here after 10 s instead of
    # its default 100 s) rather than wait until the harness kills it.
    env = {"PYTHONUNBUFFERED": "1", "KERAS_DSD_HEARTBEAT_TIMEOUT": "10"}
    results = multi_process.launch(BACKEND, DYING, [], timeout=400, env=env)
    # With PyTorch, `torchrun` is the one process started here: it ends
    # the others once one fails.
    for code, output in results:
        assert code is not None, f"still running at the timeout:\n{output}"
        assert code != 0, output[-3000:]
        assert "finished all" not in output, output[-3000:]


JOINING = os.path.join(os.path.dirname(__file__), "joining_process.py")


def _bad_launches(backend):
    """`(environments, expected)` per case: one environment per process to
    start (not through `torchrun`, which would set matching values), and
    the texts each process's output must hold."""
    port, other, third = multi_process.free_ports(3)
    address = f"127.0.0.1:{port}"
    if backend == "torch":

        def env(world_size, rank):
            return {
                "WORLD_SIZE": str(world_size),
                "RANK": str(rank),
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            }

        return {
            "missing_peer": ([env(2, 0)], [f"MASTER_PORT={port}"]),
            "different_counts": (
                [env(2, 0), env(3, 1)],
                [
                    "different WORLD_SIZE",
                    "WORLD_SIZE=2 on process 0",
                    "WORLD_SIZE=3 on process 1",
                ],
            ),
        }
    if backend == "jax":
        name = "KERAS_DISTRIBUTION_NUM_PROCESSES"

        def env(count, index):
            return {
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": address,
                name: str(count),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
            }

        return {
            "missing_peer": (
                [env(2, 0)],
                [f"KERAS_DISTRIBUTION_JOB_ADDRESSES={address}"],
            ),
            "different_counts": (
                [env(2, 0), env(3, 1)],
                [
                    f"different {name}",
                    f"{name}=2 on process 0",
                    f"{name}=3 on process 1",
                ],
            ),
        }
    workers = [address, f"127.0.0.1:{other}", f"127.0.0.1:{third}"]

    def env(count, index):
        config = {
            "cluster": {"worker": workers[:count]},
            "task": {"type": "worker", "index": index},
        }
        return {"TF_CONFIG": json.dumps(config)}

    return {
        "missing_peer": (
            [env(2, 0)],
            [f"TF_CONFIG={env(2, 0)['TF_CONFIG']}"],
        ),
        "different_counts": (
            [env(2, 0), env(3, 1)],
            ["were started with different TF_CONFIG clusters"],
        ),
    }


@pytest.mark.large
@pytest.mark.parametrize("case", ["missing_peer", "different_counts"])
def test_bad_launch_settings_fail_naming_them(case):
    # A peer that never starts: the others give up after
    # KERAS_DSD_INIT_TIMEOUT (10 s here) with a message naming it and the
    # coordinator's address; process counts that differ: a ValueError
    # naming the setting and both values once the processes have met.
    # Either way every process ends with an error well before the
    # harness's timeout, instead of waiting for ever.
    environments, expected = _bad_launches(BACKEND)[case]
    seconds = 10 if case == "missing_peer" else 60
    for env in environments:
        env["KERAS_DSD_INIT_TIMEOUT"] = str(seconds)
    started = time.monotonic()
    results = multi_process.launch_each(
        BACKEND, JOINING, environments, timeout=240
    )
    elapsed = time.monotonic() - started
    # Start-up (imports: up to about 20 s on a busy machine) plus the
    # timeout, with margin.
    assert elapsed < seconds + 90, elapsed
    for code, output in results:
        assert code is not None, f"still running at the timeout:\n{output}"
        assert code != 0, output[-3000:]
        assert "joined:" not in output, output[-3000:]
        for text in expected:
            assert text in output, output[-3000:]
        if case == "missing_peer":
            assert f"KERAS_DSD_INIT_TIMEOUT={seconds} s" in output, output


TIME_LIMIT = os.path.join(os.path.dirname(__file__), "time_limit_process.py")


# Two processes start their runtimes: 15-20 s on PyTorch, 1-2 min on
# JAX or TensorFlow.
@pytest.mark.large
def test_time_limit_stops_every_process_after_the_same_batch():
    # Process 1's 2 s budget runs out after about 20 of 200 steps, process
    # 0's 10 min never does: both must stop after the same batch (no
    # process left waiting in a collective) and exit 0.
    results = multi_process.launch(
        BACKEND, TIME_LIMIT, [], timeout=400, env={"PYTHONUNBUFFERED": "1"}
    )
    output = "".join(text for _, text in results)
    for code, text in results:
        assert code == 0, text[-3000:]
    # torchrun merges both processes' output into one stream, where one
    # report can follow another on the same line: find each object.
    reports = sorted(
        (json.loads(m) for m in re.findall(r"time_limit: (\{.*?\})", output)),
        key=lambda r: r["process"],
    )
    assert [r["process"] for r in reports] == [0, 1], output[-3000:]
    step = reports[0]["stopped_at_step"]
    assert step is not None and 0 < step < 199, reports
    for report in reports:
        assert report["stopped_at_step"] == step, reports
        assert report["batches"] == step + 1, reports
    # Process 0 stopped on process 1's clock, long before its own budget.
    assert reports[0]["seconds"] < 300, reports
