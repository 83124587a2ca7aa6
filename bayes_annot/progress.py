"""Progress bars on stderr for long work (tqdm; a widget in Jupyter).

Library calls print nothing unless asked, as before. Asked for, a bar appears
only once the work has taken about 2 s (tqdm's ``delay``), so quick fits stay
silent:

* ``fit(..., progress=True)``: EM iterations with the objective, the Dask
  passes over partitions, and NUTS/MAP with PyMC's own bar;
* ``with progress.showing(): ...``: every call inside the block that is not
  given ``progress`` (report sections, writing a Dask fit's rows, fits);
* the CLI: on when stderr is a terminal; ``--progress`` / ``--no-progress``
  force it on or off, ``--quiet`` turns it off.

``progress`` may also be a :class:`Progress` (another stream, another delay).
tqdm is imported only when a bar is made.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator

__all__ = ["Progress", "showing", "resolve", "DELAY"]

#: Seconds of work before a bar first appears, unless a :class:`Progress` says otherwise.
DELAY = 2.0
#: Least seconds between two redraws of a bar (tqdm's ``mininterval``).
MININTERVAL = 0.1


@dataclass(frozen=True)
class Progress:
    """Where and when progress bars show.

    Parameters
    ----------
    file : file-like, optional
        The stream bars are written to (default ``sys.stderr``; in Jupyter,
        ``tqdm.auto`` draws a widget instead).
    delay : float, optional
        Seconds of work before a bar first appears, so quick steps stay
        silent (default :data:`DELAY`, 2 s).
    """

    file: IO[str] | None = None
    delay: float | None = None


_CURRENT: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("bayes_annot_progress", default=None)


def resolve(progress: bool | Progress | None) -> Progress | None:
    """The settings a ``progress`` argument stands for (``None``: no bars).

    ``None`` takes the enclosing :func:`showing` block's (none outside one),
    ``True`` the defaults (stderr, 2 s delay), ``False`` none.
    """
    if progress is None:
        return _CURRENT.get()
    if isinstance(progress, Progress):
        return progress
    return Progress() if progress else None


@contextlib.contextmanager
def showing(progress: bool | Progress | None = True) -> Iterator[Progress | None]:
    """Within the block, calls not given ``progress`` show bars as ``progress`` says.

    Examples
    --------
    >>> import bayes_annot as ba
    >>> from bayes_annot.progress import showing
    >>> with showing(False):
    ...     result = ba.fit(ba.simulate(n_users=50, seed=0))
    """
    token = _CURRENT.set(None if progress is None else resolve(progress))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def bar(settings: Progress | None, **kwargs: Any):
    """A tqdm bar (``tqdm.auto``), or ``None`` when ``settings`` is ``None``."""
    if settings is None:
        return None
    from tqdm.auto import tqdm

    delay = DELAY if settings.delay is None else settings.delay
    return tqdm(file=settings.file, delay=delay, mininterval=MININTERVAL, leave=False, dynamic_ncols=True, **kwargs)


def iterate(settings: Progress | None, items: Iterable, **kwargs: Any) -> Iterator:
    """``items``, with a bar over them when ``settings`` asks for one."""
    progress = bar(settings, **kwargs)
    if progress is None:
        yield from items
        return
    try:
        for item in items:
            yield item
            progress.update(1)
    finally:
        progress.close()


@contextlib.contextmanager
def em_callback(settings: Progress | None, callback: Callable | None = None, desc: str = "EM"):
    """An EM ``callback(iteration, objective)`` that also advances a bar (``callback`` is still called)."""
    progress = bar(settings, desc=desc, unit="it")
    if progress is None:
        yield callback
        return

    def report(iteration: int, value: float) -> None:
        progress.set_postfix_str(f"objective={value:.6f}", refresh=False)  # a refresh would skip the delay
        progress.update(max(iteration - progress.n, 0))
        if callback is not None:
            callback(iteration, value)

    try:
        yield report
    finally:
        progress.close()


@contextlib.contextmanager
def dask_tasks(settings: Progress | None, desc: str):
    """A bar over the tasks of the Dask computations in the block (local schedulers; a
    ``distributed.Client`` has its own dashboard)."""
    if settings is None:
        yield
        return
    from dask.callbacks import Callback

    class _Bar(Callback):
        def _start_state(self, dsk, state):
            total = sum(len(state[key]) for key in ("ready", "waiting", "running", "finished") if key in state)
            self._bar = bar(settings, desc=desc, unit="task", total=total)

        def _posttask(self, key, result, dsk, state, worker_id):
            self._bar.update(1)

        def _finish(self, dsk, state, errored):
            self._bar.close()

    with _Bar():
        yield
