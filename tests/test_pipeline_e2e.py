"""The data pipeline end to end on the tiny random model: sample -> locate (rollout) -> rectify -> pairs.

The tiny model cannot solve anything, so a wrapper forces a few completions
(one right solution and one solution wrong at step 2 per problem, and right
continuations from correct prefixes); everything else is the tiny model's own
output, graded for real. The stages run through their ``run`` functions with
one shared generator, then ``pairs`` through its command on the run directory.
"""

from __future__ import annotations

import json

import datasets

from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams, prompt_format
from stepdpo.generation.registry import build_generator
from stepdpo.localizers.rollout import RolloutConfig
from stepdpo.records import LocatedError, Problem, RecordStore, Rectification, Sample, StepPair
from stepdpo.rundir import RunDir
from stepdpo.stages import locate, pairs, rectify, sample
from stepdpo.steps import STEP_HEADER

RIGHT = " 2 + 3 = 5\nStep 2: 5 * 4 = 20\nThe answer is: \\boxed{20}"
WRONG_AT_2 = " 2 + 3 = 5\nStep 2: 5 * 4 = 24\nThe answer is: \\boxed{24}"
FROM_STEP_2 = " 5 * 4 = 20\nThe answer is: \\boxed{20}"


class Forced:
    """Delegates to a real generator, then replaces chosen completions (by what follows the step header, and index)."""

    def __init__(self, inner):
        self.inner = inner
        self.name = f"forced({inner.name})"
        self.prompts = 0

    def generate(self, prompts: list[str], params: SamplingParams, seeds=None) -> list[list[Completion]]:
        self.prompts += len(prompts)
        out = self.inner.generate(prompts, params, seeds)
        for prompt, completions in zip(prompts, out):
            after = prompt.split(STEP_HEADER, 1)[1]
            forced = {"Step 1:": {0: RIGHT, 1: WRONG_AT_2}, "Step 1: 2 + 3 = 5\nStep 2:": {0: FROM_STEP_2}}.get(after, {})
            for index, text in forced.items():
                completions[index] = Completion(text=text, num_tokens=len(text.split()), finish_reason="stop")
        return out


def test_pipeline_end_to_end(tmp_path, tiny_model_dir):
    gen_config = GeneratorConfig(model=str(tiny_model_dir), dtype="float32", device="cpu", batch_size=32)
    generator = Forced(build_generator(gen_config))
    fmt = prompt_format(gen_config)
    rd = RunDir(tmp_path / "run").ensure()
    problems = [Problem(id=f"toy-{i}", question=f"Take 2 + 3, then multiply by 4. (version {i})", answer="20", source="toy:train")
                for i in range(2)]
    sample.save_problems(rd.problems("train"), problems)
    by_id = sample.read_problems(rd)

    sample_config = sample.SampleConfig(k=4, max_new_tokens=8, run_dir=str(rd.root), generator=gen_config)
    samples = sample.run(sample_config, problems, generator, fmt, RecordStore(rd.samples, Sample))
    assert len(samples) == 8
    assert [s.correct for s in samples if s.id.endswith("#0")] == [True, True]
    assert not any(s.correct for s in samples if not s.id.endswith("#0"))

    locate_config = locate.LocateConfig(localizer="rollout", rollout=RolloutConfig(search="binary", rollouts_per_prefix=4, max_new_tokens=8),
                                        run_dir=str(rd.root), generator=gen_config)
    localizer = locate.build_localizer(locate_config, generator, fmt)
    located = locate.run(locate_config, by_id, samples, localizer, RecordStore(rd.located, LocatedError, key="sample_id"))
    assert len(located) == 6 and all(x.status == "ok" for x in located)
    forced_wrong = {x.sample_id: x for x in located if x.sample_id.endswith("#1")}
    for x in forced_wrong.values():  # prefix 'Step 1: 2 + 3 = 5' is alive (a forced right rollout), the sample itself is dead
        assert x.first_wrong_step == 2 and x.rollouts == 4 and x.evidence["prefix_stats"] == {"1": [1, 4]}
    for x in located:
        if x.sample_id not in forced_wrong:
            steps = next(s for s in samples if s.id == x.sample_id).steps
            assert 1 <= x.first_wrong_step <= len(steps)

    rectify_config = rectify.RectifyConfig(r=4, max_new_tokens=8, run_dir=str(rd.root), generator=gen_config)
    samples_by_id = {s.id: s for s in samples}
    rectified = rectify.run(rectify_config, by_id, samples_by_id, located, generator, fmt,
                            RecordStore(rd.rectified, Rectification, key="sample_id"))
    assert len(rectified) == 6
    for rect in rectified:
        if rect.sample_id in forced_wrong:
            assert rect.chosen == ["Step 2: 5 * 4 = 20\nThe answer is: \\boxed{20}"]
            assert rect.rejected == "Step 2: 5 * 4 = 24\nThe answer is: \\boxed{24}"

    # A rerun of every stage finds its work done and generates nothing.
    before = generator.prompts
    sample.run(sample_config, problems, generator, fmt, RecordStore(rd.samples, Sample))
    locate.run(locate_config, by_id, samples, localizer, RecordStore(rd.located, LocatedError, key="sample_id"))
    rectify.run(rectify_config, by_id, samples_by_id, located, generator, fmt, RecordStore(rd.rectified, Rectification, key="sample_id"))
    assert generator.prompts == before

    assert pairs.command(pairs.PairsConfig(run_dir=str(rd.root))) == 0
    step_pairs = RecordStore(rd.pairs / "step_pairs.jsonl", StepPair).records()
    assert {p.sample_id for p in step_pairs} >= set(forced_wrong)
    for pair in step_pairs:
        original = samples_by_id[pair.sample_id]
        assert pair.initial_reason_steps.startswith(STEP_HEADER)
        assert original.response.startswith(pair.initial_reason_steps[len(STEP_HEADER):] + pair.rejected)
        assert pair.chosen != pair.rejected and pair.answer == "20" and pair.dataset == "toy:train"
    dpo = RecordStore(rd.pairs / "dpo_pairs.jsonl", StepPair).records()
    assert len(dpo) == 2 and all(p.kind == "dpo" and p.initial_reason_steps == STEP_HEADER for p in dpo)
    assert len(datasets.load_from_disk(str(rd.pairs / "hf" / "step_pairs"))) == len(step_pairs)
    assert len(datasets.load_dataset("parquet", data_files=str(rd.pairs / "dpo_pairs.parquet"), split="train",
                                     cache_dir=str(tmp_path / "cache"))) == 2
    funnel = json.loads(rd.funnel("pairs").read_text())
    assert funnel["records_in"] == 6 and funnel["records_out"] == len(step_pairs)
