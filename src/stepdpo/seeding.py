"""Seeds keyed on what is generated, never on where it sits in a batch.

Every sampled completion in the pipeline draws its randomness from a seed
derived by :func:`derive_seed` from the run's seed, the stage, the key of the
record being made (a problem id, a sample id, a branch key) and its attempt or
index. So a record's samples are the same whether it was generated alone, in a
chunk of 3 or of 300, first or after a resume; and two identical prompts with
different keys (two wrong samples of one problem, rectified from the same
prefix) get different samples.

The backends apply the same function below the stage level: sample ``j`` of a
prompt with seed ``s`` uses ``derive_seed(s, "completion", "", j)`` (see
:mod:`stepdpo.generation.base`).

The derivation hashes its inputs (BLAKE2b), so it is the same in every process,
on every platform and Python version (``hash()`` of a string is salted per
process). Seeds fit in 31 bits, which every backend accepts (an OpenAI-style
server may parse ``seed`` as a signed 32-bit integer).
"""

from __future__ import annotations

import hashlib
import json

SEED_BITS = 31


def derive_seed(run_seed: int, stage: str, key: str, *indices: int) -> int:
    """A seed in ``[0, 2**31)`` for (run seed, stage, record key, attempt or index, ...).

    ``stage`` names who samples ('sample', 'locate', 'rectify', 'scdpo', 'eval', ...);
    ``key`` the record (its id); ``indices`` whatever numbers the record's samples
    are told apart by (an attempt, a prefix length, a step index). Different inputs
    give independent-looking seeds; the same inputs always give the same seed.
    """
    # A JSON list encodes the inputs unambiguously, whatever characters a record id holds.
    text = json.dumps([int(run_seed), stage, key, *(int(i) for i in indices)], ensure_ascii=True).encode("ascii")
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - SEED_BITS)


def completion_seed(prompt_seed: int, index: int) -> int:
    """The seed of completion ``index`` of a prompt whose seed is ``prompt_seed`` (used by the backends)."""
    return derive_seed(prompt_seed, "completion", "", index)
