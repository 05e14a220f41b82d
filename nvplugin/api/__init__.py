"""What the daemon serves: the Docker volume-plugin protocol and its socket, the REST app, 1.0's
text and JSON pages, the tabwriter, and the docker/mesos/CDI argument answers. Imports `core`,
`driver`, `gpu`, `volumes` and `cdi`.
"""
