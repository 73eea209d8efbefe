"""What a text encoder leaves out of a prompt longer than it reads, told to the user in one line.

Every family's tokenizer pads or truncates the tokenized prompt to a fixed length, as its diffusers pipeline
does; a longer prompt loses its end (or, for a tokenizer that truncates on the left, its start) without a word.
`prompt_cut` compares the whole tokenized text with the tokens the encoder reads: the count is the encoder's
own (chat template, start and end tokens included), so a prompt exactly at the limit is read whole and one token
more is cut; the words quoted are the prompt's own, found through the tokenizer's character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

QUOTED_WORDS = 6  # of the dropped text, in the warning
QUOTED_CHARS = 48


@dataclass(frozen=True)
class PromptCut:
    """One text encoder reading less than the whole prompt.

    encoder: its name as the user knows it ("T5", "CLIP", "Qwen3");
    limit: the tokens it reads; tokens: the prompt's, counted as the encoder counts them;
    dropped: the prompt's own text it does not read ("" when only template tokens after the prompt are cut);
    at_start: the dropped text is the prompt's start (a tokenizer that truncates on the left);
    template: the count includes a chat template around the prompt."""

    encoder: str
    limit: int
    tokens: int
    dropped: str
    at_start: bool = False
    template: bool = False

    def message(self, which: str = "prompt") -> str:
        """One line: `which` is "prompt" or "negative prompt"."""
        counted = " with the chat template" if self.template else ""
        reads = f"the {self.encoder} text encoder reads the {'last' if self.at_start else 'first'} {self.limit}"
        head = f"the {which} is {self.tokens} tokens{counted}; {reads}"
        if not self.dropped.strip():
            return f"{head}, so the template's closing tokens are cut (every word of the {which} is read)"
        if self.at_start:
            return f"{head}, so everything up to \"{_quote_end(self.dropped)}\" is ignored"
        return f"{head}, so \"{_quote_start(self.dropped)}\" onward is ignored"


def prompt_cut(encoder: str, text: str, prompt_start: int, prompt_end: int, offsets: list[tuple[int, int]],
               read: Iterable[int], tokens: int, limit: int, template: bool = False) -> PromptCut | None:
    """The cut of a prompt whose tokenized text (`text`, the prompt at [prompt_start, prompt_end)) has these
    token `offsets` (characters of `text`, one pair per token of the whole, untruncated encoding), of which the
    encoder reads the positions `read`; `tokens` and `limit` are the counts the user is told (None when
    tokens <= limit: nothing is cut)."""
    if tokens <= limit:
        return None
    read = set(read)
    words = [(i in read, start, end) for i, (start, end) in enumerate(offsets)
             if end > start and end > prompt_start and start < prompt_end]  # the prompt's tokens (specials have none)
    dropped = [(start, end) for kept, start, end in words if not kept]
    if not dropped:
        return PromptCut(encoder, limit, tokens, "", template=template)
    if not words[0][0] and words[-1][0]:  # its start cut, its end read: truncated on the left
        end = max(e for _, e in dropped)
        while end < prompt_end and not text[end].isspace():  # a word cut in two is quoted whole
            end += 1
        return PromptCut(encoder, limit, tokens, text[prompt_start:end], at_start=True, template=template)
    start = max(dropped[0][0], prompt_start)
    while start < prompt_end - 1 and text[start].isspace():  # a byte-level token holds the space before its word
        start += 1
    while start > prompt_start and not text[start - 1].isspace():
        start -= 1
    return PromptCut(encoder, limit, tokens, text[start:prompt_end], template=template)


def calibration_cut_lines(cuts: list[list[PromptCut]], numbers: list[int], unit: str = "prompt", where: str = "",
                          listed: int = 8) -> list[str]:
    """One line for each text encoder that reads less than the words of some calibration prompts: `cuts` are each
    prompt's (a family's prompt_cuts), `numbers` and `unit` name them ("line", 7), `where` says where they are."""
    by_encoder: dict[str, list[tuple[int, PromptCut]]] = {}
    for number, prompt_cuts in zip(numbers, cuts):
        for cut in prompt_cuts:
            if cut.dropped.strip():  # only the template's closing tokens cut: every word is read
                by_encoder.setdefault(cut.encoder, []).append((number, cut))
    lines = []
    for encoder, cut in by_encoder.items():
        names = ", ".join(str(number) for number, _ in cut[:listed]) + (f" and {len(cut) - listed} more"
                                                                       if len(cut) > listed else "")
        named = f"({unit}{'s' if len(cut) > 1 else ''} {names})"
        which = (f"the calibration prompt{where} {named} is" if len(cuts) == 1 else
                 f"{len(cut)} of the {len(cuts)} calibration prompts{where} {named} {'is' if len(cut) == 1 else 'are'}")
        first = cut[0][1]
        counted = " with the chat template" if first.template else ""
        lines.append(f"{which} longer than the {encoder} text encoder reads ({first.limit} tokens{counted}): "
                     f"calibration sees only the {'end' if first.at_start else 'start'} of "
                     f"{'each' if len(cut) > 1 else 'it'}")
    return lines


def read_positions(special_tokens_mask: list[int], limit: int, left: bool = False) -> list[int]:
    """The positions of a whole encoding that truncation to `limit` keeps, as the tokenizers library truncates: the
    tokens its post-processor adds (mask 1) stay, the text's own are cut from the end (or the start)."""
    added = [i for i, m in enumerate(special_tokens_mask) if m]
    own = [i for i, m in enumerate(special_tokens_mask) if not m]
    keep = max(limit - len(added), 0)
    return added + (own[len(own) - keep:] if left else own[:keep])


def prompt_span(text: str, prompt: str) -> tuple[int, int]:
    """Where `prompt` sits in the rendered `text`: its last occurrence (the user's turn comes last; only a long
    prompt is cut, and a long one is no part of the template's closing tokens), or of the prompt stripped (a template
    that strips it); nowhere for an empty prompt; the whole text when it cannot be found."""
    if not prompt.strip():
        return len(text), len(text)
    for wanted in (prompt, prompt.strip()):
        start = text.rfind(wanted)
        if start >= 0:
            return start, start + len(wanted)
    return 0, len(text)


def _quote_start(text: str) -> str:
    words = text.split()
    quoted = " ".join(words[:QUOTED_WORDS])
    if len(quoted) > QUOTED_CHARS:
        quoted = quoted[:QUOTED_CHARS].rstrip()
    return quoted + (" ..." if quoted != " ".join(words) else "")


def _quote_end(text: str) -> str:
    words = text.split()
    quoted = " ".join(words[-QUOTED_WORDS:])
    if len(quoted) > QUOTED_CHARS:
        quoted = quoted[-QUOTED_CHARS:].lstrip()
    return ("... " if quoted != " ".join(words) else "") + quoted
