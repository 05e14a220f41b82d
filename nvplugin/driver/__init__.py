"""The NVIDIA driver on disk: the driver root, its ld.so.cache, ELF facts, the catalog of driver
files, which libraries to take, version strings, discovery into a Manifest, and the driver state
with its watcher. Imports only `core`; knows nothing of HTTP, NVML or volumes.
"""
