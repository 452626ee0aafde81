"""gsup: a job supervisor that never loses a job.

from gsup import queues
job = queues.add(f, args=(123,))
job.result(timeout=60)
"""

from typing import Any

__version__ = "0.2.0.dev0"

__all__ = ["Client", "GsupError", "JobFailed", "JobHandle", "Queues", "queues"]


def __getattr__(name: str) -> Any:
    """Load the API on first use: `gsup add` imports this package and needs none of it."""
    if name not in __all__:
        raise AttributeError(f"module 'gsup' has no attribute {name!r}")
    from gsup import api, client

    global queues
    queues = api.Queues()
    exported = {
        "Client": client.Client,
        "GsupError": client.GsupError,
        "JobFailed": api.JobFailed,
        "JobHandle": api.JobHandle,
        "Queues": api.Queues,
        "queues": queues,
    }
    globals().update(exported)
    return exported[name]
