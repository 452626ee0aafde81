"""gsup: a job supervisor that never loses a job.

from gsup import queues
job = queues.add(f, args=(123,))
job.result(timeout=60)
"""

from typing import Any

__version__ = "0.2.0.dev0"

__all__ = [
    "BadOptions",
    "Client",
    "DaemonNotRunning",
    "GsupError",
    "JobFailed",
    "JobHandle",
    "PartlyAdded",
    "Queues",
    "TargetError",
    "WaitTimeout",
    "queues",
]


def __getattr__(name: str) -> Any:
    """Load the API on first use: `gsup add` imports this package and needs none of it."""
    if name not in __all__:
        raise AttributeError(f"module 'gsup' has no attribute {name!r}")
    from gsup import api, client, errors, targets

    global queues
    queues = api.Queues()
    exported = {
        "BadOptions": errors.BadOptions,
        "Client": client.Client,
        "DaemonNotRunning": errors.DaemonNotRunning,
        "GsupError": errors.GsupError,
        "JobFailed": api.JobFailed,
        "JobHandle": api.JobHandle,
        "PartlyAdded": errors.PartlyAdded,
        "Queues": api.Queues,
        "TargetError": targets.TargetError,
        "WaitTimeout": errors.WaitTimeout,
        "queues": queues,
    }
    globals().update(exported)
    return exported[name]
