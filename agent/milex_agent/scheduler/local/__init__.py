"""The `local` scheduler: the same records run as local processes, with dependencies and arrays."""
