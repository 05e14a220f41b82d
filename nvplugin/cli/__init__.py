"""`nvidia-docker-plugin`: the entry point and its subcommands (`serve`, the daemon's wiring and
lifecycle; `list`; `doctor`; `cdi`). The top layer: may import every other part.
"""

import time

# The origin of the daemon's start-up phases (core/phases.py), taken before any of the entry
# point's own imports: they are part of what start-up costs.
STARTED = time.monotonic()
