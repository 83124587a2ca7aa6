"""Source hygiene the interpreter does not enforce: maths in docstrings must survive Python's escapes.

A docstring like ``":math:`\\theta`"`` written without the ``r`` prefix silently holds a TAB and
"heta" (``\\t`` is a valid escape), and ``\\nu`` a newline and "u"; invalid ones such as ``\\l``
are deprecation warnings today and syntax errors in later Pythons. The rule checked here: in the
source of every string literal that is not raw, a backslash before a letter must itself be escaped.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for d in ("bayes_annot", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py"))
SINGLE_BACKSLASH_LETTER = re.compile(r"(?<!\\)(?:\\\\)*\\[A-Za-z]")
VALID_ESCAPES = set("abfnrtvxNuU")
PREFIX = re.compile(r"^([A-Za-z]*)['\"]")


def _escape_risks(path: Path) -> list[str]:
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type != tokenize.STRING:
            continue
        prefix = PREFIX.match(tok.string).group(1).lower()
        if "r" in prefix or "b" in prefix:
            continue
        body = tok.string[len(prefix):]
        for match in SINGLE_BACKSLASH_LETTER.finditer(body):
            escape = match.group(0)[-2:]
            if escape[1] in VALID_ESCAPES and ":math:" not in body:
                continue  # an ordinary escape (a newline, a tab) in a string without maths
            found.append(f"{path.name}:{tok.start[0]}: {escape!r} in a non-raw string")
    return found


def test_maths_in_strings_is_not_eaten_by_escapes():
    assert len(FILES) > 50
    assert [risk for path in FILES for risk in _escape_risks(path)] == []


def test_the_check_finds_a_silent_tab(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("\n".join([r'def f():', r'    """:math:`\theta` and :math:`\nu` and \log."""', ""]))
    good = tmp_path / "good.py"
    good.write_text("\n".join([r'def f():', r'    r""":math:`\theta`."""', r'    return "a\nb\t"', ""]))
    assert len(_escape_risks(bad)) == 3
    assert _escape_risks(good) == []
