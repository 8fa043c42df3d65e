"""Screenshot of `stepdpo try` for the README: the page served with the given models, one problem solved.

    python bench/try_screenshot.py RUN_DIR|MODEL ... --names a b --out docs/images/stepdpo-try.png \
        --data 'synthetic:test?n=20&min_steps=2&max_steps=3&difficulty=0' --problem 2 --max-new-tokens 160

Picks the problem in the page's own picker, presses Solve, waits for every model's column
and writes a full-page PNG. Needs the ui and test extras and Debian's chromium
(.ci/install-chromium). Redo it when better models are at hand (e.g. the organism's run).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from stepdpo.generation.base import GeneratorConfig
from stepdpo.problems import load_problems
from stepdpo.tryout import TryConfig, build
from stepdpo.tryout.page import launch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--names", nargs="*", default=[])
    parser.add_argument("--data", default="synthetic:test?n=20&min_steps=2&max_steps=3&difficulty=0")
    parser.add_argument("--problem", type=int, default=1, help="1-based index in the set")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--out", default="docs/images/stepdpo-try.png")
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    config = TryConfig(models=args.models, names=args.names, data=[args.data], max_new_tokens=args.max_new_tokens, port=0,
                       generator=GeneratorConfig(device="cpu", batch_size=1))
    page_app, slots = build(config)
    problem = load_problems(args.data)[args.problem - 1]
    url = launch(page_app, "127.0.0.1", 0, block=False)
    try:
        with sync_playwright() as playwright:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#set input").click()
            page.get_by_role("option", name=args.data).click()
            page.locator("#problem input").click()
            page.get_by_role("option", name=f"{args.problem}. {problem.question[:80]}").click()
            expect(page.locator("#question textarea")).to_have_value(problem.question, timeout=30_000)
            page.locator("#solve").click()
            expect(page.locator("#answers .try-model")).to_have_count(len(slots), timeout=600_000)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        page_app.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
