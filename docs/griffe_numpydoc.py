"""Griffe extension of the documentation site (``extensions:`` in mkdocs.yml).

numpydoc allows one entry for several parameters that share a type and a
description (``user, model_a, model_b : str``). Griffe's numpy parser gives
every name of such a group the *first* name's default value, so the API pages
would show wrong defaults. This extension rewrites each group, before the
docstring is parsed, into one entry per name with the same description; the
defaults then come from the signature, name by name. When a group lists as many
types as names (``mu, strong_model : float, str``), each name gets its own type.

It also fences ``>>>`` examples that stand outside an Examples section (a
module docstring's), which Markdown would otherwise render as nested quotes.
"""

from __future__ import annotations

import re

import griffe

_SECTIONS = {"parameters", "other parameters", "params", "arguments", "args"}
_GROUP = re.compile(r"^(?P<names>[A-Za-z_*][\w*]*(?:\s*,\s*[A-Za-z_*][\w*]*)+)(?P<rest>\s*:.*)?$")


def split_groups(text: str) -> str:
    """Docstring text with grouped parameter entries split into one entry per name."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]) and line.strip():
            section = line.strip().lower()
            out.extend((line, lines[i + 1]))
            i += 2
            continue
        match = _GROUP.match(line) if section in _SECTIONS else None
        if match is None:
            out.append(line)
            i += 1
            continue
        body = []
        j = i + 1
        while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
            if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].startswith((" ", "\t"))):
                break
            body.append(lines[j])
            j += 1
        names = re.split(r"\s*,\s*", match["names"])
        rest = match["rest"] or ""
        types = [t.strip() for t in rest.split(":", 1)[1].split(",")] if rest else []
        # ``mu, strong_model : float, str``: one type per name, in order
        paired = len(types) == len(names) and not any(
            t == "optional" or t.startswith(("default", "{", "(", "[")) or " or " in t or not t for t in types
        )
        for k, name in enumerate(names):
            out.append(f"{name} : {types[k]}" if paired else f"{name}{rest}")
            out.extend(body)
        i = j
    return "\n".join(out)


def fence_doctests(text: str) -> str:
    """Docstring text with ``>>>`` blocks outside an Examples section fenced as ``pycon`` code.

    (In an Examples section the numpy parser renders them itself; elsewhere,
    e.g. in a module docstring, Markdown would read ``>>>`` as nested quotes.)
    """
    lines = text.split("\n")
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1]) and line.strip():
            section = line.strip().lower()
        if section != "examples" and line.startswith(">>>") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and lines[j].strip():
                j += 1
            out.extend(["```pycon", *lines[i:j], "```"])
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SplitParameterGroups(griffe.Extension):
    """Split ``a, b : type`` parameter entries and fence bare doctests (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        _rewrite(obj)

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        _rewrite(pkg)  # the top-level package does not go through on_object


def _rewrite(obj) -> None:
    if obj.docstring is None or getattr(obj.docstring, "_bayes_annot_rewritten", False):
        return
    value = obj.docstring.value
    if "," in value:
        value = split_groups(value)
    if ">>>" in value:
        value = fence_doctests(value)
    obj.docstring.value = value
    obj.docstring._bayes_annot_rewritten = True
