"""The shared core: errors, settings and the command line, names, logging, atomic files,
single-flight reads, host paths. Imports nothing else of nvplugin.
"""
