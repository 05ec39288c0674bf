"""Joins the processes its environment describes and runs one collective.

Started by `distribution_test.py` with bad launch settings (a peer that
never starts, process counts that differ); a good launch prints
`joined: <the process count of every process>`.
"""

import sys

from keras_dsd.utils import distribution


def main():
    context = distribution.setup_data_parallel()
    counts = context.process_values(context.num_processes)
    print(f"joined: {counts}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
