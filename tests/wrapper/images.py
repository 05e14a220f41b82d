"""What the wrapper's tests build images with."""

from __future__ import annotations

# The label that makes an image a GPU image for the wrapper: devices and the driver volume.
GPU_LABELS = {"com.nvidia.volumes.needed": "nvidia_driver"}
