"""`python -m mlkd_fast ...` runs the CLI (so `torchrun -m mlkd_fast` and `accelerate launch -m mlkd_fast` work)."""
import sys

from mlkd_fast.cli import main

sys.exit(main())
