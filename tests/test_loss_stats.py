import pytest
import torch

from symaudit import SMSE, FieldLayout
from symaudit.data.stats import RunningRMS, channel_rms


def test_channel_rms_shares_vector_scale_and_streams():
    layout = FieldLayout.euler()
    x = torch.randn(6, 4, 8, 8, dtype=torch.float64) * torch.tensor([1.0, 2.0, 5.0, 3.0]).view(
        4, 1, 1
    )
    rms = channel_rms(x, layout)
    assert rms[1] == rms[2]
    expect_m = x[:, 1:3].square().mean().sqrt()
    torch.testing.assert_close(rms[1], expect_m)
    torch.testing.assert_close(rms[0], x[:, 0].square().mean().sqrt())
    acc = RunningRMS(layout)
    for chunk in x.split(2):
        acc.update(chunk)
    torch.testing.assert_close(acc.compute(), rms)


def test_running_rms_rejects_bad_input():
    acc = RunningRMS(FieldLayout.euler())
    with pytest.raises(ValueError, match="no data"):
        acc.compute()
    bad = torch.ones(1, 4, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        acc.update(bad)


def test_smse_matches_formula_and_per_sample_mean():
    rms = torch.tensor([0.5, 2.0, 2.0, 4.0])
    loss = SMSE(rms)
    pred, target = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    expect = ((pred - target) ** 2 / rms.view(4, 1, 1) ** 2).mean()
    torch.testing.assert_close(loss(pred, target), expect)
    torch.testing.assert_close(loss.per_sample(pred, target).mean(), expect)


def test_smse_rejects_bad_scales_and_shapes():
    with pytest.raises(ValueError, match="positive"):
        SMSE(torch.tensor([1.0, 0.0]))
    loss = SMSE(torch.ones(4))
    with pytest.raises(ValueError, match="differ"):
        loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="expected"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
