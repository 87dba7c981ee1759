"""Field layouts: what each channel of a `(..., C, H, W)` tensor is, and how it transforms.

A group action on a physical state moves the grid *and* transforms the tensor components:
a rotation by pi/2 maps a vector field (v_x, v_y) to (-v_y, v_x) at the rotated point, while a
scalar is only moved. `FieldLayout` carries that transformation law, like escnn's field types
or The Well's tensor-order metadata. Axis conventions: axis -1 is x, axis -2 is y.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Channel", "FieldLayout", "LayoutError"]

_AXES = ("x", "y")


class LayoutError(ValueError):
    """A tensor or file does not match the field layout it is used with."""


@dataclass(frozen=True)
class Channel:
    """One channel: a scalar (``vector is None``) or component ``"x"``/``"y"`` of a named vector."""

    name: str
    vector: str | None = None
    component: str | None = None

    def __post_init__(self) -> None:
        if (self.vector is None) != (self.component is None):
            raise LayoutError(f"channel {self.name!r}: give both vector and component, or neither")
        if self.component is not None and self.component not in _AXES:
            raise LayoutError(f"channel {self.name!r}: component must be 'x' or 'y'")

    @property
    def order(self) -> int:
        """Tensor order: 0 for a scalar, 1 for a vector component."""
        return 0 if self.vector is None else 1


class FieldLayout:
    """An ordered set of channels, each a scalar or one component of a 2D vector.

    Every vector must have exactly one x and one y component. Layouts compare equal when their
    channels do, and round-trip through JSON (stored in datasets and checkpoints).
    """

    def __init__(self, channels: Sequence[Channel]) -> None:
        channels = tuple(channels)
        if not channels:
            raise LayoutError("a field layout needs at least one channel")
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise LayoutError(f"duplicate channel names in {names}")
        vectors: dict[str, dict[str, int]] = {}
        for i, c in enumerate(channels):
            if c.vector is not None:
                comps = vectors.setdefault(c.vector, {})
                if c.component in comps:
                    raise LayoutError(f"vector {c.vector!r} has two {c.component}-components")
                comps[c.component] = i
        for v, comps in vectors.items():
            if set(comps) != set(_AXES):
                raise LayoutError(
                    f"vector {v!r} needs both x and y components, has {sorted(comps)}"
                )
        self._channels = channels
        self._vectors = {v: (comps["x"], comps["y"]) for v, comps in vectors.items()}

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def euler(cls) -> FieldLayout:
        """Conservative compressible-Euler variables (rho, m_x, m_y, E)."""
        return cls(
            [
                Channel("rho"),
                Channel("m_x", "momentum", "x"),
                Channel("m_y", "momentum", "y"),
                Channel("E"),
            ]
        )

    @classmethod
    def from_dict(cls, data: dict) -> FieldLayout:
        try:
            return cls([Channel(**c) for c in data["channels"]])
        except (KeyError, TypeError) as exc:
            raise LayoutError(f"not a field layout description: {data!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> FieldLayout:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise LayoutError(f"field layout is not valid JSON: {text!r}") from exc

    def to_dict(self) -> dict:
        return {
            "channels": [
                {"name": c.name, "vector": c.vector, "component": c.component}
                for c in self._channels
            ]
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- queries ------------------------------------------------------------------------------
    @property
    def channels(self) -> tuple[Channel, ...]:
        return self._channels

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self._channels)

    @property
    def num_channels(self) -> int:
        return len(self._channels)

    @property
    def scalars(self) -> tuple[int, ...]:
        """Indices of scalar channels."""
        return tuple(i for i, c in enumerate(self._channels) if c.vector is None)

    @property
    def vectors(self) -> dict[str, tuple[int, int]]:
        """Vector name -> (index of x component, index of y component)."""
        return dict(self._vectors)

    def scale_groups(self) -> list[tuple[int, ...]]:
        """Channel groups that must share one normalisation scale (a scalar alone, a vector's
        two components together), in order of first channel. Sharing keeps losses and
        normalisations invariant under rotations and reflections."""
        groups: list[tuple[int, ...]] = []
        seen: set[int] = set()
        for i, c in enumerate(self._channels):
            if i in seen:
                continue
            group = (i,) if c.vector is None else self._vectors[c.vector]
            groups.append(group)
            seen.update(group)
        return groups

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise LayoutError(f"no channel {name!r} in layout {self.names}") from None

    def check(self, x: torch.Tensor, *, what: str = "tensor") -> None:
        """Raise `LayoutError` unless ``x`` is shaped ``(..., C, H, W)`` with C matching."""
        if x.ndim < 3:
            raise LayoutError(f"{what} must be shaped (..., C, H, W), got shape {tuple(x.shape)}")
        if x.shape[-3] != self.num_channels:
            raise LayoutError(
                f"{what} has {x.shape[-3]} channels at dim -3 but the layout {self.names} "
                f"has {self.num_channels} (shape {tuple(x.shape)})"
            )

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels)

    def __len__(self) -> int:
        return len(self._channels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldLayout) and self._channels == other._channels

    def __hash__(self) -> int:
        return hash(self._channels)

    def __repr__(self) -> str:
        parts = [
            c.name if c.vector is None else f"{c.name}:{c.vector}.{c.component}"
            for c in self._channels
        ]
        return f"FieldLayout({', '.join(parts)})"
