"""`nvidia-docker`, the drop-in `docker`: its argv parsing, CUDA compatibility checks, and the run
path that asks the daemon's REST API. Imports `core` and `engine`, none of the daemon's parts:
it talks to the daemon over HTTP only.
"""
