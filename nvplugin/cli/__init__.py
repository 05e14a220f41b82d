"""`nvidia-docker-plugin`: the entry point and its subcommands (`serve`, the daemon's wiring and
lifecycle; `list`; `doctor`; `cdi`). The top layer: may import every other part.
"""
