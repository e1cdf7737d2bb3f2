"""Evaluation tasks: loaders, samplers and prompt builders (see data/README.md)."""

from .prompts import format_prompt, gsm8k_final_answer
from .sources import default_data_dir, resolve_data_dir
from .tasks import (DEFAULT_NUM_SAMPLES, PAPER_TASKS, TASKS, Instance, TaskData, load_task,
                    sample_indices)

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "PAPER_TASKS",
    "TASKS",
    "Instance",
    "TaskData",
    "default_data_dir",
    "format_prompt",
    "gsm8k_final_answer",
    "load_task",
    "resolve_data_dir",
    "sample_indices",
]
