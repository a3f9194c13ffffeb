"""Bad input gives a clear ValueError naming the argument; random valid densities stay well behaved.

Complements tests/test_densities.py (whose property test covers score = autograd and the far
field of random mixtures) with: random *invalid* parameters always raise ValueError (never an
obscure error or a silently wrong object), random bananas against autograd and far away, and a
table of wrong shapes, dtypes, devices ('meta'), NaN values and wrong types for every public
function of densities, langevin, nets, training and metrics.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scorelab import langevin, metrics, nets, training
from scorelab.densities import Banana, GaussianMixture, ncsn_toy_mixture
from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics, mala
from scorelab.noise import geometric_sigmas

NAN_POINTS = torch.tensor([[0.0, 0.0], [float("nan"), 1.0]])
META_POINTS = torch.zeros(3, 2, device="meta")
INT_POINTS = torch.zeros(3, 2, dtype=torch.long)


def _autograd_score(log_prob_fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob_fn(x).sum(), x)
    return grad


# ---------------------------------------------------------------- property-based: densities

finite = st.floats(-5.0, 5.0, allow_nan=False)
bad_number = st.sampled_from([float("nan"), float("inf"), -float("inf")])


@st.composite
def invalid_mixture_arguments(draw):
    """Arguments of GaussianMixture with exactly one thing wrong, chosen at random."""
    k, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    weights = [1.0 / k] * k
    means = [[draw(finite) for _ in range(d)] for _ in range(k)]
    covariances = [1.0] * k
    fault = draw(st.sampled_from(["sum", "negative", "weight shape", "means shape", "cov shape",
                                  "variance", "not symmetric", "not definite", "non-finite"]))
    if fault == "sum":
        factor = draw(st.sampled_from([0.5, 0.9, 1.01, 2.0]))  # one factor, so the sum is off
        weights = [w * factor for w in weights]
    elif fault == "negative":
        weights = [*weights[:-1], -0.25] if k > 1 else [-1.0]
        if k > 1:
            weights[0] += 1.0 - sum(weights)  # sums to one, one weight negative
    elif fault == "weight shape":
        weights = [weights]
    elif fault == "means shape":
        means = draw(st.sampled_from([means[0], [*means, means[0]], [[row] for row in means]]))
    elif fault == "cov shape":
        covariances = [1.0] * (k + 1)
    elif fault == "variance":
        covariances = [*covariances[:-1], draw(st.sampled_from([0.0, -1.0, -1e-9]))]
    elif fault in ("not symmetric", "not definite"):
        matrix = torch.eye(max(d, 2))[:d, :d].clone()
        if d == 1:
            matrix[0, 0] = -1.0
        elif fault == "not symmetric":
            matrix[0, 1] = 0.5
        else:
            matrix[0, 1] = matrix[1, 0] = 2.0  # eigenvalues 3 and -1
        covariances = matrix.expand(k, d, d).tolist()
    else:
        where = draw(st.sampled_from(["weights", "means", "covariances"]))
        value = draw(bad_number)
        if where == "weights":
            weights = [value, *weights[1:]]
        elif where == "means":
            means[0][0] = value
        else:
            covariances = [value, *covariances[1:]]
    return weights, means, covariances


@settings(max_examples=150, deadline=None)
@given(arguments=invalid_mixture_arguments())
def test_property_invalid_mixture_parameters_always_raise_value_error(arguments):
    weights, means, covariances = arguments
    with pytest.raises(ValueError, match="weights|means|covariances"):
        GaussianMixture(weights, means, covariances)


@settings(max_examples=60, deadline=None)
@given(curvature=st.one_of(st.floats(-1e3, -1e-6), bad_number),
       scale=st.floats(0.1, 10.0))
def test_property_invalid_banana_raises_value_error(curvature, scale):
    with pytest.raises(ValueError, match="curvature"):
        Banana(curvature=curvature, scale=scale)
    with pytest.raises(ValueError, match="scale"):
        Banana(curvature=0.1, scale=-scale)


@settings(max_examples=40, deadline=None)
@given(curvature=st.floats(0.0, 2.0), scale=st.floats(0.2, 10.0), sigma=st.floats(0.05, 10.0),
       seed=st.integers(0, 2**16))
def test_property_banana_scores_are_gradients_and_finite_far_away(curvature, scale, sigma, seed):
    generator = torch.Generator().manual_seed(seed)
    banana = Banana(curvature=curvature, scale=scale)
    x = 3.0 * torch.randn(16, 2, generator=generator, dtype=torch.float64)
    for density in (banana, banana.perturbed(sigma)):
        torch.testing.assert_close(density.score(x), _autograd_score(density.log_prob, x),
                                   rtol=1e-5, atol=1e-5)
    directions = torch.nn.functional.normalize(torch.randn(16, 2, generator=generator), dim=1)
    far = directions * torch.logspace(0, 4, 16)[:, None]  # |x| from 1 to 1e4, float32
    for density in (banana, banana.perturbed(sigma)):
        assert torch.isfinite(density.log_prob(far)).all()
        assert torch.isfinite(density.score(far)).all()


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(0.01, 50.0), seed=st.integers(0, 2**16))
def test_property_perturbed_mixture_is_finite_far_away_in_both_precisions(sigma, seed):
    generator = torch.Generator().manual_seed(seed)
    mixture = GaussianMixture([0.3, 0.7], [[0.0, 4.0], [-2.0, 1.0]], [[[0.5, 0.2], [0.2, 0.3]], [[2.0, 0.0], [0.0, 0.1]]])
    directions = torch.nn.functional.normalize(torch.randn(32, 2, generator=generator), dim=1)
    far = directions * torch.logspace(0, 4, 32)[:, None]
    for density in (mixture, mixture.perturbed(sigma)):
        for x in (far, far.double()):
            assert torch.isfinite(density.log_prob(x)).all()
            assert torch.isfinite(density.score(x)).all()
            assert density.score(x).dtype == x.dtype


# ---------------------------------------------------------------- bad points: densities

DENSITIES = {"mixture": ncsn_toy_mixture(), "banana": Banana(), "perturbed banana": Banana().perturbed(1.0),
             "perturbed mixture": ncsn_toy_mixture().perturbed(2.0)}
BAD_POINTS = {
    "NaN": (NAN_POINTS, "x must contain only finite values"),
    "infinity": (torch.tensor([[math.inf, 0.0]]), "x must contain only finite values"),
    "meta device": (META_POINTS, "x must hold values on a real device"),
    "integer dtype": (INT_POINTS, "x must be a floating-point tensor"),
    "rank 3": (torch.zeros(2, 2, 2), r"x must have shape \(N, D\)"),
    "wrong D": (torch.zeros(4, 3), r"x must have shape \(N, 2\)"),
    "a list": ([[0.0, 0.0]], "x must be a torch.Tensor"),
}


@pytest.mark.parametrize("density", list(DENSITIES))
@pytest.mark.parametrize("method", ["log_prob", "prob", "score"])
@pytest.mark.parametrize("bad", list(BAD_POINTS))
def test_density_methods_reject_bad_points(density, method, bad):
    x, match = BAD_POINTS[bad]
    with pytest.raises(ValueError, match=match):
        getattr(DENSITIES[density], method)(x)


@pytest.mark.parametrize("density", list(DENSITIES))
def test_sample_rejects_bad_arguments(density):
    sample = DENSITIES[density].sample
    for n in (0, -3, 2.5, "10", True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            sample(n)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sample(4, generator=0)


# ---------------------------------------------------------------- bad arguments: samplers


def _score(x):
    return -x


def _sigma_score(x, sigma):
    return -x / (1 + sigma**2)


def _run_langevin(*, x0=None, score_fn=_score, step_size=0.1, n_steps=3, **options):
    x0 = torch.zeros(4, 2) if x0 is None else x0
    return langevin_dynamics(score_fn, x0, step_size, n_steps, progress=False, **options)


def _run_annealed(*, x0=None, score_fn=None, step_size=0.1, n_steps=3, **options):
    x0 = torch.zeros(4, 2) if x0 is None else x0
    sigma_score = _sigma_score if score_fn is None else (lambda x, sigma: score_fn(x))
    return annealed_langevin_dynamics(sigma_score, x0, [2.0, 1.0], step_size, n_steps, progress=False,
                                      **options)


def _run_mala(*, x0=None, score_fn=_score, step_size=0.1, n_steps=3, **options):
    x0 = torch.zeros(4, 2) if x0 is None else x0
    return mala(lambda x: -0.5 * x.square().sum(1), score_fn, x0, step_size, n_steps, progress=False,
                **options)


SAMPLERS = {"langevin": _run_langevin, "annealed": _run_annealed, "mala": _run_mala}
BAD_SAMPLER_ARGUMENTS = {
    "x0 NaN": ({"x0": NAN_POINTS}, "x0 must contain only finite values"),
    "x0 inf": ({"x0": torch.tensor([[math.inf, 0.0]])}, "x0 must contain only finite values"),
    "x0 meta": ({"x0": META_POINTS}, "x0 must hold values on a real device"),
    "x0 integer": ({"x0": INT_POINTS}, "x0 must be a floating-point tensor"),
    "x0 no batch": ({"x0": torch.zeros(3)}, r"x0 must be a non-empty tensor of shape \(N, \*D\)"),
    "x0 empty": ({"x0": torch.zeros(0, 2)}, r"x0 must be a non-empty tensor of shape \(N, \*D\)"),
    "x0 list": ({"x0": [[0.0, 0.0]]}, r"x0 must be a non-empty tensor of shape \(N, \*D\), at least 2-D .*, got list"),
    "step zero": ({"step_size": 0.0}, "step_size must be a positive"),
    "step NaN": ({"step_size": math.nan}, "step_size must be a positive"),
    "step string": ({"step_size": "a"}, "step_size must be a positive"),
    "steps float": ({"n_steps": 3.0}, "must be a positive integer"),
    "steps zero": ({"n_steps": 0}, "must be a positive integer"),
    "record_every zero": ({"return_trajectory": True, "record_every": 0}, "record_every must be a positive integer"),
    "check_every zero": ({"check_every": 0}, "check_every must be a positive integer"),
    "generator wrong type": ({"generator": 1234}, "generator must be a torch.Generator"),
    "score wrong shape": ({"score_fn": lambda x: x[:, 0]}, "score_fn must return a tensor of the input's shape"),
    "score None": ({"score_fn": lambda x: None}, "score_fn must return a tensor of the input's shape"),
    "score other device": ({"score_fn": lambda x: torch.zeros(x.shape, device="meta")},
                           "score_fn must return a tensor on the particles' device"),
    "score integer": ({"score_fn": lambda x: torch.zeros(x.shape, dtype=torch.long)},
                      "score_fn must return a floating-point tensor"),
    "score NaN": ({"score_fn": lambda x: torch.full_like(x, math.nan)}, r"NaN or infinite (by step \d+|values at x0)"),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("bad", list(BAD_SAMPLER_ARGUMENTS))
def test_samplers_reject_bad_arguments(sampler, bad):
    arguments, match = BAD_SAMPLER_ARGUMENTS[bad]
    with pytest.raises(ValueError, match=match):
        SAMPLERS[sampler](**dict(arguments))


@pytest.mark.parametrize(
    "sigmas, match",
    [([1.0, 2.0], "strictly decreasing"), ([], "at least one"), ([2.0, -1.0], "positive finite"),
     ([math.nan], "positive finite"), ([[2.0, 1.0]], r"sigmas must have shape \(L,\)"),
     ("abc", "sigmas must be a sequence of positive numbers")],
)
def test_annealed_rejects_bad_sigmas(sigmas, match):
    with pytest.raises(ValueError, match=match):
        annealed_langevin_dynamics(_sigma_score, torch.zeros(4, 2), sigmas, 0.1, 2, progress=False)


@pytest.mark.parametrize(
    "arguments, match",
    [((1.0, 2.0, 3), "sigma_min must be smaller"), ((math.nan, 1.0, 3), "sigma_max must be a positive"),
     ((2.0, 0.0, 3), "sigma_min must be a positive"), ((2.0, 1.0, 0), "n_levels must be a positive integer"),
     ((2.0, 1.0, 2.5), "n_levels must be a positive integer")],
)
def test_geometric_sigmas_rejects_bad_arguments(arguments, match):
    with pytest.raises(ValueError, match=match):
        geometric_sigmas(*arguments)


def test_mala_rejects_a_log_prob_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"log_prob_fn must return a tensor of shape \(4,\)"):
        mala(lambda x: x, _score, torch.zeros(4, 2), 0.1, 2, progress=False)


def test_diverging_sampler_names_the_step_and_suggests_a_smaller_step():
    with pytest.raises(ValueError, match=r"by step \d+ .*try a smaller step_size"):
        langevin_dynamics(lambda x: 1e30 * x.abs() + 1.0, torch.ones(4, 2), 10.0, 200, progress=False)


# ---------------------------------------------------------------- trajectory memory announcement


def test_trajectory_bytes_counts_the_frames():
    x0 = torch.zeros(100_000, 2)
    # 1 + 1000 // 10 frames of 100,000 x 2 float32 numbers.
    assert langevin.trajectory_bytes(x0, 1000, 10) == 101 * 100_000 * 2 * 4
    assert langevin.trajectory_bytes(x0.double(), 1000, 10, extra=1) == 102 * 100_000 * 2 * 8


def test_progress_bar_states_the_trajectory_size(capsys):
    langevin_dynamics(_score, torch.zeros(1000, 2), 0.1, 20, return_trajectory=True, record_every=10,
                      progress=True)
    # 3 frames of 1000 x 2 float32 numbers = 24,000 bytes.
    assert "keeping 24.0 kB" in capsys.readouterr().err


def test_large_trajectory_warns_with_its_size_before_sampling(monkeypatch):
    monkeypatch.setattr(langevin, "TRAJECTORY_WARNING_BYTES", 10_000)
    calls = []
    with pytest.warns(UserWarning, match=r"return_trajectory will keep 3 frames .*: 24000 bytes") as record:
        with pytest.raises(ValueError):  # fail at the first score, to show the warning came first
            langevin_dynamics(lambda x: calls.append(1) or None, torch.zeros(1000, 2), 0.1, 20,
                              return_trajectory=True, record_every=10, progress=False)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert calls == [1]


def test_small_trajectory_and_no_trajectory_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        langevin_dynamics(_score, torch.zeros(1000, 2), 0.1, 20, return_trajectory=True, record_every=10,
                          progress=False)
        annealed_langevin_dynamics(_sigma_score, torch.zeros(1000, 2), [2.0, 1.0], 0.1, 20, progress=False)


# ---------------------------------------------------------------- nets, training, metrics



def _trainers():
    return {
        "DSM": training.DenoisingScoreMatching(nets.BasicNetwork(2, hidden_dims=(8,)), sigma=0.5),
        "SSM": training.SlicedScoreMatching(nets.BasicNetwork(2, hidden_dims=(8,))),
        "exact SM": training.ExactScoreMatching(nets.BasicNetwork(2, hidden_dims=(8,))),
    }


@pytest.mark.parametrize("x, match", [(torch.zeros(3, 5), r"x must have shape \(N, 2\)"),
                                      (torch.zeros(2, 2, 2), r"x must have shape \(N, 2\)")])
def test_basic_network_rejects_wrong_shapes(x, match):
    with pytest.raises(ValueError, match=match):
        nets.BasicNetwork(2)(x)


@pytest.mark.parametrize("arguments, match", [({"input_dim": 0}, "input_dim"), ({"activation": "x"}, "activation"),
                                              ({"hidden_dims": ()}, "hidden_dims")])
def test_basic_network_rejects_bad_settings(arguments, match):
    with pytest.raises(ValueError, match=match):
        nets.BasicNetwork(**{"input_dim": 2, **arguments})


@pytest.mark.parametrize("labels, match", [(torch.zeros(3), r"labels must be an integer tensor of shape \(3,\).*got dtype"),
                                           (torch.full((3,), 5), "labels must lie in"),
                                           (torch.zeros(2, dtype=torch.long), r"labels must be an integer tensor of shape \(3,\).*got shape \(2,\)")])
def test_noise_conditional_network_rejects_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        nets.NoiseConditionalNetwork(2, n_levels=3)(torch.zeros(3, 2), labels)


@pytest.mark.parametrize("trainer", ["DSM", "SSM", "exact SM"])
@pytest.mark.parametrize("x, match", [(torch.zeros(3, 5), r"x must have shape \(N, 2\)"),
                                      (torch.zeros(3), r"x must be a non-empty tensor of shape \(N, \*D\)")])
def test_trainer_losses_reject_wrong_shapes(trainer, x, match):
    with pytest.raises(ValueError, match=match):
        _trainers()[trainer].loss(x)


@pytest.mark.parametrize("trainer", ["DSM", "SSM", "exact SM"])
@pytest.mark.parametrize("arguments, match", [({"batch_size": 0}, "batch_size"), ({"n_steps": -1}, "n_steps")])
def test_trainer_train_rejects_bad_settings(trainer, arguments, match):
    with pytest.raises(ValueError, match=match):
        _trainers()[trainer].train(torch.zeros(10, 2), **{"n_steps": 1, "batch_size": 2, **arguments},
                                   progress=False)


@pytest.mark.parametrize("trainer", ["DSM", "SSM", "exact SM"])
def test_trainer_step_on_nan_data_stops_with_an_error(trainer):
    objective = _trainers()[trainer]
    before = [p.detach().clone() for p in objective.model.parameters()]
    with pytest.raises(ValueError, match="x must contain only finite values"):
        objective.step(NAN_POINTS)
    assert all(torch.equal(a, b) for a, b in zip(before, objective.model.parameters()))


@pytest.mark.parametrize("arguments, match", [
    ({"sigma": 0.0}, "sigma must be a positive"),
])
def test_dsm_rejects_bad_sigma(arguments, match):
    with pytest.raises(ValueError, match=match):
        training.DenoisingScoreMatching(nets.BasicNetwork(2), **arguments)


@pytest.mark.parametrize("arguments, match", [({"n_projections": 0}, "n_projections"),
                                              ({"projection": "x"}, "projection must be one of")])
def test_ssm_rejects_bad_settings(arguments, match):
    with pytest.raises(ValueError, match=match):
        training.SlicedScoreMatching(nets.BasicNetwork(2), **arguments)


@pytest.mark.parametrize("name", ["mmd", "energy", "mode_weights"])
@pytest.mark.parametrize("x, match", [(INT_POINTS, "x must be a floating-point tensor"),
                                      (torch.zeros(3, 5), r"must have shape \(N, [25]\)")])
def test_metrics_reject_wrong_dtypes_and_shapes(name, x, match):
    functions = {
        "mmd": lambda x: metrics.mmd(x, torch.zeros(4, 2)),
        "energy": lambda x: metrics.energy_distance(x, torch.zeros(4, 2)),
        "mode_weights": lambda x: metrics.mode_weights(x, torch.zeros(2, 2)),
    }
    with pytest.raises(ValueError, match=match):
        functions[name](x)


def test_fisher_divergence_rejects_nan_and_meta_points_and_wrong_score_shapes():
    for x, match in [(torch.tensor([[math.nan, 0.0], [0.0, 0.0]]), "x must contain only finite values"),
                     (META_POINTS, "x must hold values on a real device")]:
        with pytest.raises(ValueError, match=match):
            metrics.fisher_divergence(ncsn_toy_mixture().score, ncsn_toy_mixture().score, x)
    with pytest.raises(ValueError, match="score_fn must return a tensor of the input's shape"):
        metrics.fisher_divergence(lambda x: x[:, 0], _score, torch.zeros(3, 2))


# Bad inputs to the networks, the trainers and the metrics: each must raise a ValueError.
FINITE, META, FLOAT = "x must contain only finite", "x must hold values", "x must be a floating-point"
BAD_CALLS = {  # case: (call, what the ValueError must say)
    "BasicNetwork(NaN x)": (lambda: nets.BasicNetwork(2)(NAN_POINTS), FINITE),
    "BasicNetwork(meta x)": (lambda: nets.BasicNetwork(2)(META_POINTS), META),
    "BasicNetwork(integer x)": (lambda: nets.BasicNetwork(2)(INT_POINTS), FLOAT),
    "BasicNetwork(float64 x)": (lambda: nets.BasicNetwork(2)(torch.zeros(3, 2, dtype=torch.float64)),
                                "x must have the network's dtype torch.float32"),
    "NoiseConditionalNetwork(NaN x)": (lambda: nets.NoiseConditionalNetwork(2, n_levels=3)(
        NAN_POINTS, torch.zeros(2, dtype=torch.long)), FINITE),
    "DSM.loss(NaN x)": (lambda: _trainers()["DSM"].loss(NAN_POINTS), FINITE),
    "SSM.loss(meta x)": (lambda: _trainers()["SSM"].loss(META_POINTS), META),
    "DSM.loss(integer x)": (lambda: _trainers()["DSM"].loss(INT_POINTS), FLOAT),
    "AnnealedDSM(increasing sigmas)": (lambda: training.AnnealedDenoisingScoreMatching(
        nets.NoiseConditionalNetwork(2, n_levels=3), sigmas=[1.0, 2.0, 3.0]), "sigmas must be strictly decreasing"),
    "fisher_divergence(integer x, generic score)": (
        lambda: metrics.fisher_divergence(_score, _score, INT_POINTS), FLOAT),
    "mmd(meta x)": (lambda: metrics.mmd(META_POINTS, torch.zeros(4, 2)), META),
    "mode_weights(NaN x)": (lambda: metrics.mode_weights(NAN_POINTS, torch.zeros(2, 2)), FINITE),
    "classifier_confidence(None classifier)": (
        lambda: metrics.classifier_confidence(None, torch.zeros(5, 64)), "classifier must be a fitted classifier"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_nets_training_metrics_reject_bad_input(case):
    call, message = BAD_CALLS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# ---------------------------------------------------------------- checkpoints: a real kill mid-write

_KILLED_WRITER = """
import io, os, signal, sys
import torch
from scorelab.ncsn import NCSN, train_NCSN
from scorelab.noise import geometric_sigmas
from scorelab.ncsn import checkpoints

out = sys.argv[1]
torch.manual_seed(0)
model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
train_NCSN(model, torch.rand(16, 1, 8, 8), n_steps=4, batch_size=4, out_dir=out,
           checkpoint_every=2, progress=False)
real_save = torch.save

def half_then_die(obj, handle):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    handle.write(data[: len(data) // 2])
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # the process dies here, half-way through the file

checkpoints.torch.save = half_then_die
checkpoints.save_weights(os.path.join(out, "checkpoints", "step_0000006.pt"), model)
"""


def test_checkpoint_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    """tests/test_ncsn_checkpoints.py simulates the interrupted write in-process; here the writing
    process really dies (SIGKILL) with half a file on disk, so no cleanup code gets to run."""
    import signal
    import subprocess
    import sys

    from scorelab.ncsn import latest_checkpoint, load_checkpoint

    completed = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], timeout=120)
    assert completed.returncode == -signal.SIGKILL
    folder = tmp_path / "checkpoints"
    leftovers = [path.name for path in folder.iterdir() if path.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step_0000006.pt.")  # the half file
    assert not (folder / "step_0000006.pt").exists()
    assert latest_checkpoint(tmp_path) == folder / "step_0000004.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path)).config()["ngf"] == 2


# --- silently wrong input found by a review: now a clear error (or a warning) ------------------


def test_a_ladder_of_another_length_than_the_model_is_refused():
    from scorelab.scores import as_score_fn

    net = nets.NoiseConditionalNetwork(2, 3, sigmas=[1.0, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"sigmas must hold as many levels as the model has \(3\), got 2"):
        as_score_fn(net, [1.0, 0.1])
    with pytest.raises(ValueError, match=r"as many levels as the model has \(3\), got 4"):
        training.annealed_dsm_loss(net, torch.zeros(4, 2), [2.0, 1.0, 0.5, 0.1])


@pytest.mark.parametrize("call, name", [
    (lambda: __import__("scorelab.data", fromlist=["x"]).load_digits(dequantize="no"), "dequantize"),
    (lambda: training.mixed_precision("cpu", "no"), "amp"),
    (lambda: metrics.fisher_divergence(lambda x: -x, lambda x: -x, torch.zeros(3, 2),
                                       relative="no"), "relative"),
    (lambda: annealed_langevin_dynamics(lambda x, s: -x, torch.zeros(3, 2), [1.0, 0.5], 0.1, 2,
                                        denoise="no", progress=False), "denoise"),
])
def test_a_truthy_string_is_not_taken_for_true(call, name):
    with pytest.raises(ValueError, match=f"{name} must be True or False, got 'no'"):
        call()


def test_numbers_given_as_strings_and_one_level_ladders_upside_down_are_refused():
    with pytest.raises(ValueError, match="step_size must be a positive number, got '0.1'"):
        langevin_dynamics(lambda x: -x, torch.zeros(3, 2), "0.1", 5, progress=False)
    with pytest.raises(ValueError, match="sigma_min must be smaller than sigma_max"):
        geometric_sigmas(1.0, 5.0, 1)
    assert geometric_sigmas(1.0, 0.5, 1).tolist() == [1.0]


def test_explorers_refuse_a_start_outside_their_sliders():
    pytest.importorskip("ipywidgets")
    from scorelab import widgets

    with pytest.raises(ValueError, match=r"step_size must start inside the slider's range"):
        widgets.langevin_explorer(step_size=100)
    with pytest.raises(ValueError, match=r"weight must start inside the slider's range"):
        widgets.mixture_explorer(weight=0.99)
    with pytest.raises(ValueError, match=r"sigma must start inside"):
        widgets.dsm_explorer(sigma=10)


def test_trainer_run_names_batches_that_run_out():
    objective = _trainers()["DSM"]
    three = [torch.randn(4, 2) for _ in range(3)]
    with pytest.raises(ValueError, match=r"batches ran out before step 4 of n_steps=5.*Batches"):
        objective.run(three, 5, progress=False)


def test_moving_average_refuses_a_model_of_another_architecture():
    average = training.exponential_moving_average(nets.BasicNetwork(2), 0.9)
    with pytest.raises(ValueError, match="model must have the parameters of the averaged model"):
        average.update_parameters(nets.BasicNetwork(3))
