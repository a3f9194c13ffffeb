"""NCSNv2's rules (Song & Ermon 2020, Techniques 1, 2, 4) in scorelab.noise.

Checked three ways: against the settings of the authors' released configurations
(ermongroup/ncsnv2, configs/*.yml: sigma_begin, num_classes, step_lr, n_steps_each, with
sigma_end = 0.01), against quantities computed independently here (brute-force distances,
a simulated Langevin chain on the one-point data set), and on the shipped digits model.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scorelab.noise import (
    check_sigmas,
    geometric_sigmas,
    langevin_variance_ratio,
    largest_pairwise_distance,
    level_overlap,
    n_levels_for_overlap,
    step_size_for_ladder,
)

SIGMA_END = 0.01
# name: (sigma_1, L, the authors' step_lr (their convention), T, D = H * W * C of the paper's data)
PAPER_CONFIGS = {
    "cifar10": (50.0, 232, 6.2e-6, 5, 32 * 32 * 3),
    "celeba": (90.0, 500, 3.3e-6, 5, 64 * 64 * 3),
    "church_outdoor": (140.0, 788, 4.9e-6, 4, 96 * 96 * 3),
    "bedroom": (190.0, 1086, 1.8e-6, 3, 128 * 128 * 3),
    "ffhq": (348.0, 2311, 9e-7, 3, 256 * 256 * 3),
}


def _gamma(sigma_1: float, n_levels: int) -> float:
    return (sigma_1 / SIGMA_END) ** (1.0 / (n_levels - 1))


def _normal_cdf(t: float) -> float:  # an independent Phi, by numerical integration of the density
    grid = torch.linspace(-12.0, t, 200_001, dtype=torch.float64)
    density = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    return float(torch.trapezoid(density, grid))


# --- Technique 1 ---------------------------------------------------------------------------------

def test_largest_pairwise_distance_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(37, 2, 3, generator=generator)  # (N, *D) of any rank
    brute = max(
        float((a - b).norm()) for a, b in itertools.combinations(data.reshape(37, -1), 2)
    )
    assert largest_pairwise_distance(data) == pytest.approx(brute, rel=1e-6)
    # chunking changes nothing
    assert largest_pairwise_distance(data, chunk_size=5) == pytest.approx(brute, rel=1e-6)


def test_largest_pairwise_distance_of_the_digits_gives_the_shipped_sigma_1():
    from scorelab.data import load_digits
    from scorelab.ncsn import pretrained_info

    distance = largest_pairwise_distance(load_digits("train"))
    sigma_1 = pretrained_info("digits")["config"]["sigmas"][0]
    assert 4.5 < distance <= sigma_1 == 5.0  # 4.81, rounded up to 5


@pytest.mark.parametrize("bad", [torch.zeros(1, 4), torch.zeros(5), "data"])
def test_largest_pairwise_distance_rejects_bad_data(bad):
    with pytest.raises(ValueError, match="data"):
        largest_pairwise_distance(bad)


def test_largest_pairwise_distance_rejects_nan():
    data = torch.zeros(3, 2)
    data[1, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        largest_pairwise_distance(data)


# --- Technique 2 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma, dim", [(1.0376, 3072), (1.344, 64), (1.5, 10), (1.01, 10**5)])
def test_level_overlap_is_the_papers_formula(gamma, dim):
    shift = math.sqrt(2 * dim) * (gamma - 1)
    expected = _normal_cdf(shift + 3 * gamma) - _normal_cdf(shift - 3 * gamma)
    assert level_overlap(gamma, dim) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_the_papers_ladders_overlap_about_one_half(name):
    """Every released ladder has C = 0.566-0.567: "approximately 0.5", realised a little above."""
    sigma_1, n_levels, _, _, dim = PAPER_CONFIGS[name]
    assert 0.56 < level_overlap(_gamma(sigma_1, n_levels), dim) < 0.57


@pytest.mark.parametrize("name", ["cifar10", "celeba", "church_outdoor", "bedroom"])
def test_n_levels_for_overlap_gives_back_the_papers_number_of_levels(name):
    sigma_1, n_levels, _, _, dim = PAPER_CONFIGS[name]
    assert n_levels_for_overlap(sigma_1, SIGMA_END, dim, target=0.566) == n_levels


def test_n_levels_for_overlap_is_the_smallest_such_ladder():
    sigma_1, _, _, _, dim = PAPER_CONFIGS["ffhq"]
    n_levels = n_levels_for_overlap(sigma_1, SIGMA_END, dim, target=0.566)
    assert n_levels in (2310, 2311)  # the paper's 2311 is one more than the smallest
    assert level_overlap(_gamma(sigma_1, n_levels), dim) >= 0.566
    assert level_overlap(_gamma(sigma_1, n_levels - 1), dim) < 0.566
    # at the paper's "0.5" the rule asks for fewer levels
    assert n_levels_for_overlap(50.0, SIGMA_END, 3072) == 220


def test_n_levels_for_overlap_gives_back_the_shipped_ladder():
    """NCSN's docstring: sigma 5 -> 0.01 in D = 64 needs 22 levels (gamma = 1.344)."""
    from scorelab.ncsn import pretrained_info

    shipped = torch.tensor(pretrained_info("digits")["config"]["sigmas"])
    n_levels = n_levels_for_overlap(5.0, 0.01, 64)
    assert n_levels == len(shipped) == 22
    assert torch.allclose(geometric_sigmas(5.0, 0.01, n_levels), shipped, rtol=1e-4)
    assert level_overlap(_gamma(5.0, 21), 64) < 0.5 <= level_overlap(_gamma(5.0, 22), 64)


def test_overlap_falls_with_gamma_and_with_dimension():
    assert level_overlap(1.1, 64) > level_overlap(1.3, 64) > level_overlap(1.6, 64)
    assert level_overlap(1.05, 100) > level_overlap(1.05, 1000) > level_overlap(1.05, 10_000)
    assert level_overlap(1.0 + 1e-9, 64) == pytest.approx(0.9973, abs=1e-4)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: level_overlap(1.0, 64), "gamma"),
        (lambda: level_overlap(0.9, 64), "gamma"),
        (lambda: level_overlap(1.2, 0), "dim"),
        (lambda: n_levels_for_overlap(0.01, 5.0, 64), "sigma_min"),
        (lambda: n_levels_for_overlap(5.0, 0.01, 64, target=0.998), "target"),
        (lambda: n_levels_for_overlap(5.0, 0.01, 64, target=0.0), "target"),
        (lambda: n_levels_for_overlap(-1.0, 0.01, 64), "sigma_max"),
    ],
)
def test_bad_arguments_name_themselves(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- Technique 4 ---------------------------------------------------------------------------------

def _simulated_ratio(step_size, gamma, n_steps, sigma_min, *, sigma=0.7, n=4000, dim=16, seed=0):
    """Eq. 4 by simulation: T Langevin steps on N(0, sigma^2 I) from N(0, gamma^2 sigma^2 I)."""
    generator = torch.Generator().manual_seed(seed)
    alpha = step_size * sigma**2 / sigma_min**2
    x = gamma * sigma * torch.randn(n, dim, generator=generator, dtype=torch.float64)
    for _ in range(n_steps):
        x = x + 0.5 * alpha * (-x / sigma**2) + math.sqrt(alpha) * torch.randn(
            n, dim, generator=generator, dtype=torch.float64
        )
    return float(x.var()) / sigma**2


@pytest.mark.parametrize("step_size, gamma, n_steps", [(4e-5, 1.34, 10), (1.2e-4, 1.34, 10),
                                                       (1e-5, 1.04, 5), (1.5e-4, 2.0, 3)])
def test_langevin_variance_ratio_matches_a_simulated_chain(step_size, gamma, n_steps):
    simulated = _simulated_ratio(step_size, gamma, n_steps, 0.01)
    # the variance of 64,000 Gaussian draws has a relative standard error of sqrt(2 / 64,000)
    tolerance = 5 * math.sqrt(2 / 64_000)
    expected = langevin_variance_ratio(step_size, gamma, n_steps, 0.01)
    assert simulated == pytest.approx(expected, rel=tolerance)


def test_langevin_variance_ratio_limits():
    # no step at all: the samples keep level i - 1's variance
    assert langevin_variance_ratio(1e-12, 1.3, 10, 0.01) == pytest.approx(1.3**2, rel=1e-6)
    # very many steps: the chain's own stationary variance 2 / (2 - u), u = eps / (2 sigma_L^2)
    assert langevin_variance_ratio(1e-4, 1.3, 10_000, 0.01) == pytest.approx(2 / 1.5, rel=1e-9)


@pytest.mark.parametrize("name", ["cifar10", "celeba", "bedroom", "ffhq"])
def test_step_size_for_ladder_gives_back_the_papers_step(name):
    """Technique 4 with the released T and ladder gives the released step_lr (2 significant
    digits), which is half this package's epsilon. (The church configuration's 4.9e-6 is not
    what the rule gives, 2.3e-6; it is left out.)"""
    sigma_1, n_levels, step_lr, n_steps, _ = PAPER_CONFIGS[name]
    epsilon = step_size_for_ladder(_gamma(sigma_1, n_levels), n_steps, SIGMA_END)
    assert epsilon / 2 == pytest.approx(step_lr, rel=0.03)


def test_step_size_for_ladder_minimises_eq_4():
    gamma, n_steps = _gamma(5.0, 22), 10
    best = step_size_for_ladder(gamma, n_steps, 0.01)
    at_best = langevin_variance_ratio(best, gamma, n_steps, 0.01)
    assert at_best > 1.0  # the ratio never reaches 1
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert langevin_variance_ratio(best * factor, gamma, n_steps, 0.01) > at_best
    # more steps a level allow a smaller step and bring the ratio closer to 1
    more = step_size_for_ladder(gamma, 100, 0.01)
    assert more < best and langevin_variance_ratio(more, gamma, 100, 0.01) < at_best


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: langevin_variance_ratio(2e-4, 1.3, 10, 0.01), "step_size"),
        (lambda: langevin_variance_ratio(1e-5, 1.3, 0, 0.01), "n_steps_each"),
        (lambda: step_size_for_ladder(1.0, 10, 0.01), "gamma"),
        (lambda: step_size_for_ladder(1.3, 10, 0.0), "sigma_min"),
    ],
)
def test_technique_4_rejects_bad_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- The ladder in float32 and bad numbers -------------------------------------------------------

@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([1.0, 1 - 1e-9], "not distinct in float32"),
        ([1e-50, 1e-60], "underflows to 0 in float32"),
        ([1e50, 1.0], "overflows float32"),
    ],
)
def test_check_sigmas_refuses_a_ladder_that_float32_breaks(sigmas, message):
    with pytest.raises(ValueError, match=f"sigmas: level.* {message}"):
        check_sigmas(sigmas)


@pytest.mark.parametrize(
    "args, message",
    [
        ((1.0, 0.9999999, 5), "not distinct in float32"),
        ((1e300, 1e-300, 3), "sigma_max overflows float32"),
        ((1.0, 1e-50, 3), "sigma_min underflows to 0 in float32"),
        ((1e39, 1.0, 1), "sigma_max overflows float32"),
        (("1", 0.01, 5), "sigma_max must be a real number"),
        ((1.0, "0.01", 5), "sigma_min must be a real number"),
        ((True, 0.01, 5), "sigma_max must be a real number"),
    ],
)
def test_geometric_sigmas_refuses_what_float32_cannot_hold_and_non_numbers(args, message):
    with pytest.raises(ValueError, match=message):
        geometric_sigmas(*args)


def test_geometric_sigmas_still_takes_numbers_of_every_kind():
    expected = torch.tensor([1.0, 0.1, 0.01])
    for sigma_max in (1, 1.0, torch.tensor(1.0)):
        ladder = geometric_sigmas(sigma_max, 0.01, 3)
        assert ladder.dtype == torch.float32 and torch.allclose(ladder, expected)
    assert torch.equal(check_sigmas([3.0, 2.0, 1.0]), torch.tensor([3.0, 2.0, 1.0]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: langevin_variance_ratio(1e-5, 0.5, 5, 0.01), "gamma must be larger than 1"),
        (lambda: langevin_variance_ratio(1e-5, 1.0, 5, 0.01), "gamma must be larger than 1"),
        (lambda: langevin_variance_ratio(1e-300, 1.3, 5, 1e100), "step_size .* too small"),
        (lambda: step_size_for_ladder(1.3, 5, 1e200), "sigma_min must lie between"),
        (lambda: step_size_for_ladder(1.3, 5, 1e-200), "sigma_min must lie between"),
        (lambda: step_size_for_ladder(1e200, 5, 0.01), "gamma .* gamma\\^2 is finite"),
        (lambda: n_levels_for_overlap(1, 0.01, 64, target="a"), "target must be a real number"),
        (lambda: n_levels_for_overlap("1", 0.01, 64), "sigma_max must be a real number"),
        (lambda: level_overlap("2", 64), "gamma must be a real number"),
    ],
)
def test_technique_rules_name_the_real_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_step_size_for_ladder_is_finite_and_positive_across_the_range_of_sigma_min():
    for sigma_min in (1e-140, 0.01, 1e150):
        step = step_size_for_ladder(1.3, 5, sigma_min)
        assert math.isfinite(step) and 0 < step < 2 * sigma_min**2
