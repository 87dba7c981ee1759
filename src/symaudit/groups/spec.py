"""Build groups from short command-line specifications (``symaudit audit --group ...``)."""

from __future__ import annotations

from symaudit.fields import FieldLayout
from symaudit.groups._base import Group, GroupError, product
from symaudit.groups.dihedral import Dihedral4
from symaudit.groups.galilean import GalileanBoost
from symaudit.groups.translations import Translations

__all__ = ["SPEC_HELP", "from_spec", "spec_kinds", "translation_axes"]

SPEC_HELP = (
    "d4 | c4 | shift-x[:STRIDE] | shift-y[:STRIDE] | shift-xy[:STRIDE] | boost:CX,CY; "
    "join with '*' for products (e.g. d4*shift-xy:32)"
)


def _resolution(resolution: int | tuple[int, int] | None, spec: str) -> tuple[int, int]:
    if resolution is None:
        raise GroupError(f"group spec {spec!r} needs the grid resolution")
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    return int(h), int(w)


def _term(
    term: str, layout: FieldLayout, resolution: int | tuple[int, int] | None, dt: float | None
) -> Group:
    key, _, arg = term.strip().lower().partition(":")
    if key == "d4" and not arg:
        return Dihedral4(layout)
    if key == "c4" and not arg:
        return Dihedral4(layout).rotations()
    if key in ("shift-x", "shift-y", "shift-xy"):
        h, w = _resolution(resolution, term)
        axis = key.removeprefix("shift-")
        n = w if axis == "x" else h
        try:
            stride = int(arg) if arg else 1
        except ValueError:
            raise GroupError(f"{term!r}: stride must be an integer") from None
        if stride < 1 or n % stride:
            raise GroupError(f"{term!r}: stride must be positive and divide the grid size {n}")
        return Translations(layout, axis, range(0, n, stride), size=n if h == w else None)
    if key == "boost":
        if dt is None:
            raise GroupError(f"{term!r}: a boost needs the time step dt between snapshots")
        try:
            cx, cy = (float(v) for v in arg.split(","))
        except ValueError:
            raise GroupError(f"{term!r}: write boost:CX,CY, e.g. boost:0.5,0") from None
        return GalileanBoost(layout, (cx, cy), dt)
    raise GroupError(f"unknown group spec {term!r}; expected {SPEC_HELP}")


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
    terms = [t for t in spec.split("*")]
    if not spec.strip() or any(not t.strip() for t in terms):
        raise GroupError(f"empty group spec {spec!r}; expected {SPEC_HELP}")
    group = _term(terms[0], layout, resolution, dt)
    for t in terms[1:]:
        group = product(group, _term(t, layout, resolution, dt))
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
