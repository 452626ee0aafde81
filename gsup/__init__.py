"""gsup: a job supervisor that never loses a job.

from gsup import queues
job = queues.add(f, args=(123,))
job.result(timeout=60)
"""

from gsup.api import JobFailed, JobHandle, Queues
from gsup.client import Client, GsupError

queues = Queues()

__all__ = ["Client", "GsupError", "JobFailed", "JobHandle", "Queues", "queues"]
