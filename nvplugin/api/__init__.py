"""What the daemon serves: the Docker volume-plugin protocol and its socket, the REST app, 1.0's
text and JSON pages, the tabwriter, and the docker/mesos argument answers. Imports `core`,
`driver`, `gpu` and `volumes`.
"""
