"""Speed and acceptance metrics over answer records — each defined once, here.

Notation for one answer record r (all its choices and turns pooled):
    N(r)  = sum of choices[*].new_tokens          (generated tokens)
    T(r)  = sum of choices[*].wall_time           (seconds spent generating)
    A(r)  = concatenation of choices[*].accept_lengths  (tokens committed per decoding step,
            the bonus/verified token included; a vanilla step commits exactly 1)
    D(r)  = sum of choices[*].num_drafted         (draft tokens proposed for verification)
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

from model.errors import UserError


def _flat_numbers(value: Any) -> list[float]:
    """Flatten a number or (nested) list of numbers; None gives []."""
    if value is None:
        return []
    if isinstance(value, bool):
        raise TypeError("booleans are not counts")
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        out: list[float] = []
        for item in value:
            out.extend(_flat_numbers(item))
        return out
    raise TypeError(f"expected numbers, got {type(value).__name__}")


def _choice_values(record: dict, key: str) -> list[float]:
    values: list[float] = []
    for choice in record.get("choices", []):
        try:
            values.extend(_flat_numbers(choice.get(key)))
        except TypeError as exc:
            raise UserError(f"question {record.get('question_id')}: bad '{key}' ({exc})") from None
    return values


def new_tokens(record: dict) -> float:
    """N(r) = sum of new_tokens over the record's choices and turns."""
    return sum(_choice_values(record, "new_tokens"))


def wall_time(record: dict) -> float:
    """T(r) = sum of wall_time (seconds) over the record's choices and turns."""
    return sum(_choice_values(record, "wall_time"))


def tokens_per_second(record: dict) -> float:
    """tps(r) = N(r) / T(r) = sum(new_tokens) / sum(wall_time) for one answer."""
    seconds = wall_time(record)
    if not seconds > 0:
        raise UserError(f"question {record.get('question_id')}: total wall_time is {seconds}, "
                        f"so tokens per second is undefined")
    return new_tokens(record) / seconds


def mean_tokens_per_second(records: Sequence[dict]) -> float:
    """mean over answers of tps(r) (per-answer rate, then the plain mean)."""
    if not records:
        raise UserError("no answers to average")
    return sum(tokens_per_second(r) for r in records) / len(records)


def accept_lengths(records: Iterable[dict]) -> list[float]:
    """All decoding steps' accept lengths of the given answers, in order (A(r) concatenated)."""
    out: list[float] = []
    for record in records:
        out.extend(_choice_values(record, "accept_lengths"))
    return out


def mean_accept_length(records: Iterable[dict]) -> Optional[float]:
    """M = mean over every decoding step s of all answers of accept_length(s).

    The bonus token is included, so a step that accepts nothing counts 1 and vanilla decoding
    has M = 1. None when the answers record no steps.
    """
    steps = accept_lengths(records)
    return sum(steps) / len(steps) if steps else None


def acceptance_rate(records: Iterable[dict]) -> Optional[float]:
    """alpha = sum over all steps of (accept_length - 1) / sum over all answers of D(r).

    The share of drafted tokens that verification kept (the bonus token is not a drafted token).
    None when nothing was drafted (e.g. vanilla decoding).
    """
    records = list(records)
    drafted = sum(sum(_choice_values(r, "num_drafted")) for r in records)
    if not drafted > 0:
        return None
    accepted = sum(a - 1 for a in accept_lengths(records))
    return accepted / drafted


def speedup(records: Sequence[dict], base_records: Sequence[dict]) -> float:
    """speedup = mean_r tps(r) / mean_b tps(b) — per-answer tokens/s averaged, then the ratio
    (the way Spec-Bench reports it)."""
    base = mean_tokens_per_second(base_records)
    if not base > 0:
        raise UserError("the baseline generated no tokens, so the speedup is undefined")
    return mean_tokens_per_second(records) / base


def pooled_speedup(records: Sequence[dict], base_records: Sequence[dict]) -> float:
    """pooled speedup = (sum_r N(r) / sum_r T(r)) / (sum_b N(b) / sum_b T(b)) — all tokens over all seconds, then the
    ratio: each answer weighs by its time, so a few short, fast answers (a loop that prompt lookup copies) move it
    less than they move `speedup`. With identical outputs it is the ratio of total times, sum T(b) / sum T(r)."""
    if not records or not base_records:
        raise UserError("no answers to pool")
    rates = []
    for group in (records, base_records):
        seconds = sum(wall_time(r) for r in group)
        if not seconds > 0:
            raise UserError(f"the answers' total wall_time is {seconds}, so the pooled rate is undefined")
        rates.append(sum(new_tokens(r) for r in group) / seconds)
    if not rates[1] > 0:
        raise UserError("the baseline generated no tokens, so the speedup is undefined")
    return rates[0] / rates[1]


def _output(record: dict) -> Any:
    if record.get("token_ids") is not None:
        return ("ids", record["token_ids"])
    return ("text", [c.get("turns") for c in record["choices"]])


def identical_fraction(records: Sequence[dict], base_records: Sequence[dict]) -> Optional[float]:
    """share = |{q : output(q) == output_base(q)}| / |common question ids|.

    output(q) is the record's token_ids (the generated text when either side has no token_ids).
    Only question ids present in both lists count; None when there are none.
    """
    base = {str(r["question_id"]): r for r in base_records}
    mine = {str(r["question_id"]): r for r in records}
    common = [q for q in mine if q in base]
    if not common:
        return None
    same = 0
    for q in common:
        a, b = _output(mine[q]), _output(base[q])
        if a[0] != b[0]:  # one side lacks token ids: compare the text
            a = ("text", [c.get("turns") for c in mine[q]["choices"]])
            b = ("text", [c.get("turns") for c in base[q]["choices"]])
        same += a == b
    return same / len(common)


def finite_or_none(x: Optional[float]) -> Optional[float]:
    """Helper for JSON output: NaN/inf become None."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return x
