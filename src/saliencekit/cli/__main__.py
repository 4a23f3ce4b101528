"""``python -m saliencekit.cli``: the same as the ``saliencekit`` command."""

import sys

from . import main

sys.exit(main())
