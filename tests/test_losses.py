"""The preference losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from stepdpo.training.losses import hinge_loss, ipo_loss, preference_logits, preference_loss, sft_loss, sigmoid_loss

# One pair: policy chosen -10, rejected -14; reference chosen -11, rejected -12.
# h = (-10 - -11) - (-14 - -12) = 1 + 2 = 3.
PC, PR, RC, RR = (torch.tensor([v]) for v in (-10.0, -14.0, -11.0, -12.0))


def test_preference_logit():
    assert preference_logits(PC, PR, RC, RR).item() == pytest.approx(3.0)


def test_sigmoid_matches_hand_value():
    # beta 0.4: -log sigmoid(1.2) = log(1 + e^-1.2)
    assert sigmoid_loss(torch.tensor([3.0]), 0.4).item() == pytest.approx(math.log1p(math.exp(-1.2)), rel=1e-6)


def test_sigmoid_label_smoothing_mixes_both_directions():
    eps = 0.1
    expected = (1 - eps) * math.log1p(math.exp(-1.2)) + eps * math.log1p(math.exp(1.2))
    assert sigmoid_loss(torch.tensor([3.0]), 0.4, eps).item() == pytest.approx(expected, rel=1e-6)


def test_ipo_matches_hand_value():
    # (3 - 1/(2*0.4))^2 = (3 - 1.25)^2 = 3.0625
    assert ipo_loss(torch.tensor([3.0]), 0.4).item() == pytest.approx(3.0625)


def test_hinge_matches_hand_value():
    assert hinge_loss(torch.tensor([1.0]), 0.4).item() == pytest.approx(0.6)
    assert hinge_loss(torch.tensor([3.0]), 0.4).item() == 0.0


def test_sft_is_per_token_nll():
    assert sft_loss(torch.tensor([-10.0]), torch.tensor([4])).item() == pytest.approx(2.5)


def test_preference_loss_rewards_and_sft_term():
    out = preference_loss(PC, PR, RC, RR, beta=0.4, sft_weight=0.5, chosen_token_counts=torch.tensor([5]))
    assert out.chosen_rewards.item() == pytest.approx(0.4 * 1.0)
    assert out.rejected_rewards.item() == pytest.approx(0.4 * -2.0)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.2)) + 0.5 * 2.0, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    preference_loss(pc, pr, RC, RR).loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()


def test_unknown_loss_type_and_missing_counts_are_errors():
    with pytest.raises(ValueError):
        preference_loss(PC, PR, RC, RR, loss_type="kto")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        preference_loss(PC, PR, RC, RR, sft_weight=1.0)
