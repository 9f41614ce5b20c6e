"""`python -m maefast.cli ...` (what torchrun runs: torchrun --nproc-per-node N -m maefast.cli train ...)."""
import sys

from maefast.cli import main

sys.exit(main())
