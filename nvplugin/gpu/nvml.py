"""NVML through nvidia-ml-py: the project's only `import pynvml`. Every call here blocks.

Callers run it in a worker thread (gpus.GpuService). Units are final in the records returned;
a field NVML does not support (or that an older driver lacks) is `None`, and any other error in a
single field is `None` plus one warning per field, so no field fails a whole answer. A wrapper the
installed nvidia-ml-py predates is the same: every pynvml function is looked up through `_w` at
call time, and its absence is `None` plus one warning per process. NVML's constants are spelled
here, not read from pynvml. Only loading, initialising, counting, the driver version and a
device's handle, UUID, minor number and bus id are hard errors (`NvmlError`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pynvml

from nvplugin.core.errors import NvmlError, NvpluginError, RootEscapeError
from nvplugin.driver import driver_version
from nvplugin.driver.hostroot import HostRoot
from nvplugin.gpu.facts import (
    TOPOLOGY_LINK,
    cores_per_sm,
    cuda_version,
    family,
    memory_bandwidth,
    pcie_bandwidth,
    sysfs_bus_id,
)
from nvplugin.gpu.records import DriverVersions, Gpu, MigDevice, P2PLink

if TYPE_CHECKING:  # built by the readings, which load with the first one (gpu/readings.py)
    from nvplugin.gpu.readings import GpuEvent, GpuStatus, GpuTelemetry, Process

log = logging.getLogger(__name__)
T = TypeVar("T")

SONAME = "libnvidia-ml.so.1"
MIB = 1 << 20
_SMALL_FILE = 4096  # sysfs and /proc/<pid> values read under the driver root

# NVML's own values (nvml.h), part of its C ABI: spelled here rather than read from pynvml, whose
# older releases lack some of them and whose NVML_NVLINK_MAX_LINKS lags the drivers (18 vs 36).
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_ENABLE = 1
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_P2P_STATUS_OK = 0
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_SUCCESS = 0
# nvmlValueType_t -> the c_nvmlValue_t member holding it
NVML_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                      6: "usVal"}
# Event types (nvmlEventType*): the critical ones the health tracker watches.
NVML_EVENT_DOUBLE_BIT_ECC = 0x2
NVML_EVENT_XID = 0x8
NVML_MEMORY_LOCATION_L1_CACHE = 0
NVML_MEMORY_LOCATION_L2_CACHE = 1
NVML_MEMORY_LOCATION_DEVICE_MEMORY = 2
# nvmlMemory_v2_t's version word: sizeof(struct) | 2 << 24.
NVML_MEMORY_V2 = 40 | 2 << 24
# Links past the driver's last one answer INVALID_ARGUMENT, which ends the scan.
NVML_NVLINK_MAX_LINKS = 36

_NODE_DIR = re.compile(r"node([0-9]+)")

_ABSENT_CODES = frozenset({NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND})
# NVML answers these when the GPU itself is gone or broken, whatever was asked: besides the
# field's warning, they mark the read as faulty (the health tracker's "NVML cannot read it").
_FAULT_CODES = frozenset({NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED})


def _absent(err: pynvml.NVMLError) -> bool:
    """NVML (or the driver) has no such field: N/A without a warning."""
    return getattr(err, "value", None) in _ABSENT_CODES


# ---------------------------------------------------------------- pynvml's wrappers


class MissingWrapper(Exception):
    """The installed nvidia-ml-py has no wrapper for an NVML function (it predates it)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"nvidia-ml-py {_pynvml_version()} has no pynvml.{name}")
        self.name = name


_reported_missing: set[str] = set()


@functools.cache
def _pynvml_version() -> str:
    import importlib.metadata  # only to word a rare warning: it costs 1-2 MB and 10 ms to import

    try:
        return importlib.metadata.version("nvidia-ml-py")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _memory_info_v2(handle: Any) -> Any:
    fn = _w("nvmlDeviceGetMemoryInfo")
    try:
        return fn(handle, NVML_MEMORY_V2)
    except TypeError:  # nvidia-ml-py releases whose wrapper takes no struct version
        raise MissingWrapper("nvmlDeviceGetMemoryInfo(version=2)") from None


def _w(name: str) -> Callable[..., Any]:
    """pynvml's wrapper `name`, looked up at call time; a stand-in raising MissingWrapper if the
    installed nvidia-ml-py predates it, so an old release costs that field, never the answer."""
    fn = getattr(pynvml, name, None)
    if callable(fn):
        return fn

    def missing(*_args: Any) -> Any:
        raise MissingWrapper(name)

    return missing


def _report_missing(err: MissingWrapper) -> None:
    if err.name not in _reported_missing:
        _reported_missing.add(err.name)
        log.warning("%s; reporting what it reads as N/A (a newer nvidia-ml-py has it)", err)


# ---------------------------------------------------------------- loading


def _mapped_nvml() -> str | None:
    """Which libnvidia-ml the dynamic loader picked, when we let it search."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = [line.split()[-1] for line in maps.splitlines() if "libnvidia-ml" in line]
    return paths[-1] if paths else None


@dataclass(slots=True)
class LoadedNvml:
    """The libnvidia-ml a session uses, and how to let go of it.

    A file found under the driver root is opened inside it (hostroot: never through a link out
    of it) and loaded from that open file (`/proc/self/fd/<n>`), so what is loaded is what was
    vetted; the file stays open while it is loaded. Unloading drops pynvml's handle and its
    function-pointer cache and dlcloses the library (as NVIDIA's Go bindings do at shutdown),
    so after a driver upgrade the next session loads the new file instead of keeping the old
    one mapped; a library that stays loaded (marked NODELETE, or held elsewhere) keeps its file
    open, so no later library can be given its `/proc/self/fd` name.
    """

    lib: ctypes.CDLL
    path: str  # the file, for messages
    pinned: int | None = None  # the open file it was loaded from; None: the loader searched
    name: str = SONAME  # the name it was dlopened by

    def release(self) -> None:
        """After nvmlShutdown: unload, unless another session of this process still uses it."""
        if getattr(pynvml, "_nvmlLib_refcount", 0) > 0 or getattr(pynvml, "nvmlLib", None) \
                is not self.lib:
            return
        pynvml.nvmlLib = None
        getattr(pynvml, "_nvmlGetFunctionPointer_cache", {}).clear()
        _dlclose(self.lib._handle)
        if self.pinned is None:
            return
        try:  # RTLD_NOLOAD: is anything still loaded under our name or from our file?
            still = ctypes.CDLL(self.name, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            os.close(self.pinned)  # unloaded: the name and the file are free
        else:
            _dlclose(still._handle)
            log.debug("%s stays loaded after nvmlShutdown; keeping it open", self.path)
        self.pinned = None


def _dlclose(handle: int) -> None:
    import _ctypes  # CPython's own; ctypes has no public dlclose

    _ctypes.dlclose(handle)  # type: ignore[attr-defined]


def _load(library: str | None, driver_root: Path) -> LoadedNvml:
    """Make pynvml use `library` (None: the loader's search), opened inside the driver root
    when it lies there (the daemon's case) and as given otherwise (tools, tests)."""
    if library is None:
        try:
            lib = ctypes.CDLL(SONAME)
        except OSError as err:
            reason = str(err).removeprefix(f"{SONAME}: ")  # dlerror repeats the name
            raise NvmlError(f"NVML could not be loaded from {SONAME}: {reason}") from err
        loaded = LoadedNvml(lib, _mapped_nvml() or SONAME)
    else:
        loaded = _load_file(library, driver_root)
    # nvidia-ml-py dlopens "libnvidia-ml.so.1" into a module global and caches symbols: both
    # are set here, so every pynvml call of this session reaches this library.
    if hasattr(pynvml, "nvmlLib"):
        pynvml.nvmlLib = loaded.lib
        getattr(pynvml, "_nvmlGetFunctionPointer_cache", {}).clear()
    return loaded


def _load_file(library: str, driver_root: Path) -> LoadedNvml:
    root = HostRoot(driver_root)
    try:
        inner = root.inner(os.path.realpath(library))
    except RootEscapeError:
        root, inner = HostRoot("/"), library
    try:
        opened = root.open_fd(inner)
    except (OSError, NvpluginError) as err:
        why = getattr(err, "strerror", None) or str(err)
        raise NvmlError(f"NVML could not be loaded from {library}: {why}") from err
    name = f"/proc/self/fd/{opened.fd}"
    try:
        lib = ctypes.CDLL(name)
    except OSError as err:
        os.close(opened.fd)
        reason = str(err).removeprefix(f"{name}: ")
        raise NvmlError(f"NVML could not be loaded from {library}: {reason}") from err
    return LoadedNvml(lib, library, opened.fd, name)


def _init_failure(err: pynvml.NVMLError, path: str, driver_root: Path) -> NvmlError:
    if err.value == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        from nvplugin.driver.discovery import kernel_version  # a failure path only

        kernel = kernel_version(driver_root)
        user = driver_version.from_file_name(str(Path(path).resolve()))
        return NvmlError(f"Driver/library version mismatch: kernel module {kernel or 'unknown'}, "
                         f"user space {user or 'unknown'}; reboot or reload the nvidia module")
    reasons = {
        NVML_ERROR_DRIVER_NOT_LOADED:
            "the NVIDIA kernel module is not loaded (load it with 'modprobe nvidia')",
        NVML_ERROR_NO_PERMISSION:
            "no permission to open /dev/nvidiactl (run as root or in the device's group)",
        NVML_ERROR_FUNCTION_NOT_FOUND: "not an NVML library (nvmlInitWithFlags missing)",
    }
    return NvmlError(f"NVML could not be loaded from {path}: {reasons.get(err.value, err)}")


def _only_numa_node(driver_root: Path) -> int | None:
    """The machine's NUMA node when it has exactly one (`sys/devices/system/node/node<N>` under
    the driver root, the same sysfs view as the device's `numa_node`), else None."""
    try:
        nodes = [int(m.group(1)) for entry in (driver_root / "sys/devices/system/node").iterdir()
                 if (m := _NODE_DIR.fullmatch(entry.name))]
    except OSError:
        return None
    return nodes[0] if len(nodes) == 1 else None


# ---------------------------------------------------------------- the session


class NvmlSession:
    """One initialised NVML: static GPU facts, fast live readings and the slow PCIe counters."""

    def __init__(self, loaded: LoadedNvml, driver_root: Path, dev_root: Path) -> None:
        self.loaded = loaded
        self.path = loaded.path
        self.driver_root = driver_root
        self.dev_root = dev_root
        self.closed = False
        self._users = 0  # calls running now, on any thread
        self._idle = threading.Condition()
        self._handles: list[Any] = []
        self._warned: set[str] = set()
        self._fault: str | None = None  # the last fault code a field read met (see _field)

    @classmethod
    def open(cls, library: str | None, *, driver_root: Path, dev_root: Path) -> NvmlSession:
        loaded = _load(library, driver_root)
        try:
            _w("nvmlInitWithFlags")(0)
        except pynvml.NVMLError as err:
            loaded.release()
            raise _init_failure(err, loaded.path, driver_root) from err
        except MissingWrapper as err:
            loaded.release()
            raise NvmlError(f"NVML could not be initialised: {err}; upgrade nvidia-ml-py") from err
        session = cls(loaded, driver_root, dev_root)
        try:
            count = session._hard("nvmlDeviceGetCount", _w("nvmlDeviceGetCount"))
            session._handles = [session._hard(f"GPU {i}: nvmlDeviceGetHandleByIndex",
                                              _w("nvmlDeviceGetHandleByIndex"), i)
                                for i in range(count)]
        except NvmlError:
            session.close()
            raise
        return session

    def close(self) -> None:
        """Wait for the calls running on other threads (the PCIe sampler's), refuse new ones,
        then nvmlShutdown and unload the library. Blocking: GpuService runs it off the loop."""
        with self._idle:
            if self.closed:
                return
            self.closed = True
            while self._users:
                self._idle.wait()
        try:
            _w("nvmlShutdown")()
        except (pynvml.NVMLError, MissingWrapper) as err:
            log.warning("nvmlShutdown failed: %s", err)
        finally:
            self.loaded.release()

    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        """One reading: never after (or during) the shutdown, which waits for it to end.
        Readings on different threads still run at the same time."""
        with self._idle:
            if self.closed:
                raise NvmlError("NVML was shut down")
            self._users += 1
        try:
            yield
        finally:
            with self._idle:
                self._users -= 1
                self._idle.notify_all()

    # -- error policy

    def _hard(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except (pynvml.NVMLError, MissingWrapper) as err:
            raise NvmlError(f"{what}: {err}") from err

    def _field(self, name: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except MissingWrapper as err:
            _report_missing(err)
            return None
        except pynvml.NVMLError as err:
            if _absent(err):
                return None
            if getattr(err, "value", None) in _FAULT_CODES:
                self._fault = f"NVML: {err}"
            if name not in self._warned:
                self._warned.add(name)
                log.warning("NVML cannot read %s: %s; reporting it as N/A", name, err)
            return None

    # -- versions

    def versions(self) -> DriverVersions:
        with self._use():
            driver = self._hard("nvmlSystemGetDriverVersion", _w("nvmlSystemGetDriverVersion"))
            cuda = self._field("CUDA version", _w("nvmlSystemGetCudaDriverVersion_v2"))
            if cuda is None:
                cuda = self._field("CUDA version", _w("nvmlSystemGetCudaDriverVersion"))
        return DriverVersions(driver=driver, cuda=cuda_version(cuda) if cuda else None)

    # -- static facts

    def read_gpus(self) -> tuple[Gpu, ...]:
        """Static facts of every GPU; MIG devices without their access nodes (devnodes adds
        them: they are files under the driver and device roots, not NVML's)."""
        with self._use():
            bus_ids = [self._required(i, h, "PCI bus id",
                                      lambda h: _w("nvmlDeviceGetPciInfo")(h).busId)
                       for i, h in enumerate(self._handles)]
            return tuple(self._gpu(i, h, bus_ids) for i, h in enumerate(self._handles))

    def _gpu(self, index: int, h: Any, bus_ids: list[str]) -> Gpu:
        f = self._field
        uuid = self._required(index, h, "UUID", _w("nvmlDeviceGetUUID"))
        minor = self._required(index, h, "minor number", _w("nvmlDeviceGetMinorNumber"))
        cc = f("compute capability", _w("nvmlDeviceGetCudaComputeCapability"), h)
        power = f("power limit", _w("nvmlDeviceGetPowerManagementLimit"), h)
        bar1 = f("BAR1 size", _w("nvmlDeviceGetBAR1MemoryInfo"), h)
        memory = f("memory size", _w("nvmlDeviceGetMemoryInfo"), h)
        mem_clock = f("max memory clock", _w("nvmlDeviceGetMaxClockInfo"), h,
                      NVML_CLOCK_MEM)
        gen = f("PCIe generation", _w("nvmlDeviceGetMaxPcieLinkGeneration"), h)
        width = f("PCIe width", _w("nvmlDeviceGetMaxPcieLinkWidth"), h)
        ecc = f("ECC mode", _w("nvmlDeviceGetEccMode"), h)
        persistence = f("persistence mode", _w("nvmlDeviceGetPersistenceMode"), h)
        mig = f("MIG mode", _w("nvmlDeviceGetMigMode"), h)
        mig_on = None if mig is None else mig[0] == NVML_DEVICE_MIG_ENABLE
        cores, sms = self._cores(h, cc)
        return Gpu(
            index=index, uuid=uuid, minor=minor, path=f"/dev/nvidia{minor}",
            host_path=str(self.dev_root / "dev" / f"nvidia{minor}"),
            model=f("name", _w("nvmlDeviceGetName"), h),
            bus_id=bus_ids[index],
            power_limit_w=None if power is None else power // 1000,
            cpu_affinity=self._numa_node(h, bus_ids[index]),
            bar1_total_mib=None if bar1 is None else bar1.bar1Total // MIB,
            pcie_generation=gen, pcie_width=width, pcie_bandwidth_mbs=pcie_bandwidth(gen, width),
            clock_cores_mhz=f("max SM clock", _w("nvmlDeviceGetMaxClockInfo"), h,
                              NVML_CLOCK_SM),
            clock_memory_mhz=mem_clock,
            arch=None if cc is None else f"{cc[0]}.{cc[1]}",
            family=None if cc is None else family(*cc),
            cores=cores, multiprocessors=sms,
            ecc=None if ecc is None else ecc[0] == NVML_FEATURE_ENABLED,
            memory_global_mib=None if memory is None else memory.total // MIB,
            # shared/constant/L2 sizes come from CUDA device properties; NVML has no source.
            memory_shared_kib=None, memory_constant_kib=None, memory_l2_kib=None,
            memory_bandwidth_mbs=memory_bandwidth(
                mem_clock, f("memory bus width", _w("nvmlDeviceGetMemoryBusWidth"), h)),
            persistence_mode=None if persistence is None
            else persistence == NVML_FEATURE_ENABLED,
            mig_mode=mig_on,
            topology=self._topology(index, h, bus_ids),
            mig_devices=self._mig_devices(h) if mig_on else (),
        )

    def _cores(self, h: Any, cc: tuple[int, int] | None) -> tuple[int | None, int | None]:
        """(CUDA cores, multiprocessors): NVML's core count, else SMs x cores per SM."""
        cores = self._field("CUDA cores", _w("nvmlDeviceGetNumGpuCores"), h)
        attrs = self._field("multiprocessors", _w("nvmlDeviceGetAttributes_v2"), h)
        sms = None if attrs is None else attrs.multiprocessorCount
        per_sm = None if cc is None else cores_per_sm(*cc)
        if cores is None and sms is not None and per_sm is not None:
            cores = sms * per_sm
        if sms is None and cores is not None and per_sm:
            sms = cores // per_sm
        return cores, sms

    def _numa_node(self, h: Any, bus_id: str) -> int | None:
        """NVML's NUMA node, else sysfs' (1.0's source).

        -1 is the kernel's "the firmware gave this device no node". On a machine with one node
        every CPU is node 0's, so node 0 is the true answer (1.0 printed `NUMA node0` for any
        -1, right there by accident); with several nodes -1 means unknown: None, not a guess."""
        node = self._field("NUMA node", _w("nvmlDeviceGetNumaNodeId"), h)
        if node is None:
            path = f"/sys/bus/pci/devices/{sysfs_bus_id(bus_id)}/numa_node"
            try:
                node = int(HostRoot(self.driver_root).read_bytes(path, _SMALL_FILE))
            except (OSError, ValueError, NvpluginError):
                return None
        return node if node >= 0 else _only_numa_node(self.driver_root)

    def _topology(self, index: int, h: Any, bus_ids: list[str]) -> tuple[P2PLink, ...]:
        nvlinks = self._nvlinks(h, bus_ids)
        links = []
        for peer, peer_bus in enumerate(bus_ids):
            if peer == index:
                continue
            peer_h = self._handles[peer]
            # NVML_P2P_CAPS_INDEX_READ is 0 (pynvml spells it as a tuple by mistake)
            p2p = self._field("P2P status", _w("nvmlDeviceGetP2PStatus"), h, peer_h, 0)
            if p2p not in (None, NVML_P2P_STATUS_OK):
                continue  # CUDA could not map the peer: 1.0 listed only accessible peers
            level = self._field("P2P topology", _w("nvmlDeviceGetTopologyCommonAncestor"),
                                h, peer_h)
            links.append(P2PLink(
                bus_id=peer_bus, link=TOPOLOGY_LINK.get(level, 0) if level is not None else 0,
                nvlinks=None if nvlinks is None
                else nvlinks.get(peer_bus.upper(), 0) + nvlinks.get("", 0)))
        return tuple(links)

    def _nvlinks(self, h: Any, bus_ids: list[str]) -> dict[str, int] | None:
        """Active NVLinks per peer bus id; key "" counts links to NVSwitches (reach every peer)."""
        peers = {b.upper() for b in bus_ids}
        counts: dict[str, int] = {}
        for link in range(NVML_NVLINK_MAX_LINKS):
            try:
                if not _w("nvmlDeviceGetNvLinkState")(h, link):
                    continue
                remote = _w("nvmlDeviceGetNvLinkRemotePciInfo")(h, link).busId.upper()
            except MissingWrapper as err:
                _report_missing(err)
                return counts if link else None
            except pynvml.NVMLError as err:
                if _absent(err):
                    return counts if link else None
                break  # past the last link (INVALID_ARGUMENT) or a link in error
            key = remote if remote in peers else ""
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _mig_devices(self, h: Any) -> tuple[MigDevice, ...]:
        f = self._field
        devices = []
        for slot in range(f("MIG device count", _w("nvmlDeviceGetMaxMigDeviceCount"), h) or 0):
            try:
                mig = _w("nvmlDeviceGetMigDeviceHandleByIndex")(h, slot)
            except MissingWrapper as err:
                _report_missing(err)
                break
            except pynvml.NVMLError:
                continue  # an empty slot reads NOT_FOUND
            uuid = f("MIG UUID", _w("nvmlDeviceGetUUID"), mig)
            gi = f("GPU instance id", _w("nvmlDeviceGetGpuInstanceId"), mig)
            ci = f("compute instance id", _w("nvmlDeviceGetComputeInstanceId"), mig)
            if uuid is None:
                continue
            devices.append(MigDevice(index=slot, uuid=uuid, gpu_instance=gi,
                                     compute_instance=ci))
        return tuple(devices)

    def _required(self, index: int, handle: Any, what: str, fn: Callable[[Any], T]) -> T:
        try:
            return fn(handle)
        except (pynvml.NVMLError, MissingWrapper) as err:
            raise NvmlError(f"unsupported GPU device: GPU {index} has no {what} ({err})") from err

    # -- live readings

    def read_status(self, now: Callable[[], float]) -> tuple[GpuStatus, ...]:
        """The fast fields of every GPU; PCIe throughput is left to `read_pcie`."""
        with self._use():
            return tuple(self._status(i, h, now()) for i, h in enumerate(self._handles))

    def read_pcie(self) -> dict[int, tuple[int | None, int | None]]:
        """PCIe RX/TX in MB/s per GPU index. Slow: each call samples the bus (~20 ms)."""
        with self._use():
            read = _w("nvmlDeviceGetPcieThroughput")
            return {i: (self._kb_to_mb(self._field("PCIe RX", read, h, NVML_PCIE_UTIL_RX_BYTES)),
                        self._kb_to_mb(self._field("PCIe TX", read, h, NVML_PCIE_UTIL_TX_BYTES)))
                    for i, h in enumerate(self._handles)}

    @staticmethod
    def _kb_to_mb(value: int | None) -> int | None:
        return None if value is None else value // 1000

    def _status(self, index: int, h: Any, sampled_at: float) -> GpuStatus:
        from nvplugin.gpu.readings import GpuStatus

        f = self._field
        power = f("power usage", _w("nvmlDeviceGetPowerUsage"), h)
        util = f("utilization", _w("nvmlDeviceGetUtilizationRates"), h)
        encoder = f("encoder utilization", _w("nvmlDeviceGetEncoderUtilization"), h)
        decoder = f("decoder utilization", _w("nvmlDeviceGetDecoderUtilization"), h)
        # nvidia-smi (R510 and later) shows used memory without the driver's reservation,
        # which only NVML's v2 call separates; users compare our figure with nvidia-smi's.
        memory = f("memory usage", _memory_info_v2, h) or f("memory usage",
                                                            _w("nvmlDeviceGetMemoryInfo"), h)
        bar1 = f("BAR1 usage", _w("nvmlDeviceGetBAR1MemoryInfo"), h)
        ecc = [f(f"ECC errors ({name})", _w("nvmlDeviceGetMemoryErrorCounter"), h,
                 NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, location)
               for name, location in (("L1", NVML_MEMORY_LOCATION_L1_CACHE),
                                      ("L2", NVML_MEMORY_LOCATION_L2_CACHE),
                                      ("device memory", NVML_MEMORY_LOCATION_DEVICE_MEMORY))]
        return GpuStatus(
            index=index,
            power_w=None if power is None else power // 1000,
            temperature_c=f("temperature", _w("nvmlDeviceGetTemperature"), h,
                            NVML_TEMPERATURE_GPU),
            utilization_gpu=None if util is None else util.gpu,
            utilization_memory=None if util is None else util.memory,
            utilization_encoder=None if encoder is None else encoder[0],
            utilization_decoder=None if decoder is None else decoder[0],
            memory_used_mib=None if memory is None else memory.used // MIB,
            ecc_l1=ecc[0], ecc_l2=ecc[1], ecc_global=ecc[2],
            clock_cores_mhz=f("SM clock", _w("nvmlDeviceGetClockInfo"), h, NVML_CLOCK_SM),
            clock_memory_mhz=f("memory clock", _w("nvmlDeviceGetClockInfo"), h,
                               NVML_CLOCK_MEM),
            bar1_used_mib=None if bar1 is None else bar1.bar1Used // MIB,
            pcie_rx_mbs=None,
            pcie_tx_mbs=None,
            processes=self._processes(h, "compute"),
            sampled_at=sampled_at,
        )

    def _processes(self, h: Any, kind: str) -> tuple[Process, ...]:
        """NVML's `kind` ("compute" or "graphics") processes on the GPU. Drivers before r510
        lack the _v3 calls. (Each wrapper is named whole, for tests/gpu_layer's scan.)"""
        from nvplugin.gpu.readings import Process

        f = self._field
        if kind == "graphics":
            procs = f("graphics processes", _w("nvmlDeviceGetGraphicsRunningProcesses_v3"), h)
            if procs is None:
                procs = f("graphics processes", _w("nvmlDeviceGetGraphicsRunningProcesses_v2"), h)
        else:
            procs = f("compute processes", _w("nvmlDeviceGetComputeRunningProcesses_v3"), h)
            if procs is None:
                procs = f("compute processes", _w("nvmlDeviceGetComputeRunningProcesses_v2"), h)
        return tuple(Process(pid=p.pid, name=self._process_name(p.pid),
                             memory_used_mib=None if p.usedGpuMemory is None
                             else p.usedGpuMemory // MIB)
                     for p in procs or ())

    # -- what /metrics adds, and health

    def read_telemetry(self, now: Callable[[], float]) -> tuple[GpuTelemetry, ...]:
        """dcgm-exporter's readings of every GPU beyond gpu/status's, and whether NVML still
        reads each GPU (`fault`)."""
        with self._use():
            return tuple(self._telemetry(i, h, now()) for i, h in enumerate(self._handles))

    def _telemetry(self, index: int, h: Any, sampled_at: float) -> GpuTelemetry:
        from nvplugin.gpu.readings import GpuTelemetry, RemappedRows

        f = self._field
        self._fault = None
        power = f("power usage", _w("nvmlDeviceGetPowerUsage"), h)
        used = free = reserved = None
        memory = f("memory usage", _memory_info_v2, h)
        if memory is not None:
            used, free, reserved = memory.used, memory.free, memory.reserved
        else:  # v1 counts the driver's reservation as used and cannot tell it apart
            memory = f("memory usage", _w("nvmlDeviceGetMemoryInfo"), h)
            if memory is not None:
                used, free = memory.used, memory.free
        rows = f("remapped rows", _w("nvmlDeviceGetRemappedRows"), h)
        ecc = {(kind, counter): f(f"ECC errors ({kind}, {counter})",
                                  _w("nvmlDeviceGetTotalEccErrors"), h, kind, counter)
               for kind in (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
               for counter in (NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC)}
        graphics = self._processes(h, "graphics")
        memory_temperature = self._field_value(h, NVML_FI_DEV_MEMORY_TEMP, "memory temperature")
        return GpuTelemetry(
            index=index,
            power_mw=power,
            energy_mj=f("total energy", _w("nvmlDeviceGetTotalEnergyConsumption"), h),
            memory_used_mib=None if used is None else used // MIB,
            memory_free_mib=None if free is None else free // MIB,
            memory_reserved_mib=None if reserved is None else reserved // MIB,
            memory_temperature_c=None if memory_temperature is None else int(memory_temperature),
            pcie_replays=f("PCIe replay counter", _w("nvmlDeviceGetPcieReplayCounter"), h),
            remapped_rows=None if rows is None else RemappedRows(
                correctable=rows[0], uncorrectable=rows[1], pending=bool(rows[2]),
                failed=bool(rows[3])),
            ecc_sbe_volatile=ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC],
            ecc_dbe_volatile=ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC],
            ecc_sbe_aggregate=ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC],
            ecc_dbe_aggregate=ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC],
            graphics_processes=graphics,
            fault=self._fault,
            sampled_at=sampled_at,
        )

    def _field_value(self, h: Any, field_id: int, name: str) -> float | None:
        """One NVML field value (nvmlDeviceGetFieldValues): its own status answers per field."""
        values = self._field(name, _w("nvmlDeviceGetFieldValues"), h, [field_id])
        if not values:
            return None
        value = values[0]
        if value.nvmlReturn != NVML_SUCCESS:
            if value.nvmlReturn in _FAULT_CODES:
                self._fault = f"NVML: {pynvml.NVMLError(value.nvmlReturn)}"
            elif value.nvmlReturn not in _ABSENT_CODES and name not in self._warned:
                self._warned.add(name)
                log.warning("NVML cannot read %s: %s; reporting it as N/A", name,
                            pynvml.NVMLError(value.nvmlReturn))
            return None
        member = NVML_VALUE_MEMBERS.get(value.valueType)
        return None if member is None else float(getattr(value.value, member))

    def probe(self, indices: Sequence[int]) -> dict[int, str | None]:
        """Whether NVML still reads each GPU: None when it does, else NVML's fault."""
        found: dict[int, str | None] = {}
        with self._use():
            for index in indices:
                if not 0 <= index < len(self._handles):
                    continue
                self._fault = None
                self._field("temperature", _w("nvmlDeviceGetTemperature"),
                            self._handles[index], NVML_TEMPERATURE_GPU)
                found[index] = self._fault
        return found

    def open_events(self, uuids: Sequence[str]) -> NvmlEvents:
        """An event set with every GPU registered for the critical events it supports."""
        return NvmlEvents(self, uuids)

    def _process_name(self, pid: int) -> str:
        """NVML's name as 1.0 showed it; the host's /proc comm when NVML cannot tell."""
        try:
            return str(_w("nvmlSystemGetProcessName")(pid))
        except MissingWrapper as err:
            _report_missing(err)
        except pynvml.NVMLError:
            pass
        try:
            comm = HostRoot(self.driver_root).read_bytes(f"/proc/{pid}/comm", _SMALL_FILE)
        except (OSError, NvpluginError):
            return ""
        return comm.decode(errors="replace").strip()


class EventsUnavailable(NvmlError):
    """NVML (or nvidia-ml-py) cannot deliver events at all: waiting again will not help."""


class NvmlEvents:
    """One NVML event set over a session's GPUs: critical Xids and double-bit ECC errors.

    `wait` blocks for up to its timeout, so one dedicated thread calls it (GpuService's event
    thread); NVML is thread-safe, and its other calls go on meanwhile on the NVML thread. GPUs
    that support none of the events are in `unwatched` with the reason, and are left to reads.
    """

    def __init__(self, session: NvmlSession, uuids: Sequence[str]) -> None:
        self._session = session
        self._uuids = list(uuids)
        self.unwatched: list[tuple[int, str]] = []
        try:
            self._set = _w("nvmlEventSetCreate")()
        except MissingWrapper as err:
            _report_missing(err)
            raise EventsUnavailable("NVML events are unavailable (nvidia-ml-py)") from err
        except pynvml.NVMLError as err:
            raise EventsUnavailable(f"NVML events are unavailable: {err}") from err
        self._addresses: dict[int | None, int] = {}
        for index, h in enumerate(session._handles):
            self._addresses[ctypes.cast(h, ctypes.c_void_p).value] = index
            try:
                supported = _w("nvmlDeviceGetSupportedEventTypes")(h)
                wanted = supported & (NVML_EVENT_XID | NVML_EVENT_DOUBLE_BIT_ECC)
                if wanted:
                    _w("nvmlDeviceRegisterEvents")(h, wanted, self._set)
                else:
                    self.unwatched.append((index, "supports neither Xid nor ECC events"))
            except MissingWrapper as err:
                _report_missing(err)
                self.unwatched.append((index, "this nvidia-ml-py cannot register events"))
            except pynvml.NVMLError as err:
                self.unwatched.append((index, str(err)))

    def _uuid(self, index: int) -> str:
        return self._uuids[index] if index < len(self._uuids) else ""

    def wait(self, timeout_ms: int, now: Callable[[], float]) -> list[GpuEvent]:
        """The next event (empty on a timeout). A lost GPU wakes the wait with GPU_IS_LOST and
        no device, so every GPU is probed: those NVML no longer reads are the lost ones."""
        from nvplugin.gpu.readings import EVENT_DOUBLE_BIT_ECC, EVENT_LOST, EVENT_XID, GpuEvent

        try:
            data = _w("nvmlEventSetWait_v2")(self._set, timeout_ms)
        except MissingWrapper as err:
            _report_missing(err)
            raise EventsUnavailable("NVML events are unavailable (nvidia-ml-py)") from err
        except pynvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == NVML_ERROR_TIMEOUT:
                return []
            if code != NVML_ERROR_GPU_IS_LOST:
                raise NvmlError(f"waiting for NVML events failed: {err}") from err
            at = now()
            faults = self._session.probe(range(len(self._session._handles)))
            lost = [i for i, fault in faults.items() if fault] or list(faults)
            return [GpuEvent(index=i, uuid=self._uuid(i), kind=EVENT_LOST, at=at) for i in lost]
        index = self._addresses.get(ctypes.cast(data.device, ctypes.c_void_p).value)
        kind = {NVML_EVENT_XID: EVENT_XID,
                NVML_EVENT_DOUBLE_BIT_ECC: EVENT_DOUBLE_BIT_ECC}.get(data.eventType)
        if index is None or kind is None:
            return []
        return [GpuEvent(index=index, uuid=self._uuid(index), kind=kind,
                         data=int(data.eventData), at=now())]

    def close(self) -> None:
        try:
            _w("nvmlEventSetFree")(self._set)
        except MissingWrapper as err:
            _report_missing(err)
        except pynvml.NVMLError as err:
            log.warning("nvmlEventSetFree failed: %s", err)
