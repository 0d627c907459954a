"""``python -m service``: the same as the ``convserve`` command."""

import sys

from service.cli import main

sys.exit(main())
