"""CDI, the Container Device Interface: the spec that gives Podman, Docker >= 25, containerd and
CRI-O this host's GPUs. Pure parts: CDI's name rules (`names`), the spec records with their JSON,
version and validation (`spec`), and the layout that turns a Manifest and the GPUs into a spec
(`build`); at the edge, the writer that checks host files and keeps the file true (`writer`).
Imports `core`, `driver` and `gpu`.
"""
