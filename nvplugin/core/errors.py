"""Every failure nvplugin reports to a user, as one exception tree.

    NvpluginError                 message says what went wrong and what to do
    ├── ConfigError               a bad flag or environment value
    │   └── VolumesDirBusy        another daemon holds the volumes directory
    ├── UnsafeFileError           a file that is not a regular file, too large, or not the one
    │                             discovery inspected: refused rather than read or copied
    ├── DiscoveryError            the driver's files could not be found or read
    │   ├── CacheFormatError      ld.so.cache is truncated, corrupted or foreign
    │   ├── ElfError              a file is not ELF or is damaged
    │   ├── DriverNotFound        no NVIDIA driver under the driver root
    │   └── RootEscapeError       a symlink leaves the driver root
    ├── NvmlError                 NVML could not be loaded or a call failed
    ├── SelectionError            `invalid device: <item>` (1.0's wording)
    ├── DeviceAccessError         a selected device's nodes are missing on this host
    ├── CdiError                  a CDI spec that would be invalid, or name a missing host file
    ├── VolumeError               the volume plugin's protocol errors (1.0's wording)
    │   ├── VolumeNameError       `bad volume format: N`, `unsupported volume: N`
    │   ├── VolumeVersionError    `invalid volume version: N`
    │   ├── VolumeNotFound        `no such volume: N`
    │   ├── VolumeInUse           `volume N is in use by K container(s)`
    │   └── VolumeBuildError      `cannot build N: <path>: <reason>`
    └── DockerError               the wrapper: engine, daemon or CUDA-gate failures

Domain errors know nothing of HTTP: each API's middleware maps them to its own shape.
"""

from __future__ import annotations


class NvpluginError(Exception):
    """Base of every error that is shown to a user as-is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(NvpluginError):
    pass


class VolumesDirBusy(ConfigError):
    """Another nvidia-docker-plugin holds the volumes directory's lock."""


class UnsafeFileError(NvpluginError):
    pass


class DiscoveryError(NvpluginError):
    pass


class CacheFormatError(DiscoveryError):
    pass


class ElfError(DiscoveryError):
    pass


class DriverNotFound(DiscoveryError):
    pass


class RootEscapeError(DiscoveryError):
    pass


class NvmlError(NvpluginError):
    pass


class SelectionError(NvpluginError):
    pass


class DeviceAccessError(NvpluginError):
    pass


class CdiError(NvpluginError):
    pass


class VolumeError(NvpluginError):
    pass


class VolumeNameError(VolumeError):
    pass


class VolumeVersionError(VolumeError):
    pass


class VolumeNotFound(VolumeError):
    pass


class VolumeInUse(VolumeError):
    pass


class VolumeBuildError(VolumeError):
    pass


class DockerError(NvpluginError):
    pass


class CudaRequirementError(DockerError):
    """The image needs a newer CUDA than the driver offers (label or NVIDIA_REQUIRE_*)."""


class PluginDaemonError(DockerError):
    """The nvidia-docker-plugin daemon is unreachable or refused the wrapper's request."""


class ImagePullError(DockerError):
    """A missing image could not be pulled; the wrapper exits 125 like `docker run`."""

    exit_code = 125
