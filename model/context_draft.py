"""Drafts taken from the context: prompt lookup (n-gram matching against the prompt and the output so far).

A continuation costs no forward pass: when the last n tokens of the stream occurred before, the tokens that followed
that earlier occurrence are proposed (summaries copy from the article, code repeats itself, answers reuse numbers of
the question). `ContextIndex.propose` tries the longest suffix first (`ngram_max` down to `ngram_min`) and, among
the earlier occurrences of that suffix, the most recent one.
"""

from __future__ import annotations


class ContextIndex:
    """Positions of every n-gram (n_min..n_max) of one stream's tokens, updated as tokens are appended."""

    def __init__(self, ngram_max: int = 3, ngram_min: int = 1):
        self.nmax, self.nmin = ngram_max, ngram_min
        self.tokens: list[int] = []
        self._ends: list[dict] = [dict() for _ in range(ngram_max + 1)]  # n -> {n-gram: [end positions]}

    def extend(self, tokens) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            end = len(self.tokens)
            for n in range(self.nmin, min(self.nmax, end) + 1):
                self._ends[n].setdefault(tuple(self.tokens[end - n:end]), []).append(end)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the most recent earlier occurrence of the longest matching suffix ([] when
        no suffix of n_min..n_max tokens occurred before)."""
        end = len(self.tokens)
        for n in range(min(self.nmax, end - 1), self.nmin - 1, -1):
            ends = self._ends[n].get(tuple(self.tokens[end - n:]))
            if ends and len(ends) > 1:  # the last entry is the suffix itself
                start = ends[-2]
                return self.tokens[start:start + k]
        return []
