"""symaudit.data: datasets (our HDF5 format), their generation, PDEGym files, statistics.

- `open_dataset` / `write_dataset` / `Dataset` / `DatasetError`: the HDF5 store (`store`).
- `GenerationSettings` / `generate` / `GenerationError`: resumable simulation (`generate`).
- `pdegym`: reader for PDEGym (Poseidon) compressible-Euler `.nc` files.
- `thewell`: reader for The Well's Euler HDF5 files; `sources`: any of the three by content.
- `RunningRMS` / `channel_rms`: normalisation statistics (`stats`).
"""

from symaudit.data import pdegym, sources, thewell
from symaudit.data.generate import GenerationError, GenerationSettings, generate
from symaudit.data.stats import RunningRMS, channel_rms
from symaudit.data.store import Dataset, DatasetError, open_dataset, write_dataset

__all__ = [
    "Dataset",
    "DatasetError",
    "GenerationError",
    "GenerationSettings",
    "RunningRMS",
    "channel_rms",
    "generate",
    "open_dataset",
    "pdegym",
    "sources",
    "thewell",
    "write_dataset",
]
