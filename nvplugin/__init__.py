"""nvplugin: GPU devices and NVIDIA driver volumes for ordinary `docker run` containers."""

__version__ = "2.0.0"
