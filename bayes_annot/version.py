"""The package version (read from the installed metadata; ``0.1.0`` in a bare source tree)."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("bayes_annot")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.1.0"
