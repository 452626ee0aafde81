"""The Dask backend: calls on a `distributed` scheduler (the `gsup[dask]` extra)."""
