"""Prompt builders for the evaluation tasks, plus the optional chat-template wrapper.

Every builder returns plain text that ends where the model should start writing (an answer cue,
a story's opening, a function signature). ``format_prompt`` wraps such text in a tokenizer's chat
template when asked. Examples of every prompt are in ``data/README.md``.
"""

from __future__ import annotations

import re

from model.errors import UserError

# --- CNN/DailyMail -----------------------------------------------------------------------------------

CNNDM_INSTRUCTION = "Summarize the above article in 3 sentences."
# The 1-shot exemplar is this record of the CNN/DM test split (the same id locally and on the hub:
# local ids are the split's row positions). It is short and its reference has exactly 3 sentences.
# It is removed from the pool of evaluated articles.
CNNDM_EXEMPLAR_ID = 63


def clean_highlights(highlights: str) -> str:
    """Reference highlights as one paragraph: lines joined by spaces, the source's `` .`` undone."""
    sentences = []
    for line in highlights.split("\n"):
        line = line.strip()
        if not line:
            continue
        line = re.sub(r"\s+([.!?,;:])$", r"\1", line)
        if line[-1] not in ".!?\"'":
            line += "."
        sentences.append(line)
    return " ".join(sentences)


def _cnndm_block(article: str) -> str:
    return f"Article: {article.strip()}\n{CNNDM_INSTRUCTION}\nSummary:"


def cnndm_prompt(article: str, exemplar: dict) -> str:
    """1-shot summarization: exemplar article + its summary, then the article and ``Summary:``."""
    shot = f"{_cnndm_block(exemplar['article'])} {clean_highlights(exemplar['highlights'])}"
    return f"{shot}\n\n{_cnndm_block(article)}"


# --- GSM8K -------------------------------------------------------------------------------------------

GSM8K_NUM_SHOTS = 5
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def clean_gsm8k_answer(answer: str) -> str:
    """A GSM8K solution without the ``<<a*b=c>>`` calculator annotations (``#### N`` kept)."""
    return _CALCULATOR.sub("", answer).strip()


def gsm8k_final_answer(answer: str) -> str | None:
    """The number after ``####`` in a GSM8K solution, commas and a trailing period removed."""
    if "####" not in answer:
        return None
    tail = answer.rsplit("####", 1)[1].strip().replace(",", "").replace("$", "")
    return tail.rstrip(".").strip() or None


def gsm8k_prompt(question: str, exemplars: list[dict]) -> str:
    """5-shot chain of thought: ``Question:``/``Answer:`` pairs, then the question and ``Answer:``."""
    shots = [f"Question: {ex['question'].strip()}\nAnswer: {clean_gsm8k_answer(ex['answer'])}"
             for ex in exemplars]
    return "\n\n".join(shots + [f"Question: {question.strip()}\nAnswer:"])


# --- TinyStories -------------------------------------------------------------------------------------

TINYSTORIES_INSTRUCTION = "Write a short, simple story for young children, continuing from its beginning."
# A story written for this package (not taken from the data), so that all records stay evaluable.
TINYSTORIES_EXEMPLAR = (
    "Once upon a time, a small brown hen named Dot lived on a quiet farm by a river. Dot liked to "
    "look for shiny pebbles in the grass.\n\n"
    "One windy day, Dot saw a little frog stuck under a heavy leaf. The frog could not get out. "
    "\"Hold on, I will help you!\" said Dot. She called her friend, a big goat. The goat pushed the "
    "leaf away with his nose, and the frog hopped free.\n\n"
    "The frog smiled and said, \"Thank you, Dot!\" From that day on, Dot, the goat and the frog played "
    "together by the river every day."
)
# The beginning shown for a story: the fewest leading sentences that reach this many characters.
TINYSTORIES_MIN_PREFIX_CHARS = 40
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)]*(?=\s)")


def split_story(text: str, min_chars: int = TINYSTORIES_MIN_PREFIX_CHARS) -> tuple[str, str]:
    """Split a story into (beginning, continuation).

    The beginning is the shortest run of whole leading sentences with at least ``min_chars``
    characters, never the whole story. A story with no usable sentence boundary is cut at the word
    boundary nearest its middle. ``beginning + continuation`` equals the stripped text.
    """
    text = text.strip()
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if end >= min_chars and text[end:].strip():
            return text[:end], text[end:]
    words = [m.start() for m in re.finditer(r"\s+", text)]
    if not words:
        return text, ""
    cut = min(words, key=lambda pos: abs(pos - len(text) // 2))
    return text[:cut], text[cut:]


def tinystories_prompt(beginning: str) -> str:
    """1-shot story continuation: instruction, one full example story, then the story's beginning."""
    return (f"{TINYSTORIES_INSTRUCTION}\n\nStory: {TINYSTORIES_EXEMPLAR}\n\n"
            f"Story: {beginning.strip()}")


# --- HumanEval / Spec-Bench --------------------------------------------------------------------------


def humaneval_prompt(record: dict) -> str:
    """Code completion: the HumanEval ``prompt`` itself, unchanged."""
    return record["prompt"]


def specbench_prompt(record: dict) -> str:
    """The first user turn of a Spec-Bench question."""
    return record["turns"][0]


# --- chat template -----------------------------------------------------------------------------------


def format_prompt(text: str, tokenizer=None, chat_template: bool = False) -> str:
    """Return ``text``, or, with ``chat_template=True``, ``text`` as one user turn in the tokenizer's
    chat template followed by the assistant generation prompt."""
    if not chat_template:
        return text
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise UserError(
            "A chat template was requested but no tokenizer with apply_chat_template was given; pass "
            "the model's tokenizer, or drop --chat-template to use plain prompts.")
    try:
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    except ValueError as exc:  # transformers raises ValueError when the tokenizer has no template
        raise UserError(
            f"The tokenizer could not apply a chat template ({exc}). The model probably has none; drop "
            f"--chat-template to use plain prompts.") from exc
    if not isinstance(out, str):
        raise UserError(
            f"The tokenizer's apply_chat_template returned {type(out).__name__}, not text; drop "
            f"--chat-template or use a tokenizer whose template renders to a string.")
    return out
