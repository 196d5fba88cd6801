"""Connection managers: one abstract base, one module per backend."""
