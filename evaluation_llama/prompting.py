"""From a task instance to the token ids a method decodes: prompt formatting, the tokenizer call
and the checks against the model, in one place for the runner and the peer benchmark."""

from __future__ import annotations

from typing import Optional, Sequence

from data import Instance, format_prompt
from model.errors import UserError


class PromptTooLong(UserError):
    """A prompt that, with the new tokens asked for, does not fit the model's context."""

    def __init__(self, message: str, question_id: str, prompt_tokens: int, limit: int):
        super().__init__(message)
        self.question_id, self.prompt_tokens, self.limit = question_id, prompt_tokens, limit


def tokenize_prompt(inst: Instance, tokenizer, model_args, *, max_new_tokens: int,
                    chat_template: bool = False, keep_last: Optional[int] = None,
                    model_path: str = "the model", task: str = "") -> list[int]:
    """The prompt's token ids (its last ``keep_last`` when given), checked: the tokenizer works,
    the prompt is not empty, it fits the context with ``max_new_tokens`` (else `PromptTooLong`),
    and the tokenizer belongs to the weights (ids within the vocabulary)."""
    limit = model_args.max_position_embeddings
    text = format_prompt(inst.prompt, tokenizer, chat_template=chat_template)
    try:
        ids = tokenizer(text, add_special_tokens=not chat_template)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - any tokenizer failure is one user-facing problem
        raise UserError(f"the tokenizer of {model_path} failed on question {inst.question_id} "
                        f"({type(exc).__name__}: {exc}).") from exc
    ids = [int(t) for t in ids]
    if keep_last is not None and len(ids) > keep_last:
        ids = ids[-keep_last:]
    if not ids:
        raise UserError(f"question {inst.question_id} of {task}: the prompt is empty after "
                        f"tokenization; check the data file.")
    if len(ids) + max_new_tokens > limit:
        raise PromptTooLong(
            f"question {inst.question_id} of {task}: the prompt has {len(ids)} tokens, and with "
            f"--max-new-tokens {max_new_tokens} it needs {len(ids) + max_new_tokens} positions, "
            f"more than the model's context of {limit}. Use --max-new-tokens "
            f"{max(limit - len(ids), 0)} or less (if positive), fewer/shorter prompts, or a model "
            f"with a longer context.", inst.question_id, len(ids), limit)
    top = max(ids)
    if top >= model_args.vocab_size:
        raise UserError(f"the tokenizer of {model_path} produced token id {top}, but the model's "
                        f"vocabulary has only {model_args.vocab_size} entries: tokenizer and "
                        f"weights do not belong together.")
    return ids


def tokenize_all(instances: Sequence[tuple[int, Instance]], tokenizer, model_args, *,
                 max_new_tokens: int, chat_template: bool = False, model_path: str = "the model",
                 task: str = "") -> dict[int, list[int]]:
    """{index: token ids} of every (index, instance) given (all of the task, so every shard sizes
    its cache alike)."""
    limit = model_args.max_position_embeddings
    if max_new_tokens >= limit:
        raise UserError(f"--max-new-tokens {max_new_tokens} cannot fit: the model's context is "
                        f"{limit} positions and every prompt needs at least one of them. Use "
                        f"--max-new-tokens below {limit} (well below, to leave room for the "
                        f"prompts).")
    return {index: tokenize_prompt(inst, tokenizer, model_args, max_new_tokens=max_new_tokens,
                                   chat_template=chat_template, model_path=model_path, task=task)
            for index, inst in instances}
