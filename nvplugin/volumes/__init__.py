"""Driver volumes: the name grammar, the store behind the plugin protocol's operations, building a
volume from a Manifest (link, reflink or copy), and the mount table. Imports `core` and `driver`.
"""
