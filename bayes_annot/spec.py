r"""The behaviour model's specification: one object every engine fits.

A :class:`BehaviourSpec` says everything about *which* model is fitted, and
nothing about *how* (engine, tolerance, draws):

* how attentive users behave: Bradley–Terry with ``learned`` strengths, or
  ``known`` attentive probabilities (a ``p_a`` column or a global ``mu``), and
  ``n_tastes`` taste classes, each with its own strengths;
* how a user mixes attentive and casual labels, the ``variant``:
  ``two-class`` (every label of a user follows the user's one type) or
  ``continuous`` (each label is attentive with the user's own probability
  :math:`\eta_u`);
* how casual users behave: position bias ``q`` (``P(choose model_a)``),
  estimated when ``None``;
* the casual covariates (:class:`~bayes_annot.casual.CasualDesign`, ``casual``): casual clicks
  that follow e.g. the log length ratio, their bins fixed at fit time (``None``: a position coin);
* the priors (:class:`~bayes_annot.likelihood.Priors`).

:func:`bayes_annot.fit` builds one from its settings (the one place a setting
combination the model does not define is refused) and hands it down to the
engine: EM in memory (:func:`bayes_annot.local_em.run_block_em`) and over any
runner (:func:`bayes_annot.block_em.run_em`), EM over Dask partitions
(:func:`bayes_annot.dask_em.fit_dask`), taste classes
(:func:`bayes_annot.local_em.fit_taste_classes`), MAP and NUTS
(:func:`bayes_annot.pymc_model.fit_pymc`, :func:`bayes_annot.pymc_model.build_model`)
read the model from it. The maths of the specification, written once on
sufficient statistics, is in :mod:`bayes_annot.likelihood`,
:mod:`bayes_annot.em` and :mod:`bayes_annot.pairs`.

Whether the strengths are learned or known is a property of the data as well
(a ``p_a`` column, or ``mu``): an engine that reads the data sets it with
:meth:`BehaviourSpec.with_strengths`, which checks the combination again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from numbers import Real

from .casual import CasualDesign
from .errors import InputError
from .likelihood import Priors
from .style import StyleDesign
from .validation import check_number, check_priors

__all__ = ["BehaviourSpec", "VARIANTS", "STRENGTHS"]

VARIANTS = ("two-class", "continuous")
STRENGTHS = ("learned", "known")


@dataclass(frozen=True)
class BehaviourSpec:
    """The user behaviour model to fit.

    Parameters
    ----------
    variant : {"two-class", "continuous"}
        How a user mixes attentive and casual labels.
    n_tastes : int
        Taste classes :math:`C \\ge 1` of attentive users (each its own
        strengths); ``C > 1`` needs the ``two-class`` variant and learned strengths.
    strengths : {"learned", "known"}
        Learned Bradley–Terry strengths, or known attentive probabilities.
    q_fixed : float, optional
        Fixed casual position bias in (0, 1); estimated when ``None`` (:func:`bayes_annot.fit`'s
        ``q=``, ``--q``). Inside the package ``q_fixed`` always names this setting and ``q`` the
        parameter's value (an estimate, a start or a draw).
    priors : Priors
        The priors of every parameter (each a finite number, positive where it must be).
    casual : CasualDesign, optional
        Casual covariates and their bins (``q`` then is ``sigmoid(beta_0)``, the position bias at
        equal covariates); ``None``: casual clicks are a position coin ``q``. Set from the data with
        :meth:`with_casual`.
    style : StyleDesign, optional
        The attentive side's style term (:mod:`bayes_annot.style`): attentive log-odds
        ``s_a - s_b + delta' x`` over the casual cells' representative covariates. Needs ``casual``,
        learned strengths and one taste class. Set from the data with :meth:`with_style`.

    Raises
    ------
    InputError
        A combination the model does not define, with the reason.

    Examples
    --------
    >>> from bayes_annot.spec import BehaviourSpec
    >>> spec = BehaviourSpec(n_tastes=2)
    >>> spec.n_types, spec.describe()
    (3, 'two-class, 2 taste classes, learned strengths, q estimated')
    """

    variant: str = "two-class"
    n_tastes: int = 1
    strengths: str = "learned"
    q_fixed: float | None = None
    priors: Priors = field(default_factory=Priors)
    casual: CasualDesign | None = None
    style: StyleDesign | None = None

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise InputError(f"unknown variant '{self.variant}', expected one of {', '.join(VARIANTS)}")
        if self.strengths not in STRENGTHS:
            raise InputError(f"unknown strengths '{self.strengths}', expected one of {', '.join(STRENGTHS)}")
        n = self.n_tastes
        if isinstance(n, bool) or not isinstance(n, Real) or n != n or int(n) != n or n < 1:
            raise InputError(f"tastes must be a positive integer, got {n!r}")
        object.__setattr__(self, "n_tastes", int(n))
        check_number(self.q_fixed, "q", low=0.0, high=1.0, open_low=True, open_high=True, optional=True)
        check_priors(self.priors)
        if self.casual is not None and not isinstance(self.casual, CasualDesign):
            raise InputError(f"casual must be a CasualDesign or None, got {type(self.casual).__name__}")
        if self.style is not None:
            if not isinstance(self.style, StyleDesign):
                raise InputError(f"style must be a StyleDesign or None, got {type(self.style).__name__}")
            if self.casual is None or any(n not in self.casual.names for n in self.style.names):
                raise InputError("style covariates must be casual covariates too (the style term uses their cells)")
            if self.strengths != "learned":
                raise InputError("style covariates need learned strengths (no p_a column, no mu)")
            if self.n_tastes > 1:
                raise InputError("style covariates are fitted with one taste class (tastes=1) for now")
        if self.n_tastes > 1 and self.strengths != "learned":
            raise InputError("taste classes need learned strengths; known strengths (p_a or mu) stay one class")
        if self.n_tastes > 1 and self.variant != "two-class":
            raise InputError(
                "taste classes need variant='two-class': in the continuous variant each label of a user mixes "
                "attentive and casual, so a user's labels do not single out one ranking (docs/tastes.md)"
            )

    @property
    def learned(self) -> bool:
        """Whether the strengths are learned (else the attentive probabilities are known)."""
        return self.strengths == "learned"

    @property
    def n_types(self) -> int | None:
        """User types of the two-class variant: casual plus one per taste class (``None`` for continuous)."""
        return self.n_tastes + 1 if self.variant == "two-class" else None

    def with_strengths(self, learned: bool) -> "BehaviourSpec":
        """This specification with the data's strength mode (learned, or known from ``p_a`` / ``mu``).

        Raises
        ------
        InputError
            Taste classes with known strengths.
        """
        strengths = "learned" if learned else "known"
        return self if strengths == self.strengths else replace(self, strengths=strengths)

    def with_tastes(self, n_tastes: int) -> "BehaviourSpec":
        """This specification with ``n_tastes`` taste classes (e.g. the number ``tastes="auto"`` chose)."""
        return self if int(n_tastes) == self.n_tastes else replace(self, n_tastes=int(n_tastes))

    def with_casual(self, casual: CasualDesign | None) -> "BehaviourSpec":
        """This specification with the data's casual covariates (``None``: none)."""
        return self if casual == self.casual else replace(self, casual=casual)

    def with_style(self, style: StyleDesign | None) -> "BehaviourSpec":
        """This specification with the attentive side's style term (``None``: none)."""
        return self if style == self.style else replace(self, style=style)

    def describe(self) -> str:
        """One line naming the model, e.g. for a summary or a report."""
        classes = f", {self.n_tastes} taste classes" if self.n_tastes > 1 else ""
        q = "q estimated" if self.q_fixed is None else f"q fixed at {self.q_fixed:g}"
        covariates = f", casual clicks follow {', '.join(self.casual.names)}" if self.casual is not None else ""
        style = f", attentive style term on {', '.join(self.style.names)}" if self.style is not None else ""
        return f"{self.variant}{classes}, {self.strengths} strengths, {q}{covariates}{style}"
