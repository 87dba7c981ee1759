"""Exactly D4- and translation-equivariant control emulator: a p4m group-convolutional network.

Hidden features live on the group: z(c, h, p) for channel c, element h ∈ D4 and pixel p,
shaped `(B, C·8, H, W)` (channel-major). D4 acts on them by the regular representation,
(g·z)(h, p) = z(g⁻¹h, g⁻¹p). The layers and why each commutes with that action:

- lift (pixelwise): scalar s ↦ z(h) = a·s (constant in h); vector v ↦ z(h) = ⟨ρ(h) a, v⟩,
  since ⟨ρ(h)a, ρ(g)v⟩ = ⟨ρ(g⁻¹h)a, v⟩. ρ is the 2×2 standard representation on (v_x, v_y).
- group convolution (Cohen & Welling 2016): out(h, p) = Σ_{l,u} W(h⁻¹l, h⁻¹u) z(l, p + u), one
  free kernel W(c_out, c_in, l, u); the 8 transformed copies are gathered from it each call.
  Circular padding, stride 1: equivariant to every periodic shift.
- GELU pointwise; GroupNorm over groups of whole channels (all 8 h-slices together) with one
  affine scale/shift per channel; residual sums.
- project (pixelwise): scalar s = Σ_c a_c · mean_h z(c, h); vector v = Σ_c mean_h ρ(h) b_c z(c, h).

Group elements are r^k s^f (s first), r the counter-clockwise quarter turn (x, y) ↦ (-y, x)
and s the reflection x ↦ -x, with x = axis -1, y = axis -2 — the conventions of
`symaudit.groups`. The output is exactly equivariant: the only deviations are float round-off
(sums taken in a different order). `export()` freezes the gathered kernels into plain
`nn.Conv2d` layers for fast inference.

Why not escnn: escnn 1.0.11 imports `lie_learn` unconditionally (`escnn.group` → SO(3) utils);
lie_learn's only Python 3.11 wheel is compiled against the NumPy 1 ABI (fails to import under
the project's NumPy 2) and its sdist ships stale Cython output that no longer compiles on 3.11;
e2cnn 0.2.3 calls `ndarray.tostring`, removed in NumPy 2. See docs/models.md.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from symaudit.fields import FieldLayout
from symaudit.models._checks import check_state

__all__ = ["D4GCNN", "GroupConv2d", "d4_elements"]

_ORDER = 8


def d4_elements() -> list[torch.Tensor]:
    """The 8 matrices of r^k s^f acting on (x, y), index k + 4f (int64, `(2, 2)` each)."""
    r = torch.tensor([[0, -1], [1, 0]])
    s = torch.tensor([[-1, 0], [0, 1]])
    out = []
    for f in (0, 1):
        for k in range(4):
            out.append(torch.linalg.matrix_power(r, k) @ (s if f else torch.eye(2, dtype=r.dtype)))
    return out


def _tables() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    mats = d4_elements()
    key = [tuple(m.flatten().tolist()) for m in mats]
    mul = torch.tensor([[key.index(tuple((a @ b).flatten().tolist())) for b in mats] for a in mats])
    inv = torch.tensor([key.index(tuple(m.T.flatten().tolist())) for m in mats])  # orthogonal
    return mul, inv, mats


def _kernel_gather_index(size: int) -> torch.Tensor:
    """idx[h] such that W.flatten(-3)[..., idx[h]] = W(h⁻¹l, h⁻¹u) over (l, u) ∈ D4 × k×k.

    Offsets u = (x, y) sit at column x + c, row y + c, c = (size - 1)/2 (odd size)."""
    mul, inv, mats = _tables()
    c = (size - 1) // 2
    idx = torch.empty(_ORDER, _ORDER * size * size, dtype=torch.long)
    for h in range(_ORDER):
        hinv = int(inv[h])
        for l in range(_ORDER):
            src_l = int(mul[hinv, l])
            for row in range(size):
                for col in range(size):
                    x, y = mats[hinv] @ torch.tensor([col - c, row - c])
                    dst = (l * size + row) * size + col
                    idx[h, dst] = (src_l * size + int(y) + c) * size + int(x) + c
    return idx


class GroupConv2d(nn.Module):
    """p4m group convolution on regular features `(B, C_in·8, H, W) → (B, C_out·8, H, W)`."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError("GroupConv2d needs an odd kernel size (rotations about its centre)")
        self.cin, self.cout, self.kernel_size = cin, cout, kernel_size
        self.weight = nn.Parameter(torch.empty(cout, cin, _ORDER, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight.view(cout, -1, kernel_size, kernel_size), a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.register_buffer("index", _kernel_gather_index(kernel_size), persistent=False)

    def full_weight(self) -> torch.Tensor:
        """The 8 transformed kernels as one `(C_out·8, C_in·8, k, k)` conv weight."""
        k = self.kernel_size
        w = self.weight.flatten(2)[:, :, self.index]  # (C_out, C_in, h, l·k·k)
        w = w.view(self.cout, self.cin, _ORDER, _ORDER, k, k).transpose(1, 2)
        return w.reshape(self.cout * _ORDER, self.cin * _ORDER, k, k)

    def full_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.repeat_interleave(_ORDER)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pad = self.kernel_size // 2
        z = F.pad(z, (pad, pad, pad, pad), mode="circular")
        return F.conv2d(z, self.full_weight(), self.full_bias())

    def export(self) -> nn.Conv2d:
        """Plain `nn.Conv2d` (circular padding) with the gathered kernels frozen in."""
        k = self.kernel_size
        conv = nn.Conv2d(
            self.cin * _ORDER,
            self.cout * _ORDER,
            k,
            padding=k // 2,
            padding_mode="circular",
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.full_weight())
            if self.bias is not None:
                conv.bias.copy_(self.full_bias())
        return conv


class GroupNorm8(nn.Module):
    """GroupNorm whose groups hold whole channels (all 8 h-slices) and whose affine parameters
    are shared across h — torch's GroupNorm affine would be per h-slice and break symmetry."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        while channels % groups:
            groups -= 1
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = F.group_norm(z, self.groups)
        return z * self.weight.repeat_interleave(_ORDER).view(
            -1, 1, 1
        ) + self.bias.repeat_interleave(_ORDER).view(-1, 1, 1)


class _Block(nn.Module):
    def __init__(self, channels: int, kernel_size: int, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm8(channels, norm_groups)
        self.conv1 = GroupConv2d(channels, channels, kernel_size)
        self.norm2 = GroupNorm8(channels, norm_groups)
        self.conv2 = GroupConv2d(channels, channels, kernel_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.gelu(self.norm1(z)))
        return z + self.conv2(F.gelu(self.norm2(h)))


class D4GCNN(nn.Module):
    """Exactly D4 × periodic-shift equivariant emulator `(B, C, H, W) → (B, C, H, W)`.

    Args:
        channels: regular-representation channels inside (each is 8 feature maps).
        blocks: residual blocks (two group convolutions each).
        kernel_size: odd spatial kernel size.
        norm_groups: GroupNorm groups (of whole channels).
        layout: field layout as a dict (`FieldLayout.to_dict()`); default Euler (rho, m, E).
        residual: predict x + f(x).
    """

    def __init__(
        self,
        channels: int = 16,
        blocks: int = 4,
        kernel_size: int = 3,
        norm_groups: int = 4,
        layout: dict | None = None,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.layout = FieldLayout.from_dict(layout) if layout else FieldLayout.euler()
        self.residual = residual
        self.scalars = list(self.layout.scalars)
        self.vectors = [list(v) for v in self.layout.vectors.values()]
        n_s, n_v = len(self.scalars), len(self.vectors)
        self.register_buffer("rho", torch.stack(d4_elements()).to(torch.get_default_dtype()))
        # lift: z(c, h) = Σ_s A[c, s] s + Σ_v <ρ(h) B[c, v], v> + bias[c]
        self.lift_scalar = nn.Parameter(torch.randn(channels, n_s) / max(1, n_s + n_v) ** 0.5)
        self.lift_vector = nn.Parameter(torch.randn(channels, n_v, 2) / max(1, n_s + n_v) ** 0.5)
        self.lift_bias = nn.Parameter(torch.zeros(channels))
        self.convs_in = GroupConv2d(channels, channels, kernel_size)
        self.blocks = nn.ModuleList(
            _Block(channels, kernel_size, norm_groups) for _ in range(blocks)
        )
        self.out_norm = GroupNorm8(channels, norm_groups)
        self.conv_out = GroupConv2d(channels, channels, kernel_size)
        # project: scalar = Σ_c a[s, c] mean_h z + bias[s];  vector = Σ_c mean_h ρ(h) b[v, c] z
        self.proj_scalar = nn.Parameter(torch.zeros(n_s, channels))
        self.proj_scalar_bias = nn.Parameter(torch.zeros(n_s))
        self.proj_vector = nn.Parameter(torch.zeros(n_v, channels, 2))
        nn.init.normal_(self.proj_scalar, std=1e-2 / channels**0.5)
        nn.init.normal_(self.proj_vector, std=1e-2 / channels**0.5)
        self.channels = channels

    def _lift(self, x: torch.Tensor) -> torch.Tensor:
        b, _, hgt, wid = x.shape
        rho = self.rho.to(x.dtype)
        z = torch.einsum("cs,bshw->bchw", self.lift_scalar, x[:, self.scalars])
        z = z.unsqueeze(2) + self.lift_bias.view(1, -1, 1, 1, 1)  # constant along h
        if self.vectors:
            v = x[:, self.vectors]  # (B, V, 2, H, W), components (x, y)
            a = torch.einsum("gij,cvj->cvgi", rho, self.lift_vector)  # ρ(h) B[c, v]
            z = z + torch.einsum("cvgi,bvihw->bcghw", a, v)
        else:
            z = z.expand(b, self.channels, _ORDER, hgt, wid)
        return z.reshape(b, self.channels * _ORDER, hgt, wid)

    def _project(self, z: torch.Tensor) -> torch.Tensor:
        b, _, hgt, wid = z.shape
        z = z.view(b, self.channels, _ORDER, hgt, wid)
        rho = self.rho.to(z.dtype)
        channels: list[torch.Tensor | None] = [None] * self.layout.num_channels
        scal = torch.einsum("sc,bchw->sbhw", self.proj_scalar, z.mean(dim=2))
        for n, i in enumerate(self.scalars):
            channels[i] = scal[n] + self.proj_scalar_bias[n]
        if self.vectors:
            a = torch.einsum("gij,vcj->vcgi", rho, self.proj_vector)  # ρ(h) b[v, c]
            vec = torch.einsum("vcgi,bcghw->vibhw", a, z) / _ORDER
            for n, (ix, iy) in enumerate(self.vectors):
                channels[ix], channels[iy] = vec[n, 0], vec[n, 1]
        return torch.stack(channels, dim=1)  # built functionally: friendly to torch.func

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W) → (B, C, H, W)` with C the layout's channels."""
        check_state(x, self.layout.num_channels, what="D4GCNN")
        z = self.convs_in(F.gelu(self._lift(x)))
        for block in self.blocks:
            z = block(z)
        z = self.conv_out(F.gelu(self.out_norm(z)))
        out = self._project(z)
        return x + out if self.residual else out

    def export(self) -> D4GCNN:
        """A copy whose group convolutions are plain `nn.Conv2d` with frozen gathered kernels
        (same outputs, no per-call kernel gathering; for inference, not for training)."""
        clone = copy.deepcopy(self)
        for module in list(clone.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, GroupConv2d):
                    setattr(module, child_name, child.export())
        return clone.eval()
