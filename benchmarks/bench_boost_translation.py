"""The translation part of a boost defect: D for pure whole-cell shifts by the displacements of
the boosts c = k / (m dt N) over the same m-step rollout (forward passes only).

    python benchmarks/bench_boost_translation.py RUN_DIR TEST_FILE [--steps 10] [--states 4]

Prints the median D and E over the first ``--states`` test trajectories for shifts of
0, 1, 2, 4, 8, 16, 32 cells along x (docs/boosts.md: the ViT's small-speed boost defect is
at the level of its one-cell translation defect).
"""

import argparse

import torch

from symaudit.data import open_dataset
from symaudit.diagnostics import equivariance_error
from symaudit.diagnostics.boosts import Rollout
from symaudit.groups import Translations
from symaudit.training import SMSE, load_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("test_file")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--states", type=int, default=4)
    a = p.parse_args()
    torch.set_flush_denormal(True)
    with open_dataset(a.test_file) as ds:
        traj = ds.read(list(range(a.states)))
    model, info = load_checkpoint(f"{a.run}/checkpoint.pt")
    shifts = [0, 1, 2, 4, 8, 16, 32]
    g = Translations(info.layout, "x", shifts, size=traj.shape[-1])
    batch = (traj[:, 0], traj[:, a.steps])
    eq = equivariance_error(Rollout(model, a.steps), batch, g, SMSE(info.channel_rms))
    print("shift cells", shifts)
    print("median D", [f"{v:.3g}" for v in eq.defect.median(1).values.tolist()])
    print("median E", [f"{v:.3g}" for v in eq.error.median(1).values.tolist()])


if __name__ == "__main__":
    main()
