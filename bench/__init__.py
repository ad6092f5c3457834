"""Benchmark of genq against in-process transformers (`python -m bench.run`)."""

import os

from worker.cli import OMP_WAIT_POLICY

# In-process baselines run under the worker's OpenMP wait policy (worker/cli.py), so that both
# sides of every ratio compute under the same conditions; libgomp reads it when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
