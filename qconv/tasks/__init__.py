"""The task axis: one registered ``Task`` object per kind of model qconv converts (embedding, reranker).

Generic code asks the task (``task_of(art)``, ``get_task(name)``) instead of branching on its name; adding a
task is one new module here that subclasses ``Task`` and calls ``register_task``. Task modules import the
heavy parts (convert/, validate/, the runtime) lazily inside their hooks, so importing the registry is cheap
and torch-free.
"""

from __future__ import annotations

from .base import TASKS, Task, get_task, register_task, task_for_dataset_kind, task_of

# The built-in tasks register themselves on import.
from . import embedding, reranker  # noqa: E402,F401  isort: skip

__all__ = ["TASKS", "Task", "get_task", "register_task", "task_for_dataset_kind", "task_of"]
