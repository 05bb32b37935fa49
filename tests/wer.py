"""Word error rate, for checking transcripts of real speech without demanding an exact match."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: "Open the page." -> ["open", "the", "page"]."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length (0.0 is perfect; can exceed 1.0)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))  # distances from the empty reference prefix
    for i in range(1, len(ref) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            substitution = diagonal + (ref[i - 1] != hyp[j - 1])
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, substitution)
    return row[len(hyp)] / max(len(ref), 1)
