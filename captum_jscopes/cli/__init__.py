"""The ``jscopes`` command line: one module per command."""
