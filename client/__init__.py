"""Client side: the ``lth`` command line and (later) the Python SDK."""
