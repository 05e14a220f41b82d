"""The GPUs through NVML: the NVML session (the only `import pynvml`), GPU records and facts, the
status cache, the selection grammar (`dev=`/`NV_GPU`), device nodes, CUDA's memory sizes (read
from the driver's libcuda in a child process), and the GpuService that runs NVML off the event
loop. Imports `core` and `driver` (version strings, the driver root); knows nothing of HTTP or
volumes.
"""
