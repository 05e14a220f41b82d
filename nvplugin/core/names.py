"""The names users, Docker and container images see; one place, so the daemon, the wrapper and
`doctor` cannot drift apart (1.0's names throughout)."""

from __future__ import annotations

DAEMON_PROGRAM = "nvidia-docker-plugin"
WRAPPER_PROGRAM = "nvidia-docker"
# The volume driver's name: the socket is `<PLUGIN_NAME>.sock`, images ask for it by this name.
PLUGIN_NAME = "nvidia-docker"
# Volume kinds the daemon serves, named in the image label `com.nvidia.volumes.needed`, and where
# each is mounted in the container (1.0's images set PATH/LD_LIBRARY_PATH under it).
DRIVER_VOLUME_KIND = "nvidia_driver"
VOLUME_KINDS: dict[str, tuple[str, str]] = {DRIVER_VOLUME_KIND: ("/usr/local/nvidia", "ro")}
# The CDI spec file the daemon keeps in its --cdi-dir (named after the plugin, so it never takes
# the name of NVIDIA's toolkit's nvidia.yaml or another producer's file).
CDI_SPEC_FILE = f"{PLUGIN_NAME}.json"
