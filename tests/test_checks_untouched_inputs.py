"""The checks of the exercises that take a batch x see a function that writes into it.

A loss or a layer that updates x in place (x += sigma * z, x -= means) changes the caller's
data under it; in a network it also breaks backpropagation. The checks pass a copy and say
so in words, rather than blaming the generator or reporting wrong values.
"""

from __future__ import annotations

import torch

from scorelab import checks
from _checks_helpers import assert_explains, assert_passes, with_answer
from test_checks import make_norm

exercise_4_4 = with_answer(checks.exercise_4_4, lambda sigma, tau: -sigma / (tau**2 + sigma**2),
                           lambda sigma, tau: tau**2 / sigma, first=False)


def in_place_dsm_loss(model, x, sigma, generator=None):
    z = torch.randn(x.shape, generator=generator)
    x += sigma * z  # the caller's x now carries the noise
    return 0.5 * ((model(x) + z / sigma) ** 2).sum(dim=1)


def in_place_annealed_loss(model, x, sigmas, labels, generator=None):
    z = torch.randn(x.shape, generator=generator)
    sigma = sigmas[labels].reshape(-1, *[1] * (x.ndim - 1))
    x += sigma * z
    return (0.5 * sigma**2 * (model(x, labels) + z / sigma) ** 2).reshape(len(x), -1).sum(dim=1)


def test_a_dsm_loss_that_writes_into_x_is_named(capsys):
    assert_explains(capsys, checks.exercise_4_1, in_place_dsm_loss,
                    "dsm_loss(model, x, sigma) changed the tensor it was given in place")
    assert_explains(capsys, exercise_4_4, in_place_dsm_loss,
                    "fixed_dsm_loss(model, x, sigma) changed the tensor it was given in place")
    assert_explains(capsys, checks.exercise_6_2, in_place_annealed_loss,
                    "changed the tensor it was given in place")


def test_a_normalisation_that_writes_into_x_is_named(capsys):
    base = make_norm()

    class InPlace(base):
        def forward(self, x, labels):
            out = super().forward(x.clone(), labels)
            x -= x.mean(dim=(2, 3), keepdim=True)  # a forward that normalises its input in place
            return out

    assert_passes(capsys, checks.exercise_6_1, base)
    assert_explains(capsys, checks.exercise_6_1, InPlace, "changed the tensor it was given")


def test_a_check_under_a_profiler_of_the_students_own_still_passes_and_keeps_it(capsys):
    """The refusal of the package's own answer watches through sys.setprofile: under cProfile
    (what %prun runs) it steps aside, and the student's profiler keeps running."""
    import cProfile
    import sys

    from test_checks import dsm_loss

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        checks.exercise_4_1(dsm_loss)
        still_profiling = sys.getprofile() is not None
    finally:
        profiler.disable()
    assert "✅" in capsys.readouterr().out
    assert still_profiling
    assert sys.getprofile() is None
