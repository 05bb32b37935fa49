"""chat.sentences: the streaming sentence splitter and clean_for_speech. Pure functions, no database."""

import random
import re

import pytest

from registry.speech.text import (
    SentenceSplitter,
    SpokenCap,
    cap_text,
    clean_for_speech,
    lead_in,
    split_sentences,
)

# --- where a sentence ends ----------------------------------------------------------------------------------


def test_splits_after_terminators_followed_by_whitespace():
    text = "Hello world. How are you? I'm fine! Well… Bye."
    assert split_sentences(text) == ["Hello world.", "How are you?", "I'm fine!", "Well…", "Bye."]


def test_runs_of_terminators_stay_together():
    assert split_sentences("Really?! Yes!!! Wait... What?") == ["Really?!", "Yes!!!", "Wait...", "What?"]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    text = 'He said "Stop." Then (quietly.) it ended. \u201cGo!\u201d Done.'
    assert split_sentences(text) == [
        'He said "Stop."',
        "Then (quietly.) it ended.",
        "\u201cGo!\u201d",
        "Done.",
    ]


def test_markdown_emphasis_after_the_period_stays_with_its_sentence():
    assert split_sentences("**Note.** Next one.") == ["**Note.**", "Next one."]


def test_question_mark_ends_a_sentence_even_before_lowercase():
    assert split_sentences('"Really?" she asked.') == ['"Really?"', "she asked."]


def test_no_terminator_needed_at_the_end():
    assert split_sentences("First. And a last one without a period") == [
        "First.",
        "And a last one without a period",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "Pi is 3.14 or so.",
        "It costs $1,000.50 today.",
        "Version 3.5.1 is out.",
        "Python 3.11.7 was released.",
        "Open https://example.com/a.b?x=1 in a browser.",
        "Write to foo.bar@example.com today.",
        "The file is named report.final.v2.pdf here.",
    ],
)
def test_no_split_inside_numbers_urls_and_emails(text):
    assert split_sentences(text) == [text]


@pytest.mark.parametrize(
    "text",
    [
        "Dr. Smith met Mr. Jones, Mrs. Brown and Ms. Green.",
        "Prof. Xavier lives on Main St. Paul Street is nearby.",
        "Use a tool, e.g. A hammer, i.e. The heavy one.",
        "Apples, pears, etc. are fruit.",
        "It was Python vs. Java all day.",
        "The U.S. Army and the U.K. Navy met.",
        "J. R. R. Tolkien wrote it.",
        "Meet at 5 p.m. Tomorrow is fine.",
        "She has a Ph.D. From Oxford.",
    ],
)
def test_no_split_after_abbreviations_and_initials(text):
    assert split_sentences(text) == [text]


def test_etc_before_a_capital_ends_the_sentence():
    assert split_sentences("I like apples, pears, etc. Then I left.") == [
        "I like apples, pears, etc.",
        "Then I left.",
    ]


def test_a_lone_capital_i_is_a_word_not_an_initial():
    assert split_sentences("So did I. Then we left.") == ["So did I.", "Then we left."]


def test_ellipsis_before_lowercase_is_a_pause_not_an_ending():
    assert split_sentences("Well... maybe not. Hmm\u2026 perhaps. Wait\u2026 What?") == [
        "Well... maybe not.",
        "Hmm\u2026 perhaps.",
        "Wait\u2026",
        "What?",
    ]


def test_a_period_before_a_lowercase_word_does_not_end_the_sentence():
    assert split_sentences("It weighs approx. five kilos. Next.") == [
        "It weighs approx. five kilos.",
        "Next.",
    ]


# --- lines, lists, CJK --------------------------------------------------------------------------------------


def test_newlines_always_split_and_blank_lines_are_dropped():
    text = "Title line\n\nFirst paragraph\r\nSecond line.\n\n\n  \nLast"
    assert split_sentences(text) == ["Title line", "First paragraph", "Second line.", "Last"]


def test_newline_splits_even_after_an_abbreviation():
    assert split_sentences("Ask Dr.\nSmith") == ["Ask Dr.", "Smith"]


def test_list_items_are_their_own_pieces_with_the_marker_attached():
    text = "Steps:\n1. Open the box. Take it out.\n2. Plug it in\n- a bullet\n* another\na. lettered item"
    assert split_sentences(text) == [
        "Steps:",
        "1. Open the box.",
        "Take it out.",
        "2. Plug it in",
        "- a bullet",
        "* another",
        "a. lettered item",
    ]


def test_a_number_ending_a_sentence_mid_line_still_splits():
    assert split_sentences("Count to 3. Then stop.") == ["Count to 3.", "Then stop."]


def test_cjk_splits_without_whitespace():
    text = "你好。今天天气很好！你呢？我很好；谢谢．「是的。」好"
    assert split_sentences(text) == [
        "你好。",
        "今天天气很好！",
        "你呢？",
        "我很好；",
        "谢谢．",
        "「是的。」",
        "好",
    ]


def test_japanese_with_a_closing_bracket():
    assert split_sentences("彼は「行く！」と言った。はい。") == ["彼は「行く！」", "と言った。", "はい。"]


# --- overlong clauses ---------------------------------------------------------------------------------------

_RUN_ON = (
    "This is a very long run-on clause that keeps going and going, with lots of words in it, and more "
    "words after that, and it never seems to stop because the model is verbose: it keeps talking about "
    "everything it knows and then some more things until it finally ends here."
)


def test_overlong_clause_is_cut_at_the_last_clause_mark_before_the_limit():
    pieces = split_sentences(_RUN_ON)
    assert pieces[0].endswith("because the model is verbose:")
    assert all(len(p) <= 200 for p in pieces)
    assert " ".join(pieces) == _RUN_ON


@pytest.mark.parametrize("mark", [";", ",", " \u2014", " -", "\u2014"])
def test_overlong_clause_cut_marks(mark):
    text = "word " * 25 + "last" + mark + " more " + "tail " * 20
    first = split_sentences(text, max_chars=150)[0]
    assert first == ("word " * 25 + "last" + mark).strip()


def test_overlong_clause_without_marks_is_cut_at_a_space():
    text = " ".join(f"w{i}" for i in range(100))
    pieces = split_sentences(text, max_chars=50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces) == text


def test_clause_mark_in_the_first_half_loses_to_a_later_space():
    text = "Short, " + "x" * 10 + " y" * 60
    first = split_sentences(text, max_chars=100)[0]
    assert first != "Short,"
    assert len(first) > 80


def test_numbers_and_times_are_not_clause_marks():
    text = "The totals were 1,000 and 2,000 at 12:30 and 13:45 " * 6
    for piece in split_sentences(text, max_chars=60):
        assert not re.search(r"\d[,:]$", piece), piece


def test_one_unbroken_word_is_hard_cut_at_the_limit():
    text = "x" * 130
    assert split_sentences(text, max_chars=50) == ["x" * 50, "x" * 50, "x" * 30]


def test_overlong_cjk_is_cut_at_a_cjk_comma():
    text = "我" * 70 + "，" + "你" * 70 + "。"
    assert split_sentences(text, max_chars=100) == ["我" * 70 + "，", "你" * 70 + "。"]


# --- min_chars ----------------------------------------------------------------------------------------------


def test_short_pieces_merge_with_the_next_when_min_chars_is_set():
    text = "Hi. Ok. This sentence is long enough. Yes."
    assert split_sentences(text) == ["Hi.", "Ok.", "This sentence is long enough.", "Yes."]
    assert split_sentences(text, min_chars=10) == ["Hi. Ok. This sentence is long enough.", "Yes."]


def test_a_short_last_piece_is_still_returned_by_flush():
    splitter = SentenceSplitter(min_chars=10)
    assert splitter.feed("A long first sentence. ") == []
    assert splitter.feed("Ok") == ["A long first sentence."]
    assert splitter.flush() == ["Ok"]


def test_cjk_pieces_merge_without_a_space():
    assert split_sentences("好。是的。谢谢你们大家。", min_chars=3) == ["好。是的。", "谢谢你们大家。"]


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(max_chars=5)
    with pytest.raises(ValueError, match="min_chars"):
        SentenceSplitter(max_chars=50, min_chars=50)


# --- streaming ----------------------------------------------------------------------------------------------


def test_a_terminator_at_the_end_of_the_fed_text_waits_for_the_next_character():
    splitter = SentenceSplitter()
    assert splitter.feed("It costs 3.") == []
    assert splitter.feed("5 dollars. Nex") == ["It costs 3.5 dollars."]
    assert splitter.feed("t!") == []
    assert splitter.feed(" ") == ["Next!"]
    assert splitter.flush() == []


def test_a_period_waits_for_the_next_word_to_see_its_case():
    splitter = SentenceSplitter()
    assert splitter.feed("Apples, pears, etc.") == []
    assert splitter.feed(" ") == []
    assert splitter.feed("and more. ") == []
    assert splitter.feed("Then") == ["Apples, pears, etc. and more."]
    assert splitter.flush() == ["Then"]


def test_typical_llm_tokens_emit_each_sentence_when_the_next_word_arrives():
    splitter = SentenceSplitter()
    tokens = ["Hello", " there", ".", " How", " are", " you", "?", " Bye", "."]
    emitted = [(token, splitter.feed(token)) for token in tokens]
    assert emitted[3] == (" How", ["Hello there."])
    assert emitted[7] == (" Bye", ["How are you?"])
    assert splitter.flush() == ["Bye."]


def test_flush_resets_the_splitter_for_reuse():
    splitter = SentenceSplitter()
    splitter.feed("One. Two")
    assert splitter.flush() == ["Two"]
    assert splitter.feed("Three. Four") == ["Three."]
    assert splitter.flush() == ["Four"]


def test_empty_and_whitespace_input():
    assert split_sentences("") == []
    assert split_sentences("  \n\n \t ") == []
    splitter = SentenceSplitter()
    assert splitter.feed("") == []
    assert splitter.feed("   ") == []
    assert splitter.flush() == []


# Fragments chosen to hit every rule; random joins put terminators, closers and spaces at fragment edges.
_VOCABULARY = [
    "hello", "World", "the", "Quick", "fox", "3.5", "$1,000.50", "v2.0.1", "Dr.", "Mr.", "e.g.", "i.e.",
    "etc.", "vs.", "U.S.", "J.", "R.", "I.", "1.", "12.", "a.", "https://example.com/a.b?x=1", ".",
    "foo.bar@example.com", "!", "?", "...", "\u2026", "?!", '"', "'", ")", "(", "**", "_", ",", ";", ":",
    "\u2014", " - ", "\n", "\n\n", "\n- ", "\n1. ", "你好。", "世界！", "「是的。」", "，", "好",
    "\u201cquoted.\u201d", "12:30", "1,000", "Supercalifragilisticexpialidocious", "x" * 70,
]  # fmt: skip
_SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n"]


def _random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 120)):
        parts.append(rng.choice(_VOCABULARY))
        parts.append(rng.choice(_SEPARATORS))
    return "".join(parts)


def _feed_in_fragments(text, rng, max_size, **limits):
    splitter = SentenceSplitter(**limits)
    pieces = []
    i = 0
    while i < len(text):
        size = rng.randint(1, max_size)
        pieces += splitter.feed(text[i : i + size])
        i += size
    return pieces + splitter.flush()


def _no_whitespace(text):
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("limits", [{}, {"max_chars": 40}, {"max_chars": 60, "min_chars": 12}])
def test_any_fragmentation_gives_the_same_pieces_as_the_whole_text(limits):
    for seed in range(150):
        rng = random.Random(seed)
        text = _random_text(rng)
        expected = split_sentences(text, **limits)
        for max_size in (1, 3, 12):
            assert _feed_in_fragments(text, rng, max_size, **limits) == expected, (seed, max_size, text)


@pytest.mark.parametrize("limits", [{}, {"max_chars": 40}, {"max_chars": 60, "min_chars": 12}])
def test_pieces_keep_every_character_and_respect_the_limits(limits):
    max_chars = limits.get("max_chars", 200)
    for seed in range(300):
        rng = random.Random(seed)
        text = _random_text(rng)
        pieces = split_sentences(text, **limits)
        assert _no_whitespace("".join(pieces)) == _no_whitespace(text), seed
        for piece in pieces:
            assert piece and piece == piece.strip(), (seed, piece)
            if "min_chars" not in limits:  # merged pieces may exceed the limit by design
                # The limit bounds where the terminator is; closing quotes and a terminator run may follow it.
                assert len(piece.rstrip(".!?\u2026\"')]}*_\u201d\u300d")) <= max_chars, (seed, piece)
            assert "\n" not in piece, (seed, piece)


def test_prose_joined_with_spaces_is_the_input_with_whitespace_collapsed():
    words = [
        "alpha",
        "Beta",
        "3.5",
        "Dr.",
        "e.g.",
        "go.",
        "Stop!",
        "why?",
        "U.S.",
        "x,",
        "so:",
        "well...",
        "end.",
    ]
    for seed in range(200):
        rng = random.Random(seed)
        text = "".join(rng.choice(words) + rng.choice([" ", "  ", " \t "]) for _ in range(rng.randint(1, 80)))
        pieces = split_sentences(text, max_chars=rng.choice([40, 200]))
        # Split on whitespace again: pieces keep their inner spacing; a cut inside a word would still show.
        assert " ".join(" ".join(pieces).split()) == " ".join(text.split()), seed


# --- clean_for_speech ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        ("This is *important* and **very bold**.", "This is important and very bold."),
        ("Use _this_ or __that__ or ***both***.", "Use this or that or both."),
        ("Not ~~this~~ one.", "Not this one."),
        ("Keep snake_case_names and 2*3*4 and 2 * 3.", "Keep snake_case_names and 2*3*4 and 2 * 3."),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("Call ``a `tick` here`` ok.", "Call a `tick` here ok."),
        ("Inline `**not bold**` stays.", "Inline **not bold** stays."),
        ("# Title", "Title"),
        ("### Section three ###", "Section three"),
        ("#hashtag stays", "#hashtag stays"),
        ("- first\n* second\n+ third\n1. fourth\n2) fifth", "first second third fourth fifth"),
        ("- [x] done task", "done task"),
        ("> quoted words\n> > nested", "quoted words nested"),
        ("See [the docs](https://example.com/docs?a=1) now.", "See the docs now."),
        ("See [wiki](https://en.wikipedia.org/wiki/Foo_(bar)) ok.", "See wiki ok."),
        ('A [titled](http://x.org "Title") link.', "A titled link."),
        ("A [reference][1] link.\n\n[1]: https://example.com", "A reference link."),
        ("Look ![a cat](cat.png) here.", "Look here."),
        ("Before\n```python\nprint('hi')\n```\nAfter.", "Before After."),
        ("Before\n~~~\ncode\n~~~\nAfter.", "Before After."),
        ("Cut short:\n```js\nconst a = 1;", "Cut short:"),
        ("```python", ""),
        ("Some <b>bold</b> and <i>italic</i> text.", "Some bold and italic text."),
        ("Line<br>break and <p>para</p>.", "Line break and para."),
        ('A <a href="https://x.org">link</a>.', "A link."),
        ("Comment <!-- hidden --> gone.", "Comment gone."),
        ("Math: x<y and z>w.", "Math: x<y and z>w."),
        ("Tom &amp; Jerry &lt;3", "Tom & Jerry <3"),
        ("Great job! 🎉", "Great job!"),
        ("Well done 👍🏽.", "Well done."),
        ("Family 👨\u200d👩\u200d👧 time ❤️ and ⭐ too ✅.", "Family time and too."),
        ("Flags 🇫🇷 and ⏰ clocks.", "Flags and clocks."),
        ("1️⃣ First", "1 First"),
        ("Copyright ©️ 2024.", "Copyright © 2024."),
        ("Persian \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 keeps its joiner.", None),
        ("Escaped \\*star\\* stays.", "Escaped *star* stays."),
        ("---\nAbove the rule\n* * *", "Above the rule"),
        ("**Note.**", "Note."),
        ("**Half a bold", "Half a bold"),
        ("closing half.**", "closing half."),
        ("1. **Step one**: open it.", "Step one: open it."),
        ("Footnote here[^1].", "Footnote here."),
        ("Auto <https://example.com> link.", "Auto https://example.com link."),
        ("  lots   of\n\n whitespace\t here  ", "lots of whitespace here"),
        (
            "Keep: commas, semicolons; dashes \u2014 and 'quotes'?",
            "Keep: commas, semicolons; dashes \u2014 and 'quotes'?",
        ),
        ("Version 3.5 of .NET costs $1,000.50!", "Version 3.5 of .NET costs $1,000.50!"),
        ("你好，世界！😀", "你好，世界！"),
    ],
)
def test_clean_for_speech(markdown, spoken):
    assert clean_for_speech(markdown) == (markdown if spoken is None else spoken)


def test_clean_for_speech_of_each_streamed_piece():
    reply = "## Plan\n1. **Open** the box. Then *carefully* lift it 🎁.\n- Check `cable.txt` first!"
    spoken = [clean_for_speech(piece) for piece in split_sentences(reply)]
    assert spoken == ["Plan", "Open the box.", "Then carefully lift it.", "Check cable.txt first!"]


def test_a_long_run_of_spaces_after_a_period_is_a_break_and_stays_fast():
    splitter = SentenceSplitter()
    pieces = splitter.feed("Hello.")
    for _ in range(20_000):
        pieces += splitter.feed(" ")
    assert pieces == ["Hello."]
    assert split_sentences("Hello.          and more") == ["Hello.", "and more"]


def test_fenced_code_is_not_spoken():
    from registry.speech.tts import speakable

    text = "Here is code:\n```python\nprint('x')\nx = 1\n```\nDone. **Bold** move 😀."
    assert speakable(text) == ["Here is code:", "Done.", "Bold move."]


# --- the spoken-reply cap ------------------------------------------------------------------------

CAPPED = "The first sentence is short. The second one is a little longer than that. The third ends it."


def test_cap_text_keeps_whole_sentences_within_the_limit():
    assert cap_text(CAPPED, len(CAPPED)) == (CAPPED, False)
    kept, capped = cap_text(CAPPED, 80)
    assert capped and kept == "The first sentence is short. The second one is a little longer than that."


def test_cap_text_with_no_whole_sentence_in_the_limit_keeps_the_words_within_it():
    kept, capped = cap_text("word " * 60 + "end.", 100)
    assert capped and 0 < len(kept) <= 100 and kept.endswith("word")


def test_spoken_cap_streams_the_same_cut_as_cap_text():
    cap = SpokenCap(80)
    taken = "".join(cap.take(CAPPED[i : i + 7]) for i in range(0, len(CAPPED), 7))
    assert cap.capped and taken == CAPPED[:80]
    assert " ".join(cap.sentences + cap.rest()) == cap_text(CAPPED, 80)[0]
    uncapped = SpokenCap(1000)
    uncapped.take(CAPPED)
    assert not uncapped.capped and " ".join(uncapped.sentences + uncapped.rest()) == CAPPED


@pytest.mark.parametrize(
    ("sentence", "cut"),
    [
        # No clause mark: after the fourth word, or the nearest earlier one that is not short.
        (
            "The train leaves the station at nine every morning.",
            ("The train leaves,", "the station at nine every morning."),
        ),
        ("Tickets can be bought on board or online.", ("Tickets can be bought,", "on board or online.")),
        # Short words ("a", "the", "of") do not end a phrase; then later ones are tried.
        ("It is a day of the year to be at home.", ("It is a day of the year,", "to be at home.")),
        # A clause mark early on is where the phrase ends, kept as written.
        (
            "In the morning, after a long night of heavy rain, the roads were closed.",
            ("In the morning,", "after a long night of heavy rain, the roads were closed."),
        ),
        ("First of all; we need the keys to the car.", ("First of all;", "we need the keys to the car.")),
        # Too short to cut, or written without spaces.
        ("Passengers should arrive a few minutes early.", None),
        ("Hello there.", None),
        ("我们明天早上九点在火车站见面，然后一起去公园散步。", None),
    ],
)
def test_a_busy_server_s_first_phrase(sentence: str, cut: tuple[str, str] | None) -> None:
    assert lead_in(sentence) == cut
    if cut is not None:  # nothing lost: the two parts hold the sentence's words, in order
        assert re.sub(r"[,;]", "", " ".join(cut)).split() == re.sub(r"[,;]", "", sentence).split()
