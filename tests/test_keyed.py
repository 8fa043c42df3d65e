"""The keyed-records runner and the generate-and-grade helper every record-producing stage uses."""

from __future__ import annotations

import pytest

from stepdpo.generation.base import SamplingParams
from stepdpo.generation.graded import Continue, generate_graded
from stepdpo.generation.scripted import ScriptedGenerator
from stepdpo.seeding import derive_seed
from stepdpo.stages.keyed import run_keyed


def test_run_keyed_skips_done_chunks_seeds_by_key_and_saves_each_chunk():
    calls: list[tuple[list[str], list[int]]] = []
    saved: list[list[str]] = []

    def make(chunk, seeds):
        calls.append((list(chunk), list(seeds)))
        return [f"{item}!" for item in chunk]

    items = ["a", "b", "c", "d", "e"]
    out = run_keyed(items, make, stage="st", seed=7, key=lambda x: x.upper(), done=lambda x: x == "b", save=saved.append, chunk_size=2)
    assert [c for c, _ in calls] == [["a", "c"], ["d", "e"]]
    assert calls[0][1] == [derive_seed(7, "st", "A"), derive_seed(7, "st", "C")]
    assert saved == [["a!", "c!"], ["d!", "e!"]] and out.new == ["a!", "c!", "d!", "e!"]
    assert (out.items, out.already_done) == (5, 1)


def test_run_keyed_seeds_do_not_depend_on_chunking_and_a_crash_keeps_saved_chunks():
    seen: dict[str, int] = {}

    def make(chunk, seeds):
        seen.update(zip(chunk, seeds))
        return list(chunk)

    run_keyed(list("abcd"), make, stage="s", seed=1, key=str, chunk_size=1)
    alone = dict(seen)
    seen.clear()
    run_keyed(list("abcd"), make, stage="s", seed=1, key=str, chunk_size=3)
    assert seen == alone

    saved: list[str] = []

    def dies_on_c(chunk, seeds):
        if "c" in chunk:
            raise RuntimeError("boom")
        return list(chunk)

    with pytest.raises(RuntimeError):
        run_keyed(list("abcd"), dies_on_c, stage="s", seed=1, key=str, save=saved.extend, chunk_size=2)
    assert saved == ["a", "b"]


def test_generate_graded_glues_head_and_grades_with_the_data_rule():
    # Completion j of each prompt: right and ended, right but cut at the token limit, wrong.
    script = {0: " 2+2=4. The answer is 4", 1: " 2+2=4. The answer is 4 and then some more words", 2: " The answer is 5"}
    generator = ScriptedGenerator(lambda prompt, params, j: script[j])
    params = SamplingParams(n=3, max_new_tokens=8)
    graded = generate_graded(generator, [Continue("Q1", "Step 1:", "4"), Continue("Q2", "Step 1:", "5")], params, [1, 2])
    assert [len(g) for g in graded] == [3, 3]
    assert graded[0][0].response == "Step 1: 2+2=4. The answer is 4"
    assert [g.completion.finish_reason for g in graded[0]] == ["eos", "length", "eos"]
    assert [g.correct for g in graded[0]] == [True, False, False]
    assert [g.correct for g in graded[1]] == [False, False, True]


def test_run_keyed_without_a_seed_leaves_seeding_to_the_stage():
    got: list[list[int]] = []
    run_keyed(["a", "b"], lambda chunk, seeds: got.append(seeds) or [], stage="locate", seed=None, key=str)
    assert got == [[]]
