"""Evaluation tasks: loaders, samplers and prompt builders (see data/README.md)."""

from .prompts import format_prompt, gsm8k_final_answer
from .sources import resolve_data_dir
from .tasks import (DEFAULT_NUM_SAMPLES, PAPER_TASKS, TASKS, Instance, TaskData, load_task,
                    sample_indices)

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "PAPER_TASKS",
    "TASKS",
    "Instance",
    "TaskData",
    "format_prompt",
    "gsm8k_final_answer",
    "load_task",
    "resolve_data_dir",
    "sample_indices",
]
