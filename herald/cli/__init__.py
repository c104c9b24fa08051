"""The ``herald`` command line: one module per command group."""
