"""Exercise checks: ``checks.exercise_N_k(your_function)`` says, in words, what is wrong.

Each check runs the student's function on fixed inputs, compares the result with the
package's reference and prints one line: a success line, "not done yet" for an unfilled
stub, or what is wrong (shape, dtype, sign, a missing factor, NaN far from the modes,
an exception...). It never raises for a wrong answer. One module per chapter.
``checks.hint("N.k")`` prints the next hint tier of exercise N.k (the idea, the equation, then
checks to run on one's own answer); while grading (SCORELAB_GRADING=1) the checks also try
hidden cases.
"""

from scorelab.checks._core import HINTS, Mismatch, assert_all_passed, hint, results
from scorelab.checks.ch1 import exercise_1_1, exercise_1_2, exercise_1_3, exercise_1_4, exercise_1_5
from scorelab.checks.ch2 import (exercise_2_1, exercise_2_2, exercise_2_3, exercise_2_4,
                                  exercise_2_5)
from scorelab.checks.ch3 import (exercise_3_1, exercise_3_2, exercise_3_3, exercise_3_4,
                                  exercise_3_5, exercise_3_6)
from scorelab.checks.ch4 import exercise_4_1, exercise_4_2, exercise_4_3, exercise_4_4, exercise_4_5
from scorelab.checks.ch5 import exercise_5_1, exercise_5_2, exercise_5_3, exercise_5_4, exercise_5_5
from scorelab.checks.ch6 import exercise_6_1, exercise_6_2, exercise_6_3, exercise_6_4, exercise_6_5
from scorelab.checks.ch7 import (exercise_7_1, exercise_7_2, exercise_7_3, exercise_7_4,
                                  exercise_7_5, exercise_7_6, exercise_7_7)
from scorelab.checks.ch8 import (exercise_8_1, exercise_8_2, exercise_8_3, exercise_8_4,
                                  exercise_8_5)

__all__ = ["HINTS", "Mismatch", "assert_all_passed", "hint", "results"] + sorted(
    (name for name in dir() if name.startswith("exercise_")),
    key=lambda name: tuple(int(part) for part in name.split("_")[1:]),
)
