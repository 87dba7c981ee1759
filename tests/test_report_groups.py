"""The report files every audited group by its kind (`Group.spec`), never dropping one."""

import pytest

from symaudit.fields import FieldLayout
from symaudit.groups import Translations, from_spec, translation_axes
from symaudit.report.findings import group_key

LAYOUT = FieldLayout.euler()


@pytest.mark.parametrize(
    "spec, key, axes",
    [
        ("d4", "d4", set()),
        ("c4", "c4", set()),
        ("shift-x", "shift-x", {"x"}),
        ("shift-y:4", "shift-y", {"y"}),
        ("shift-xy:8", "shift-xy:8", {"x", "y"}),
        ("boost:0.5,0", "boost:0.5,0", {"x", "y"}),
        ("d4*shift-x:8", "d4*shift-x:8", {"x"}),
    ],
)
def test_group_key_and_axes_from_the_spec_kind(spec, key, axes):
    group = from_spec(spec, LAYOUT, resolution=16, dt=0.01)
    assert group_key(spec, group.describe()) == key
    assert translation_axes(group.spec) == axes


def test_arbitrary_shift_sets_and_unknown_groups_keep_their_own_entry():
    shifts = Translations(LAYOUT, "x", [0, 3, 5])
    assert group_key("my-shifts", shifts.describe()) == "shift-x"
    subset = shifts.subset(["e", shifts.names[1]], name="two")
    assert group_key("two shifts", subset.describe()) == "two shifts"
    assert translation_axes(subset.spec) == {"x"}
