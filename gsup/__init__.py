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
    "Task",
    "TaskError",
    "TaskHandle",
    "Tasks",
    "Transform",
    "WaitTimeout",
    "current",
    "queues",
    "tasks",
]


def __getattr__(name: str) -> Any:
    """Load the API on first use: `gsup add` imports this package and needs none of it."""
    if name not in __all__:
        raise AttributeError(f"module 'gsup' has no attribute {name!r}")
    from gsup import api, client, errors, targets
    from gsup.context import current
    from gsup.tasks import api as task_api
    from gsup.tasks import spec

    global queues, tasks
    queues, tasks = api.Queues(), task_api.Tasks()
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
        "Task": spec.Task,
        "TaskError": spec.TaskError,
        "TaskHandle": task_api.TaskHandle,
        "Tasks": task_api.Tasks,
        "Transform": spec.Transform,
        "WaitTimeout": errors.WaitTimeout,
        "current": current,
        "queues": queues,
        "tasks": tasks,
    }
    globals().update(exported)
    return exported[name]
