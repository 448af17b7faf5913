"""`python -m slm_jax.cli ...` == `slm-jax ...`."""
import sys

from slm_jax.cli import main

sys.exit(main())
