import pytest
import torch

from symaudit import Channel, FieldLayout, LayoutError


def test_euler_layout_structure():
    layout = FieldLayout.euler()
    assert layout.names == ("rho", "m_x", "m_y", "E")
    assert layout.scalars == (0, 3)
    assert layout.vectors == {"momentum": (1, 2)}
    assert layout.scale_groups() == [(0,), (1, 2), (3,)]
    assert [c.order for c in layout] == [0, 1, 1, 0]


def test_json_roundtrip_preserves_equality():
    layout = FieldLayout.euler()
    again = FieldLayout.from_json(layout.to_json())
    assert again == layout and hash(again) == hash(layout)
    assert FieldLayout([Channel("a")]) != layout


@pytest.mark.parametrize(
    "channels, match",
    [
        ([], "at least one"),
        ([Channel("a"), Channel("a")], "duplicate"),
        ([Channel("u", "v", "x")], "both x and y"),
        ([Channel("u", "v", "x"), Channel("w", "v", "x")], "two x-components"),
    ],
)
def test_invalid_layouts_are_rejected(channels, match):
    with pytest.raises(LayoutError, match=match):
        FieldLayout(channels)


def test_bad_component_and_bad_json():
    with pytest.raises(LayoutError, match="component"):
        Channel("u", "v", "z")
    with pytest.raises(LayoutError, match="JSON"):
        FieldLayout.from_json("{not json")
    with pytest.raises(LayoutError, match="not a field layout"):
        FieldLayout.from_dict({"chans": []})


def test_check_names_the_mismatch():
    layout = FieldLayout.euler()
    layout.check(torch.zeros(2, 4, 8, 8))
    with pytest.raises(LayoutError, match="3 channels"):
        layout.check(torch.zeros(2, 3, 8, 8), what="batch")
    with pytest.raises(LayoutError, match=r"\(\.\.\., C, H, W\)"):
        layout.check(torch.zeros(4, 8))
    with pytest.raises(LayoutError, match="no channel"):
        layout.index("pressure")
