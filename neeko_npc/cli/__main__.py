"""``python -m neeko_npc.cli``: the command line, as the bench and tests start a server."""

import sys

from . import main

sys.exit(main())
