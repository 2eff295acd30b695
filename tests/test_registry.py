"""Every public bijector class must have a case in the registry (refflow._cases.CASES)."""

import numpy as np

import refflow
from refflow import Bijector

from .registry import CASES


def public_bijector_classes():
    return {
        getattr(refflow, name) for name in refflow.__all__
        if isinstance(getattr(refflow, name), type)
        and issubclass(getattr(refflow, name), Bijector)
        and getattr(refflow, name) is not Bijector
    }


def test_every_public_bijector_has_a_case():
    covered = {type(CASES[case_id](0)[0]) for case_id in CASES}
    missing = sorted(cls.__name__ for cls in public_bijector_classes() - covered)
    assert not missing, f"public bijectors with no registry case: {missing}"


def test_public_bijectors_are_found():
    # Guards the test above against silently finding nothing.
    names = {cls.__name__ for cls in public_bijector_classes()}
    assert {"Affine", "Chain", "Inverse", "LULinear", "BatchNorm"} <= names


def test_cases_are_randomised_not_identity():
    # The property suite must not run at the identity initialisation, where many bugs hide.
    for case_id, factory in CASES.items():
        bijector = factory(1)[0]
        if not bijector.params:
            continue
        assert any(np.any(v != 0) for v in bijector.params.values()), case_id
