"""The rule that picks the influence audit's shifts from the architectures' periods."""

from __future__ import annotations

from symaudit.diagnostics.shifts import influence_shift_set, natural_period
from symaudit.models.registry import model_config


def test_periods_are_the_patch_size_and_the_down_sampling_factor():
    assert natural_period(model_config("vit-small")) == 8
    assert natural_period(model_config("vit-paper")) == 8
    assert natural_period(model_config("unet-small")) == 16  # 4 down-samplings
    assert natural_period(model_config("unet-paper")) == 16
    assert natural_period(model_config("gcnn-small")) is None


def test_the_set_holds_aligned_and_non_aligned_shifts_of_every_period():
    for periods, size in (([16, 8, None], 64), ([16, 8], 128), ([4, 2], 16), ([16, 4], 16)):
        s = influence_shift_set(periods, size)
        assert s == sorted(set(s)) and s[0] == 0 and all(0 <= x < size for x in s)
        for p in (p for p in periods if p and p < size):
            assert any(x and x % p == 0 for x in s), (periods, p)  # aligned, non-zero
            assert any(x % p for x in s), (periods, p)  # not aligned
    assert influence_shift_set([16, 8, None], 64) == [0, 1, 4, 8, 12, 16, 20, 24, 28, 32]
    assert influence_shift_set([None], 8) == list(range(8))  # no period: every shift
