"""GSM8K- and MATH-style (prediction, gold, should match) cases, shared by the grading tests and bench/grading.py.

Golds are taken from or modelled on the GSM8K test answers and the MATH500
boxed answers; predictions are spellings a model actually produces.
"""

from __future__ import annotations

MATCH_CASES: list[tuple[str, str, bool]] = [
    # GSM8K-style integers, money, thousands separators, units
    ("18", "18", True),
    ("18.00", "18", True),
    ("\\$18", "18", True),
    ("$18$", "18", True),
    ("70,000", "70000", True),
    ("70000", "70,000", True),
    ("1,000,000", "1000000", True),
    ("540 meters", "540", True),
    ("20 \\text{ dollars}", "20", True),
    ("64\\%", "64", True),
    ("-3", "-3", True),
    ("460.", "460", True),
    ("366", "365", False),
    ("694", "69.4", False),
    ("13", "-13", False),
    ("7000", "70000", False),
    ("18.5", "18", False),
    ("1,001", "1001", True),
    ("0", "0", True),
    ("0.5", "5", False),
    # MATH-style fractions and decimals
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "\\frac12", True),
    ("\\dfrac{17}{50}", "\\frac{17}{50}", True),
    ("0.34", "\\dfrac{17}{50}", True),
    (".35625", "0.35625", True),
    ("\\frac{3}{56}", "\\frac{3}{65}", False),
    ("\\frac{16}{5}", "3.2", True),
    ("\\frac{8}{15}", "\\frac{15}{8}", False),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{1}{4}", "\\frac{-1}{4}", True),
    ("\\frac{1}{3}", "0.3", False),
    # radicals, pi, complex numbers, symbolic
    ("\\sqrt{51}", "\\sqrt{51}", True),
    ("\\sqrt{12}", "2\\sqrt{3}", True),
    ("\\frac{\\sqrt{21}}{5}", "\\sqrt{21}/5", True),
    ("\\sqrt{66}", "\\sqrt{65}", False),
    ("288\\pi", "288 \\pi", True),
    ("288", "288 \\pi", False),
    ("6-5i", "6 - 5i", True),
    ("6+5i", "6 - 5i", False),
    ("-q+p", "p - q", True),
    ("q - p", "p - q", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+1", "(x+1)^2", False),
    ("2\\sin x \\cos x", "\\sin 2x", True),
    ("e^{-x^2}", "\\frac{1}{e^{x^2}}", True),
    ("2^{10}", "1024", True),
    # equations and assignments
    ("x = 5", "5", True),
    ("x=5", "5", True),
    ("y = 6", "5", False),
    ("y = 2x + 3", "y=2x+3", True),
    # angles
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("30", "60^\\circ", False),
    # tuples, sets, intervals
    ("(6,31,-1)", "(6, 31, -1)", True),
    ("(6,-1,31)", "(6,31,-1)", False),
    ("(-\\sqrt{3}, \\sqrt{3})", "(-\\sqrt3,\\sqrt3)", True),
    ("\\{3, 2, 1\\}", "\\{1,2,3\\}", True),
    ("\\{1, 2\\}", "\\{1,2,3\\}", False),
    ("1, 2, 3", "3, 1, 2", True),
    ("[0, 1)", "[0,1)", True),
    ("(0,1)", "[0,1)", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(-\\infty, 3)", "(-\\infty,3]", False),
    # text answers
    ("\\text{Monday}", "\\text{Monday}", True),
    ("\\text{(C)}", "\\text{(C)}", True),
    # no answer, garbage
    ("", "5", False),
    ("I don't know", "5", False),
]
