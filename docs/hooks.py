"""MkDocs hooks of the documentation site (loaded by ``hooks:`` in mkdocs.yml).

1. **A robust nav.** ``mkdocs.yml`` lists every page the site may have. A page
   whose file does not exist (a benchmark page not generated yet), or an API
   page whose ``::: bayes_annot.MODULE`` target module is not in the source
   tree, is dropped from the nav and from the build with an INFO line, so
   ``mkdocs build --strict`` never fails on a page that is merely missing.
   A link to such a page from another page is shown as plain text; any other
   broken link inside existing pages still fails the strict build.
2. **Notebooks.** ``notebooks/*.ipynb`` (outside ``docs/``) are added to the
   build as ``notebooks/NAME.ipynb`` and rendered by mkdocs-jupyter from their
   stored outputs (never executed). The nav section ``Notebooks`` is filled
   with every notebook found, in file-name order, titled by its first heading.
3. **Sphinx roles in docstrings.** The numpydoc docstrings use
   ``:func:`name``` / ``:class:`~pkg.Name``` and ``:math:`...```. Rendered by
   mkdocstrings they would show the role name as text; they become code spans,
   linked to the API page when the name resolves (optional cross-references,
   so an unresolved name is never a warning).
4. **Missing docstrings fail.** Every public function, class and method that an
   API page renders (the ``__all__`` of each module named by ``:::``, and the
   public methods of its classes) must have a docstring: a missing one is
   logged as a WARNING, which ``--strict`` turns into a failed build.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.bayes_annot")

NOTEBOOK_DIR = "notebooks"
NOTEBOOK_SECTION = "Notebooks"
PACKAGE = "bayes_annot"
_TARGET = re.compile(r"^:::\s+([A-Za-z_][\w.]*)", re.MULTILINE)

# State shared between events of one build.
_state: dict = {"root": None, "dropped": set(), "notebooks": [], "targets": []}


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _module_exists(root: Path, identifier: str) -> bool:
    """Whether the module that ``identifier`` lives in is present in the source tree."""
    parts = identifier.split(".")
    if parts[0] != PACKAGE:
        return True
    base = root / PACKAGE
    if not base.is_dir():
        return False
    if len(parts) == 1:
        return True
    head = parts[1]
    if (base / f"{head}.py").exists() or (base / head / "__init__.py").exists():
        return True
    # not a module: fine if the package itself exports the name (``bayes_annot.FitResult``)
    init = base / "__init__.py"
    return init.is_file() and f'"{head}"' in init.read_text(encoding="utf-8")


def _page_available(root: Path, docs_dir: Path, src: str) -> bool:
    src = src.split("#", 1)[0]
    if src.startswith(f"{NOTEBOOK_DIR}/") and src.endswith(".ipynb"):
        return (root / src).is_file()
    path = docs_dir / src
    if not path.is_file():
        return False
    if path.suffix == ".md":
        text = path.read_text(encoding="utf-8")
        missing = [t for t in _TARGET.findall(text) if not _module_exists(root, t)]
        if missing:
            log.info("docs: %s dropped: module of %s not in the source tree", src, ", ".join(missing))
            return False
    return True


def _notebook_title(path: Path) -> str:
    try:
        cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return path.stem
    for cell in cells:
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        for line in source.splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return path.stem


def _prune(items, keep):
    """Nav without the entries whose page ``keep`` rejects; empty sections go too."""
    out = []
    for item in items:
        if isinstance(item, str):
            if keep(item):
                out.append(item)
            continue
        if isinstance(item, dict):
            ((title, value),) = item.items()
            if isinstance(value, list):
                if title == NOTEBOOK_SECTION:
                    value = [{t: p} for t, p in _state["notebooks"]]
                else:
                    value = _prune(value, keep)
                if value:
                    out.append({title: value})
            elif isinstance(value, str) and ("://" in value or keep(value)):
                out.append(item)
            continue
        out.append(item)
    return out


def on_config(config):
    root = _root(config)
    docs_dir = Path(config.docs_dir).resolve()
    _state["root"] = root
    _state["notebooks"] = [
        (_notebook_title(p), f"{NOTEBOOK_DIR}/{p.name}") for p in sorted((root / NOTEBOOK_DIR).glob("*.ipynb"))
    ]
    dropped: set[str] = set()

    def keep(src: str) -> bool:
        ok = _page_available(root, docs_dir, src)
        if not ok:
            dropped.add(src.split("#", 1)[0])
        return ok

    if config.nav:
        config.nav = _prune(config.nav, keep)
    targets = []
    for page in sorted(docs_dir.rglob("*.md")):
        src = page.relative_to(docs_dir).as_posix()
        text = page.read_text(encoding="utf-8")
        if _TARGET.search(text) and keep(src):
            targets.extend(_TARGET.findall(text))
    _state["targets"] = targets
    _state["dropped"] = dropped
    if dropped:
        log.info("docs: pages left out of the nav (not present): %s", ", ".join(sorted(dropped)))
    return config


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files: Files, config) -> Files:
    root = _state["root"] or _root(config)
    for _, src in _state["notebooks"]:
        if files.get_file_from_path(src) is None:
            # A plain File whose source folder is the repository root (not
            # File.generated: mkdocs-jupyter's wrapper loses a generated file's path).
            files.append(
                File(src, src_dir=str(root), dest_dir=config.site_dir, use_directory_urls=config.use_directory_urls)
            )
    for src in _state["dropped"]:
        existing = files.get_file_from_path(src)
        if existing is not None:
            files.remove(existing)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Links to a nav page that is not there yet become plain text (logged at INFO).

    Only pages listed in mkdocs.yml's nav and dropped for being absent (a
    benchmark page that ``make bench`` has not generated yet): any other broken
    link still fails the strict build.
    """
    here = posixpath.dirname(page.file.src_uri)
    for target in sorted(_state["dropped"]):
        rel = posixpath.relpath(target, here or ".")
        pattern = re.compile(r"\[([^\]]*)\]\((?:\./)?" + re.escape(rel) + r"(?:#[^)\s]*)?\)")
        markdown, n = pattern.subn(r"\1", markdown)
        if n:
            log.info("docs: %s: %d link(s) to %s (not present) shown as text", page.file.src_uri, n, target)
    return markdown


_ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|attr|data|exc|obj|const|math):<code>(?P<tilde>~?)(?P<name>[^<]*)</code>"
)


def _role(match: re.Match) -> str:
    name = match["name"]
    if match["role"] == "math":
        return f"<code>{name}</code>"
    identifier = name.rstrip("()").lstrip(".")
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    if not re.fullmatch(r"[A-Za-z_][\w.]*", identifier):
        return f"<code>{shown}</code>"
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub(_role, html)


# --------------------------------------------------------------------------- docstrings


def _undocumented(obj) -> list[str]:
    """Paths of the public functions / classes / methods under ``obj`` without a docstring."""
    missing: list[str] = []

    def check(member) -> None:
        if member.is_alias or member.kind.value not in ("function", "class"):
            return
        if not (member.docstring and member.docstring.value.strip()):
            missing.append(member.path)
        if member.is_class:
            for name, sub in member.members.items():
                if name.startswith("_") or sub.is_alias or sub.kind.value != "function":
                    continue
                if not (sub.docstring and sub.docstring.value.strip()):
                    missing.append(sub.path)

    if obj.is_module:
        if not (obj.docstring and obj.docstring.value.strip()):
            missing.append(obj.path)
        for member in obj.members.values():
            if not member.is_alias and member.is_public:
                check(member)
    else:
        check(obj)
    return missing


def on_pre_build(config) -> None:
    targets = _state["targets"]
    if not targets:
        return
    import griffe

    root = _state["root"] or _root(config)
    package = griffe.load(PACKAGE, search_paths=[str(root)], docstring_parser="numpy", resolve_aliases=False)
    missing: list[str] = []
    for target in dict.fromkeys(targets):
        if target != PACKAGE and not target.startswith(f"{PACKAGE}."):
            continue
        try:
            obj = package[target[len(PACKAGE) + 1 :]] if target != PACKAGE else package
        except KeyError:
            continue  # mkdocstrings reports an unknown identifier itself
        if obj.is_alias:
            continue
        if target == PACKAGE:  # the package page shows its docstring only
            if not (obj.docstring and obj.docstring.value.strip()):
                missing.append(obj.path)
            continue
        missing.extend(_undocumented(obj))
    for path in dict.fromkeys(missing):
        log.warning("docs: %s has no docstring (public API shown in the documentation)", path)
