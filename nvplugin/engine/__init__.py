"""The one way nvplugin reaches a Docker Engine: endpoint resolution as the docker CLI does it
(DOCKER_HOST, contexts, TLS) and the Engine API client. Imports only `core`.
"""
