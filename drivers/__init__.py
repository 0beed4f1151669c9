"""Sources: one module per kind, each implementing drivers.base.Driver."""
