"""Split a streamed LLM reply into sentences for speech, and strip markdown that should not be spoken.

The gateway speaks a chat reply while it is still streaming: each sentence goes to text-to-speech as soon
as it is known to be complete. Two constraints shape the splitter:

* A boundary is reported only once the characters that decide it have arrived: "3." may become "3.5",
  "Dr." is not an ending, "etc. and" goes on. Whether position i ends a sentence is a function of the text
  from the start of the current sentence plus a short look-ahead; when the look-ahead runs past what has
  been seen, the splitter waits. It never depends on how the text was fragmented, so any sequence of
  ``feed`` calls followed by ``flush`` returns exactly ``split_sentences(text)``.
* Synthesis time grows with the length of its input and nothing plays before it finishes, so a run-on
  clause longer than ``max_chars`` is cut at a clause mark (comma, semicolon, colon, dash), else at a space.

Pieces are stripped of surrounding whitespace and never empty; no other character is dropped or added,
except the single space that joins a piece shorter than ``min_chars`` to the next one.
"""

import html
import re

__all__ = ["SentenceSplitter", "clean_for_speech", "split_sentences"]

# Western terminators need whitespace after them: "3.5", "a.b@c.com" and "x.com/?q=1" never split.
_TERMINATORS = frozenset(".!?…")
# CJK text has no spaces between sentences, so these end one by themselves.
_CJK_TERMINATORS = frozenset("。！？；．｡")
_NEWLINES = frozenset("\n\r\u2028\u2029")
# Characters that stay with the sentence they close: quotes, brackets, markdown emphasis ("**Note.** Next").
_CLOSERS = frozenset("\"')]}»›”’」』）】〕〉》］｝*_`")
# Stripped from the front of the word before a period before it is compared with the abbreviations: "(e.g."
_OPENERS = "\"'([{«‹“‘¿¡*_`"
# Words that a period does not end even before a capital ("Dr. Smith", "Python vs. Java"); compared
# lower-case, without the final period. "etc." is deliberately absent: before a capital it usually does end
# the sentence, and before a lower-case word the general rule in _western_boundary already keeps it.
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "sr",
        "jr",
        "mt",
        "vs",
        "cf",
        "approx",
        "fig",
        "ph.d",
        "e.g",
        "i.e",
    }
)
_DOTTED_ACRONYM = re.compile(r"(?:[A-Za-z]\.){2,}")  # U.S., e.g., a.m., J.R.R.
_INITIAL = re.compile(r"[A-Z]\.")  # "J. R. R. Tolkien"; "I." is excluded where it is used ("So did I. Then")
_LIST_MARKER = re.compile(
    r"(?:\d{1,3}|[A-Za-z])\."
)  # "1. First step." is one piece, not "1." and "First step."
# Soft-cut marks that need whitespace after them, so "1,000", "12:30" and "https:" are never cut.
_CLAUSE_MARKS = frozenset(",;:–")
# Marks that cut without whitespace: CJK commas and colon, and the em dash, which is usually written unspaced.
_CLAUSE_MARKS_UNSPACED = frozenset("，、：—")
# Spaces to look across for the next word's case: a stream of spaces after a period must not be rescanned
# whole on every feed.
_MAX_GAP = 8


class SentenceSplitter:
    """Incremental sentence splitter for streamed text; one instance per stream, not thread-safe.

    ``feed`` returns the sentences that the new text completed; ``flush`` returns the rest once the stream
    ended. ``max_chars`` bounds a piece (closing quotes or brackets may follow the limit); ``min_chars`` joins
    a shorter piece to the next one, trading first-audio latency for fewer, less choppy synthesis calls.
    """

    def __init__(self, *, max_chars: int = 200, min_chars: int = 0) -> None:
        if max_chars < 20:
            raise ValueError(f"max_chars must be at least 20, got {max_chars}")
        if not 0 <= min_chars < max_chars:
            raise ValueError(f"min_chars must be in [0, max_chars), got {min_chars}")
        self.max_chars = max_chars
        self.min_chars = min_chars
        self._buffer = ""  # the current, unfinished piece and any look-ahead after it
        self._scan_from = 0  # positions of _buffer before this are known not to end the piece
        self._held: str | None = None  # a piece shorter than min_chars, waiting for the next one

    def feed(self, text: str) -> list[str]:
        """Add the next fragment of the stream; return the pieces it completed (possibly none)."""
        self._buffer += text
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of stream: return every remaining piece and reset, so the instance can be reused."""
        pieces = self._drain(final=True)
        if self._held is not None:
            pieces.append(self._held)
            self._held = None
        self._buffer = ""
        self._scan_from = 0
        return pieces

    def _drain(self, *, final: bool) -> list[str]:
        pieces: list[str] = []
        while True:
            if self._scan_from == 0:
                self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return pieces
            end, resume = self._find_cut(self._buffer, self._scan_from, final=final)
            if end is None:
                self._scan_from = resume
                return pieces
            self._emit(self._buffer[:end].strip(), pieces)
            self._buffer = self._buffer[resume:]
            self._scan_from = 0

    def _emit(self, piece: str, pieces: list[str]) -> None:
        if not piece:  # a blank line
            return
        if self._held is not None:
            piece = _join(self._held, piece)
            self._held = None
        if len(piece) < self.min_chars:
            self._held = piece
        else:
            pieces.append(piece)

    def _find_cut(self, text: str, start: int, *, final: bool) -> tuple[int | None, int]:
        """Where the piece at the start of ``text`` ends: ``(end, resume)``, or ``(None, resume)`` to wait for
        more text and rescan from ``resume``. ``text`` has no leading whitespace."""
        n = len(text)
        i = start
        while i < n:
            if i >= self.max_chars:  # text[:i] is already max_chars long with no boundary in it
                cut = self._soft_cut(text)
                return cut, cut
            ch = text[i]
            if ch in _NEWLINES:
                return i, i + 1
            if ch in _CJK_TERMINATORS:
                end = _skip(text, i + 1, _CLOSERS)
                if end == n and not final:  # a closing 」 may still come
                    return None, i
                return end, end
            if ch in _TERMINATORS:
                decided, j = _western_boundary(text, i, final=final)
                if decided is None:
                    return None, i  # restart at the terminator: its run may grow ("." -> "...")
                if decided:
                    return j, j
                i = j
                continue
            i += 1
        return (n, n) if final else (None, n)

    def _soft_cut(self, text: str) -> int:
        """End of an overlong clause, given ``len(text) > max_chars``: after the last clause mark in the
        second half of the first ``max_chars`` characters, else at the last space, else (one unbroken word)
        at ``max_chars``. A mark early in the window would leave a tiny piece and a still-overlong rest, so
        the last space wins there."""
        limit = self.max_chars
        for p in range(limit - 1, limit // 2 - 1, -1):  # cut after p: the piece is p + 1 <= limit characters
            ch = text[p]
            if (
                ch in _CLAUSE_MARKS_UNSPACED
                or (ch in _CLAUSE_MARKS and text[p + 1].isspace())
                or (ch == "-" and text[p - 1] == " " and text[p + 1].isspace())
            ):
                return p + 1
        for p in range(limit, 0, -1):
            if text[p].isspace():
                return p
        return limit


def split_sentences(text: str, *, max_chars: int = 200, min_chars: int = 0) -> list[str]:
    """Split a whole text: the pieces a ``SentenceSplitter`` gives for it in any fragments, then flushed."""
    splitter = SentenceSplitter(max_chars=max_chars, min_chars=min_chars)
    return splitter.feed(text) + splitter.flush()


# A busy machine's first phrase (tts.synthesize_on): the head keeps at least this many words, the rest too.
_LEAD_MIN_WORDS = 3
_LEAD_WORDS = 4  # where the head ends when the sentence has no clause mark early on
_CLAUSE_ENDINGS = tuple(_CLAUSE_MARKS | _CLAUSE_MARKS_UNSPACED)
_WORD = re.compile(r"\S+")


def lead_in(sentence: str) -> tuple[str, str] | None:
    """`sentence` cut after its first phrase, so that a busy server's first sound comes sooner: at its
    first clause mark (", ; : –") that leaves three or more words on each side within its first ten,
    else after about the fourth word (not after a word of three letters or fewer, where an article or
    a preposition would end the phrase). The head ends with a comma, so that it is spoken with a
    rising, unfinished tone. None for a sentence too short to cut (under eight words) or written
    without spaces.
    """
    words = list(_WORD.finditer(sentence))
    n = len(words)
    if n < 2 * _LEAD_MIN_WORDS + 2:
        return None
    last = n - _LEAD_MIN_WORDS  # the head ends before words[last] at the latest
    early = range(_LEAD_MIN_WORDS, min(last, 10) + 1)
    marks = (k for k in early if words[k - 1].group().endswith(_CLAUSE_ENDINGS))
    cut = next(marks, None)
    if cut is None:
        start = min(_LEAD_WORDS, n // 2)
        earlier = (k for k in range(start, _LEAD_MIN_WORDS - 1, -1) if not _short(words[k - 1].group()))
        later = (k for k in range(start + 1, last + 1) if not _short(words[k - 1].group()))
        cut = next(earlier, None) or next(later, None) or start
    head = sentence[: words[cut - 1].end()].rstrip()
    rest = sentence[words[cut].start() :].strip()
    if not head.endswith(_CLAUSE_ENDINGS):
        head += ","
    return head, rest


_QUOTES_AND_BRACKETS = _OPENERS + "".join(_CLOSERS)


def _short(word: str) -> bool:
    """Three letters or fewer, quotes and brackets aside: most articles, prepositions and pronouns."""
    return len(word.strip(_QUOTES_AND_BRACKETS)) <= 3


def _western_boundary(text: str, i: int, *, final: bool) -> tuple[bool | None, int]:
    """Does the run of . ! ? … starting at ``text[i]`` end a sentence? ``(True, end)``: yes, the piece
    ends at ``end`` (closing quotes included); ``(False, j)``: no, scan on from ``j``; ``(None, i)``: the
    answer lies past the end of ``text`` (and ``final`` is false)."""
    n = len(text)
    j = _skip(text, i, _TERMINATORS)
    k = _skip(text, j, _CLOSERS)
    if k == n:  # "3." of "3.5", "!" of "!!", '."' of '." He'
        return (True, n) if final else (None, i)
    if not text[k].isspace():
        return False, k
    run = text[i:j]
    if run == ".":
        w = i
        while w > 0 and not text[w - 1].isspace():
            w -= 1
        raw_word = text[w : i + 1]
        word = raw_word.lstrip(_OPENERS)
        if w == 0 and _LIST_MARKER.fullmatch(raw_word):
            return False, k
        if (
            word[:-1].lower() in _ABBREVIATIONS
            or _DOTTED_ACRONYM.fullmatch(word)
            or (_INITIAL.fullmatch(word) and word != "I.")
        ):
            return False, k
    if all(c in ".…" for c in run):
        # A period or ellipsis before a lower-case word is an abbreviation ("etc. and", "approx. five") or a
        # pause ("well... maybe"), not an ending. "!" and "?" end a sentence even then: '"Really?" she asked.'
        m = k
        while m < n and m - k < _MAX_GAP and text[m].isspace() and text[m] not in _NEWLINES:
            m += 1
        if m - k == _MAX_GAP:  # a long gap is a break anyway; bounding it keeps rescans linear
            return True, k
        if m == n:
            return (True, k) if final else (None, i)
        if text[m].islower():
            return False, m
    return True, k


def _skip(text: str, i: int, chars: frozenset[str]) -> int:
    while i < len(text) and text[i] in chars:
        i += 1
    return i


def _join(first: str, second: str) -> str:
    last = first[-1]
    # CJK sentences are written without a space between them.
    if last in _CJK_TERMINATORS or "\u3000" <= last <= "\u9fff" or "\uff00" <= last <= "\uffef":
        return first + second
    return f"{first} {second}"


# --- clean_for_speech ---------------------------------------------------------------------------------

_FENCED_BLOCK = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n.*?^[ \t]*\1[`~]*[ \t]*$", re.MULTILINE | re.DOTALL)
# An opening fence with no closing one: a reply cut short, or one line of a streamed block.
_OPEN_FENCE = re.compile(r"^[ \t]*(?:`{3,}|~{3,}).*", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|~<>])")
_PROTECTED = re.compile(r"\x00(\d+)\x00")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# A link target: no spaces, one level of balanced parentheses (Wikipedia URLs), an optional "title".
_TARGET = r"\((?:[^()\s]|\([^()\s]*\))*(?:\s+(?:\"[^\"]*\"|'[^']*'))?\)"
_IMAGE = re.compile(r"!\[[^\]]*\](?:" + _TARGET + r"|\[[^\]]*\])")
_LINK = re.compile(r"\[([^\]]+)\](?:" + _TARGET + r"|\[[^\]]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_LINK_DEFINITION = re.compile(r"^[ \t]{0,3}\[[^\]]+\]:[ \t]+\S+.*$", re.MULTILINE)
_FOOTNOTE_REF = re.compile(r"\[\^[^\]]+\]")
# Only real HTML element names, so "x<y and z>w" in prose survives.
_INLINE_TAGS = (
    "a|abbr|b|bdi|bdo|cite|code|del|dfn|em|font|i|ins|kbd|mark|q|s|samp|small"
    "|span|strike|strong|sub|sup|u|var"
)
_BLOCK_TAGS = (
    "address|article|aside|blockquote|br|caption|center|dd|details|div|dl|dt|figcaption|figure|footer"
    "|h[1-6]|header|hr|img|li|main|nav|ol|p|pre|section|summary|table|tbody|td|tfoot|th|thead|tr|ul"
)
_TAG_TAIL = r"(?:\s[^<>]*)?/?>"
_INLINE_TAG = re.compile(rf"</?(?:{_INLINE_TAGS}){_TAG_TAIL}", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    rf"</?(?:{_BLOCK_TAGS}){_TAG_TAIL}", re.IGNORECASE
)  # become a space: "a<br>b" is two words
_HORIZONTAL_RULE = re.compile(r"^[ \t]{0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+|$)", re.MULTILINE)
_HEADING_CLOSE = re.compile(r"[ \t]+#+[ \t]*$", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^[ \t]{0,3}(?:>[ \t]?)+", re.MULTILINE)
_BULLET = re.compile(r"^[ \t]*(?:[-*+•‣◦▪]|\d{1,3}[.)])[ \t]+(?:\[[ xX]\][ \t]+)?", re.MULTILINE)
# Paired emphasis; the markers must hug the text, so "2 * 3 * 4" and snake_case_names are left alone.
_EMPHASIS = [
    re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"),
    re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)"),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~"),
    re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])"),
    re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"),
]
# Unpaired markers, e.g. the halves of "**Note** one. Two**" when the splitter cut between them: a run of **
# anywhere, or a * or _ run at the edge of a word. "2*3" and " * " are kept.
_STRAY_MARKERS = re.compile(r"\*{2,}|(?<!\S)[*_]+(?=\S)|(?<=\S)[*_]+(?!\S)")
_EMOJI_CHAR = (
    r"\U0001F000-\U0001FAFF"  # mahjong .. pictographs ext-A: emoticons, transport, flags' regional indicators
    r"\u2600-\u27BF"  # miscellaneous symbols, dingbats
    r"\u2B00-\u2BFF"  # miscellaneous symbols and arrows (⭐, ⬛)
    r"\u231A\u231B\u2328\u23CF\u23E9-\u23F3\u23F8-\u23FA"  # the emoji among the technical symbols (⌚, ⏰)
)
_EMOJI_MODIFIER = r"\uFE0E\uFE0F\U0001F3FB-\U0001F3FF\U000E0020-\U000E007F"  # variation, skin tone, flag tags
# Whole sequences, so a zero-width joiner goes only inside an emoji (Indic and Persian text needs its own).
_EMOJI = re.compile(rf"[{_EMOJI_CHAR}][{_EMOJI_MODIFIER}]*(?:\u200D[{_EMOJI_CHAR}][{_EMOJI_MODIFIER}]*)*")
_KEYCAP = re.compile(r"([0-9#*])\uFE0F?\u20E3")  # "1️⃣" reads as "1"
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,!?;:]+)(?=\s|$)")  # not ".NET" or ".5"
_WHITESPACE = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Return ``text`` without what a voice should not read: markdown markup (emphasis, inline-code backticks,
    heading marks, list bullets, block quotes, rules, link targets), images, fenced code blocks, HTML tags and
    emoji; whitespace collapsed to single spaces. Words and ordinary punctuation are kept; may return ""."""
    protected: list[str] = []

    def protect(value: str) -> str:
        protected.append(value)
        return f"\x00{len(protected) - 1}\x00"

    text = _FENCED_BLOCK.sub("\n", text)
    text = _OPEN_FENCE.sub("", text)
    # Code spans and escaped characters are literal: no emphasis or tag rule may touch them.
    text = _INLINE_CODE.sub(lambda m: protect(m.group(2).strip()), text)
    text = _ESCAPED.sub(lambda m: protect(m.group(1)), text)
    text = text.replace("`", "")  # an unpaired backtick, e.g. from a span the splitter cut in two
    text = _HTML_COMMENT.sub(" ", text)
    text = _IMAGE.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _LINK_DEFINITION.sub("", text)
    text = _FOOTNOTE_REF.sub("", text)
    text = _INLINE_TAG.sub("", text)
    text = _BLOCK_TAG.sub(" ", text)
    text = _HORIZONTAL_RULE.sub(
        "", text
    )  # before bullets and emphasis, which would each take part of "* * *"
    text = _HEADING.sub("", text)
    text = _HEADING_CLOSE.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _BULLET.sub("", text)
    for pattern in _EMPHASIS:
        text = pattern.sub(r"\1", text)
    text = _STRAY_MARKERS.sub("", text)
    text = _KEYCAP.sub(r"\1", text)
    text = _EMOJI.sub(" ", text)
    text = text.replace("\ufe0f", "")  # a presentation selector left on a text symbol ("©️")
    text = html.unescape(text)
    text = _PROTECTED.sub(lambda m: protected[int(m.group(1))], text)
    text = _WHITESPACE.sub(" ", text).strip()
    # Removing an emoji or a tag can leave "done ." behind.
    return _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)


class SpeakableFilter:
    """Turns a stream of split pieces into what is read aloud: markdown, emoji and fenced code out.

    Stateful because a fenced code block spans pieces: the splitter cuts at newlines, so its
    fence lines arrive alone, and everything between them is skipped.
    """

    def __init__(self) -> None:
        self.in_code = False

    def __call__(self, piece: str) -> str | None:
        if piece.lstrip().startswith("```"):
            self.in_code = not self.in_code
            return None
        if self.in_code:
            return None
        spoken = clean_for_speech(piece)
        return spoken if any(c.isalnum() for c in spoken) else None


class SpokenCap:
    """Where a spoken reply stops: after the last whole sentence that ends within `limit` characters.

    Fed the reply's text as it streams (`take`), it passes on the text up to the limit and the
    sentences completed within it (`sentences`); once the limit is reached it takes nothing more, and
    the unfinished sentence at the limit is never spoken (`rest` is empty). Uncapped, `rest` gives
    the sentences left when the text ends.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0
        self.capped = False
        self._splitter = SentenceSplitter()
        self.sentences: list[str] = []
        self._whole = 0  # whole sentences found so far

    def take(self, piece: str) -> str:
        """The part of `piece` within the limit (all of it, until the limit is reached)."""
        if self.capped:
            return ""
        room = self.limit - self.taken
        if len(piece) > room:
            piece, self.capped = piece[:room], True
        self.taken += len(piece)
        done = self._splitter.feed(piece)
        self._whole += len(done)
        self.sentences += done
        return piece

    def rest(self) -> list[str]:
        """What is left to speak at the end: the unfinished sentence when the text ended before the
        limit, or when not even one whole sentence fit in it (then cut at the limit: something
        is said); nothing otherwise."""
        return [] if self.capped and self._whole else self._splitter.flush()


def cap_text(text: str, limit: int) -> tuple[str, bool]:
    """`text`, or when it is longer than `limit` characters, its whole sentences within the limit
    (as written), and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cap = SpokenCap(limit)
    cap.take(text)
    end = 0
    for sentence in cap.sentences:
        end = text.index(sentence, end) + len(sentence)
    if not end:  # not even one whole sentence fits: the words within the limit
        cut = text[:limit]
        return (cut.rsplit(None, 1)[0] if " " in cut.strip() else cut).rstrip(), True
    return text[:end], True
