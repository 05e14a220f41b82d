"""The live GPU page at `GET /` on the REST listener: a card, 15 minutes of charts, the processes
and containers of every GPU, the driver volumes and doctor's findings, updated every second over
one server-sent-events stream that all open pages share. `history` (a fixed-size ring per GPU),
`feed` (the one sampler and the stream), `panels` (volumes, the CDI spec and doctor, read off
the loop),
`documents` (what the stream carries), `routes` (mounted on the REST app by `cli/serve`) and
`static/` (the page, its glue script and the vendored uPlot, shipped as package data). Imports
`core`, `driver`, `gpu`, `volumes`, `observe` and `cdi`; never `api` or `cli` (doctor's findings are
handed in by the daemon's wiring).
"""
