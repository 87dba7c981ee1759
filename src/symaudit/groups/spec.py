"""Build groups from short command-line specifications (``symaudit audit --group ...``)."""

from __future__ import annotations

from symaudit.fields import FieldLayout
from symaudit.groups._base import Group, GroupError, product
from symaudit.groups.dihedral import Dihedral4
from symaudit.groups.galilean import GalileanBoost
from symaudit.groups.translations import Translations

__all__ = [
    "SPEC_HELP",
    "from_spec",
    "is_translation",
    "parse_spec",
    "spec_kinds",
    "translation_axes",
]

SPEC_HELP = (
    "d4 | c4 | shift-x[:STRIDE] | shift-y[:STRIDE] | shift-xy[:STRIDE] | boost:CX,CY; "
    "join with '*' for products (e.g. d4*shift-xy:32)"
)


def _resolution(resolution: int | tuple[int, int] | None, spec: str) -> tuple[int, int]:
    if resolution is None:
        raise GroupError(f"group spec {spec!r} needs the grid resolution")
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return int(h), int(w)


#: the elementary terms of a spec and whether they take an argument after ':'
_TERMS = {
    "d4": False,
    "c4": False,
    "shift-x": True,
    "shift-y": True,
    "shift-xy": True,
    "boost": True,
}


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """The terms of a group spec as (key, argument) pairs, e.g. ``"d4*shift-x:8"`` ->
    ``[("d4", ""), ("shift-x", "8")]``; checks the syntax (known terms, integer strides, two
    boost velocities) without building anything. `GroupError` names a malformed term."""
    terms = [t.strip() for t in str(spec).split("*")]
    if not str(spec).strip() or any(not t for t in terms):
        raise GroupError(f"empty group spec {spec!r}; expected {SPEC_HELP}")
    parsed = []
    for term in terms:
        key, _, arg = term.lower().partition(":")
        if key not in _TERMS or (arg and not _TERMS[key]):
            raise GroupError(f"unknown group spec {term!r}; expected {SPEC_HELP}")
        if key.startswith("shift") and arg:
            try:
                int(arg)
            except ValueError:
                raise GroupError(f"{term!r}: stride must be an integer") from None
        if key == "boost":
            try:
                _cx, _cy = (float(v) for v in arg.split(","))
            except ValueError:
                raise GroupError(f"{term!r}: write boost:CX,CY, e.g. boost:0.5,0") from None
        parsed.append((key, arg))
    return parsed


def _term(
    term: str,
    key: str,
    arg: str,
    layout: FieldLayout,
    resolution: int | tuple[int, int] | None,
    dt: float | None,
) -> Group:
    """The group of one term of a spec, parsed by `parse_spec`."""
    if key == "d4":
        return Dihedral4(layout)
    if key == "c4":
        return Dihedral4(layout).rotations()
    if key.startswith("shift-"):
        h, w = _resolution(resolution, term)
        axis = key.removeprefix("shift-")
        n = w if axis == "x" else h
        stride = int(arg) if arg else 1
        if stride < 1 or n % stride:
            raise GroupError(f"{term!r}: stride must be positive and divide the grid size {n}")
        return Translations(layout, axis, range(0, n, stride), size=n if h == w else None)
    # boost
    if dt is None:
        raise GroupError(f"{term!r}: a boost needs the time step dt between snapshots")
    cx, cy = (float(v) for v in arg.split(","))
    return GalileanBoost(layout, (cx, cy), dt)


def from_spec(
    spec: str,
    layout: FieldLayout,
    *,
    resolution: int | tuple[int, int] | None = None,
    dt: float | None = None,
) -> Group:
    """Parse e.g. ``"d4"``, ``"shift-x:8"`` (shifts 0, 8, 16, ... along x), ``"boost:0.5,0"``
    or ``"d4*shift-xy:32"``. Shifts cover the whole grid (``resolution`` = N or (H, W));
    boosts need ``dt``. Grammar: ``SPEC_HELP``."""
    texts = [t.strip() for t in spec.split("*")]
    group = None
    for text, (key, arg) in zip(texts, parse_spec(spec), strict=True):
        factor = _term(text, key, arg, layout, resolution, dt)
        group = factor if group is None else product(group, factor)
    group.spec = {**group.spec, "text": spec}
    return group


def spec_kinds(spec: dict) -> list[dict]:
    """The elementary groups of a `Group.spec` (products and subsets unfolded), in order:
    e.g. ``[{"kind": "d4"}, {"kind": "translations", "axis": "xy", ...}]``."""
    kind = spec.get("kind")
    if kind == "product":
        return [k for f in spec.get("factors", []) for k in spec_kinds(f)]
    if kind == "subset":
        return spec_kinds(spec.get("of", {}))
    return [spec]


def is_translation(group: Group) -> bool:
    """True if every elementary factor of ``group`` is a set of translations (shifts along
    x, y or both), decided from `Group.spec`'s kinds."""
    return all(k.get("kind") == "translations" for k in spec_kinds(group.spec))


def translation_axes(spec: dict) -> set[str]:
    """Axes ("x", "y") along which the group described by ``spec`` moves the grid: shifts, and
    Galilean boosts (a boost displaces the state by c t). Used to refuse such audits on data
    that are not periodic along an axis."""
    axes: set[str] = set()
    for k in spec_kinds(spec):
        if k.get("kind") == "translations":
            axes.update(str(k.get("axis", "xy")))
        elif k.get("kind") == "boost":
            axes.update("xy")
        elif k.get("kind") == "set":
            axes.update("xy")  # unknown elements: assume the worst
    return axes
