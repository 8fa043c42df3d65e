"""The shared-prefix forward: prefix, chosen and rejected of a pair in ONE sequence.

A pair ``(p, c, r)`` of token lists becomes the row ``p ‖ c ‖ r`` (length ``P + C + R``) with

- an attention pattern in which prefix tokens attend causally to the prefix, chosen tokens
  to the prefix and earlier chosen tokens, rejected tokens to the prefix and earlier
  rejected tokens, never to chosen ones;
- position ids ``0..P−1`` for the prefix, ``P..P+C−1`` for chosen and ``P..P+R−1`` for
  rejected (the rejected branch continues from the prefix end, as if chosen were absent).

Each branch therefore sees exactly what it would see in its own sequence ``p ‖ c`` or
``p ‖ r``, while the prefix (in Step-DPO hundreds of tokens, against tens per step) runs
once instead of twice. The mask is passed as an *additive float* 4D tensor (0 allowed,
``finfo(dtype).min`` barred, shape ``(B, 1, L, L)``), which transformers' ``sdpa`` and
``eager`` attention both take as is (a boolean 4D mask is misread by ``eager``).

Only the positions that predict a scored token go through the vocabulary projection
(``logits_to_keep`` as a boolean ``(B, L)`` mask): chosen token ``c_i`` is predicted from
position ``P+i−1``; rejected token ``r_j`` from ``P+C+j−1`` for ``j ≥ 1`` and, for ``j = 0``,
from the last prefix position ``P−1`` (the same row that predicts ``c_0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

PAD, PREFIX, CHOSEN, REJECTED = -1, 0, 1, 2


@dataclass(frozen=True)
class PairTokens:
    """Token ids of one pair: the shared context and the two continuations (each non-empty)."""

    prefix: list[int]
    chosen: list[int]
    rejected: list[int]

    def __post_init__(self) -> None:
        if not (self.prefix and self.chosen and self.rejected):
            raise ValueError("a packed pair needs a non-empty prefix, chosen and rejected")

    @property
    def packed_length(self) -> int:
        return len(self.prefix) + len(self.chosen) + len(self.rejected)


def pack_pairs(pairs: Sequence[PairTokens], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pack ``B`` pairs into right-padded rows of length ``L = max_b (P_b + C_b + R_b)``.

    Returns tensors (no model needed, so this is the data collator's work):

    - ``input_ids`` (B, L) long, padded with ``pad_token_id``;
    - ``segment_ids`` (B, L) long: ``0`` prefix, ``1`` chosen, ``2`` rejected, ``−1`` padding;
    - ``position_ids`` (B, L) long, as described in the module docstring (0 on padding);
    - ``predict_mask`` (B, L) bool: the ``K`` positions whose logits are needed;
    - ``score_rows`` (N,) long: for each of the ``N`` scored tokens, its predicting position's
      row in the row-major flattening of ``predict_mask`` (0..K−1);
    - ``score_targets`` (N,) long: the scored token ids;
    - ``score_slots`` (N,) long: ``2·b`` for a chosen token of pair ``b``, ``2·b + 1`` for a rejected one;
    - ``chosen_counts``, ``rejected_counts`` (B,) long: ``C_b`` and ``R_b``.
    """
    if not pairs:
        raise ValueError("pack_pairs needs at least one pair")
    B = len(pairs)
    L = max(pair.packed_length for pair in pairs)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)
    segment_ids = torch.full((B, L), PAD, dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    predict_mask = torch.zeros((B, L), dtype=torch.bool)
    # (row, predicting position, target, slot) for every scored token, in any order.
    scored: list[tuple[int, int, int, int]] = []
    for b, pair in enumerate(pairs):
        P, C, R = len(pair.prefix), len(pair.chosen), len(pair.rejected)
        input_ids[b, : P + C + R] = torch.tensor(pair.prefix + pair.chosen + pair.rejected)
        segment_ids[b, :P] = PREFIX
        segment_ids[b, P : P + C] = CHOSEN
        segment_ids[b, P + C : P + C + R] = REJECTED
        position_ids[b, :P] = torch.arange(P)
        position_ids[b, P : P + C] = torch.arange(P, P + C)
        position_ids[b, P + C : P + C + R] = torch.arange(P, P + R)
        for i, token in enumerate(pair.chosen):
            scored.append((b, P + i - 1, token, 2 * b))
        for j, token in enumerate(pair.rejected):
            scored.append((b, P - 1 if j == 0 else P + C + j - 1, token, 2 * b + 1))
    rows = torch.tensor([s[0] for s in scored])
    cols = torch.tensor([s[1] for s in scored])
    predict_mask[rows, cols] = True
    # Row-major rank of each kept position = its row in the flattened logits.
    flat_rank = torch.cumsum(predict_mask.flatten(), 0) - 1
    return {
        "input_ids": input_ids,
        "segment_ids": segment_ids,
        "position_ids": position_ids,
        "predict_mask": predict_mask,
        "score_rows": flat_rank[rows * L + cols],
        "score_targets": torch.tensor([s[2] for s in scored]),
        "score_slots": torch.tensor([s[3] for s in scored]),
        "chosen_counts": torch.tensor([len(p.chosen) for p in pairs]),
        "rejected_counts": torch.tensor([len(p.rejected) for p in pairs]),
    }


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask (B, 1, L, L) from ``segment_ids`` (B, L): 0 where query i may attend key j, else ``finfo.min``.

    ``allowed[b, i, j] = (j ≤ i) ∧ (seg_j = prefix ∨ seg_j = seg_i) ∧ seg_i ≠ pad ∧ seg_j ≠ pad``,
    and every position may attend itself so padding rows never see an all-barred row.
    """
    B, L = segment_ids.shape
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & ((seg_k == PREFIX) | (seg_k == seg_q)) & (seg_q != PAD) & (seg_k != PAD)
    allowed |= torch.eye(L, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(B, 1, L, L, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


@dataclass
class PackedLogps:
    """Per-pair summed log-probabilities; every tensor is (B,)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_counts: torch.Tensor
    rejected_counts: torch.Tensor


def model_dtype(model: Any) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def packed_logps(model: Any, batch: dict[str, torch.Tensor]) -> PackedLogps:
    """Run one packed forward and sum ``log π(token | context)`` over each pair's chosen and rejected tokens.

    ``model`` is a causal LM (or a PEFT / DDP wrapper of one) whose forward accepts a 4D
    float ``attention_mask``, ``position_ids`` and a boolean ``logits_to_keep``. Its logits
    come back as (K, V), one row per kept position; ``lse`` (K,) is their log-sum-exp in
    float32 and the log-probability of scored token n is ``logits[rows_n, target_n] − lse[rows_n]``.
    """
    segment_ids = batch["segment_ids"]
    mask = packed_attention_mask(segment_ids, model_dtype(model))
    output = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=batch["position_ids"],
        logits_to_keep=batch["predict_mask"],
        use_cache=False,
    )
    logits = output.logits  # (K, V)
    lse = torch.logsumexp(logits.float(), dim=-1)
    rows = batch["score_rows"]
    token_logps = logits[rows, batch["score_targets"]].float() - lse[rows]  # (N,)
    B = segment_ids.shape[0]
    sums = torch.zeros(2 * B, dtype=torch.float32, device=token_logps.device).index_add(0, batch["score_slots"], token_logps)
    sums = sums.view(B, 2)
    return PackedLogps(sums[:, 0], sums[:, 1], batch["chosen_counts"], batch["rejected_counts"])


def naive_logps(model: Any, pairs: Sequence[PairTokens]) -> PackedLogps:
    """Reference computation: ``p ‖ c`` and ``p ‖ r`` as separate sequences, one at a time, full logits.

    This is what an unpacked trainer does; :func:`packed_logps` must equal it.
    """
    device = next(model.parameters()).device
    out = {"chosen": [], "rejected": []}
    for pair in pairs:
        for side, continuation in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            ids = torch.tensor([pair.prefix + continuation], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()  # (P+C, V)
            logps = torch.log_softmax(logits[len(pair.prefix) - 1 : -1], dim=-1)
            out[side].append(logps.gather(1, torch.tensor(continuation, device=device)[:, None]).sum())
    return PackedLogps(
        torch.stack(out["chosen"]),
        torch.stack(out["rejected"]),
        torch.tensor([len(p.chosen) for p in pairs]),
        torch.tensor([len(p.rejected) for p in pairs]),
    )
