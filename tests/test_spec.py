"""The behaviour model's specification: the combinations it defines and the ones it refuses, with the reason."""

import pytest

from bayes_annot.errors import InputError
from bayes_annot.likelihood import Priors
from bayes_annot.spec import BehaviourSpec


@pytest.mark.parametrize("variant", ["two-class", "continuous"])
@pytest.mark.parametrize("strengths", ["learned", "known"])
@pytest.mark.parametrize("q", [None, 0.6])
def test_every_single_class_combination_is_defined(variant, strengths, q):
    spec = BehaviourSpec(variant=variant, strengths=strengths, q_fixed=q, priors=Priors(pi_alpha=3.0))
    assert spec.learned == (strengths == "learned")
    assert spec.n_types == (2 if variant == "two-class" else None)
    assert variant in spec.describe() and strengths in spec.describe()


def test_taste_classes_add_user_types():
    assert BehaviourSpec(n_tastes=3).n_types == 4
    assert "3 taste classes" in BehaviourSpec(n_tastes=3).describe()


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"variant": "mixture"}, "unknown variant 'mixture'"),
        ({"strengths": "fixed"}, "unknown strengths 'fixed'"),
        ({"n_tastes": 0}, "positive integer"),
        ({"n_tastes": 1.5}, "positive integer"),
        ({"n_tastes": True}, "positive integer"),
        ({"q_fixed": 1.0}, "q must be a number in (0, 1), got 1.0"),
        ({"q_fixed": "0.5"}, "q must be a number in (0, 1)"),
        ({"n_tastes": "2"}, "positive integer"),
        ({"priors": Priors(pi_alpha=-1.0)}, "priors.pi_alpha must be a finite number > 0"),
        ({"n_tastes": 2, "strengths": "known"}, "need learned strengths"),
        ({"n_tastes": 2, "variant": "continuous"}, "need variant='two-class'"),
    ],
)
def test_undefined_combinations_are_refused_with_the_reason(settings, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        BehaviourSpec(**settings)


def test_spec_is_immutable():
    spec = BehaviourSpec(n_tastes=2)
    with pytest.raises(AttributeError):
        spec.n_tastes = 3
    assert spec == BehaviourSpec(n_tastes=2.0)


def test_strengths_from_the_data_are_checked_again():
    assert BehaviourSpec().with_strengths(False) == BehaviourSpec(strengths="known")
    assert BehaviourSpec(n_tastes=2).with_strengths(True) == BehaviourSpec(n_tastes=2)
    with pytest.raises(InputError, match="need learned strengths"):
        BehaviourSpec(n_tastes=2).with_strengths(False)
    assert BehaviourSpec().with_tastes(3).n_types == 4
