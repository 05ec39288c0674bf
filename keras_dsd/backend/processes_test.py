"""Bad multi-process settings fail at once, naming the setting.

Each backend's `initialize_processes` reads its launcher's variables; the
cases here are refused before any connection is tried, so they run in
this single process.
"""

import json
import re

import keras
import pytest

from keras_dsd import backend
from keras_dsd.backend import environment

BACKEND = keras.backend.backend()

JAX_CASES = [
    (
        {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1"},
        "KERAS_DISTRIBUTION_NUM_PROCESSES, KERAS_DISTRIBUTION_PROCESS_ID "
        "is not set",
    ),
    (
        {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": "2",
        },
        "KERAS_DISTRIBUTION_PROCESS_ID=2 is out of range for "
        "KERAS_DISTRIBUTION_NUM_PROCESSES=2",
    ),
    (
        {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1,127.0.0.1:2",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "3",
            "KERAS_DISTRIBUTION_PROCESS_ID": "0",
        },
        "lists 2 addresses but KERAS_DISTRIBUTION_NUM_PROCESSES=3",
    ),
    (
        {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "two",
            "KERAS_DISTRIBUTION_PROCESS_ID": "0",
        },
        "KERAS_DISTRIBUTION_NUM_PROCESSES='two' is not an integer >= 1",
    ),
]
WORKERS = ["127.0.0.1:1", "127.0.0.1:2"]
TF_CASES = [
    ({"TF_CONFIG": "{not json"}, "is not a JSON object"),
    (
        {
            "TF_CONFIG": json.dumps(
                {
                    "cluster": {"worker": WORKERS},
                    "task": {"type": "worker", "index": 2},
                }
            )
        },
        "is not one of the cluster's 2 workers",
    ),
    (
        {
            "TF_CONFIG": json.dumps(
                {
                    "cluster": {"worker": WORKERS, "ps": ["127.0.0.1:3"]},
                    "task": {"type": "worker", "index": 0},
                }
            )
        },
        'only a cluster of "worker" tasks',
    ),
]
TORCH_CASES = [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK is not set"),
    (
        {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
        "WORLD_SIZE=2 but MASTER_ADDR is not set",
    ),
    (
        {
            "WORLD_SIZE": "2",
            "RANK": "2",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "1",
        },
        "RANK=2 is out of range for WORLD_SIZE=2",
    ),
]
CASES = {"jax": JAX_CASES, "tensorflow": TF_CASES, "torch": TORCH_CASES}
ALL_VARIABLES = {
    name for cases in CASES.values() for env, _ in cases for name in env
} | {"MASTER_ADDR", "MASTER_PORT"}


@pytest.mark.parametrize("env, message", CASES[BACKEND])
def test_bad_settings_fail_naming_the_setting(monkeypatch, env, message):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module = backend._module()
    with pytest.raises(ValueError, match=re.escape(message)):
        module.initialize_processes()


def test_one_process_without_settings(monkeypatch):
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    module = backend._module()
    result = module.initialize_processes()
    assert tuple(result)[-2:] == (1, 0)
    assert backend.process_values(3.0) == [3.0]


@pytest.mark.backend_independent
def test_heartbeat_timeout(monkeypatch):
    monkeypatch.delenv("KERAS_DSD_HEARTBEAT_TIMEOUT", raising=False)
    assert environment.heartbeat_timeout() == 100
    monkeypatch.setenv("KERAS_DSD_HEARTBEAT_TIMEOUT", "10")
    assert environment.heartbeat_timeout() == 10
    monkeypatch.setenv("KERAS_DSD_HEARTBEAT_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="KERAS_DSD_HEARTBEAT_TIMEOUT='-1'"):
        environment.heartbeat_timeout()


@pytest.mark.backend_independent
def test_init_timeout(monkeypatch):
    monkeypatch.delenv("KERAS_DSD_INIT_TIMEOUT", raising=False)
    assert environment.init_timeout() == 300
    monkeypatch.setenv("KERAS_DSD_INIT_TIMEOUT", "12")
    assert environment.init_timeout() == 12
    monkeypatch.setenv("KERAS_DSD_INIT_TIMEOUT", "0")
    with pytest.raises(ValueError, match="KERAS_DSD_INIT_TIMEOUT='0'"):
        environment.init_timeout()
