"""Driver volumes: the name grammar, the store behind the plugin protocol's operations, building a
volume from a Manifest (link, reflink or copy), the mount table, and the disk a volume holds.
Imports `core` and `driver`.
"""
