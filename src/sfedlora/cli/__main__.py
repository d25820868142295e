"""python -m sfedlora.cli: the command line."""

import sys

from sfedlora.cli import main

sys.exit(main())
