"""Word error rate, for checking transcripts of real speech without demanding an exact match."""

from __future__ import annotations

import re

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ONES += ["eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"]
ONES += ["eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def spelled(number: int) -> list[str]:
    """0-99 as the words they are spoken as: 20 -> ["twenty"], 42 -> ["forty", "two"]."""
    if number < 20:
        return [ONES[number]]
    tens, ones = divmod(number, 10)
    return [TENS[tens]] + ([ONES[ones]] if ones else [])


def words(text: str) -> list[str]:
    """Lower-case words without punctuation, numbers under 100 spelled out (Whisper writes "twenty"
    as "20" or not, from one CPU to another): "Open page 20." -> ["open", "page", "twenty"]."""
    out: list[str] = []
    for word in re.sub(r"[^a-z0-9' ]", " ", text.lower()).split():
        out.extend(spelled(int(word)) if word.isdigit() and int(word) < 100 else [word])
    return out


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
