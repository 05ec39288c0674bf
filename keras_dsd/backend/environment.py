"""Reading the launchers' environment variables (`torchrun`'s, Keras'
`KERAS_DISTRIBUTION_*`), shared by the backend modules."""

import os


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
