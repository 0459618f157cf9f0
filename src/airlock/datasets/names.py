"""Names that people give (datasets, workflows and their stages) and read back in lists, pages and
logs. A control character can rewrite a terminal line or a log row; a bidi or zero-width
character can make `support-train` and another string look alike, or reorder what a reviewer
reads. Such names are refused, naming the field and the code point, never silently cleaned.
"""

from __future__ import annotations

import unicodedata

# Cc: C0/C1 controls; Cf: format (bidi embeddings, overrides and isolates U+202A-202E and
# U+2066-2069, zero-width space and joiners, the BOM, soft hyphen...); Cs: lone surrogates;
# Zl/Zp: line and paragraph separators, which break a line like a newline does.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def refused_characters(value: str) -> list[str]:
    """Each refused character of `value`, as 'U+202E (RIGHT-TO-LEFT OVERRIDE) at position 4'."""
    found = []
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            label = unicodedata.name(char, "") or f"a {unicodedata.category(char)} character"
            found.append(f"U+{ord(char):04X} ({label}) at position {position}")
    return found


def check_name_characters(value: str, field: str) -> str:
    """`value` unchanged, or ValueError naming `field` and every control or format character."""
    found = refused_characters(value)
    if found:
        raise ValueError(f"{field}: control and format (bidi, zero-width) characters are not allowed in a "
                         f"name: {', '.join(found)}")
    return value
