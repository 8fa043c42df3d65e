"""Preference losses over summed sequence log-probabilities (torchtune style: one small function per loss).

Notation used in every docstring, for a batch of ``B`` pairs:

- ``policy_chosen_logps``  (B,): ``log πθ(y_w | x)``, the summed log-probability of the chosen tokens;
- ``policy_rejected_logps`` (B,): ``log πθ(y_l | x)``;
- ``reference_chosen_logps`` / ``reference_rejected_logps`` (B,): the same under ``πref``;
- ``h = [log πθ(y_w|x) − log πref(y_w|x)] − [log πθ(y_l|x) − log πref(y_l|x)]`` (B,), the
  *preference logit*.

In Step-DPO (Lai et al. 2024, arXiv 2406.18629) ``x`` is the problem plus the correct prefix
steps ``s_<k`` and ``y_w``/``y_l`` are single steps; in plain DPO they are whole solutions.
The implicit rewards reported during training are ``r = β·(log πθ(y|x) − log πref(y|x))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo", "hinge"]

DEFAULT_BETA = 0.4
"""β of the Step-DPO paper for 7B–70B models (0.5 for 72B)."""


def preference_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """``h = (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))``; all inputs and the output are (B,)."""
    return (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)


def sigmoid_loss(logits: torch.Tensor, beta: float = DEFAULT_BETA, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO loss (Rafailov et al. 2023, eq. 7), with conservative label smoothing (cDPO).

    ``L = −(1−ε)·log σ(β·h) − ε·log σ(−β·h)``, where ``ε`` = ``label_smoothing`` is the assumed
    probability that a label is flipped (``ε = 0`` is the paper's DPO and Step-DPO's loss).

    Args:
        logits: (B,) preference logits ``h`` (see :func:`preference_logits`).
    Returns:
        (B,) per-pair losses.
    """
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)


def ipo_loss(logits: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """IPO loss (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17).

    ``L = (h − 1/(2β))²``: regresses the preference logit onto a fixed margin instead of
    pushing it to infinity; here ``β`` plays the role of the paper's ``τ``.

    Args:
        logits: (B,) preference logits ``h``.
    Returns:
        (B,) per-pair losses.
    """
    return (logits - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(logits: torch.Tensor, beta: float = DEFAULT_BETA) -> torch.Tensor:
    """Hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF"), in its DPO parameterisation.

    ``L = max(0, 1 − β·h)``: zero once the chosen continuation's log-ratio exceeds the
    rejected one's by ``1/β``.

    Args:
        logits: (B,) preference logits ``h``.
    Returns:
        (B,) per-pair losses.
    """
    return torch.relu(1.0 - beta * logits)


def sft_loss(policy_chosen_logps: torch.Tensor, chosen_token_counts: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the chosen continuation: ``−log πθ(y_w|x) / |y_w|``.

    Args:
        policy_chosen_logps: (B,) summed log-probabilities of the chosen tokens.
        chosen_token_counts: (B,) number of chosen tokens (≥ 1).
    Returns:
        (B,) per-pair losses.
    """
    return -policy_chosen_logps / chosen_token_counts.clamp(min=1).to(policy_chosen_logps.dtype)


@dataclass
class PreferenceLossOutput:
    """What :func:`preference_loss` returns; every tensor is (B,) except ``loss`` (a scalar)."""

    loss: torch.Tensor
    """Mean over the batch of the per-pair preference loss (+ ``sft_weight`` × NLL)."""
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    """``β·(log πθ(y_w|x) − log πref(y_w|x))``, detached."""
    rejected_rewards: torch.Tensor
    """``β·(log πθ(y_l|x) − log πref(y_l|x))``, detached."""


def preference_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    *,
    loss_type: LossType = "sigmoid",
    beta: float = DEFAULT_BETA,
    label_smoothing: float = 0.0,
    sft_weight: float = 0.0,
    chosen_token_counts: torch.Tensor | None = None,
) -> PreferenceLossOutput:
    """Per-pair preference loss ``ℓ(h)`` plus an optional SFT term, averaged over the batch.

    ``loss = mean_b [ ℓ(h_b) + sft_weight · (−log πθ(y_w,b|x_b) / |y_w,b|) ]`` with ``ℓ`` one of
    :func:`sigmoid_loss`, :func:`ipo_loss`, :func:`hinge_loss`. All log-prob inputs are (B,);
    ``chosen_token_counts`` (B,) is required when ``sft_weight > 0``.
    """
    logits = preference_logits(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    if loss_type == "sigmoid":
        losses = sigmoid_loss(logits, beta, label_smoothing)
    elif loss_type == "ipo":
        losses = ipo_loss(logits, beta)
    elif loss_type == "hinge":
        losses = hinge_loss(logits, beta)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r} (sigmoid, ipo, hinge)")
    if sft_weight:
        if chosen_token_counts is None:
            raise ValueError("sft_weight > 0 needs chosen_token_counts")
        losses = losses + sft_weight * sft_loss(policy_chosen_logps, chosen_token_counts)
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return PreferenceLossOutput(losses.mean(), losses, chosen_rewards, rejected_rewards)
