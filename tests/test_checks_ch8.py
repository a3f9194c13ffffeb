"""The checks of chapter 8: a right answer passes, typical wrong answers are named, nothing crashes."""

from __future__ import annotations

import math

import pytest
import torch
from _checks_helpers import assert_explains, assert_passes, lcs, run_check, stub, with_answer
from scorelab import checks
from scorelab.checks import _core
from scorelab.sde import corrector_step_size




def predicted_variance_ratio(snr):
    return 1.0 + snr**2


def buggy_variance(v, sigma_min, sigma_max):
    return (v + sigma_max**2) ** 2 / (v + sigma_min**2)


exercise_8_3 = with_answer(checks.exercise_8_3, predicted_variance_ratio, first=True)
exercise_8_4 = with_answer(checks.exercise_8_4, buggy_variance, first=False)


def em_variance(v, sigma_min, sigma_max, n_steps, *, at_end=False, squared=True):
    """8.2's variance after n_steps reverse Euler-Maruyama steps on N(0, v I), from p_1."""
    log_ratio, variance, dt = math.log(sigma_max / sigma_min), v + sigma_max**2, 1.0 / n_steps
    for k in range(n_steps):
        t = 1.0 - (k + 1 if at_end else k) * dt
        level2 = (sigma_min * (sigma_max / sigma_min) ** t) ** 2
        g2 = 2 * level2 * log_ratio
        factor = 1 - g2 * dt / (v + level2)
        variance = (factor**2 if squared else factor) * variance + g2 * dt
    return variance


exercise_8_2 = with_answer(checks.exercise_8_2, em_variance, 153, first=False)


# --- 8.1 ----------------------------------------------------------------------------------------


def sigma_of_t(t, lo, hi):
    return lo * (hi / lo) ** t


def diffusion(t, lo, hi):
    return sigma_of_t(t, lo, hi) * math.sqrt(2 * math.log(hi / lo))


def test_8_1(capsys, monkeypatch):
    assert_passes(capsys, checks.exercise_8_1, sigma_of_t, diffusion)
    monkeypatch.setattr(_core, "GRADING", True)  # the hidden cases too
    assert_passes(capsys, checks.exercise_8_1, sigma_of_t, diffusion)
    monkeypatch.setattr(_core, "GRADING", False)
    assert_explains(capsys, checks.exercise_8_1, (lambda t, lo, hi: lo + t * (hi - lo), diffusion),
             "linear in t")
    assert_explains(capsys, checks.exercise_8_1, (lambda t, lo, hi: sigma_of_t(1 - t, lo, hi), diffusion),
             "backwards")
    assert_explains(capsys, checks.exercise_8_1,
             (sigma_of_t, lambda t, lo, hi: sigma_of_t(t, lo, hi) * math.sqrt(math.log(hi / lo))),
             "sqrt(2)")
    assert_explains(capsys, checks.exercise_8_1, (sigma_of_t, lambda t, lo, hi: diffusion(t, lo, hi) ** 2),
             "g(t)^2")
    assert_explains(capsys, checks.exercise_8_1,
             (sigma_of_t, lambda t, lo, hi: math.sqrt(sigma_of_t(t, lo, hi) * math.log(hi / lo))),
             "d sigma / dt")
    assert_explains(capsys, checks.exercise_8_1,
             (sigma_of_t, lambda t, lo, hi: sigma_of_t(t, lo, hi) * math.sqrt(2 * math.log10(hi / lo))),
             "natural logarithm")
    assert_explains(capsys, checks.exercise_8_1,
             (sigma_of_t, lambda t, lo, hi: sigma_of_t(t, lo, hi) * math.sqrt(2) * math.log(hi / lo)),
             "logarithm outside the square root")
    assert_explains(capsys, checks.exercise_8_1,
             (sigma_of_t, lambda t, lo, hi: math.sqrt(2 * math.log(hi / lo))), "lacks sigma(t)")
    assert_explains(capsys, checks.exercise_8_1, (sigma_of_t, lambda t, lo, hi: "g"), "number")
    out = run_check(capsys, checks.exercise_8_1, stub, stub)
    assert "not done yet" in out


# --- 8.2 ----------------------------------------------------------------------------------------


def vp_step(score_fn, beta, x, t, dt, z):
    return x + (0.5 * beta * x + beta * score_fn(x, t)) * dt + math.sqrt(beta * dt) * z


def _vp(drift_x=0.5, drift_s=1.0, noise=lambda beta, dt: math.sqrt(beta * dt), at=lambda t, dt: t):
    """A VP step with its coefficients changed: one of the usual slips."""
    def step(score_fn, beta, x, t, dt, z):
        s = score_fn(x, at(t, dt))
        return x + (drift_x * beta * x + drift_s * beta * s) * dt + noise(beta, dt) * z

    return step


def test_8_2(capsys):
    assert_passes(capsys, exercise_8_2, vp_step)
    assert_explains(capsys, exercise_8_2, _vp(drift_x=-0.5), "keeps the sign", "+beta x dt / 2")
    assert_explains(capsys, exercise_8_2, _vp(drift_x=0.0), "the VE step of the chapter")
    assert_explains(capsys, exercise_8_2, _vp(drift_s=-1.0), "score term has the wrong sign")
    assert_explains(capsys, exercise_8_2, _vp(drift_x=-0.5, drift_s=-1.0), "step forwards")
    assert_explains(capsys, exercise_8_2, _vp(drift_s=0.5), "probability-flow ODE")
    assert_explains(capsys, exercise_8_2, _vp(drift_x=1.0), "the 1/2 is missing")
    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: math.sqrt(b)), "sqrt(dt)")
    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: math.sqrt(b) * dt),
                    "sqrt(beta dt) z")
    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: math.sqrt(dt)), "lacks g")
    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: b * dt), "beta dt z")
    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: math.sqrt(2 * b * dt)),
                    "authors' Langevin convention")
    assert_explains(capsys, exercise_8_2, _vp(at=lambda t, dt: t - dt), "at t - dt")
    assert_explains(capsys, exercise_8_2, lambda *a: vp_step(*a)[:, :1], "wrong shape")
    assert_explains(capsys, exercise_8_2,
                    lambda f, beta, x, t, dt, z: vp_step(f, beta, x, t, dt, -z), "minus sign")
    assert "not done yet" in run_check(capsys, checks.exercise_8_2, stub, em_variance, 153)


# --- 8.3 ----------------------------------------------------------------------------------------


def measure(snr, *, factor=1.0, n_steps=200, start=math.sqrt(2.0), scale=2.0, noise=1.0):
    generator = torch.Generator().manual_seed(0)
    x = start * torch.randn(1_000, 100, generator=generator)
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator)
        score = -x / 2.0
        alpha = factor * corrector_step_size(score, z, snr)
        x = x + 0.5 * alpha * score + math.sqrt(noise * alpha) * z
    return x.var().item() / scale


def corrector_ratio(snr, *, drift=0.5, noise=1.0):
    """The variance ratio of the corrector x + drift alpha s + sqrt(noise alpha) z on N(0, 2 I)."""
    generator = torch.Generator().manual_seed(0)
    x = math.sqrt(2.0) * torch.randn(1_000, 100, generator=generator)
    for _ in range(200):
        z = torch.randn(x.shape, generator=generator)
        score = -x / 2.0
        alpha = corrector_step_size(score, z, snr)
        x = x + drift * alpha * score + math.sqrt(noise * alpha) * z
    return x.var().item() / 2.0


def full_score_step(snr):
    """The corrector with x + alpha s + sqrt(alpha) z: the score term lacks its 1/2."""
    return corrector_ratio(snr, drift=1.0)


def test_8_3(capsys):
    assert_passes(capsys, exercise_8_3, measure)
    assert_explains(capsys, exercise_8_3, lambda snr: math.sqrt(measure(snr)), "standard deviations")
    assert_explains(capsys, exercise_8_3, lambda snr: measure(snr, scale=1.0), "variance itself")
    assert_explains(capsys, exercise_8_3, lambda snr: measure(snr, factor=0.5), "half of alpha")
    assert_explains(capsys, exercise_8_3, lambda snr: measure(snr, noise=2.0),
                    "noise sqrt(2 alpha) z", "the course's step adds sqrt(alpha) z")
    assert_explains(capsys, exercise_8_3, full_score_step, "half the target's variance")
    assert_explains(capsys, exercise_8_3, lambda snr: measure(snr, n_steps=3, start=0.3),
             "forgotten its start")
    assert_explains(capsys, exercise_8_3, lambda snr: measure(snr, n_steps=3, start=0.0),
             "zero score")
    assert_explains(capsys, exercise_8_3, lambda snr: torch.ones(3), "single number")
    assert "not done yet" in run_check(capsys, exercise_8_3, stub)


# --- 8.4 ----------------------------------------------------------------------------------------


def pf_drift(score_fn, sde, x, t):
    return -0.5 * sde.g2(t) * score_fn(x, sde.sigma(t))


def test_8_2_and_8_4_name_a_step_that_writes_into_its_input(capsys):
    def in_place_step(score_fn, beta, x, t, dt, z):
        x += (0.5 * beta * x + beta * score_fn(x, t)) * dt
        x += math.sqrt(beta * dt) * z
        return x

    def in_place_noise(score_fn, beta, x, t, dt, z):
        drift = 0.5 * beta * x + beta * score_fn(x, t)
        return x + drift * dt + z.mul_(math.sqrt(beta * dt))

    def in_place_drift(score_fn, sde, x, t):
        return x.copy_(-0.5 * sde.g2(t) * score_fn(x, sde.sigma(t)))

    assert_explains(capsys, exercise_8_2, in_place_step, "on x changed the tensor")
    assert_explains(capsys, exercise_8_2, in_place_noise, "on z changed the tensor")
    assert_explains(capsys, exercise_8_4, in_place_drift, "changed the tensor it was given")


def test_8_4(capsys):
    assert_passes(capsys, exercise_8_4, pf_drift)
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: 0.5 * sde.g2(t) * f(x, sde.sigma(t)),
             "still the colleague's drift", "reversed time")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: -sde.g2(t) * f(x, sde.sigma(t)),
             "the reverse SDE's", "half of it")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: sde.g2(t) * f(x, sde.sigma(t)),
             "the wrong sign", "twice")
    assert_explains(capsys, exercise_8_4,
             lambda f, sde, x, t: -0.5 * sde.diffusion(t) * f(x, sde.sigma(t)), "g instead of g^2")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: -0.25 * sde.g2(t) * f(x, sde.sigma(t)),
             "-1/4 g^2 s")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: -0.5 * sde.g2(t) * f(x, t),
             "noise level sigma(t)")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: pf_drift(f, sde, x, t).float(), "dtype")
    assert "not done yet" in run_check(capsys, exercise_8_4, stub)


# --- 8.5 ----------------------------------------------------------------------------------------


def make_log_likelihood(n_steps=1_000, method="heun", *, scale=0.5, sign=1.0, level=None,
                        power="g2", prior="prior", backwards=False, divergence="drift"):
    """Exercise 8.5's answer by fixed steps, with one of its known mistakes switched on."""
    def ode_log_likelihood(score_fn, divergence_fn, sde, x0):
        at = level or sde.sigma
        g2 = {"g2": sde.g2, "g": sde.diffusion, "sigma2": lambda t: sde.sigma(t) ** 2}[power]
        weight = (lambda t: -scale * g2(t)) if divergence == "drift" else (lambda t: 1.0)
        drift = lambda x, t: -scale * g2(t) * score_fn(x, at(t))  # noqa: E731
        rate = lambda x, t: weight(t) * divergence_fn(x, at(t))  # noqa: E731
        x, integral = x0, torch.zeros(len(x0), dtype=x0.dtype)
        times = torch.linspace(1.0, 0.0, n_steps + 1) if backwards else torch.linspace(
            0.0, 1.0, n_steps + 1)
        for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
            dt = t_next - t
            if method == "euler":
                integral, x = integral + dt * rate(x, t), x + dt * drift(x, t)
                continue
            x_euler = x + dt * drift(x, t)
            integral = integral + 0.5 * dt * (rate(x, t) + rate(x_euler, t_next))
            x = x + 0.5 * dt * (drift(x, t) + drift(x_euler, t_next))
        end = {"prior": x, "start": x0}.get(prior, x)
        log_prior = sde.prior_log_prob(end)
        if prior == "unnormalised":
            log_prior = -0.5 * (end**2).sum(1) / sde.sigma_max**2
        return log_prior + sign * integral
    return ode_log_likelihood


def solve_ivp_log_likelihood(score_fn, divergence_fn, sde, x0):
    """A right answer written another way: SciPy's adaptive solver on the augmented state."""
    import numpy as np
    from scipy.integrate import solve_ivp

    n, dim = x0.shape

    def rhs(t, y):
        x = torch.from_numpy(y[: n * dim]).reshape(n, dim)
        g2 = sde.g2(t)
        drift = -0.5 * g2 * score_fn(x, sde.sigma(t))
        rate = -0.5 * g2 * divergence_fn(x, sde.sigma(t))
        return np.concatenate([drift.reshape(-1).numpy(), rate.numpy()])

    start = np.concatenate([x0.reshape(-1).numpy(), np.zeros(n)])
    end = solve_ivp(rhs, (0.0, 1.0), start, rtol=1e-8, atol=1e-8).y[:, -1]
    x1 = torch.from_numpy(end[: n * dim]).reshape(n, dim)
    return sde.prior_log_prob(x1) + torch.from_numpy(end[n * dim:])


def test_8_5(capsys, monkeypatch):
    assert_passes(capsys, checks.exercise_8_5, make_log_likelihood())
    assert_passes(capsys, checks.exercise_8_5, solve_ivp_log_likelihood)
    assert_passes(capsys, checks.exercise_8_5, make_log_likelihood(5_000, "euler"))
    monkeypatch.setattr(_core, "GRADING", True)  # the hidden case too
    assert_passes(capsys, checks.exercise_8_5, make_log_likelihood(300))
    monkeypatch.setattr(_core, "GRADING", False)
    for wrong, *phrase in [
        (make_log_likelihood(sign=-1.0), "PLUS the integral"),
        (make_log_likelihood(scale=1.0), "reverse SDE's"),
        (make_log_likelihood(level=lambda t: t), "blow up", "noise level sigma(t)"),
        (make_log_likelihood(power="g"), "g(t) instead of g(t)^2"),
        (make_log_likelihood(prior="start"), "prior at x(0)"),
        (make_log_likelihood(prior="unnormalised"), "normalising constant"),
        (make_log_likelihood(divergence="score"), "divergence of the score"),
        (make_log_likelihood(backwards=True), "from t = 1 down to 0"),
        (make_log_likelihood(sign=0.0), "lacks the integral"),
        (make_log_likelihood(power="sigma2"), "sigma(t)^2 instead of g(t)^2"),
        (make_log_likelihood(1_000, "euler"), "discretisation error"),
        (lambda f, d, sde, x0: -make_log_likelihood()(f, d, sde, x0), "negative log-likelihood"),
        (lambda f, d, sde, x0: make_log_likelihood()(f, d, sde, x0) / 2, "per dimension"),
        (lambda f, d, sde, x0: make_log_likelihood()(f, d, sde, x0).float(), "dtype"),
        (lambda f, d, sde, x0: make_log_likelihood()(f, d, sde, x0)[:, None], "shape"),
    ]:
        assert_explains(capsys, checks.exercise_8_5, wrong, *phrase)
    assert "not done yet" in run_check(capsys, checks.exercise_8_5, stub)


def test_8_5_passes_a_fourth_order_solver(capsys):
    assert_passes(capsys, checks.exercise_8_5, make_rk4_log_likelihood(50))


def make_rk4_log_likelihood(n_steps):
    """A right answer by the classical fourth-order Runge-Kutta method on (x, the integral)."""
    def ode_log_likelihood(score_fn, divergence_fn, sde, x0):
        def slopes(x, t):
            g2 = sde.g2(t)
            return (-0.5 * g2 * score_fn(x, sde.sigma(t)),
                    -0.5 * g2 * divergence_fn(x, sde.sigma(t)))

        x, integral, h = x0, torch.zeros(len(x0), dtype=x0.dtype), 1.0 / n_steps
        for k in range(n_steps):
            t = k * h
            k1, l1 = slopes(x, t)
            k2, l2 = slopes(x + h / 2 * k1, t + h / 2)
            k3, l3 = slopes(x + h / 2 * k2, t + h / 2)
            k4, l4 = slopes(x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            integral = integral + h / 6 * (l1 + 2 * l2 + 2 * l3 + l4)
        return sde.prior_log_prob(x) + integral
    return ode_log_likelihood


def test_8_5_an_answer_right_only_on_the_gaussian_is_not_blamed_on_a_crash(capsys):
    """The divergence taken at the start x0 is right for a Gaussian (where it is constant) and
    wrong on the mixture; the check's own wrong flows may overflow there, and must not crash."""
    def divergence_at_start(score_fn, divergence_fn, sde, x0):
        return make_log_likelihood()(score_fn, lambda x, sigma: divergence_fn(x0, sigma), sde,
                                     x0)

    out = run_check(capsys, checks.exercise_8_5, divergence_at_start)
    assert out.startswith("❌") and "mixture" in out and "raised" not in out, out


def test_8_5_names_a_function_that_writes_into_x0(capsys):
    def in_place(score_fn, divergence_fn, sde, x0):
        result = make_log_likelihood()(score_fn, divergence_fn, sde, x0.clone())
        x0.mul_(2.0)
        return result

    assert_explains(capsys, checks.exercise_8_5, in_place, "x0")


@pytest.mark.parametrize("number", ["8.1", "8.2", "8.3", "8.4", "8.5"])
def test_hints_exist_and_stay_short(capsys, number):
    tiers = _core.HINTS[number]
    assert len(tiers) == 3
    _core.hint(number)
    assert f"Hint 1 of 3 for exercise {number}" in capsys.readouterr().out
    _core._hints_shown.pop(number, None)


def _tokens(text: str) -> list[str]:
    import re

    return re.findall(r"\w+|[^\w\s]", text)


def test_no_hint_tier_spells_out_more_than_30_percent_of_the_solution():
    import json
    import re
    from pathlib import Path

    notebook = json.loads((Path(__file__).parents[1] / "solutions" / "08_sde.ipynb").read_text())
    solutions, number = {}, None
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        heading = re.search(r"Exercise (8\.\d)", source)
        if cell["cell_type"] == "markdown" and heading:
            number = heading.group(1)
        if cell["cell_type"] == "code" and "# BEGIN SOLUTION" in source:
            for body in re.findall(r"# BEGIN SOLUTION\n(.*?)# END SOLUTION", source, re.S):
                lines = [line for line in body.splitlines() if not line.strip().startswith("#")]
                solutions[number] = solutions.get(number, "") + "\n".join(lines)
    assert set(solutions) == {"8.1", "8.2", "8.3", "8.4", "8.5"}
    for number, code in solutions.items():
        solution = _tokens(code)
        for tier in _core.HINTS[number]:
            assert lcs(_tokens(tier), solution) <= 0.3 * len(solution), (number, tier)


def test_exercise_metadata_kinds_and_levels():
    import json
    from pathlib import Path

    notebook = json.loads((Path(__file__).parents[1] / "solutions" / "08_sde.ipynb").read_text())
    marked = {c["metadata"]["exercise"]["id"]: c for c in notebook["cells"] if "exercise" in c["metadata"]}
    assert set(marked) == {"8.1", "8.2", "8.3", "8.4", "8.5"}
    kinds = {m["metadata"]["exercise"]["kind"] for m in marked.values()}
    assert kinds == {"derive", "implement", "investigate", "debug"}
    for number, cell in marked.items():
        level = cell["metadata"]["exercise"]["level"]
        assert "".join(cell["source"]).startswith(f"## Exercise {number}:")
        assert "★" * level in "".join(cell["source"]).splitlines()[0]


def authors_step(snr):
    """The corrector in the authors' convention, x + alpha s + sqrt(2 alpha) z: 1 + 2 snr^2."""
    return corrector_ratio(snr, drift=1.0, noise=2.0)


def test_8_3_names_the_authors_step_and_the_formula_in_place_of_a_measurement(capsys):
    assert_explains(capsys, exercise_8_3, authors_step, "1 + 2 snr^2", "authors' convention")
    assert_explains(capsys, exercise_8_3, lambda snr: 1 + snr**2, "not a measurement")


def test_8_4_names_the_score_taken_at_the_variance(capsys):
    def at_variance(score_fn, sde, x, t):
        return -0.5 * sde.g2(t) * score_fn(x, sde.sigma(t) ** 2)

    assert_explains(capsys, exercise_8_4, at_variance, "evaluated at sigma(t)^2")


def test_8_5_refuses_the_packages_log_likelihood(capsys):
    from scorelab.sde import log_likelihood

    def packaged(score_fn, divergence_fn, sde, x0):
        return log_likelihood(score_fn, sde, x0)

    assert_explains(capsys, checks.exercise_8_5, packaged, "calls the package's log_likelihood")


def test_8_1_and_8_3_refuse_the_packages_sde(capsys):
    from scorelab.sde import VESDE, predictor_corrector

    assert_explains(capsys, checks.exercise_8_1,
                    (lambda t, lo, hi: VESDE(lo, hi).sigma(t),
                     lambda t, lo, hi: VESDE(lo, hi).diffusion(t)),
                    "calls the package's VESDE.sigma")

    def by_the_sampler(snr, n_steps=200, seed=0):
        x = math.sqrt(2.0) * torch.randn(1000, 100, generator=torch.Generator().manual_seed(seed))
        out = predictor_corrector(lambda y, s: -y / 2, VESDE(1.0, 1.0 + 1e-9), x, n_steps,
                                  snr=snr, generator=torch.Generator().manual_seed(seed),
                                  progress=False)
        return (out.var() / 2).item()

    assert_explains(capsys, exercise_8_3, by_the_sampler,
                    "calls the package's predictor_corrector")


def test_8_2_names_more_slips(capsys):
    def own_noise(score_fn, beta, x, t, dt, z):
        return vp_step(score_fn, beta, x, t, dt, torch.randn(x.shape))

    def drift_times_sqrt_dt(score_fn, beta, x, t, dt, z):
        drift = 0.5 * beta * x + beta * score_fn(x, t)
        return x + drift * math.sqrt(dt) + math.sqrt(beta * dt) * z

    def exponential(score_fn, beta, x, t, dt, z):
        grow = math.exp(beta * dt / 2)
        return (x * grow + 2 * (grow - 1) * score_fn(x, t)
                + math.sqrt(math.expm1(beta * dt)) * z)

    def ancestral(score_fn, beta, x, t, dt, z):
        return ((x + beta * dt * score_fn(x, t)) / math.sqrt(1 - beta * dt)
                + math.sqrt(beta * dt) * z)

    assert_explains(capsys, exercise_8_2, exponential, "exponential integrator", "valid")
    assert_explains(capsys, exercise_8_2, ancestral, "ancestral", "valid")
    assert_explains(capsys, exercise_8_2, own_noise, "draws noise of its own")
    assert_explains(capsys, exercise_8_2, drift_times_sqrt_dt, "multiplied by sqrt(dt)")


def test_8_4_names_minus_g_s(capsys):
    def g_not_squared(score_fn, sde, x, t):
        return -math.sqrt(sde.g2(t)) * score_fn(x, sde.sigma(t))

    assert_explains(capsys, exercise_8_4, g_not_squared, "the drift is -g s")


# --- a student's tries of chapter 8 ------------------------------------------------------------


def fixed_step_size(snr, n_steps=200):
    """The corrector with its step size computed once, before the loop: 1 / (1 - snr^2)."""
    generator = torch.Generator().manual_seed(0)
    x = math.sqrt(2.0) * torch.randn(1_000, 100, generator=generator)
    alpha = corrector_step_size(-x / 2.0, torch.randn(x.shape, generator=generator), snr)
    for _ in range(n_steps):
        z = torch.randn(x.shape, generator=generator)
        x = x + 0.5 * alpha * (-x / 2.0) + math.sqrt(alpha) * z
    return x.var().item() / 2.0


def test_8_3_names_a_step_size_kept_a_theory_in_float32_and_a_standard_deviation(capsys):
    assert_explains(capsys, exercise_8_3, fixed_step_size, "1 / (1 - snr^2)",
                    "computed once")
    assert_explains(capsys, exercise_8_3, lambda snr: float(1 + torch.tensor(snr) ** 2),
                    "not a measurement")
    assert_explains(capsys, exercise_8_3, lambda snr: math.sqrt(2 * measure(snr)) / 2,
                    "standard deviation over the target's variance")


def test_8_2_names_a_missing_noise_and_an_ignored_z(capsys):
    def own_seed(score_fn, beta, x, t, dt, z):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        return vp_step(score_fn, beta, x, t, dt, noise)

    assert_explains(capsys, exercise_8_2, _vp(noise=lambda b, dt: 0.0), "noise")
    assert_explains(capsys, exercise_8_2, own_seed, "same result for z and for -z")


def test_8_4_names_a_base_10_logarithm_and_refuses_the_packages_drift(capsys):
    from scorelab.sde import _ode_drift

    def log10_drift(score_fn, sde, x, t):
        g2 = 2 * sde.sigma(t) ** 2 * math.log10(sde.sigma_max / sde.sigma_min)
        return -0.5 * g2 * score_fn(x, sde.sigma(t))

    assert_explains(capsys, exercise_8_4, log10_drift, "base-10 logarithm")
    assert_explains(capsys, exercise_8_4, _ode_drift, "calls the package's")


def test_8_5_names_bits_and_a_constant_offset_and_refuses_the_packages_flow(capsys):
    from scorelab.sde import probability_flow

    right = make_log_likelihood()

    def in_bits(score_fn, divergence_fn, sde, x0):
        return right(score_fn, divergence_fn, sde, x0) / math.log(2.0)

    def without_two_pi(score_fn, divergence_fn, sde, x0):
        return right(score_fn, divergence_fn, sde, x0) + x0.shape[1] / 2 * math.log(2 * math.pi)

    def along_the_package_flow(score_fn, divergence_fn, sde, x0):
        probability_flow(score_fn, sde, x0, direction="forward")  # x(1), then the integral
        return right(score_fn, divergence_fn, sde, x0)

    assert_explains(capsys, checks.exercise_8_5, in_bits, "bits")
    assert_explains(capsys, checks.exercise_8_5, without_two_pi, "off by the same",
                    "normalising constant")
    assert_explains(capsys, checks.exercise_8_5, along_the_package_flow,
                    "calls the package's", "probability_flow")


def test_8_3_checks_the_prediction_and_names_wrong_derivations(capsys):
    check = checks.exercise_8_3
    assert_passes(capsys, check, predicted_variance_ratio, measure)
    for wrong, phrase in [(lambda r: 1 / (1 - r**2), "from the target's variance"),
                          (lambda r: 1 + 2 * r**2, "authors' step"),
                          (lambda r: math.sqrt(1 + r**2), "standard deviations"),
                          (lambda r: 1.0, "does not remove"),
                          (lambda r: 1 + r, "proportional to r^2"),
                          (lambda r: measure(r), "is it a measurement"),
                          (lambda r: 2 + r, "what step alpha")]:
        assert_explains(capsys, check, (wrong, measure), phrase)
    assert "not done yet" in run_check(capsys, check, stub, measure)


def test_8_4_checks_the_derived_variance_of_the_bug(capsys):
    check = checks.exercise_8_4
    assert_passes(capsys, check, pf_drift, buggy_variance)
    start = lambda v, lo, hi: v + hi**2  # noqa: E731
    end = lambda v, lo, hi: v + lo**2  # noqa: E731
    for wrong, phrase in [(end, "fixed flow"),
                          (start, "start with"),
                          (lambda *a: start(*a) / end(*a), "multiply by"),
                          (lambda *a: (start(*a) / end(*a)) ** 0.5, "scales x"),
                          (lambda v, lo, hi: (v + hi**2) ** 2 / v, "sigma(0) = sigma_min"),
                          (lambda v, lo, hi: hi**2 * start(v, lo, hi) / end(v, lo, hi),
                           "from the prior"),
                          (lambda *a: end(*a) ** 2 / start(*a), "twice the size"),
                          (lambda *a: 1.02 * buggy_variance(*a), "measured, or approximated"),
                          (lambda *a: 1.0, "derivative of a logarithm")]:
        assert_explains(capsys, check, (pf_drift, wrong), phrase)
    assert "not done yet" in run_check(capsys, check, pf_drift, stub)


def test_8_3_names_a_half_step_a_full_drift_and_a_narrower_law(capsys):
    for wrong, phrase in [(lambda r: 1 + r**2 / 2, "half the rule's step"),
                          (lambda r: (1 + 4 * r**2) / 2, "lacks the course's 1/2"),
                          (lambda r: 1 - r**2, "never narrows"),
                          (lambda r: math.exp(r**2), "what step alpha")]:
        assert_explains(capsys, checks.exercise_8_3, (wrong, measure), phrase)


# --- 8.2's variance recursion and steps_needed ----------------------------------------------------


def test_8_2_accepts_a_float32_recursion(capsys, grading):
    def in_float32(v, sigma_min, sigma_max, n_steps):
        from scorelab.sde import VESDE

        sde, variance = VESDE(sigma_min, sigma_max), torch.tensor(v + sigma_max**2)
        for t in torch.linspace(1.0, 0.0, n_steps + 1)[:-1]:
            g2, level2 = sde.g2(t), sde.sigma(t) ** 2
            variance = (1 - g2 / n_steps / (v + level2)) ** 2 * variance + g2 / n_steps
        return float(variance)

    for steps in (153, 153.0):
        assert_passes(capsys, checks.exercise_8_2, vp_step, in_float32, steps)


@pytest.mark.parametrize(
    "answer, phrases",
    [
        (lambda v, a, b, n: em_variance(v, a, b, n, at_end=True), ["at the end of the step"]),
        (lambda v, a, b, n: em_variance(v, a, b, n, squared=False), ["does not square"]),
        (lambda v, a, b, n: v + a**2, ["exact SDE's variance", "leave 2.607"]),
        (lambda v, a, b, n: 1.005 * em_variance(v, a, b, n), ["is it simulated?"]),
        (lambda v, a, b, n: [em_variance(v, a, b, n)], ["em_variance(2, 0.01, 50, 10)"]),
    ],
)
def test_8_2_names_wrong_variance_recursions(capsys, answer, phrases):
    assert_explains(capsys, checks.exercise_8_2, (vp_step, answer, 153), *phrases)


def _em_variance_with(v, sigma_min, sigma_max, n_steps, *, start=None, spread="perturbed",
                      steps=None):
    """em_variance with a slip: the start, the variance in the score, the number of steps."""
    n = n_steps if steps is None else steps(n_steps)
    log_ratio, dt = math.log(sigma_max / sigma_min), 1.0 / n
    variance = v + sigma_max**2 if start is None else start(v, sigma_max)
    for k in range(n):
        level2 = (sigma_min * (sigma_max / sigma_min) ** (1.0 - k * dt)) ** 2
        g2 = 2 * level2 * log_ratio
        shrink = 1 - g2 * dt / (v if spread == "clean" else v + level2)
        variance = shrink**2 * variance + g2 * dt
    return variance


@pytest.mark.parametrize(
    "kwargs, phrase",
    [(dict(start=lambda v, s: s**2), "prior's variance"), (dict(start=lambda v, s: v), "data's"),
     (dict(spread="clean"), "clean data's score"), (dict(steps=lambda n: n + 1), "n + 1 steps")],
    ids=["prior start", "data start", "clean score", "n + 1 steps"],
)
def test_8_2_names_the_start_the_score_and_the_number_of_steps(capsys, kwargs, phrase):
    def answer(v, sigma_min, sigma_max, n_steps):
        return _em_variance_with(v, sigma_min, sigma_max, n_steps, **kwargs)

    assert_explains(capsys, checks.exercise_8_2, (vp_step, answer, 153), phrase)


def test_8_2_names_a_step_without_noise_without_blaming_a_seed(capsys):
    def flow_step(score_fn, beta, x, t, dt, z):  # the probability-flow ODE's step
        return x + 0.5 * (beta * x + beta * score_fn(x, t)) * dt

    assert_explains(capsys, checks.exercise_8_2, (flow_step, em_variance, 153),
                    "z never enters it", "noise term is missing")


@pytest.mark.parametrize("steps, phrase", [(49, "within 1 %"), (100, "more than 0.1 %"),
                                           (152, "more than 0.1 %"), (154, "n + 1 of them"),
                                           (200, "take the smallest"), (152.5, "whole number"),
                                           ("many", "should be a number")])
def test_8_2_explains_wrong_step_counts(capsys, steps, phrase):
    assert_explains(capsys, checks.exercise_8_2, (vp_step, em_variance, steps), phrase)


def test_8_2_waits_for_steps_needed(capsys):
    assert run_check(capsys, checks.exercise_8_2, vp_step, em_variance, ...).startswith("⏳")


def test_8_4_names_a_drift_taken_at_1_minus_t_and_a_drift_that_points_the_other_way(capsys):
    def at_reversed_time(sign):
        return lambda f, sde, x, t: sign * 0.5 * sde.g2(1.0 - t) * f(x, sde.sigma(1.0 - t))

    assert_explains(capsys, exercise_8_4, at_reversed_time(-1), "taken at 1 - t",
                    "already passes")
    assert_explains(capsys, exercise_8_4, at_reversed_time(+1), "taken at 1 - t", "sign")
    assert_explains(capsys, exercise_8_4, lambda f, sde, x, t: -0.5 * sde.g2(t) * x,
                    "points the opposite way")
