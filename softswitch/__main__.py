"""`python -m softswitch ...`: the same as the `softswitch` command (offloadgen.switchproc runs it this way)."""

import sys

from softswitch.cli import main

sys.exit(main())
