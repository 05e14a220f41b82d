"""dcgm-exporter's families from records: names, types, label order and values, and no sample
for what a GPU does not support."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from nvplugin.gpu.readings import GpuStatus, GpuTelemetry, RemappedRows
from nvplugin.gpu.records import Gpu
from nvplugin.observe import dcgm
from nvplugin.observe.records import GpuHealth, Observation

GPU = Gpu(index=0, uuid="GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f", minor=0,
          path="/dev/nvidia0", host_path="/dev/nvidia0", model="NVIDIA H200",
          bus_id="00000000:00:06.0", power_limit_w=700, cpu_affinity=None, bar1_total_mib=None,
          pcie_generation=5, pcie_width=16, pcie_bandwidth_mbs=None, clock_cores_mhz=1980,
          clock_memory_mhz=3201, arch="9.0", family="Hopper", cores=16896,
          multiprocessors=None, ecc=True, memory_global_mib=143771, memory_shared_kib=None,
          memory_constant_kib=None, memory_l2_kib=None, memory_bandwidth_mbs=None,
          persistence_mode=True, mig_mode=False)
STATUS = GpuStatus(index=0, power_w=74, temperature_c=31, utilization_gpu=7,
                   utilization_memory=3, utilization_encoder=0, utilization_decoder=0,
                   memory_used_mib=1, ecc_l1=0, ecc_l2=0, ecc_global=0, clock_cores_mhz=345,
                   clock_memory_mhz=3201, bar1_used_mib=3, pcie_rx_mbs=None, pcie_tx_mbs=None)
TELEMETRY = GpuTelemetry(index=0, power_mw=74321, energy_mj=123456789, memory_used_mib=1,
                         memory_free_mib=143000, memory_reserved_mib=770, memory_temperature_c=38,
                         pcie_replays=2, remapped_rows=RemappedRows(1, 0, False, False),
                         ecc_sbe_volatile=5, ecc_dbe_volatile=0, ecc_sbe_aggregate=9,
                         ecc_dbe_aggregate=1)
HEALTH = GpuHealth(index=0, uuid=GPU.uuid, healthy=True, reason=None, since=0.0)
LABELS = ('gpu="0",UUID="GPU-d10c7111-67d9-9e02-1f7a-53d331412b6f",'
          'pci_bus_id="00000000:00:06.0",device="nvidia0",modelName="NVIDIA H200",'
          'Hostname="gpu-host-1",DCGM_FI_DRIVER_VERSION="580.159.04"')


def observation(telemetry=TELEMETRY, health=HEALTH, gpu=GPU) -> Observation:
    return Observation(taken_at=0.0, driver_version="580.159.04", gpus=(gpu,),
                       statuses=(STATUS,), telemetry=(telemetry,), processes=(), containers=(),
                       health=(health,))


def page(obs: Observation, hostname: str = "gpu-host-1") -> str:
    return dcgm.render(obs, hostname).decode()


def test_samples_carry_dcgm_exporters_labels_in_its_order():
    text = page(observation())
    assert f"DCGM_FI_DEV_SM_CLOCK{{{LABELS}}} 345\n" in text
    assert f"DCGM_FI_DEV_POWER_USAGE{{{LABELS}}} 74.321\n" in text
    assert f"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{{LABELS}}} 123456789\n" in text
    assert f"DCGM_FI_DEV_FB_RESERVED{{{LABELS}}} 770\n" in text
    assert f"DCGM_FI_DEV_MEMORY_TEMP{{{LABELS}}} 38\n" in text


def test_every_family_is_typed_as_dcgm_exporter_types_it():
    types = {f.name: f.type for f in text_string_to_metric_families(page(observation()))}
    counters = {"DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
                "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
                "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
                "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"}
    gauges = {"DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
              "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_UTIL",
              "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL",
              "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED",
              "DCGM_FI_DEV_ROW_REMAP_FAILURE"}
    # The text parser strips a counter's "_total" from the family name; the sample keeps it.
    seen = {name + ("_TOTAL" if name.endswith("_VOL") or name.endswith("_AGG") else ""): typ
            for name, typ in types.items()}
    assert seen == {**{n: "counter" for n in counters}, **{n: "gauge" for n in gauges}}
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in page(observation())


def test_an_unsupported_field_has_no_sample_for_that_gpu():
    unsupported = dataclasses.replace(TELEMETRY, memory_temperature_c=None, energy_mj=None,
                                      remapped_rows=None, memory_reserved_mib=None)
    text = page(observation(telemetry=unsupported))
    for name in ("DCGM_FI_DEV_MEMORY_TEMP", "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
                 "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_FB_RESERVED"):
        assert name not in text
    assert "DCGM_FI_DEV_GPU_TEMP{" in text


def test_the_last_xid_carries_its_code_and_text_once_one_was_seen():
    assert "DCGM_FI_DEV_XID_ERRORS" not in page(observation())
    text = page(observation(health=dataclasses.replace(HEALTH, last_xid=79)))
    assert (f'DCGM_FI_DEV_XID_ERRORS{{{LABELS},err_code="79",'
            f'err_msg="GPU has fallen off the bus"}} 79\n') in text


def test_no_hostname_no_label_and_odd_text_is_escaped():
    odd = dataclasses.replace(GPU, model='Tesla "X"\\2\n')
    text = page(observation(gpu=odd), hostname="")
    assert "Hostname" not in text
    assert 'modelName="Tesla \\"X\\"\\\\2\\n"' in text
    families = list(text_string_to_metric_families(text))
    assert families[0].samples[0].labels["modelName"] == 'Tesla "X"\\2\n'
