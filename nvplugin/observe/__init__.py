"""What the GPUs do, for people and monitors: GPU health that recovers, attribution of GPU
processes to containers, and Prometheus `/metrics` with dcgm-exporter's names.

Pure parts (records, cgroups, xids, health, dcgm) are separate from the I/O (service, exposition).
`ObserveService` (service.py) is the one object the rest of the daemon reads: `health()`,
`healthy(uuid)`, `observation()` and `add_health_listener()`. Imports `core`, `driver`, `gpu`
and `engine` (container names through the Docker Engine API); `api` and `cli` import it.
"""
