"""Reading the launchers' environment variables (`torchrun`'s, Keras'
`KERAS_DISTRIBUTION_*`), shared by the backend modules.

`KERAS_DSD_INIT_TIMEOUT` (seconds, default 300) bounds how long a process
waits for its peers at start-up on every backend; a peer that never joins
then ends each waiting process with `start_up_timeout` instead of a hang.
`KERAS_DSD_HEARTBEAT_TIMEOUT` (seconds, JAX only; default 100, JAX's own)
is how long JAX's coordination service waits for a silent process before
it ends the others.
"""

import contextlib
import os
import subprocess
import sys

INIT_TIMEOUT_VARIABLE = "KERAS_DSD_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300
HEARTBEAT_TIMEOUT_VARIABLE = "KERAS_DSD_HEARTBEAT_TIMEOUT"
DEFAULT_HEARTBEAT_TIMEOUT = 100


def int_variable(name, minimum):
    """The environment variable `name` as an int >= `minimum`, or a
    `ValueError` naming the variable and its value."""
    value = os.environ[name]
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"{name}={value!r} is not an integer >= {minimum}.")
    return number


def init_timeout():
    """`KERAS_DSD_INIT_TIMEOUT` in seconds (default 300)."""
    if not os.environ.get(INIT_TIMEOUT_VARIABLE):
        return DEFAULT_INIT_TIMEOUT
    return int_variable(INIT_TIMEOUT_VARIABLE, 1)


def heartbeat_timeout():
    """`KERAS_DSD_HEARTBEAT_TIMEOUT` in seconds (default 100)."""
    if not os.environ.get(HEARTBEAT_TIMEOUT_VARIABLE):
        return DEFAULT_HEARTBEAT_TIMEOUT
    return int_variable(HEARTBEAT_TIMEOUT_VARIABLE, 1)


def start_up_timeout(seconds, coordinator):
    """The `TimeoutError` of a start-up that waited `seconds` for its
    peers; `coordinator` names the settings that say where to meet."""
    return TimeoutError(
        f"Not every process joined within {INIT_TIMEOUT_VARIABLE}={seconds} "
        f"s: a peer never started or cannot reach the coordinator at "
        f"{coordinator}. Start every process with the same coordinator "
        f"address and process count, or raise {INIT_TIMEOUT_VARIABLE}."
    )


def check_same_count(name, mine, index, others):
    """A `ValueError` unless every process read the same process count.

    `mine`: this process's value of the variable `name`; `others`: a dict
    from process index to the value that process read.
    """
    for other, value in sorted(others.items()):
        if value != mine:
            raise ValueError(
                f"The processes were started with different {name}: "
                f"{name}={mine} on process {index} but {name}={value} on "
                f"process {other}. Start every process with the same value."
            )


# The watchdog process: kills process `argv[1]` with `argv[3]` on stderr
# unless its stdin closes within `argv[2]` seconds.
_WATCHDOG = """
import os, select, signal, sys
ready, _, _ = select.select([sys.stdin], [], [], float(sys.argv[2]))
if not ready:
    sys.stderr.write(sys.argv[3] + "\\n")
    sys.stderr.flush()
    os.kill(int(sys.argv[1]), signal.SIGKILL)
"""


@contextlib.contextmanager
def start_up_watchdog(seconds, coordinator):
    """Ends the process (SIGKILL, `start_up_timeout`'s message on stderr)
    if the block has not finished within `seconds`.

    For the runtimes that wait for their peers without a timeout of their
    own (TensorFlow's collectives, which also hold the GIL, so a thread
    could not act) or that abort from C++ when theirs expires (JAX's
    coordination service), so the user sees which setting to check. A
    separate process watches, told by the end of its stdin that the block
    finished (or that this process died).
    """
    error = start_up_timeout(seconds, coordinator)
    watchdog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _WATCHDOG,
            str(os.getpid()),
            str(seconds),
            f"{type(error).__name__}: {error}",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()
