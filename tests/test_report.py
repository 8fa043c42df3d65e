"""`stepdpo report`: a fake but realistic run directory, rendered and checked.

The fixtures below write the files the other stages write (config.yaml, eval
results in several plausible shapes, trainer metrics in both our and the
transformers Trainer key style, funnels, located errors, step pairs), then the
report is checked for self-containment, sections, escaping and partial runs,
and finally rendered in headless Chromium.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import random
import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from stepdpo.cli import main as cli_main
from stepdpo.config import parse_cli
from stepdpo.errors import ConfigError
from stepdpo.grading import extract_answer
from stepdpo.problems import load_problems
from stepdpo.records import LocatedError, Problem, StepPair, record_to_dict
from stepdpo.report import ReportConfig, run
from stepdpo.metrics import wilson_interval
from stepdpo.report.collect import EvalSet, collect, normalize_metric_row, parse_eval_results
from stepdpo.report.markdown import fenced, md_escape
from stepdpo.report.plots import method_colours
from stepdpo.report.tables import MISSING, eval_table, short_set_names, word_diff
from stepdpo.step_truth import judge_solution, step_values_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert('pwned')</script> & <img src=http://evil.example/x.png> ``` `"


# ----------------------------------------------------------------------------- fixtures


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _funnel(root: Path, stage: str, records_in: int, records_out: int, dropped: dict | None = None, wall_s: float | None = None) -> None:
    extra = {"wall_s": wall_s} if wall_s is not None else None
    _write_json(root / "funnel" / f"{stage}.json", {"stage": stage, "records_in": records_in, "records_out": records_out, "dropped": dropped, "extra": extra})


def _pair(i: int, rng: random.Random, text: str | None = None) -> StepPair:
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    prefix = f"Let's think step by step.\nStep 1: Tom has {a} apples and buys {b} more.\n"
    chosen = f"Step 2: So he has {a} + {b} = {a + b} apples.\n"
    rejected = f"Step 2: So he has {a} * {b} = {a * b} apples.\n" if text is None else f"Step 2: {text}\n"
    return StepPair(
        id=f"synthetic-{i:04d}#3@2",
        dataset="synthetic:2step",
        prompt=f"Tom has {a} apples and buys {b} more. How many apples does he have?",
        initial_reason_steps=prefix,
        chosen=chosen,
        rejected=rejected,
        full_chosen=chosen + f"The answer is: \\boxed{{{a + b}}}",
        full_rejected=rejected + f"The answer is: \\boxed{{{a * b}}}",
        answer=str(a + b),
        problem_id=f"synthetic-{i:04d}",
        sample_id=f"synthetic-{i:04d}#3",
        step_index=2,
        localizer="rollout-binary",
        provenance={"rectify_tried": 20},
    )


def make_full_run(root: Path) -> Path:
    """A run that went through every stage: the files as the stages write them."""
    rng = random.Random(7)
    root.mkdir(parents=True, exist_ok=True)
    config = {
        "model": "smollm2-135m",
        "problems": {"train": "synthetic:2step:400", "test": ["synthetic:2step:test:200", "gsm8k:test[:100]"]},
        "sample": {"k": 8, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 256},
        "locate": {"localizer": "rollout-binary", "rollouts_per_prefix": 8},
        "rectify": {"num_samples": 20, "temperature": 0.8},
        "train": {"methods": ["step-dpo", "dpo"], "beta": 0.4, "learning_rate": 5e-7, "epochs": 2, "lora": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    # Eval results: base as `stepdpo eval` writes it; two looser shapes (a list without CI, one flat set in percent).
    per_problem = {f"synthetic-t{i:03d}": i < 62 for i in range(200)}
    _write_json(root / "eval/base/results.json", {
        "model": "smollm2-135m", "fingerprint": "abc123", "generator": "hf", "settings": {"n": 8, "ks": [1, 8]},
        "wall_time_s": 402.0, "load_average": [1.0, 1.0, 1.0], "created": "2026-11-23T09:00:00+0000",
        "sets": {
            "synthetic:2step:test": {"problems": 200, "samples_per_problem": 8, "accuracy": 0.31, "correct": 62, "total": 200,
                                      "ci_low": 0.2495, "ci_high": 0.3776, "pass_at_k": {"1": 0.31, "8": 0.62}, "maj_at_k": {"1": 0.31, "8": 0.35},
                                      "final_answer_rate": 0.9, "wall_time_s": 300.0, "breakdown": {}, "per_problem": per_problem},
            "gsm8k:test[:100]": {"problems": 100, "accuracy": 0.04, "correct": 4, "total": 100, "ci_low": 0.0157, "ci_high": 0.0984,
                                 "pass_at_k": {"1": 0.04}, "maj_at_k": {"1": 0.04}, "breakdown": {}, "per_problem": {}},
        },
    })
    _write_json(root / "eval/step-dpo/results.json", {
        "model": "run/train/step-dpo/final",
        "results": [
            {"test_set": "synthetic:2step:test", "accuracy": 0.395, "num_problems": 200, "correct": 79, "pass@8": 0.7, "maj@8": 0.44},
            {"test_set": "gsm8k:test[:100]", "accuracy": 0.06, "num_problems": 100, "correct": 6},
        ],
    })
    _write_json(root / "eval/dpo/results.json", {"test_set": "synthetic:2step:test", "accuracy": 34.5, "n": 200, "correct": 69})
    # As `stepdpo compare RUN/eval/base RUN/eval/step-dpo --output RUN/compare-base-step-dpo.json` writes it.
    _write_json(root / "compare-base-step-dpo.json", {
        "rows": [
            {"set": "synthetic:2step:test", "problems": 200, "only_in_a": 0, "only_in_b": 0, "accuracy_a": 0.31, "accuracy_b": 0.395,
             "diff": 0.085, "ci_low": 0.03, "ci_high": 0.14, "a_only_right": 9, "b_only_right": 26, "p_value": 0.0041, "verdict": "B better"},
            {"set": "gsm8k:test[:100]", "problems": 100, "only_in_a": 0, "only_in_b": 0, "accuracy_a": 0.04, "accuracy_b": 0.06,
             "diff": 0.02, "ci_low": -0.03, "ci_high": 0.07, "a_only_right": 2, "b_only_right": 4, "p_value": 0.48, "verdict": "noise"},
        ],
        "sets_only_in_a": [], "sets_only_in_b": [],
        "run_a": {"path": str(root / "eval/base"), "model": "smollm2-135m", "fingerprint": "abc123"},
        "run_b": {"path": str(root / "eval/step-dpo/results.json"), "model": "run/train/step-dpo/final", "fingerprint": "def456"},
        "settings_differ": {}, "bootstrap_samples": 10000, "seed": 0, "alpha": 0.05,
    })

    # Trainer metrics: ours (split key) for Step-DPO, transformers Trainer style (eval_ prefix) for DPO.
    step_rows, dpo_rows = [], []
    for step in range(10, 210, 10):
        t = step / 200
        step_rows.append({"step": step, "split": "train", "loss": 0.69 - 0.3 * t, "rewards/chosen": 0.1 * t, "rewards/rejected": -1.2 * t, "rewards/margins": 1.3 * t, "rewards/accuracies": 0.5 + 0.4 * t, "learning_rate": 5e-7})
        dpo_rows.append({"step": step, "loss": 0.69 - 0.2 * t, "rewards/chosen": -0.2 * t, "rewards/rejected": -0.8 * t, "rewards/margins": 0.6 * t, "rewards/accuracies": 0.5 + 0.25 * t, "learning_rate": 5e-7, "epoch": t * 2})
        if step % 40 == 0:
            step_rows.append({"step": step, "split": "eval", "loss": 0.69 - 0.25 * t, "rewards/chosen": 0.05 * t, "rewards/rejected": -1.1 * t, "rewards/margins": 1.15 * t + 0.02 * rng.random(), "rewards/accuracies": 0.5 + 0.38 * t})
            margin = 0.5 * (1 - math.exp(-4 * t))  # DPO's margin plateaus (the paper's Fig. 2)
            dpo_rows.append({"step": step, "eval_loss": 0.66, "eval_rewards/chosen": -0.3 * t, "eval_rewards/rejected": -0.3 * t - margin, "eval_rewards/margins": margin, "eval_rewards/accuracies": 0.5 + 0.2 * t, "epoch": t * 2})
    _write_jsonl(root / "train/step-dpo/metrics.jsonl", step_rows)
    _write_jsonl(root / "train/dpo/metrics.jsonl", dpo_rows)

    # `stepdpo run` timed the stages of its last invocation (here: resumed at rectify).
    _write_json(root / "timings.json", {"rectify": 3020.0, "pairs": 5.1, "train-step-dpo": 2650.3})
    _funnel(root, "sample", 400, 3200, wall_s=1840.2)
    _funnel(root, "locate", 2208, 1902, {"no_wrong_step": 211, "unparseable": 60, "failed: timeout": 35}, wall_s=5230.0)
    _funnel(root, "rectify", 1902, 1240, {"no_continuation_reached_gold": 662}, wall_s=3011.5)
    _funnel(root, "pairs", 1240, 1180, {"duplicate": 48, "chosen_equals_rejected": 12}, wall_s=4.2)
    _funnel(root, "train-step-dpo", 1180, 1180, wall_s=2622.0)
    _funnel(root, "train-dpo", 1180, 1180, wall_s=2410.0)
    _funnel(root, "eval-base", 300, 300)  # `stepdpo eval` keeps its wall time in results.json
    _funnel(root, "eval-step-dpo", 300, 300, wall_s=398.0)
    _funnel(root, "sft", 2000, 2000, wall_s=900.0)  # written last: the report must still put it first

    located = []
    for i in range(80):
        status = rng.choices(["ok", "no_wrong_step", "unparseable", "failed: rollout timeout"], [0.8, 0.1, 0.05, 0.05])[0]
        step = min(7, max(1, int(rng.expovariate(0.5)) + 1)) if status == "ok" else None
        rollouts = rng.randint(8, 48) if status != "unparseable" else 0
        located.append(record_to_dict(LocatedError(
            sample_id=f"synthetic-{i:04d}#{i % 8}", problem_id=f"synthetic-{i:04d}", first_wrong_step=step,
            localizer="rollout-binary", confidence=round(rng.uniform(0.5, 1.0), 3) if step else None,
            rollouts=rollouts, localizer_tokens=rollouts * rng.randint(60, 140), status=status,
        )))
    _write_jsonl(root / "located.jsonl", located)

    pairs = [_pair(i, rng) for i in range(20)]
    pairs[1] = _pair(1, rng, text=EVIL)
    _write_jsonl(root / "pairs/step_pairs.jsonl", [record_to_dict(p) for p in pairs])
    add_eval_samples(root)
    return root


FLIP_SET = "synthetic:test?n=8&min_steps=2&max_steps=3&difficulty=0"


def _solution(problem: Problem, wrong_from: int | None = None, stop_after: int | None = None) -> str:
    """A step-format response stating each true value, off by one from step ``wrong_from`` on; ``stop_after``
    steps only, the last value given as the answer (a solution that concludes too early)."""
    values = [int(v) for v in problem.metadata["step_values"]]
    values = [v + 1 if wrong_from and i >= wrong_from else v for i, v in enumerate(values, start=1)][:stop_after]
    steps = "".join(f"Step {i}: so the count is {v}.\n" for i, v in enumerate(values, start=1))
    return steps + f"The answer is: \\boxed{{{values[-1]}}}"


def add_eval_samples(root: Path) -> None:
    """samples.jsonl of base and step-dpo on a real synthetic set: step-dpo fixes problems 4-6 and breaks 2, 3 and 7
    (2 and 3 wrong from step 1; 7 stops after step 1), and one base response is cut at the token limit."""
    problems = load_problems(FLIP_SET)
    plans = {"base": {4: {"wrong_from": 2}, 5: {"wrong_from": 1}, 6: {"wrong_from": 2}, 7: {}},
             "step-dpo": {2: {"wrong_from": 1}, 3: {"wrong_from": 1}, 7: {"stop_after": 1}}}
    for name, plan in plans.items():
        rows = []
        for i, problem in enumerate(problems):
            response = _solution(problem, **plan.get(i, {}))
            finish = "stop"
            if name == "base" and i == 7:
                response, finish = "Step 1: so the count is", "length"
            predicted = extract_answer(response)
            rows.append({"id": f"{FLIP_SET}|{problem.id}#0", "set": FLIP_SET, "problem_id": problem.id, "index": 0, "prompt": "p",
                         "response": response, "predicted": predicted, "gold": problem.answer, "correct": predicted == problem.answer,
                         "has_final_answer": finish == "stop", "num_tokens": len(response.split()), "finish_reason": finish, "metadata": {}})
        _write_jsonl(root / f"eval/{name}/samples.jsonl", rows)


class _Tags(HTMLParser):
    """Collects every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def _decode_png(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:60]
    png = base64.b64decode(uri[len(prefix):], validate=True)
    assert png.startswith(PNG_SIGNATURE)
    return png


class _Cells(HTMLParser):
    """Every <table> of a page as rows of cell texts (header row first)."""

    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    parser = _Cells()
    parser.feed(page)
    return [[[" ".join(cell.splitlines()) for cell in row] for row in table] for table in parser.tables]


def markdown_tables(md: str) -> list[list[list[str]]]:
    """Every pipe table of the Markdown as rows of unescaped cell texts (header row first, the |---| line dropped)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in md.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            if not previous.startswith("|"):
                tables.append([])
            cells = re.split(r"(?<!\\) \| ", line[2:-2])
            tables[-1].append([re.sub(r"\\(.)", r"\1", cell) for cell in cells])
        previous = line
    return tables


def assert_self_contained(page: str) -> int:
    """No scripts, no stylesheets or images from elsewhere; every <img> an embedded PNG. Returns the image count."""
    import matplotlib.image

    tags = _tags(page)
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed")]
    images = 0
    for tag, attrs in tags:
        for name in ("src", "href", "srcset", "action", "poster"):
            value = attrs.get(name) or ""
            assert not value.lower().startswith(("http:", "https:", "//", "javascript:")), f"<{tag} {name}={value[:60]}>"
        assert not any(name.startswith("on") for name in attrs), f"event handler on <{tag}>"
        if tag == "img":
            pixels = matplotlib.image.imread(io.BytesIO(_decode_png(attrs["src"] or "")), format="png")
            assert pixels.shape[0] > 50 and pixels.shape[1] > 50
            images += 1
        if tag == "a":  # an anchor on the page, or the flips list written beside it
            assert re.fullmatch(r"#[\w-]+|flips-[\w.-]+\.jsonl", attrs.get("href") or ""), attrs
    assert "url(" not in page.split("</style>")[0]
    return images


# ----------------------------------------------------------------------------- pure pieces


def test_eval_results_shapes(tmp_path):
    path = tmp_path / "results.json"
    flat = parse_eval_results("dpo", {"test_set": "t", "accuracy": 34.5, "n": 200, "correct": 69}, path)
    assert len(flat) == 1 and flat[0].accuracy == pytest.approx(0.345) and flat[0].ci_source == "wilson"
    assert flat[0].ci_low == pytest.approx(wilson_interval(69, 200)[0])
    mapped = parse_eval_results("base", {"sets": {"a": {"accuracy": 0.5, "n": 10, "correct": 5, "ci": [0.2, 0.8]}}}, path)
    assert (mapped[0].test_set, mapped[0].ci_low, mapped[0].ci_high, mapped[0].ci_source) == ("a", 0.2, 0.8, "reported")
    listed = parse_eval_results("x", [{"name": "b", "correct": 3, "num_problems": 4}], path)
    assert listed[0].accuracy == 0.75 and listed[0].total == 4
    real = parse_eval_results("base", {"sets": {"s": {"problems": 4, "accuracy": 0.5, "correct": 2, "total": 4, "ci_low": 0.15, "ci_high": 0.85,
                                                      "pass_at_k": {"1": 0.5, "4": 0.75}, "maj_at_k": {"1": 0.5, "4": 0.5}, "per_problem": {}}}}, path)
    assert real[0].extra == {"pass@4": 0.75, "maj@4": 0.5} and real[0].total == 4


def test_json_inputs_that_are_not_objects_are_named_and_intervals_read_in_every_shape(tmp_path):
    _write_json(tmp_path / "compare-a.json", {"a": "base", "b": "dpo", "diff": 0.05, "ci": {"low": 0.01, "high": 0.09}, "p_value": 0.02})
    _write_json(tmp_path / "compare-b.json", {"a": "base", "b": "sft", "diff": 0.05, "ci_low": 0.02, "ci_high": 0.08, "ci": [0.0, 1.0]})
    _write_json(tmp_path / "compare-c.json", [1, 2])
    _write_json(tmp_path / "funnel/sample.json", ["not", "a", "funnel"])
    _write_json(tmp_path / "timings.json", 3)
    data = collect(tmp_path)
    assert [(c.b, c.ci_low, c.ci_high) for c in data.comparisons] == [("dpo", 0.01, 0.09), ("sft", 0.02, 0.08)]
    assert len(data.compare_errors) == 1 and "compare-c.json: expected a JSON object, got list" in data.compare_errors[0]
    assert data.funnels == [] and "sample.json: expected a JSON object, got list" in data.funnel_errors[0]
    assert data.header.wall_error is not None and "timings.json: expected a JSON object, got int" in data.header.wall_error
    assert (data.located, data.located_error, data.pairs, data.pairs_errors, data.flips) == (None, None, None, [], {})


def test_metric_rows_accept_trainer_style_keys():
    split, step, metrics = normalize_metric_row({"eval_rewards/margins": 0.4, "eval_rewards/accuracies": 0.7, "step": 30, "epoch": 1.0}, 5)
    assert (split, step, metrics) == ("eval", 30.0, {"margins": 0.4, "accuracies": 0.7})
    split, step, metrics = normalize_metric_row({"split": "train", "loss": 0.6, "rewards/chosen": 0.1}, 2)
    assert (split, step, metrics) == ("train", 2.0, {"loss": 0.6, "chosen": 0.1})


def test_word_diff_marks_only_changed_words_and_keeps_text():
    rejected, chosen = word_diff("Step 2: So he has 3 * 4 = 12 apples.\n", "Step 2: So he has 3 + 4 = 7 apples.\n")
    assert "".join(t for _, t in rejected) == "Step 2: So he has 3 * 4 = 12 apples.\n"
    assert "".join(t for _, t in chosen) == "Step 2: So he has 3 + 4 = 7 apples.\n"
    assert [t for k, t in rejected if k == "del"] == ["*", "12"]  # one change per word: "4 =" matched between them
    assert [t for k, t in chosen if k == "ins"] == ["+", "7"]


def test_fence_cannot_be_closed_by_model_text():
    block = fenced("a ```` b")
    assert block.startswith("`````text\n") and block.endswith("\n`````\n")


# ----------------------------------------------------------------------------- whole report


def test_full_report_is_self_contained_with_every_section(tmp_path):
    root = make_full_run(tmp_path / "run")
    paths = run(ReportConfig(run_dir=str(root)))
    assert paths.html == root / "report" / "report.html"
    page = paths.html.read_text(encoding="utf-8")
    assert assert_self_contained(page) == 6
    for section in ("overview", "accuracy", "flips", "lengths", "flawed", "training", "funnel", "localization", "pairs"):
        assert f'<section id="{section}">' in page
    for missing in MISSING.values():
        assert html.escape(missing) not in page
    # Header: model and wall times; accuracy table: reported CI, Wilson CI, percent input normalized.
    assert "smollm2-135m" in page and "87.2 min" in page and "4.68 h" in page  # locate 5230 s; total
    assert "62 / 200" in page and "31.0%" in page and "[24.9%, 37.8%]" in page
    assert "69 / 200" in page and "34.5%" in page and "wilson" in page
    assert "+8.5 pp" in page and "0.0041" in page and "[-3.0, +7.0]" in page and "0.48" in page and "B better" in page
    assert "<td>base</td><td>step-dpo</td>" in page  # compare sides named from their eval folders
    assert "<td>eval-base</td><td>6.7 min</td>" in page  # eval wall time from results.json
    assert "<td>pairs</td><td>5.1 s</td>" in page and "<td>sample</td><td>30.7 min</td>" in page  # timings.json, then funnels
    # Funnel in pipeline order even though sft.json was written last.
    order = [page.index(f"<td>{stage}</td>") for stage in ("sft", "sample", "locate", "rectify", "pairs", "train-dpo", "train-step-dpo", "eval-base")]
    assert order == sorted(order)
    assert "failed: timeout: 35" in page
    # Pairs: a sample of 12 of 20, diff marked.
    assert page.count('<details class="pair m-step-dpo s-2"') == 12 and "step-dpo: 12 of 20" in page
    assert "<del>*</del>" in page and "<ins>+</ins>" in page
    # Markdown beside it, with the figures as files.
    md = paths.markdown.read_text(encoding="utf-8")
    assert set(paths.images) == {"accuracy", "lengths", "flawed", "training", "funnel", "localization"}
    for key, image in paths.images.items():
        assert image.parent == paths.markdown.parent and image.read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({image.name})" in md
    assert "## Pipeline funnel" in md and "| sft | 2000 | 2000 |" in md


def add_new_methods(root: Path) -> None:
    """scdpo and judge-free evaluated and trained, and the locate funnel's agreement with ground truth, as those stages write them."""
    for name, correct in (("judge-free", 75), ("scdpo", 71)):
        _write_json(root / f"eval/{name}/results.json", {"model": f"run/train/{name}/final", "sets": {
            "synthetic:2step:test": {"problems": 200, "accuracy": correct / 200, "correct": correct, "total": 200, "pass_at_k": {"1": correct / 200}}}})
        _write_jsonl(root / f"train/{name}/metrics.jsonl", [
            {"step": step, "split": "train", "loss": 0.6, "rewards/margins": 0.1 * step, "rewards/accuracies": 0.6} for step in (10, 20, 30)])
    locate = json.loads((root / "funnel/locate.json").read_text(encoding="utf-8"))
    locate["extra"].update({"localizer": "rollout", "vs_exact_compared": 57, "vs_exact_exact": 0.6234, "vs_exact_within_one": 0.9,
                            "vs_exact_earlier": 0.2, "vs_exact_later": 0.1754})
    _write_json(root / "funnel/locate.json", locate)


def add_budget_runs(root: Path) -> None:
    """A run configured with pair budgets 100, 300 and 3000 for step-dpo and dpo (each has 1180 pairs, funnel/train-<method>.json):
    step-dpo@100, step-dpo@300 and dpo@100 evaluated, dpo@300 not yet, 3000 not trained (more than there are)."""
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    config.update(pair_budgets=[300, 100, 3000], budget_methods=["step-dpo", "dpo"])
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for name, correct in (("step-dpo@100", 66), ("step-dpo@300", 72), ("dpo@100", 60)):
        _write_json(root / f"eval/{name}/results.json", {"model": f"run/train/{name}/final", "sets": {
            "synthetic:2step:test": {"problems": 200, "accuracy": correct / 200, "correct": correct, "total": 200}}})
        _write_jsonl(root / f"eval/{name}/samples.jsonl", [])  # not read: budget models have their own section


def test_html_and_markdown_tables_carry_the_same_cells(tmp_path):
    root = make_full_run(tmp_path / "run")
    add_new_methods(root)
    paths = run(ReportConfig(run_dir=str(root)))
    page = paths.html.read_text(encoding="utf-8")
    md = paths.markdown.read_text(encoding="utf-8")
    tables = html_tables(page)
    # wall time, config, accuracy, comparisons, flip counts, completeness, first wrong steps, training, funnel, localizer summary,
    # status counts
    assert len(tables) == 11
    assert tables == markdown_tables(md)
    assert ["problems.test", "['synthetic:2step:test:200', 'gsm8k:test[:100]']"] in tables[1]  # escaped brackets read back
    # The new methods, in METHOD_ORDER after step-dpo, in the accuracy and training tables.
    evaluations = [row[2] for row in tables[2] if row[1] == "synthetic:2step:test"]
    assert evaluations == ["base", "dpo", "step-dpo", "scdpo", "judge-free"]
    assert [row[0] for row in tables[7][1:]] == ["dpo", "step-dpo", "scdpo", "judge-free"]
    line = "agreement with ground truth: 62.3% same step, 90.0% within one (n=57)"
    localization = page[page.index('<section id="localization">'):page.index('<section id="pairs">')]
    assert html.escape(line) in localization
    assert md_escape(line) in md[md.index("## Localization"):md.index("## Preference pairs")]


def test_agreement_line_only_when_locate_recorded_it(tmp_path):
    root = make_full_run(tmp_path / "run")
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    assert "agreement with ground truth" not in page
    add_new_methods(root)
    (root / "located.jsonl").unlink()  # the line comes from the funnel, so it stays beside the missing-file line
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    assert html.escape(MISSING["localization"]) in page and "62.3% same step" in page


def test_known_methods_keep_their_colours_and_others_get_unused_ones():
    names = ["base", "dpo", "step-dpo", "scdpo", "judge-free", "my-method", "other", "third"]
    colours = method_colours(names)
    assert len(set(colours.values())) == len(names)
    assert (colours["scdpo"], colours["judge-free"]) == (method_colours(["scdpo"])["scdpo"], method_colours(["x", "judge-free"])["judge-free"])


def test_model_text_is_escaped(tmp_path):
    root = make_full_run(tmp_path / "run")
    paths = run(ReportConfig(run_dir=str(root), max_pairs=20))
    page = paths.html.read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=http://evil.example/x.png&gt;" in page
    assert assert_self_contained(page) == 6  # the <img> in the text did not become a tag
    md = paths.markdown.read_text(encoding="utf-8")
    assert "````text\nStep 2: <script>" in md  # verbatim, inside a fence longer than the model's ```


def test_partial_run_says_what_is_missing(tmp_path):
    root = tmp_path / "run"
    _funnel(root, "sample", 40, 320, wall_s=12.5)
    _write_jsonl(root / "samples.jsonl", [])
    paths = run(ReportConfig(run_dir=str(root), output=str(tmp_path / "out")))
    assert paths.html == tmp_path / "out" / "report.html"
    page = paths.html.read_text(encoding="utf-8")
    assert assert_self_contained(page) == 1
    for key in ("config", "accuracy", "compare", "training", "localization", "pairs"):
        assert html.escape(MISSING[key]) in page
    assert html.escape(MISSING["funnel"]) not in page and "12.5 s" in page
    assert set(paths.images) == {"funnel"}
    md = paths.markdown.read_text(encoding="utf-8")
    assert md_escape(MISSING["training"]) in md


def test_empty_run_dir_and_missing_dir(tmp_path):
    paths = run(ReportConfig(run_dir=str(tmp_path)))
    page = paths.html.read_text(encoding="utf-8")
    assert assert_self_contained(page) == 0
    assert all(html.escape(line) in page for line in MISSING.values())
    with pytest.raises(ConfigError, match="not found"):
        run(ReportConfig(run_dir=str(tmp_path / "nope")))


def test_unreadable_inputs_are_named_in_their_section(tmp_path):
    root = make_full_run(tmp_path / "run")
    with (root / "located.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"sample_id": "x", "problem_id": "x", "first_wrong_step": "three", "localizer": "judge"}) + "\n")
    (root / "eval/dpo/results.json").write_text("{not json", encoding="utf-8")
    (root / "config.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    assert "located.jsonl:81: field &#x27;first_wrong_step&#x27;" in page
    assert "eval/dpo/results.json:1: malformed JSON" in page
    assert "config.yaml:2: not valid YAML" in page
    assert assert_self_contained(page) == 5  # accuracy (base, step-dpo), lengths, first wrong steps, training, funnel; localization gone
    assert "62 / 200" in page


def test_cli_positional_run_dir_and_yaml_config(tmp_path, capsys):
    root = make_full_run(tmp_path / "run")
    assert cli_main(["report", str(root), "--max_pairs", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (root / "report" / "report.html").read_text(encoding="utf-8").count('<details class="pair ') == 2
    config_file = tmp_path / "report.yaml"
    config_file.write_text(f"run_dir: {root}\nmax_pairs: 5\noutput: {tmp_path / 'o'}\n", encoding="utf-8")
    config = parse_cli(ReportConfig, ["--config", str(config_file)], prog="stepdpo report")
    assert (config.run_dir, config.max_pairs, config.output) == (str(root), 5, str(tmp_path / "o"))


# ----------------------------------------------------------------------------- the browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    root = make_full_run(tmp_path / "run")
    add_budget_runs(root)
    paths = run(ReportConfig(run_dir=str(root)))
    page = paths.html.read_text(encoding="utf-8")
    embedded = assert_self_contained(page)
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    shot = tmp_path / "report.png"
    done = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,3000", paths.html.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 50_000  # a real page, not a blank one
    console = [line for line in done.stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line or ":CONSOLE(" in line]
    assert not console, console
    dom = subprocess.run(base + ["--dump-dom", paths.html.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    dumped = [attrs for tag, attrs in _tags(dom.stdout) if tag == "img"]
    assert len(dumped) == embedded == 7
    for attrs in dumped:
        _decode_png(attrs["src"] or "")
    assert "<script" not in dom.stdout and all(f'id="{key}"' in dom.stdout for key in ("pairs", "flawed", "budgets"))


# ----------------------------------------------------------------------------- what training changed


def test_flips_are_judged_step_by_step_and_listed_in_full(tmp_path):
    root = make_full_run(tmp_path / "run")
    paths = run(ReportConfig(run_dir=str(root)))
    page = paths.html.read_text(encoding="utf-8")
    flips = page[page.index('<section id="flips">'):page.index('<section id="lengths">')]
    assert "synthetic: 3 fixed, 2 broken of 8" in flips and flips.count('<details class="flip ') == 5
    assert html_tables(flips)[0][1] == ["step-dpo", "synthetic", "8", "3", "2", "+1", "steps"]
    lines = [json.loads(line) for line in paths.flips["step-dpo"].read_text(encoding="utf-8").splitlines()]
    assert paths.flips["step-dpo"].name == "flips-step-dpo.jsonl" and paths.flips["step-dpo"].parent == paths.html.parent
    problems = load_problems(FLIP_SET)
    by_id = {line["problem_id"]: line for line in lines}
    assert {p.id: by_id[p.id]["kind"] for p in problems if p.id in by_id} == {
        problems[2].id: "broken", problems[3].id: "broken", problems[4].id: "fixed", problems[5].id: "fixed", problems[6].id: "fixed"}
    fixed = by_id[problems[4].id]
    assert fixed["question"] == problems[4].question and fixed["gold"] == problems[4].answer
    assert fixed["start_solution"]["first_wrong_step"] == 2 and fixed["trained_solution"]["first_wrong_step"] is None
    assert [s["status"] for s in fixed["start_solution"]["steps"]][:2] == ["right", "wrong"]
    assert by_id[problems[2].id]["trained_solution"]["first_wrong_step"] == 1
    assert by_id[problems[5].id]["start_solution"]["first_wrong_step"] == 1
    assert flips.count('<span class="badge">first wrong step</span>') == 5  # one per wrong solution shown
    assert 'href="flips-step-dpo.jsonl"' in flips
    md = paths.markdown.read_text(encoding="utf-8")
    assert "[wrong] Step 2: so the count is" in md and "<- first wrong step" in md


def test_flips_without_step_truth_grade_the_final_answer(tmp_path):
    root = make_full_run(tmp_path / "run")
    for name in ("base", "step-dpo"):
        path = root / f"eval/{name}/samples.jsonl"
        path.write_text(path.read_text(encoding="utf-8").replace(FLIP_SET, "gsm8k:test[:100]"), encoding="utf-8")
    data = collect(root)
    (flip_set,) = data.flips["step-dpo"]
    assert (flip_set.step_truth, len(flip_set.fixed), len(flip_set.broken)) == (False, 3, 2)
    assert all(s.status == "unchecked" for f in flip_set.fixed for s in f.start_solution.steps + f.trained_solution.steps)
    assert all(f.start_solution.first_wrong_step is None and f.question == "" for f in flip_set.fixed)


def test_a_solution_that_stops_early_is_wrong_at_its_last_step():
    problem = load_problems(FLIP_SET)[7]
    judged = judge_solution(_solution(problem, stop_after=1), problem.answer, step_values_of(problem.metadata), finish_reason="stop")
    assert (judged.first_wrong_step, [s.status for s in judged.steps], judged.correct) == (1, ["wrong"], False)
    assert "ends the solution there" in judged.notes[0]
    cut = judge_solution("Step 1: so the count is", problem.answer, step_values_of(problem.metadata), finish_reason="length")
    assert cut.first_wrong_step == 1 and not cut.has_final_answer and cut.notes == ["cut off at the token limit"]
    typed = judge_solution(_solution(problem), None)
    assert not typed.step_truth and not typed.correct and {s.status for s in typed.steps} == {"unchecked"}


def test_completeness_compares_final_answers_and_lengths_with_the_start(tmp_path):
    root = make_full_run(tmp_path / "run")
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    table = next(t for t in html_tables(page) if t[0][:5] == ["set", "evaluation", "responses", "state a final answer", "change"])
    rows = {row[1]: row for row in table[1:] if row[0] == "synthetic"}
    assert rows["base"][3:6] == ["87.5%", "–", "12.5%"] and rows["step-dpo"][3:6] == ["100.0%", "+12.5 pp", "0.0%"]
    # An evaluation without samples falls back on the rates its results.json reports.
    data = collect(root)
    (dpo,) = [r for r in data.completeness if r.evaluation == "dpo"] or [None]
    assert dpo is None  # dpo's results.json reports no final-answer rate
    (root / "eval/base/samples.jsonl").unlink()
    base = [r for r in collect(root).completeness if r.evaluation == "base"]
    assert [(r.test_set, r.final_answer) for r in base] == [("synthetic:2step:test", 0.9)]


def test_first_wrong_step_by_position_per_model(tmp_path):
    """base: 4 right, problems 5 and 7 wrong at step 1 (7 cut at the token limit mid-step), 4 and 6 at step 2;
    step-dpo: 5 right, 2, 3 and 7 wrong at step 1 (7 concludes after one step). A set without step truth is left out."""
    root = make_full_run(tmp_path / "run")
    samples = root / "eval/base/samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    # the same responses on a set without intermediate values, and one more base response cut off after a right step
    extra = [dict(r, set="multiarith:test", id=r["id"].replace(FLIP_SET, "multiarith:test")) for r in rows]
    _write_jsonl(samples, rows + extra)
    paths = run(ReportConfig(run_dir=str(root)))
    page = paths.html.read_text(encoding="utf-8")
    section = page[page.index('<section id="flawed">'):page.index('<section id="training">')]
    (table,) = html_tables(section)
    assert table[0] == ["set", "evaluation", "problems", "right", "first wrong: step 1", "first wrong: step 2", "wrong, no step located",
                        "why none located", "mean first wrong step"]
    assert table[1:] == [["synthetic", "base", "8", "50.0%", "25.0%", "25.0%", "0.0%", "–", "1.5"],
                         ["synthetic", "step-dpo", "8", "62.5%", "37.5%", "0.0%", "0.0%", "–", "1"]]
    assert section.count("<img ") == 1 and "flawed" in paths.images
    md = paths.markdown.read_text(encoding="utf-8")
    assert "## Where errors start: first wrong step by position" in md and "](flawed.png)" in md
    assert "| synthetic | base | 8 | 50.0% | 25.0% | 25.0% | 0.0% | – | 1.5 |" in md
    data = collect(root)
    base = next(r.rates for r in data.flawed_steps if r.evaluation == "base")
    assert (base.first_wrong, base.unlocated, base.right) == ({1: 2, 2: 2}, 0, 4)
    # A base response cut off after a right first step: wrong, no step to blame.
    problems = load_problems(FLIP_SET)
    rows[0].update(response=f"Step 1: so the count is {problems[0].metadata['step_values'][0]}.\n", correct=False, finish_reason="length")
    _write_jsonl(samples, rows)
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    (table,) = html_tables(page[page.index('<section id="flawed">'):page.index('<section id="training">')])
    assert table[1] == ["synthetic", "base", "8", "37.5%", "25.0%", "25.0%", "12.5%", "cut off at the token limit, no wrong step before: 1", "1.5"]


def test_no_step_truth_no_flawed_step_section(tmp_path):
    root = make_full_run(tmp_path / "run")
    for name in ("base", "step-dpo"):
        path = root / f"eval/{name}/samples.jsonl"
        path.write_text(path.read_text(encoding="utf-8").replace(FLIP_SET, "gsm8k:test[:100]"), encoding="utf-8")
    paths = run(ReportConfig(run_dir=str(root)))
    assert html.escape(MISSING["flawed"]) in paths.html.read_text(encoding="utf-8") and "flawed" not in paths.images


def test_accuracy_by_pair_budget(tmp_path):
    root = make_full_run(tmp_path / "run")
    add_budget_runs(root)
    paths = run(ReportConfig(run_dir=str(root)))
    page = paths.html.read_text(encoding="utf-8")
    assert assert_self_contained(page) == 7 and "budgets" in paths.images
    section = page[page.index('<section id="budgets">'):page.index('<section id="flips">')]
    (table,) = html_tables(section)
    assert table[0] == ["set", "evaluation", "method", "pairs", "correct / n", "accuracy", "95% CI", "vs start"]
    assert [row[1:4] + row[5:6] + row[7:] for row in table[1:]] == [
        ["base", "–", "–", "31.0%", "–"],
        ["step-dpo@100", "step-dpo", "100", "33.0%", "+2.0 pp"],
        ["step-dpo@300", "step-dpo", "300", "36.0%", "+5.0 pp"],
        ["step-dpo", "step-dpo", "1180 (all)", "39.5%", "+8.5 pp"],
        ["dpo@100", "dpo", "100", "30.0%", "-1.0 pp"],
        ["dpo", "dpo", "1180 (all)", "34.5%", "+3.5 pp"],
    ]  # gsm8k has no budget's evaluation: no curve
    assert table[2][6] == "[26.9%, 39.8%]"
    for note in ("step-dpo@3000: not trained: step-dpo has 1180 pairs", "dpo@300: configured but not evaluated", "dpo@3000: not trained"):
        assert note in section, note
    md = paths.markdown.read_text(encoding="utf-8")
    assert "## Accuracy by pair budget (data efficiency)" in md and "](budgets.png)" in md
    assert html_tables(page) == markdown_tables(md)
    # The budget models are in the accuracy table, not in its chart, flips or the other per-model sections.
    accuracy = page[page.index('<section id="accuracy">'):page.index('<section id="budgets">')]
    assert "<td>step-dpo@100</td>" in accuracy
    data = collect(root)
    assert not any("@" in name for name in data.flips) and not any("@" in r.evaluation for r in data.completeness + data.flawed_steps)
    without = make_full_run(tmp_path / "plain")
    assert '<section id="budgets">' not in run(ReportConfig(run_dir=str(without))).html.read_text(encoding="utf-8")


def test_a_budget_without_its_full_run_recorded_is_said(tmp_path):
    root = make_full_run(tmp_path / "run")
    add_budget_runs(root)
    (root / "funnel/train-dpo.json").unlink()
    page = run(ReportConfig(run_dir=str(root))).html.read_text(encoding="utf-8")
    section = page[page.index('<section id="budgets">'):page.index('<section id="flips">')]
    assert "dpo: the pairs of its full-data run are not recorded (funnel/train-dpo.json)" in section
    assert "dpo@3000: configured but not evaluated" in section  # whether 3000 is more than dpo has is unknown
    assert "<td>dpo</td><td>dpo</td>" not in section and "<td>dpo@100</td><td>dpo</td>" in section


def test_short_set_names_are_unique_and_the_table_keeps_the_spec():
    specs = ["synthetic:test?n=64&min_steps=2&max_steps=3&difficulty=0", "synthetic:test?n=64&difficulty=1", "multiarith:test",
             "gsm8k:train", "data/my_set.jsonl?question=q", "hf:owner/hard-math:validation"]
    assert short_set_names(specs) == {specs[0]: "synthetic 1", specs[1]: "synthetic 2", specs[2]: "multiarith", specs[3]: "gsm8k train",
                                      specs[4]: "my_set", specs[5]: "hard-math validation"}
    rows = eval_table([EvalSet("base", specs[0], 3, 4, 0.75, None, None, "none")]).rows
    assert rows[0][:3] == ["synthetic", specs[0], "base"]


def test_pairs_sample_every_file_with_why_and_whether_chosen_reaches_gold(tmp_path):
    root = make_full_run(tmp_path / "run")
    rng = random.Random(3)
    dpo = [replace(_pair(i, rng), kind="dpo", step_index=None, localizer="", sample_id="", id=f"dpo-{i}") for i in range(5)]
    dpo[0] = replace(dpo[0], full_chosen="Step 1: no answer here")
    _write_jsonl(root / "pairs/dpo_pairs.jsonl", [record_to_dict(p) for p in dpo])
    located = [json.loads(line) for line in (root / "located.jsonl").read_text(encoding="utf-8").splitlines()]
    located[0].update(sample_id="synthetic-0000#3", first_wrong_step=2, evidence={"2": {"successes": 0, "trials": 8}})
    _write_jsonl(root / "located.jsonl", located)
    data = collect(root, max_pairs=4)
    assert data.pairs.totals == {"dpo": 5, "step-dpo": 20}
    assert [s.method for s in data.pairs.shown] == ["dpo"] * 4 + ["step-dpo"] * 4
    page = run(ReportConfig(run_dir=str(root), max_pairs=20)).html.read_text(encoding="utf-8")
    pairs = page[page.index('<section id="pairs">'):]
    assert pairs.count('<details class="pair m-dpo s-none"') == 5 and pairs.count('<details class="pair m-step-dpo s-2"') == 20
    assert pairs.count("chosen continuation does not reach gold") == 1
    assert "located by <b>rollout-binary</b>" in pairs and "{&quot;2&quot;: {&quot;successes&quot;: 0, &quot;trials&quot;: 8}}" in pairs
    for filter_id in ("pf-m-all", "pf-m-dpo", "pf-m-step-dpo", "pf-s-all", "pf-s-2", "pf-s-none"):
        assert f'id="{filter_id}"' in pairs and f'for="{filter_id}"' in pairs


@pytest.mark.slow
def test_pair_filters_work_in_a_real_browser(tmp_path):
    """The method and step filters are CSS only: clicking their labels in Chromium hides the other pairs."""
    from playwright.sync_api import sync_playwright

    root = make_full_run(tmp_path / "run")
    rng = random.Random(5)
    dpo = [replace(_pair(i, rng), kind="dpo", step_index=None, id=f"dpo-{i}") for i in range(3)]
    _write_jsonl(root / "pairs/dpo_pairs.jsonl", [record_to_dict(p) for p in dpo])
    paths = run(ReportConfig(run_dir=str(root), max_pairs=5))
    chromium = _chromium()
    assert chromium, "needs Debian's chromium: run .ci/install-chromium (as root) or apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(paths.html.as_uri())
        visible = lambda: sum(1 for pair in page.locator("details.pair").all() if pair.is_visible())  # noqa: E731
        assert visible() == 8
        page.locator('label[for="pf-m-dpo"]').click()
        assert visible() == 3
        page.locator('label[for="pf-s-2"]').click()  # dpo pairs have no step index: nothing left
        assert visible() == 0
        page.locator('label[for="pf-m-all"]').click()
        assert visible() == 5
        page.locator('label[for="pf-s-all"]').click()
        assert visible() == 8
        browser.close()
