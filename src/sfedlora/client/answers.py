"""Math answers: the final answer of a worked solution, and exact match between two of them.

The prediction (a decoded generation) and the gold answer go through the same extraction, so a gold
field that holds a whole GSM8K solution ("... = 72 clips.\\n#### 72") scores like one that holds "72".
"""

from __future__ import annotations

import re
from fractions import Fraction

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> str:
    """The final answer of a worked solution: the first number after '####' (GSM8K's marker) if present,
    else the last number in the text, without thousands separators; the stripped text if it has none."""
    text = str(text)
    if "####" in text:
        found = NUMBER.search(text.split("####", 1)[1])
    else:
        matches = list(NUMBER.finditer(text))
        found = matches[-1] if matches else None
    return found.group(0).replace(",", "") if found else text.strip()


def _number(text: str) -> Fraction | None:
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def same_answer(prediction: str, gold: str) -> bool:
    """Exact match of the extracted final answers: as numbers where both are numbers (72 == 72.0 == 72.00),
    else as strings."""
    p, g = extract_answer(prediction), extract_answer(gold)
    pn, gn = _number(p), _number(g)
    if pn is not None and gn is not None:
        return pn == gn
    return p == g
