"""``python -m latentqa``: the same as the ``latentqa`` command."""

import sys

from latentqa.cli import main

sys.exit(main())
