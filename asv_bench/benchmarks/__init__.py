"""asv suites for fastpacket: one module per area, each timing the
fastpacket code path beside the plain-Python way (an ``impl`` parameter),
numpy/pandas style. Run against the installed package with
``cd asv_bench && asv run --python=same --quick``."""
