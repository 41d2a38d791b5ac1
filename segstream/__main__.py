"""``python -m segstream``: the ``segstream`` console command, its signal handling included."""

import sys

from segstream.pipeline.entry import main

sys.exit(main())
