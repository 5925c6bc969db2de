"""Test-wide setup: 8 fake CPU devices for mesh tests, before jax is imported anywhere."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # scipy's L-BFGS is faster single-threaded on 2 cores
