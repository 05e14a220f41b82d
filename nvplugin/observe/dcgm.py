"""dcgm-exporter's GPU metrics from an Observation, in the Prometheus text format. Pure.

Names, types, units and labels are dcgm-exporter's (its default counters file and its label
code, checked against the 4.x releases), so dashboards built on it read these unchanged:

    labels   gpu (NVML index), UUID, pci_bus_id, device ("nvidia<index>", as dcgm-exporter
             writes it from DCGM's GPU id, which is NVML's index: the /dev node only where the
             minor number equals the index), modelName, Hostname (NODE_NAME, else the host
             name; left out when empty), DCGM_FI_DRIVER_VERSION; DCGM_FI_DEV_XID_ERRORS adds
             err_code and err_msg
    units    MHz, °C, W (with the milliwatts), mJ, %, MiB; counters as DCGM counts them

A field the GPU does not support has no sample for that GPU (never an invented 0): NVML's
NOT_SUPPORTED reads as None, and None writes nothing. DCGM_FI_DEV_XID_ERRORS appears once an Xid
was seen on the GPU since the daemon started.

Why not prometheus_client for these families: its text writer renames every counter family to
`<name>_total` (an OpenMetrics rule), which would rename DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
DCGM_FI_DEV_PCIE_REPLAY_COUNTER and the ECC and row-remap counters, breaking every dashboard
that reads them. nvplugin's own metrics (exposition.py) do use prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nvplugin.gpu.readings import GpuStatus, GpuTelemetry
from nvplugin.gpu.records import Gpu
from nvplugin.observe.records import GpuHealth, Observation
from nvplugin.observe.xids import xid_text

Reading = Callable[[GpuStatus, GpuTelemetry], "float | int | None"]


@dataclass(frozen=True, slots=True)
class Field:
    """One dcgm-exporter metric: its name, type, help and how it is read."""

    name: str
    type: str  # "gauge" or "counter", as dcgm-exporter declares it
    help: str
    read: Reading


def _power_w(_s: GpuStatus, t: GpuTelemetry) -> float | None:
    return None if t.power_mw is None else t.power_mw / 1000


def _rows(attr: str) -> Reading:
    def read(_s: GpuStatus, t: GpuTelemetry) -> int | None:
        rows = t.remapped_rows
        return None if rows is None else int(getattr(rows, attr))
    return read


FIELDS: tuple[Field, ...] = (
    Field("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock (MHz).", lambda s, t: s.clock_cores_mhz),
    Field("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock (MHz).",
          lambda s, t: s.clock_memory_mhz),
    Field("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature (C).",
          lambda s, t: t.memory_temperature_c),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (C).", lambda s, t: s.temperature_c),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (W).", _power_w),
    Field("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter",
          "Energy used since the driver loaded (mJ).", lambda s, t: t.energy_mj),
    Field("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "PCIe replays (retries).",
          lambda s, t: t.pcie_replays),
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (%).", lambda s, t: s.utilization_gpu),
    Field("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory utilization (%).",
          lambda s, t: s.utilization_memory),
    Field("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilization (%).",
          lambda s, t: s.utilization_encoder),
    Field("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilization (%).",
          lambda s, t: s.utilization_decoder),
    Field("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (MiB).",
          lambda s, t: t.memory_free_mib),
    Field("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (MiB).",
          lambda s, t: t.memory_used_mib),
    Field("DCGM_FI_DEV_FB_RESERVED", "gauge", "Framebuffer memory reserved by the driver (MiB).",
          lambda s, t: t.memory_reserved_mib),
    Field("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter",
          "Single-bit ECC errors since the driver loaded.", lambda s, t: t.ecc_sbe_volatile),
    Field("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "counter",
          "Double-bit ECC errors since the driver loaded.", lambda s, t: t.ecc_dbe_volatile),
    Field("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "counter",
          "Single-bit ECC errors over the GPU's life.", lambda s, t: t.ecc_sbe_aggregate),
    Field("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "counter",
          "Double-bit ECC errors over the GPU's life.", lambda s, t: t.ecc_dbe_aggregate),
    Field("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "counter",
          "Rows remapped for uncorrectable errors.", _rows("uncorrectable")),
    Field("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter",
          "Rows remapped for correctable errors.", _rows("correctable")),
    Field("DCGM_FI_DEV_ROW_REMAP_FAILURE", "gauge", "Whether a row remapping failed (1).",
          _rows("failed")),
)
XID_FIELD = "DCGM_FI_DEV_XID_ERRORS"
XID_HELP = "The last Xid error seen on the GPU."


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float | int) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(value) if value == value else "NaN"


def gpu_labels(gpu: Gpu, hostname: str, driver_version: str) -> str:
    """The labels of every GPU sample, in dcgm-exporter's order."""
    pairs = [("gpu", str(gpu.index)), ("UUID", gpu.uuid), ("pci_bus_id", gpu.bus_id),
             ("device", f"nvidia{gpu.index}"), ("modelName", gpu.model or "")]
    if hostname:
        pairs.append(("Hostname", hostname))
    pairs.append(("DCGM_FI_DRIVER_VERSION", driver_version))
    return ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)


def render(observation: Observation, hostname: str) -> bytes:
    """Every DCGM family with at least one sample, in dcgm-exporter's order."""
    statuses = {s.index: s for s in observation.statuses}
    telemetry = {t.index: t for t in observation.telemetry}
    health = {h.uuid: h for h in observation.health}
    rows = [(gpu, statuses[gpu.index], telemetry[gpu.index], health.get(gpu.uuid),
             gpu_labels(gpu, hostname, observation.driver_version))
            for gpu in observation.gpus if gpu.index in statuses and gpu.index in telemetry]
    out: list[str] = []
    for field in FIELDS:
        samples = []
        for _gpu, status, tele, _health, labels in rows:
            value = field.read(status, tele)
            if value is not None:
                samples.append(f"{field.name}{{{labels}}} {format_value(value)}\n")
        if samples:
            out.append(f"# HELP {field.name} {field.help}\n# TYPE {field.name} {field.type}\n")
            out.extend(samples)
    out.extend(_xid_family(rows))
    return "".join(out).encode()


def _xid_family(rows: list[tuple[Gpu, GpuStatus, GpuTelemetry, GpuHealth | None, str]],
                ) -> list[str]:
    samples = []
    for _gpu, _status, _tele, health, labels in rows:
        if health is None or health.last_xid is None:
            continue
        xid = health.last_xid
        samples.append(f'{XID_FIELD}{{{labels},err_code="{xid}",'
                       f'err_msg="{escape_label(xid_text(xid))}"}} {xid}\n')
    if not samples:
        return []
    return [f"# HELP {XID_FIELD} {XID_HELP}\n# TYPE {XID_FIELD} gauge\n", *samples]
