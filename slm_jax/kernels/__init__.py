"""Pallas kernels of slm_jax, each with its pure-JAX reference and custom VJP."""
