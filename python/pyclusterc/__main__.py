"""``python -m pyclusterc run TARGET``."""
import sys

from .cli import main

sys.exit(main())
