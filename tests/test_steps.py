import pytest

from stepdpo.steps import PromptFormat, join_steps, next_marker, prefix_before, split_steps, step_body

CASES = [
    "",
    "just one line",
    "Step 1: 2+3=5\nStep 2: 5*4=20\nThe answer is: \\boxed{20}",
    "Step 1: a\n\nStep 2: b\n\n",
    "preamble\nStep 1: x\nStep 2: y",
    "Step 1: compute\nStep 2: see Step 1: again\nStep 3: done",
    "".join(f"Step {i}: v{i}\n" for i in range(1, 13)),
    "Step 1: a\nStep 3: skipped number stays in step 1\nStep 2: b",
    "para one\n\npara two\n\n\npara three",
    "Step 1:\nStep 2:\n",
    "  Step 1: indented\n  Step 2: also",
    "Step 1: a\r\nStep 2: b\r\n",
]


@pytest.mark.parametrize("text", CASES)
def test_join_inverts_split(text):
    assert join_steps(split_steps(text)) == text


def test_markers_and_final_answer_line():
    steps = split_steps("Step 1: 2+3=5\nStep 2: 5*4=20\nThe answer is: \\boxed{20}")
    assert steps == ["Step 1: 2+3=5\n", "Step 2: 5*4=20\nThe answer is: \\boxed{20}"]


def test_step_10_after_step_9():
    text = "".join(f"Step {i}: v{i}\n" for i in range(1, 13))
    steps = split_steps(text)
    assert len(steps) == 12
    assert steps[9] == "Step 10: v10\n"


def test_back_reference_and_out_of_order_markers_stay_inside():
    assert split_steps("Step 1: compute\nStep 2: see Step 1: again\nStep 3: done") == [
        "Step 1: compute\n", "Step 2: see Step 1: again\n", "Step 3: done"]
    assert split_steps("Step 1: a\nStep 3: x\nStep 2: b") == ["Step 1: a\nStep 3: x\n", "Step 2: b"]


def test_empty_steps_and_preamble():
    assert split_steps("Step 1:\nStep 2:\n") == ["Step 1:\n", "Step 2:\n"]
    assert split_steps("preamble\nStep 1: x") == ["preamble\n", "Step 1: x"]


def test_paragraph_fallback():
    assert split_steps("para one\n\npara two\n\n\npara three") == ["para one\n\n", "para two\n\n\n", "para three"]


def test_adversarial_markers_are_linear_time():
    text = "Step 1: a\n" + "Step 1:\n" * 200_000 + "Step 2: b"
    steps = split_steps(text)
    assert join_steps(steps) == text and len(steps) == 2


def test_prefix_and_next_marker():
    steps = split_steps("Step 1: a\nStep 2: b\nStep 3: c")
    assert prefix_before(steps, 1) == ""
    assert prefix_before(steps, 3) == "Step 1: a\nStep 2: b\n"
    assert next_marker("") == "Step 1:"
    assert next_marker(prefix_before(steps, 3)) == "Step 3:"
    assert step_body(steps[1]) == "b"


def test_plain_prompt_is_primed():
    fmt = PromptFormat(style="plain", instruction="")
    assert fmt.prompt("What is 2+2?") == "Question: What is 2+2?\nAnswer: Let's think step by step.\nStep 1:"
    assert fmt.prompt("Q", "Step 1: a\n").endswith("Step 1: a\nStep 2:")


def test_chat_prompt_uses_template(embedded_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_tokenizer_dir)
    text = PromptFormat(style="chat", chat_template_owner=tokenizer).prompt("What is 2+2?")
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\nLet's think step by step.\nStep 1:")
