"""How prompt text is read: the syntaxes a row may use, and AUTOMATIC1111's emphasis grammar.

No torch here: the job layer checks prompts with it before any model loads.

* ``plain``: the text as stock diffusers reads it (tokenised, truncated at 77 tokens).
* ``a1111``: AUTOMATIC1111's attention syntax, parsed as its ``parse_prompt_attention`` does:
  ``(text)`` multiplies attention by 1.1, ``[text]`` divides it by 1.1, ``(text:1.3)`` sets 1.3,
  nesting multiplies, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal, and ``BREAK`` (upper case,
  a word of its own) ends the current 75-token chunk. Unlike AUTOMATIC1111, which reads an
  unmatched bracket as text or applies it to the rest of the prompt, unbalanced brackets are
  refused (``a1111_problem``): they are nearly always a typo.
* ``compel``: the compel library's syntax, read by compel itself (``text.py``).
"""

from __future__ import annotations

import re

SYNTAXES = ("plain", "a1111", "compel")

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK = "BREAK"

# AUTOMATIC1111's modules/prompt_parser.py, re_attention and re_break.
_ATTENTION = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_a1111(text: str) -> list[tuple[str, float]]:
    """``text`` as (fragment, weight) pairs, runs of equal weight merged; ``("BREAK", -1.0)``
    marks a chunk break. AUTOMATIC1111's ``parse_prompt_attention``, step for step:

    >>> parse_a1111("a (house:1.5) [in] the \\\\(woods\\\\)")
    [('a ', 1.0), ('house', 1.5), (' ', 1.0), ('in', 0.9090909090909091), (' the (woods)', 1.0)]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(res))
        elif part == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, piece in enumerate(_BREAK.split(part)):
                if i > 0:
                    res.append([BREAK, -1.0])
                res.append([piece, 1.0])
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(fragment, weight) for fragment, weight in res]


def a1111_problem(text: str) -> str | None:
    """Why ``text`` is refused as an a1111 prompt (unbalanced or mismatched brackets), or None."""
    stack: list[tuple[str, int]] = []
    for m in _ATTENTION.finditer(text):
        part, weight = m.group(0), m.group(1)
        if part.startswith("\\"):
            continue
        if part in ("(", "["):
            stack.append((part, m.start()))
        elif part == ")" or weight is not None:
            if weight is not None and not _is_number(weight):
                return f"weight {weight!r} at character {m.start() + 1} is not a number"
            if not stack or stack[-1][0] != "(":
                return f"unmatched ')' at character {m.end()}" + (" (escape it as \\) to mean the character)"
                                                                     if not stack else "")
            stack.pop()
        elif part == "]":
            if not stack or stack[-1][0] != "[":
                return f"unmatched ']' at character {m.end()}" + (" (escape it as \\] to mean the character)"
                                                                     if not stack else "")
            stack.pop()
    if stack:
        bracket, where = stack[-1]
        return f"'{bracket}' at character {where + 1} is never closed (escape it as \\{bracket} to mean the character)"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
