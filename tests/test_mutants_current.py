"""The planted bugs of the mutation harness still apply to the code as it is.

``tests/mutation/run.py`` reports a mutant whose ``old`` text no longer occurs exactly once as
``stale`` and runs nothing for it, so a refactor can retire a mutant silently. This check (no
test run, a file read per mutant) fails as soon as one goes stale, naming it.
"""

from pathlib import Path

import pytest

from tests.mutation.mutants import MUTANTS

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_mutant_target_occurs_exactly_once(mutant):
    path = ROOT / mutant.file
    assert path.is_file(), f"{mutant.id}: {mutant.file} does not exist"
    count = path.read_text(encoding="utf-8").count(mutant.old)
    assert count == 1, (f"{mutant.id}: its old text occurs {count} times in {mutant.file}; "
                        f"retarget it (see tests/mutation/mutants.py)")
    assert mutant.new != mutant.old


def test_mutant_ids_are_unique():
    ids = [m.id for m in MUTANTS]
    assert len(ids) == len(set(ids))
