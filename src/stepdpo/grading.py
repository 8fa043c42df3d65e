"""Final-answer extraction and equivalence checking, with hard time limits.

``extract_answer`` finds the final answer of a response (last ``\\boxed{}``, then
"The answer is", then GSM8K's ``####``, then optionally the last number outside
``Step N:`` markers). ``states_final_answer`` says whether a text states a final
answer (the first three only). ``grade_for_data`` is the one rule every stage that
builds data (sampling, rollouts, rectification, SCDPO) grades by: a response is
right only when it states a final answer, the model ended it itself (finish reason
``eos`` or ``stop``, not the token limit), and the answer matches gold; the
last-number fallback is for evaluation only, where it is an explicit setting.
``answers_match`` decides whether two answers are mathematically equal:

1. a cheap, exact comparison of normalised strings and of plain numbers
   (integers, decimals, fractions as :class:`fractions.Fraction`), which settles
   most GSM8K-style answers without leaving the process;
2. otherwise math-verify (LaTeX extraction only: its plain-expression mode runs
   sympy's ``parse_expr``, i.e. ``eval``, on the text, and model text is data)
   in a persistent child process with a deadline. math-verify's own timeout uses
   ``signal.alarm`` and fails off the main thread, so it is disabled
   (``parsing_timeout=None``, ``timeout_seconds=None``) and a call that overruns
   its deadline has its worker killed; the next call starts a fresh one.

Answers that are too long, too deeply nested or that contain exponent towers
are refused before parsing (they can only match by exact string equality), so
pathological inputs return ``False`` at once rather than after the deadline.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 400
"""Answers longer than this are compared as normalised strings only."""
MAX_NESTING = 24
"""Deeper bracket nesting than this is compared as strings only."""
MAX_EXPONENT_DIGITS = 4
"""An exponent written with more digits than this (10^{12345}) is compared as strings only."""
WORKER_START_TIMEOUT_S = 120.0
"""Time a fresh worker gets to import sympy and math-verify (generous: the CPU may be shared)."""
MAX_WORKERS = 2

# ---------------------------------------------------------------------------
# Extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(r"the\s+(?:final\s+)?answer\s+is\s*:?\s*", re.IGNORECASE)
_HASHES_RE = re.compile(r"####\s*")
# A minus sign counts only where it cannot be subtraction ("10-5" ends in 5, not -5).
_NUMBER_RE = re.compile(r"(?:(?<![\w.)])-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# A step marker ("Step 2:") anywhere, or a half-written one ("Step 2" cut off before its colon)
# at the very end: its number counts steps, it is never an answer.
_STEP_MARKER_RE = re.compile(r"\bStep[ \t]+\d+(?:[ \t]*:|[ \t]*\Z)", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\n")


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each unescaped ``{`` -> position of its matching ``}`` (unclosed ones absent), in one pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # an escaped brace (\{ \}) does not open or close a group
            continue
        if char == "{":
            stack.append(index)
        elif char == "}" and stack:
            pairs[stack.pop()] = index
        index += 1
    return pairs


def _clean(answer: str) -> str | None:
    """Strip whitespace, surrounding ``$`` and trailing periods; None when nothing is left."""
    answer = answer.strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    return answer or None


def _after_anchor(text: str, pattern: re.Pattern[str]) -> str | None:
    """The rest of the sentence after the last match of ``pattern``."""
    last = None
    for last in pattern.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() :]
    end = _SENTENCE_END_RE.search(rest)
    return _clean(rest[: end.start()] if end else rest)


def extract_answer(response: str, *, last_number_fallback: bool = True) -> str | None:
    """The final answer of a model response, or None.

    In order of preference: the content of the last complete ``\\boxed{...}``
    (or ``\\fbox{...}``, nested braces included); the rest of the sentence after
    the last "The answer is" (with or without a colon); the rest of the line
    after the last ``####``; and, when ``last_number_fallback`` is set, the last
    number in the text that is not part of a ``Step N:`` marker (so
    ``"Step 1: 2+2=4\\nStep 2:"`` gives ``"4"``, never the ``2`` of the marker).
    Surrounding ``$`` and a trailing period are removed.
    """
    if not response:
        return None
    boxes = list(_BOX_RE.finditer(response))
    closing = _closing_braces(response) if boxes else {}
    for match in reversed(boxes):
        close = closing.get(match.end() - 1)
        if close is not None:
            cleaned = _clean(response[match.end() : close])
            if cleaned is not None:
                return cleaned
    for pattern in (_ANSWER_IS_RE, _HASHES_RE):
        found = _after_anchor(response, pattern)
        if found is not None:
            return found
    if last_number_fallback:
        unmarked = _STEP_MARKER_RE.sub(lambda marker: " " * len(marker.group(0)), response)
        last = None
        for last in _NUMBER_RE.finditer(unmarked):
            pass
        if last is not None:
            return last.group(0)
    return None


def states_final_answer(text: str) -> bool:
    """Whether ``text`` states a final answer: a complete ``\\boxed{}``, "The answer is ..." or ``#### ...``.

    A bare last number does not count. This decides where a solution ends: a step that
    states the final answer is the last one (SCDPO stops there, and step-DPO training
    gives it an end-of-sequence token).
    """
    return extract_answer(text, last_number_fallback=False) is not None


FINISHED_REASONS = ("eos", "stop")
"""Finish reasons of a response the model ended itself (end-of-sequence, or a stop string)."""


def data_answer(response: str, finish_reason: str) -> str | None:
    """The final answer a response states, if it may count for data; else None.

    None when the response states no final answer (a last number does not count) or the
    model did not end it itself: stopped at the token limit (``length``), or an error.
    """
    if finish_reason not in FINISHED_REASONS:
        return None
    return extract_answer(response, last_number_fallback=False)


def grade_for_data(items: Iterable[tuple[str, str, str]], *, timeout_s: float = 5.0) -> list[bool]:
    """The data rule over ``(response, finish_reason, gold)``: right only when the response states a
    final answer, the model ended it itself (not at the token limit) and the answer matches gold.

    Every stage that builds data grades with this: sampling, the rollout localizer's alive/dead
    prefixes, rectification's "reached gold", SCDPO's continuations and judge-free rollouts.
    """
    return grade_many(((data_answer(response, finish), gold) for response, finish, gold in items), timeout_s=timeout_s)


# ---------------------------------------------------------------------------
# Cheap normalised comparison

_REMOVE = (
    r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\displaystyle",
    "^\\circ", "^{\\circ}", "°", "\\$", "$",
)
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_ASSIGNMENT_RE = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_INT_RE = re.compile(r"^-?\d+$")
_DECIMAL_RE = re.compile(r"^-?(?:\d+(?:\.\d+)?|\.\d+)$")  # unambiguous: no backtracking on long digit runs
_SLASH_FRACTION_RE = re.compile(r"^(-?\d+)/(\d+)$")
_LATEX_FRACTION_RE = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")
_FRAC_RE = re.compile(r"\\[dt]?frac(?![A-Za-z])")


def _frac_argument(text: str, start: int) -> tuple[int, int, bool] | None:
    """Where one TeX argument of ``\\frac`` starting at ``start`` lies: (start, end, braced); None when there is none.

    An argument is a brace group, or a single token: one character (``\\frac12`` is
    ``\\frac{1}{2}``) or a control word (``\\frac\\pi2``). Spaces before it are skipped.
    """
    at = start
    while at < len(text) and text[at] in " \t":
        at += 1
    if at >= len(text) or text[at] == "}":
        return None
    if text[at] == "{":
        close = _closing_braces(text[at:]).get(0)
        return None if close is None else (at, at + close + 1, True)
    if text[at] == "\\":
        word = re.match(r"\\(?:[A-Za-z]+|.)", text[at:], re.DOTALL)
        assert word is not None
        return at, at + word.end(), False
    return at, at + 1, False


def brace_fractions(text: str) -> str:
    """``\\frac``, ``\\dfrac`` and ``\\tfrac`` with both arguments in braces, as TeX reads them.

    TeX takes one token per unbraced argument: ``\\frac123`` is ``\\frac{1}{2}3`` (one half,
    then 3), not 12/3 (our old reading) nor 1/23 (math-verify's). A fraction that lacks an
    argument is left as it is, and so is text longer than ``MAX_ANSWER_CHARS`` (compared as
    a string only).
    """
    if "frac" not in text or len(text) > MAX_ANSWER_CHARS:
        return text
    at = 0
    while True:
        match = _FRAC_RE.search(text, at)
        if match is None:
            return text
        at = match.end()  # go on inside the arguments: they may hold fractions too
        numerator = _frac_argument(text, match.end())
        denominator = _frac_argument(text, numerator[1]) if numerator else None
        if numerator is None or denominator is None or (numerator[2] and denominator[2]):
            continue
        parts = [match.group(0)]
        for begin, end, braced in (numerator, denominator):
            parts.append(text[begin:end] if braced else "{" + text[begin:end] + "}")
        text = text[: match.start()] + "".join(parts) + text[denominator[1] :]


def normalize_answer(answer: str) -> str:
    """A canonical string for cheap equality: no spaces, ``$``, ``\\left``, degree signs,
    thousands separators, trailing period, ``\\text{}`` wrapper, ``\\dfrac``/``\\tfrac`` spelling."""
    text = _clean(answer) or ""
    box = _BOX_RE.match(text)
    if box is not None and _closing_braces(text).get(box.end() - 1) == len(text) - 1:
        text = text[box.end() : -1]
    for token in _REMOVE:
        text = text.replace(token, "")
    text = brace_fractions(text).replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    text = _TEXT_RE.sub(r"\1", text)
    text = "".join(text.split()).rstrip(".")
    if _THOUSANDS_RE.match(text):
        text = text.replace(",", "")
    return text


def _as_number(text: str) -> Fraction | None:
    """A plain number (integer, decimal, a/b, \\frac{a}{b}) as an exact fraction; None otherwise."""
    if len(text) > MAX_ANSWER_CHARS:
        return None  # int() refuses more than 4300 digits; such an answer is compared as a string
    if _DECIMAL_RE.match(text):
        return Fraction(text)
    match = _SLASH_FRACTION_RE.match(text)
    if match is not None:
        return Fraction(int(match.group(1)), int(match.group(2))) if int(match.group(2)) else None
    match = _LATEX_FRACTION_RE.match(text)
    if match is not None and int(match.group(3)):
        return Fraction(int(match.group(1) + match.group(2)), int(match.group(3)))
    return None


def _cheap_verdict(pred: str, gold: str) -> bool | None:
    """True/False when normalised strings or plain numbers settle it; None when math-verify must decide."""
    if pred == gold:
        return True
    if not _ASSIGNMENT_RE.match(gold):
        pred = _ASSIGNMENT_RE.sub("", pred, count=1)
    if pred == gold:
        return True
    pred_number, gold_number = _as_number(pred), _as_number(gold)
    if pred_number is not None and gold_number is not None:
        if pred_number == gold_number:
            return True
        # Two integers that differ are different; decimals go on to math-verify, which
        # accepts a rounded decimal for a fraction (0.3333333 for 1/3).
        if _INT_RE.match(pred) and _INT_RE.match(gold):
            return False
    return None


_CHAINED_POWER_RE = re.compile(r"\^\s*-?\w+\s*\^")


def _too_hard(text: str) -> bool:
    """Whether parsing ``text`` risks a long computation: very long, deeply nested,
    a tower of exponents on numbers (``10^{10^{10}}``, or chained as ``a^{b}^{c}``)
    or a huge literal exponent."""
    if len(text) > MAX_ANSWER_CHARS or _CHAINED_POWER_RE.search(text):
        return True
    depth = 0
    stack: list[bool] = []  # per open brace: does it open an exponent?
    exponent_depth = 0
    previous = ""
    just_closed_exponent = False
    for index, char in enumerate(text):
        if char.isspace():
            continue
        if char in "([{":
            depth += 1
            if depth > MAX_NESTING:
                return True
            if char == "{":
                opens_exponent = previous == "^"
                stack.append(opens_exponent)
                exponent_depth += opens_exponent
        elif char in ")]}":
            depth -= 1
            if char == "}" and stack:
                closes_exponent = stack.pop()
                exponent_depth -= closes_exponent
                previous = char
                just_closed_exponent = closes_exponent
                continue
        elif char == "^":
            # A power inside an exponent is cheap on a variable (e^{-x^2}) but can be a
            # number with billions of digits on a number (10^{10^{10}}).
            if just_closed_exponent or (exponent_depth >= 1 and not previous.isalpha()):
                return True
            digits = re.match(r"\s*\{?\s*-?(\d+)", text[index + 1 : index + 32])
            if digits is not None and len(digits.group(1)) > MAX_EXPONENT_DIGITS:
                return True
        previous = char
        just_closed_exponent = False
    return False


# ---------------------------------------------------------------------------
# math-verify in a child process with a deadline


class _Worker:
    """One child process running :func:`_worker_main`, fed one JSON line per comparison."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # A plain subprocess, not multiprocessing: it works from daemonic pool workers too.
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from stepdpo.grading import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self._buffer = b""
        if self._read_line(WORKER_START_TIMEOUT_S) != "ready":
            self.kill()
            raise RuntimeError("the math-verify worker process did not start")

    def _read_line(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        stdout = self.process.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([stdout], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                return None  # the worker died
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8")

    def compare(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when the worker overran ``timeout_s`` or died."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write((json.dumps([pred, gold]) + "\n").encode("utf-8"))
        except (BrokenPipeError, OSError):
            return None
        reply = self._read_line(timeout_s)
        if reply is None:
            return None
        return reply == "1"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class _WorkerPool:
    """Up to ``MAX_WORKERS`` persistent workers shared by all threads of this process."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self.max_workers = max_workers
        self._idle: list[_Worker] = []
        self._count = 0
        self._pid = os.getpid()
        self._condition = threading.Condition()

    def _acquire(self) -> _Worker:
        with self._condition:
            if self._pid != os.getpid():  # forked: the parent's workers are not ours to use
                self._idle, self._count, self._pid = [], 0, os.getpid()
            while not self._idle and self._count >= self.max_workers:
                self._condition.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker()
        except BaseException:
            with self._condition:
                self._count -= 1
                self._condition.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._condition:
            if worker is None:
                self._count -= 1
            else:
                self._idle.append(worker)
            self._condition.notify()

    def compare(self, pred: str, gold: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when the comparison overran ``timeout_s`` (its worker is killed)."""
        worker = self._acquire()
        verdict = worker.compare(pred, gold, timeout_s)
        if verdict is None:
            log.warning("answer comparison overran %.3g s; counted as wrong (pred %.60r, gold %.60r)", timeout_s, pred, gold)
            worker.kill()
            self._release(None)
            return None
        self._release(worker)
        return verdict

    def close(self) -> None:
        with self._condition:
            workers, self._idle = self._idle, []
            self._count -= len(workers)
        for worker in workers:
            worker.kill()


_POOL = _WorkerPool()
atexit.register(_POOL.close)


def _worker_main() -> None:
    """Child process loop: read ``[pred, gold]`` JSON lines from stdin, answer ``1`` or ``0`` per line."""
    import resource

    # A runaway sympy computation hits this instead of the machine's memory.
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]

    def parsed(answer: str) -> list:
        return parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            pred, gold = json.loads(line)
            gold_parsed = parsed(gold)
            pred_parsed = parsed(pred)
            verdict = bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - any failure (parse error, RecursionError, MemoryError) means "not shown equal"
            verdict = False
        out.write(b"1\n" if verdict else b"0\n")
        out.flush()


# ---------------------------------------------------------------------------
# Public API


_MATH_DOLLAR_RE = re.compile(r"(?<!\\)\$")


_CACHE: dict[tuple[str, str], bool] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 65536


def _match(pred: str, gold: str, timeout_s: float) -> bool:
    """The verdict for one pair; definite verdicts are cached (samples of a problem repeat answers),
    overruns are not, since a busy machine can make a sound comparison overrun once."""
    verdict = _cheap_verdict(normalize_answer(pred), normalize_answer(gold))
    if verdict is not None:
        return verdict
    # math-verify sees the answers as written (its own normaliser removes units and
    # \text{} words, which ours would glue onto the number), minus math-mode dollars.
    # Fractions with unbraced arguments are braced first: math-verify reads \frac123 as 1/23.
    pred = brace_fractions(_MATH_DOLLAR_RE.sub("", pred).strip())
    gold = brace_fractions(_MATH_DOLLAR_RE.sub("", gold).strip())
    if _too_hard(pred) or _too_hard(gold):
        return False
    key = (pred, gold)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    verdict = _POOL.compare(pred, gold, timeout_s)
    if verdict is None:
        return False
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        _CACHE[key] = verdict
    return verdict


def answers_match(pred: str | None, gold: str, *, timeout_s: float = 5.0) -> bool:
    """Whether the predicted answer equals the gold one mathematically.

    Equal normalised strings and equal plain numbers match at once; everything
    else (fractions vs decimals, units, ``x = 5`` vs ``5``, tuples, sets in any
    order, intervals, symbolic equality) is judged by math-verify in a worker
    process that is killed after ``timeout_s`` seconds (then: False). Safe to
    call from any thread and from worker processes; never evaluates the text.
    """
    if pred is None or gold is None:
        return False
    return _match(pred, gold, float(timeout_s))


def is_correct(response: str, gold: str, *, last_number_fallback: bool = True, timeout_s: float = 5.0) -> bool:
    """``answers_match(extract_answer(response), gold)``."""
    return answers_match(extract_answer(response, last_number_fallback=last_number_fallback), gold, timeout_s=timeout_s)


def grade_responses(pairs: Iterable[tuple[str, str]], *, timeout_s: float = 5.0) -> list[bool]:
    """``is_correct`` over ``(response, gold)`` pairs: the final answer is extracted from each response first."""
    return grade_many(((extract_answer(response), gold) for response, gold in pairs), timeout_s=timeout_s)


def grade_many(pairs: Iterable[tuple[str | None, str]], *, timeout_s: float = 5.0) -> list[bool]:
    """``answers_match`` over ``(pred, gold)`` pairs, in order; repeated pairs are judged once."""
    return [answers_match(pred, gold, timeout_s=timeout_s) for pred, gold in pairs]
