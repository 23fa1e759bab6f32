"""Cut a streamed NPC line into sentences as they complete (for text-to-speech and subtitles).

The same rules, and the same test cases (``unity_client/Tests/Editor/sentence_cases.json``), as the Unity
client's ``SentenceSplitter``: a sentence ends at '.', '!' or '?' (a run of them, then any closing quotes
or brackets) followed by white space and a character that is not a lower-case letter, or at a line break;
not at an ellipsis, an abbreviation ("Mr.", "Dr.", "e.g." ...), an initial ("J.") or a decimal point.
"""

from __future__ import annotations

from typing import Iterable, Iterator

ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "mt", "vs", "etc", "e.g", "i.e", "prof", "capt", "sgt", "lt",
                 "col", "gen"}
_STOPS = ".!?"
_CLOSERS = "\"')]\u201d\u2019*"


class SentenceSplitter:
    def __init__(self) -> None:
        self._pending = ""

    def push(self, delta: str) -> list[str]:
        """Add a delta; return the sentences it completed (often none)."""
        text = self._pending + delta
        done: list[str] = []
        start = i = 0
        while i < len(text):
            c = text[i]
            if c == "\n":
                _emit(done, text[start:i])
                start = i = i + 1
                continue
            if c not in _STOPS:
                i += 1
                continue
            run_start = i
            while i < len(text) and (text[i] in _STOPS or text[i] == "\u2026"):
                i += 1
            while i < len(text) and text[i] in _CLOSERS:
                i += 1
            end = nxt = i
            while nxt < len(text) and text[nxt] in " \t":
                nxt += 1
            if nxt == end:
                continue  # no space after it (yet): "3.5", "e.g", or more to come
            if nxt == len(text):
                break  # wait for the next character to decide
            if text[nxt] == "\n" or (not text[nxt].islower() and _ends_sentence(text, start, run_start, end)):
                _emit(done, text[start:end])
                start = nxt
            i = nxt
        self._pending = text[start:]
        return done

    def flush(self) -> str | None:
        """The text after the last complete sentence, trimmed (None when there is none); clears the splitter."""
        rest, self._pending = self._pending.strip(), ""
        return rest or None


def _ends_sentence(text: str, start: int, run_start: int, end: int) -> bool:
    run = text[run_start:end].rstrip(_CLOSERS)
    if "\u2026" in run or ".." in run:
        return False
    if run != ".":
        return True
    w = run_start
    while w > start and not text[w - 1].isspace() and text[w - 1] not in '("':
        w -= 1
    word = text[w:run_start]
    if len(word) == 1 and word.isalpha():
        return False  # an initial
    return word.lower() not in ABBREVIATIONS


def _emit(done: list[str], sentence: str) -> None:
    sentence = sentence.strip()
    if sentence:
        done.append(sentence)


def sentences(deltas: Iterable[str]) -> Iterator[str]:
    """Each complete sentence of a stream of text deltas, as soon as it is complete; the last at the end."""
    splitter = SentenceSplitter()
    for delta in deltas:
        yield from splitter.push(delta)
    last = splitter.flush()
    if last is not None:
        yield last
