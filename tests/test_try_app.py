"""`stepdpo try`: which models a run directory offers, how each answer is judged, and the page in a real browser.

The browser test starts the page on a free local port with two tiny random models
(a run directory's SFT and Step-DPO models) and a model path that does not exist,
drives it in headless Chromium through Playwright (Debian's chromium binary, which
.ci/install-chromium installs), and writes a screenshot (to $STEPDPO_TRY_SCREENSHOT
when set; the README's screenshot comes from bench/try_screenshot.py).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from stepdpo.errors import ConfigError
from stepdpo.generation.base import Completion, GeneratorConfig, SamplingParams
from stepdpo.problems import load_problems
from stepdpo.steps import PromptFormat
from stepdpo.tryout import TryConfig, build, check_config
from stepdpo.tryout.models import ModelSlot, expand_models, solve

SET = "synthetic:test?n=6&min_steps=2&max_steps=3&difficulty=0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def second_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with every weight nudged: a second model that answers differently."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    target = tmp_path_factory.mktemp("tiny-llama-2")
    model.save_pretrained(target)
    for item in Path(tiny_model_dir).iterdir():
        if not (target / item.name).exists():
            shutil.copy(item, target / item.name)
    return target


def make_run(root: Path, sft_model: Path | None, trained: dict[str, Path], config_model: str | None = "smollm2-135m") -> Path:
    """A run directory as `stepdpo run` leaves it, the models linked in."""
    root.mkdir(parents=True)
    if config_model:
        (root / "config.yaml").write_text(f"model: {config_model}\nseed: 0\n", encoding="utf-8")
    if sft_model:
        (root / "sft").mkdir()
        (root / "sft" / "model").symlink_to(sft_model)
    for method, model in trained.items():
        (root / "train" / method).mkdir(parents=True)
        (root / "train" / method / "final").symlink_to(model)
    (root / "train" / "dpo" / "checkpoint-1").mkdir(parents=True)  # an unfinished run has no final/: not offered
    return root


def test_a_run_directory_offers_its_starting_and_trained_models(tmp_path, tiny_model_dir, second_model_dir):
    run = make_run(tmp_path / "run", tiny_model_dir, {"step-dpo": second_model_dir, "scdpo": tiny_model_dir})
    assert expand_models([str(run)], []) == [("sft", str(run / "sft/model")), ("step-dpo", str(run / "train/step-dpo/final")),
                                              ("scdpo", str(run / "train/scdpo/final"))]
    no_sft = make_run(tmp_path / "no-sft", None, {"dpo-x": second_model_dir}, config_model="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert expand_models([str(no_sft), str(tiny_model_dir)], ["r", "tiny"]) == [
        ("r/base", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("r/dpo-x", str(no_sft / "train/dpo-x/final")), ("tiny", str(tiny_model_dir))]
    with pytest.raises(ConfigError, match="without models"):
        expand_models([str(make_run(tmp_path / "empty", None, {}, config_model=None))], [])
    with pytest.raises(ConfigError, match="1 names for 2 models"):
        expand_models(["a/m", "b/m"], ["x"])
    with pytest.raises(ConfigError, match="two models are labelled x/m"):
        expand_models(["x/m", "x/m"], [])
    with pytest.raises(ConfigError, match="at least one"):
        check_config(TryConfig(models=[]))


def test_a_bad_model_path_is_a_message_not_an_exception(tmp_path):
    slot = ModelSlot.load("gone", str(tmp_path / "no-such-model"), GeneratorConfig(device="cpu"))
    assert slot.generator is None and "no-such-model: model path does not exist" in slot.error
    with pytest.raises(ConfigError, match="no model could be loaded: .*no-such-model: model path does not exist"):
        build(TryConfig(models=[str(tmp_path / "no-such-model")]))


@dataclass
class _Canned:
    """A generator double answering every prompt with one fixed completion (or raising)."""

    text: str
    finish_reason: str = "stop"
    fail: bool = False
    name: str = "canned"

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[Completion]]:
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        return [[Completion(self.text, len(self.text.split()), self.finish_reason)] for _ in prompts]


def _slot(label: str, generator: _Canned) -> ModelSlot:
    return ModelSlot(label, f"models/{label}", generator=generator, prompter=PromptFormat(style="plain"))


def test_each_answer_is_judged_and_a_failing_model_does_not_hide_the_others():
    problem = load_problems(SET)[0]
    values = problem.metadata["step_values"]
    right = "".join(f" so it is {v}.\nStep {i + 2}:" for i, v in enumerate(values[:-1])) + f" so it is {values[-1]}.\nThe answer is: \\boxed{{{problem.answer}}}"
    slots = [_slot("right", _Canned(right)), _slot("cut", _Canned(f" so it is {int(values[0]) + 1} and then", "length")),
             _slot("broken", _Canned("", fail=True)), ModelSlot("missing", "nowhere", error="nowhere: model path does not exist")]
    answers = solve(slots, problem.question, problem.answer, problem, SamplingParams(max_new_tokens=8))
    assert [a.label for a in answers] == ["right", "cut", "broken", "missing"]
    good, cut, broken, missing = answers
    assert good.solution.correct and good.solution.step_truth and good.solution.first_wrong_step is None
    assert [s.status for s in good.solution.steps] == ["right"] * len(values)
    assert cut.solution.first_wrong_step == 1 and not cut.solution.has_final_answer and "cut off at the token limit" in cut.solution.notes
    assert broken.error == "generation failed: CUDA out of memory" and missing.error == "nowhere: model path does not exist"
    typed = solve(slots[:1], problem.question, None, None, SamplingParams(max_new_tokens=8))[0].solution
    assert not typed.step_truth and not typed.correct and {s.status for s in typed.steps} == {"unchecked"}


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the page test needs Debian's chromium: run .ci/install-chromium (as root) or apt-get install chromium"
    return path


@pytest.mark.slow
def test_page_in_headless_chromium_shows_every_model_side_by_side(tmp_path, tiny_model_dir, second_model_dir):
    from playwright.sync_api import expect, sync_playwright

    run = make_run(tmp_path / "run", tiny_model_dir, {"step-dpo": second_model_dir})
    bad = str(tmp_path / "no-such-model")
    config = TryConfig(models=[str(run), bad], names=["run", "typo"], data=[SET], max_new_tokens=24, port=0,
                       generator=GeneratorConfig(device="cpu", dtype="float32", batch_size=1))
    page_app, slots = build(config)
    assert [(s.label, s.error is None) for s in slots] == [("run/sft", True), ("run/step-dpo", True), ("typo", False)]
    from stepdpo.tryout.page import launch

    url = launch(page_app, "127.0.0.1", 0, block=False)
    problem = load_problems(SET)[1]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            expect(page.get_by_text("typo").first).to_be_visible(timeout=30_000)
            # An empty problem: a message, not a stack trace.
            page.locator("#solve").click()
            expect(page.locator("#answers")).to_contain_text("The problem is empty", timeout=30_000)
            # Pick a problem from the set: the question and its gold answer fill in.
            page.locator("#set input").click()
            page.get_by_role("option", name=SET).click()
            page.locator("#problem input").click()
            page.get_by_role("option", name=f"2. {problem.question[:80]}").click()
            expect(page.locator("#question textarea")).to_have_value(problem.question, timeout=30_000)
            expect(page.locator("#gold textarea")).to_have_value(problem.answer)
            page.locator("#solve").click()
            columns = page.locator("#answers .try-model")
            expect(columns).to_have_count(3, timeout=120_000)
            for index, label in enumerate(["run/sft", "run/step-dpo"]):
                column = columns.nth(index)
                expect(column.locator("h3")).to_have_text(label)
                assert column.locator(".step").count() >= 1
                expect(column.locator(".step").first).to_contain_text("Step 1:")
                expect(column.locator(".verdict")).to_contain_text(f"gold {problem.answer}")  # random weights: wrong, graded
                expect(column.locator(".badge")).to_have_text("first wrong step")
            expect(columns.nth(2).locator(".try-error")).to_contain_text("no-such-model: model path does not exist")
            expect(page.locator("#answers")).to_contain_text("Steps are judged against the problem's known intermediate values")
            shot = Path(os.environ.get("STEPDPO_TRY_SCREENSHOT") or tmp_path / "try.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # A typed set that does not exist: a message naming it, not a stack trace.
            page.locator("#set input").fill("nowhere/problems.jsonl")
            page.locator("#set input").press("Enter")
            expect(page.locator("#answers .try-error").first).to_contain_text("nowhere/problems.jsonl", timeout=30_000)
            browser.close()
    finally:
        page_app.close()
    png = shot.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000


def test_cli_takes_run_dirs_and_models_positionally(tmp_path):
    from stepdpo.config import parse_cli

    config = parse_cli(TryConfig, [str(tmp_path / "run"), "smollm2-135m", "--names", "run", "base", "--port", "0", "--data", SET],
                       prog="stepdpo try")
    assert (config.models, config.names, config.port, config.data) == ([str(tmp_path / "run"), "smollm2-135m"], ["run", "base"], 0, [SET])
