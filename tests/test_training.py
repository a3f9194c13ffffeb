"""Score-matching losses against independent computations, minimisers, training and bad input."""

import math

import pytest
import torch
from torch import nn

from scorelab.densities import GaussianMixture
from scorelab.metrics import fisher_divergence
from scorelab.nets import BasicNetwork, NoiseConditionalNetwork
from scorelab.training import (
    AnnealedDenoisingScoreMatching,
    Batches,
    DenoisingScoreMatching,
    ExactScoreMatching,
    SlicedScoreMatching,
    TrainingDivergedError,
    annealed_dsm_loss,
    dsm_loss,
    exact_score_matching_loss,
    exponential_moving_average,
    sliced_score_matching_loss,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class AffineScore(nn.Module):
    """s(x) = A x + b: its Jacobian is A everywhere, so every loss has a closed form."""

    def __init__(self, matrix: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x):
        return x @ self.matrix.T + self.bias


def fixed_affine(dtype=torch.float64):
    matrix = torch.tensor([[-1.0, 0.3, 0.0], [0.5, -2.0, 0.2], [0.1, 0.4, -0.7]], dtype=dtype)
    return AffineScore(matrix, torch.tensor([0.2, -0.1, 0.3], dtype=dtype))


def points(n=4, dim=3, seed=1, dtype=torch.float64):
    return torch.randn(n, dim, generator=seeded(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Each loss equals an independent computation
# ----------------------------------------------------------------------------------------------


def test_dsm_loss_equals_its_definition():
    model, x, sigma = fixed_affine(), points(), 0.7
    loss = dsm_loss(model, x, sigma, generator=seeded(5))
    noise = torch.randn(x.shape, generator=seeded(5), dtype=x.dtype)
    x_noisy = x + sigma * noise
    target = -(x_noisy - x) / sigma**2  # score of N(x_noisy; x, sigma^2 I)
    expected = 0.5 * ((model(x_noisy) - target) ** 2).sum(dim=1)
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, expected)


def test_exact_loss_equals_jacobian_trace_of_a_network():
    torch.manual_seed(0)
    model = BasicNetwork(input_dim=3, hidden_dims=(16, 16)).double()
    x = points()
    loss = exact_score_matching_loss(model, x)
    expected = torch.stack([
        torch.trace(torch.autograd.functional.jacobian(lambda p: model(p[None])[0], point))
        + 0.5 * (model(point[None])[0] ** 2).sum()
        for point in x
    ])
    torch.testing.assert_close(loss, expected.detach())


def test_ssm_loss_with_given_directions_equals_its_definition():
    model, x = fixed_affine(), points()
    loss = sliced_score_matching_loss(model, x, n_projections=3, generator=seeded(2))
    v = torch.randn(3, *x.shape, generator=seeded(2), dtype=x.dtype)  # (M, N, D): the same draws
    score = model(x)
    quadratic = torch.einsum("mnd,de,mne->mn", v, model.matrix, v)  # v^T A v
    expected = (quadratic + 0.5 * (v * score).sum(-1) ** 2).mean(0)
    torch.testing.assert_close(loss, expected.detach())


def test_ssm_vr_is_ssm_with_the_closed_form_norm():
    model, x = fixed_affine(), points()
    kwargs = dict(n_projections=5, projection="rademacher")
    plain = sliced_score_matching_loss(model, x, generator=seeded(3), **kwargs)
    reduced = sliced_score_matching_loss(
        model, x, variance_reduction=True, generator=seeded(3), **kwargs
    )
    v = torch.randn(5, *x.shape, generator=seeded(3), dtype=x.dtype).sign()
    score = model(x).detach()
    sliced_norm = 0.5 * ((v * score).sum(-1) ** 2).mean(0)  # the Monte-Carlo 1/2 (v^T s)^2
    torch.testing.assert_close(reduced - plain, 0.5 * (score**2).sum(-1) - sliced_norm)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher", "sphere"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_expectation_matches_the_exact_loss(projection, variance_reduction):
    # Many independent single-projection estimates at one point: their mean must match the
    # exact loss within the Monte-Carlo error (5 standard errors).
    torch.manual_seed(0)
    model = BasicNetwork(input_dim=3, hidden_dims=(16,)).double()
    x = points(n=1).expand(20_000, 3)
    estimates = sliced_score_matching_loss(
        model, x, projection=projection, variance_reduction=variance_reduction,
        generator=seeded(4),
    ).detach()
    exact = exact_score_matching_loss(model, x[:1]).detach()[0]
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 5 * standard_error


def test_ssm_averages_its_projections():
    model, x = fixed_affine(), points()
    many = sliced_score_matching_loss(model, x, n_projections=4, generator=seeded(9))
    single = sliced_score_matching_loss(
        model, x.repeat(4, 1), generator=seeded(9)
    ).reshape(4, -1)
    torch.testing.assert_close(many, single.mean(0))


def test_trainer_loss_is_the_mean_of_the_per_example_loss():
    torch.manual_seed(0)
    model = NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,))
    sigmas = torch.tensor([2.0, 1.0, 0.5])
    x = points(n=6, dim=2, dtype=torch.float32)
    trainer = AnnealedDenoisingScoreMatching(model, sigmas)
    loss = trainer.loss(x, generator=seeded(1))
    expected = annealed_dsm_loss(model, x, sigmas, generator=seeded(1)).mean()
    torch.testing.assert_close(loss, expected)


def test_trainer_copies_its_ladder_to_the_datas_device_and_dtype_once():
    # not at every step: on a GPU, a copy from the CPU makes the step wait for the device
    torch.manual_seed(0)
    model = NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,)).double()
    sigmas = torch.tensor([2.0, 1.0, 0.5])  # float32, the data float64
    x = points(n=6, dim=2, dtype=torch.float64)
    trainer = AnnealedDenoisingScoreMatching(model, sigmas)
    first = trainer.loss(x, generator=seeded(1))
    ladder = trainer._ladder
    second = trainer.loss(x, generator=seeded(1))
    assert trainer._ladder is ladder and ladder.dtype == torch.float64
    expected = annealed_dsm_loss(model, x, sigmas.double(), generator=seeded(1)).mean()
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Minimisers: a linear score model on Gaussian data
# ----------------------------------------------------------------------------------------------

COVARIANCE = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)


def gaussian_data(n=20_000):
    noise = torch.randn(n, 2, generator=seeded(0), dtype=torch.float64)
    return MEAN + noise @ torch.linalg.cholesky(COVARIANCE).T


def minimise(loss_fn, model):
    """Minimise a loss whose noise is frozen (re-seeded every call): a deterministic quadratic."""
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(seeded(11)).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.matrix.detach(), model.bias.detach()


def test_dsm_minimiser_is_the_perturbed_gaussian_score():
    sigma, x = 0.8, gaussian_data()
    model = AffineScore(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    matrix, bias = minimise(lambda g: dsm_loss(model, x, sigma, generator=g), model)
    precision = torch.linalg.inv(COVARIANCE + sigma**2 * torch.eye(2, dtype=torch.float64))
    # Least squares on 20,000 points: coefficients to about 0.01 (several standard errors).
    torch.testing.assert_close(matrix, -precision, atol=0.03, rtol=0)
    torch.testing.assert_close(bias, precision @ MEAN, atol=0.03, rtol=0)


@pytest.mark.parametrize("projection", ["gaussian", "rademacher", "sphere"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_ssm_minimiser_is_the_clean_gaussian_score(projection, variance_reduction):
    # The origin's unit-sphere bug learned score / D; every option here must learn the score.
    x = gaussian_data(5_000)
    model = AffineScore(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    matrix, _ = minimise(
        lambda g: sliced_score_matching_loss(
            model, x, n_projections=4, projection=projection,
            variance_reduction=variance_reduction, generator=g,
        ),
        model,
    )
    # The identity when matrix = -C^{-1}.
    ratio = torch.linalg.solve(-torch.linalg.inv(COVARIANCE), matrix)
    torch.testing.assert_close(ratio, torch.eye(2, dtype=torch.float64), atol=0.1, rtol=0)


def test_exact_minimiser_is_the_clean_gaussian_score():
    x = gaussian_data(5_000)
    model = AffineScore(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    matrix, bias = minimise(lambda g: exact_score_matching_loss(model, x), model)
    sample_precision = torch.linalg.inv(torch.cov(x.T, correction=0))  # the 1/N covariance
    # Exact score matching of a Gaussian model is the moment estimator: no noise to average out.
    torch.testing.assert_close(matrix, -sample_precision, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bias, sample_precision @ x.mean(0), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

MIXTURE = GaussianMixture(
    torch.tensor([0.7, 0.3]), torch.tensor([[1.5, 0.0], [-1.5, 0.0]]), torch.tensor([0.3, 0.3])
)


@pytest.mark.parametrize(
    ("make_trainer", "target"),
    [
        # DSM learns the score of the perturbed mixture; SSM and exact SM the clean one.
        (lambda model: DenoisingScoreMatching(model, sigma=0.3, lr=3e-3), MIXTURE.perturbed(0.3)),
        (lambda model: SlicedScoreMatching(model, variance_reduction=True, lr=3e-3), MIXTURE),
        (lambda model: ExactScoreMatching(model, lr=3e-3), MIXTURE),
    ],
    ids=["dsm", "ssm-vr", "exact"],
)
def test_short_training_lowers_the_fisher_divergence(make_trainer, target):
    torch.manual_seed(0)
    generator = seeded(0)
    model = BasicNetwork(input_dim=2, hidden_dims=(32, 32))
    data = MIXTURE.sample(2_000, generator=generator)
    x_eval = target.sample(2_000, generator=generator)
    before = fisher_divergence(model, target.score, x_eval, relative=True)
    history = make_trainer(model).train(
        data, n_steps=300, batch_size=128, generator=generator, progress=False
    )
    after = fisher_divergence(model, target.score, x_eval, relative=True)
    assert len(history) == 300 and all(math.isfinite(value) for value in history)
    assert after < 0.3 * before and after < 0.3, (before, after)


def test_train_is_reproducible_and_calls_back():
    def run():
        torch.manual_seed(0)
        model = BasicNetwork(input_dim=2, hidden_dims=(8,))
        calls = []
        history = SlicedScoreMatching(model).train(
            MIXTURE.sample(100, generator=seeded(1)), n_steps=5, batch_size=10,
            generator=seeded(2), callback=lambda step, loss: calls.append((step, loss)),
            progress=False,
        )
        return history, calls

    (first, calls), (second, _) = run(), run()
    assert first == second
    assert calls == list(enumerate(first))


class RecordingDSM(DenoisingScoreMatching):
    """DSM that keeps every batch its loss sees."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def per_example_loss(self, x, generator=None):
        self.batches.append(x.clone())
        return super().per_example_loss(x, generator)


def test_train_takes_a_sampler_and_batches_without_replacement():
    trainer = RecordingDSM(BasicNetwork(input_dim=2, hidden_dims=(8,)), sigma=0.5)
    seen = []

    def sampler(n):
        seen.append(n)
        return torch.zeros(n, 2)

    history = trainer.train(sampler, n_steps=3, batch_size=7, progress=False)
    assert seen == [7, 7, 7] and len(history) == 3
    data = torch.arange(20.0).reshape(10, 2)
    trainer.batches.clear()
    trainer.train(data, n_steps=4, batch_size=5, replacement=False, progress=False)
    # Four batches, two passes: each example exactly once in each pass.
    first, second = torch.cat(trainer.batches[:2]), torch.cat(trainer.batches[2:])
    assert sorted(first[:, 0].tolist()) == sorted(second[:, 0].tolist()) == data[:, 0].tolist()
    assert not torch.equal(first, second)  # a new permutation for the second pass


def test_shuffled_passes_resume_where_they_stopped():
    data = torch.arange(30.0).reshape(15, 2)
    straight = Batches(data, 4, replacement=False, generator=seeded(3))
    expected = [next(straight) for _ in range(9)]  # 3 passes of 3 batches (3 examples dropped)
    interrupted = Batches(data, 4, replacement=False, generator=seeded(3))
    first = [next(interrupted) for _ in range(4)]
    state, generator_state = interrupted.state_dict(), interrupted.generator.get_state()
    resumed = Batches(data, 4, replacement=False, generator=seeded(99))
    resumed.load_state_dict(state)
    resumed.generator.set_state(generator_state)
    rest = [next(resumed) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(first + rest, expected))


def test_batches_with_replacement_draw_uniform_indices():
    data = torch.arange(10.0).reshape(10, 1).expand(10, 2).contiguous()
    batches = Batches(data, 1000, generator=seeded(0))
    counts = torch.bincount(next(batches)[:, 0].long(), minlength=10).float()
    # Each count is Binomial(1000, 0.1): standard deviation 9.5.
    assert (counts - 100).abs().max() < 4 * 9.5


def test_ema_weights_follow_the_recurrence_and_can_replace_the_model():
    torch.manual_seed(0)
    model = BasicNetwork(input_dim=2, hidden_dims=(8,))
    trainer = DenoisingScoreMatching(model, sigma=0.5, ema_rate=0.8)
    average = {k: v.clone() for k, v in model.state_dict().items()}

    def record(step, loss):
        for key, value in model.state_dict().items():
            average[key] = 0.8 * average[key] + 0.2 * value

    trainer.train(MIXTURE.sample(64, generator=seeded(1)), n_steps=4, batch_size=16,
                  generator=seeded(2), callback=record, progress=False)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.use_ema_weights()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, average[key])
        assert not torch.equal(value, raw[key])
    with pytest.raises(ValueError, match="ema_rate must be in"):
        DenoisingScoreMatching(model, sigma=0.5, ema_rate=1.0)


def test_step_returns_the_loss_before_the_update():
    torch.manual_seed(0)
    model = BasicNetwork(input_dim=2, hidden_dims=(8,))
    trainer = ExactScoreMatching(model, lr=0.1)
    x = points(n=16, dim=2, dtype=torch.float32)
    before = float(trainer.loss(x).detach())
    assert trainer.step(x) == pytest.approx(before)
    assert float(trainer.loss(x).detach()) != pytest.approx(before)


# ----------------------------------------------------------------------------------------------
# Bad input and divergence
# ----------------------------------------------------------------------------------------------


class WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x, *labels):
        return self.weight * x[:, :1]  # (N, 1) instead of (N, D)


@pytest.mark.parametrize(
    "make_trainer",
    [
        lambda model: DenoisingScoreMatching(model, sigma=1.0),
        lambda model: SlicedScoreMatching(model),
        lambda model: ExactScoreMatching(model),
        lambda model: AnnealedDenoisingScoreMatching(model, torch.tensor([1.0, 0.5])),
    ],
)
def test_a_model_of_the_wrong_output_shape_is_refused(make_trainer):
    with pytest.raises(ValueError, match="model must return a tensor of the input's shape"):
        make_trainer(WrongShape()).loss(torch.zeros(4, 2))


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_non_positive_sigma_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        DenoisingScoreMatching(BasicNetwork(), sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        dsm_loss(BasicNetwork(), torch.zeros(3, 2), sigma)


def test_bad_sigmas_projections_and_learning_rates_are_refused():
    with pytest.raises(ValueError, match="sigmas"):
        AnnealedDenoisingScoreMatching(BasicNetwork(), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="n_projections"):
        SlicedScoreMatching(BasicNetwork(), n_projections=0)
    with pytest.raises(ValueError, match="n_projections"):
        sliced_score_matching_loss(BasicNetwork(), torch.zeros(3, 2), n_projections=0)
    with pytest.raises(ValueError, match="projection"):
        SlicedScoreMatching(BasicNetwork(), projection="uniform")
    with pytest.raises(ValueError, match="lr"):
        ExactScoreMatching(BasicNetwork(), lr=0)


def test_bad_data_and_batch_sizes_are_refused():
    trainer = DenoisingScoreMatching(BasicNetwork(), sigma=1.0)
    with pytest.raises(ValueError, match="data must hold at least one example"):
        trainer.train(torch.zeros(0, 2), n_steps=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="batch_size .* must not exceed"):
        trainer.train(torch.zeros(5, 2), n_steps=1, batch_size=6, replacement=False, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.train(torch.zeros(5, 2), n_steps=1, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="n_steps"):
        trainer.train(torch.zeros(5, 2), n_steps=0, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="data must be a tensor"):
        trainer.train([[0.0, 0.0]], n_steps=1, batch_size=1, progress=False)
    with pytest.raises(ValueError, match="x must be a non-empty tensor"):
        trainer.loss(torch.zeros(0, 2))


class BlowsUpAtCall(nn.Module):
    """A linear score whose output becomes NaN from its ``bad_call``-th call on."""

    def __init__(self, bad_call):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x):
        self.calls += 1
        out = self.linear(x)
        return out * float("nan") if self.calls >= self.bad_call else out


def test_a_nan_loss_stops_training_naming_the_step_and_the_last_finite_loss():
    model = BlowsUpAtCall(bad_call=4)
    trainer = DenoisingScoreMatching(model, sigma=1.0)
    history = []
    with pytest.raises(TrainingDivergedError, match=r"step 3: .*last finite loss (\S+)\.") as info:
        trainer.train(torch.ones(10, 2), n_steps=10, batch_size=2,
                      callback=lambda step, value: history.append(value), progress=False)
    assert f"{history[-1]:.4g}" in str(info.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no update with the NaN loss


# ----------------------------------------------------------------------------------------------
# Bad input to the losses, the loop, the batches and the trainers
# ----------------------------------------------------------------------------------------------

LADDER = torch.tensor([1.0, 0.5, 0.1])


def conditional_net():
    torch.manual_seed(0)
    return NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,))


@pytest.mark.parametrize(
    "sigmas, message",
    [
        (torch.tensor([1.0, -0.5, 0.1]), "sigmas must be positive finite"),
        (torch.tensor([0.1, 0.5, 1.0]), "sigmas must be strictly decreasing"),
        (torch.tensor([1.0, 0.0, 0.1]), "sigmas must be positive finite"),
        (torch.tensor([1.0, float("nan"), 0.1]), "sigmas must be positive finite"),
        ([], "sigmas must hold at least one noise level"),
        ("abc", "sigmas must be a sequence of positive numbers"),
    ],
)
def test_annealed_loss_checks_its_ladder(sigmas, message):
    with pytest.raises(ValueError, match=message):
        annealed_dsm_loss(conditional_net(), points(6, 2, dtype=torch.float32), sigmas)


def test_annealed_loss_takes_a_list_ladder_as_the_tensor_one():
    model, x = conditional_net(), points(6, 2, dtype=torch.float32)
    from_list = annealed_dsm_loss(model, x, [1.0, 0.5, 0.1], generator=seeded(4))
    torch.testing.assert_close(from_list, annealed_dsm_loss(model, x, LADDER, generator=seeded(4)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(noise=torch.zeros(6, 1)), r"noise must be a tensor of x's shape \(6, 2\)"),
        (dict(noise=(1, 2)), "noise must be a tensor of x's shape"),
        (dict(noise=torch.zeros(6, 2, dtype=torch.float64)), "noise must .* dtype torch.float32"),
        (dict(noise=torch.full((6, 2), float("nan"))), "noise must contain only finite values"),
        (dict(labels=torch.full((6,), -1)), r"labels must lie in 0\.\.2"),
        (dict(labels=torch.full((6,), 3)), r"labels must lie in 0\.\.2"),
        (dict(labels=torch.zeros(5, dtype=torch.long)), r"labels must be an integer tensor of "
                                                        r"shape \(6,\)"),
        (dict(labels=torch.zeros(6)), "labels must be an integer tensor"),
        (dict(labels=[0] * 6), "labels must be an integer tensor"),
    ],
)
def test_annealed_loss_checks_its_labels_and_noise(kwargs, message):
    def model(x, labels):  # checks nothing itself: the loss must
        return -x

    with pytest.raises(ValueError, match=message):
        annealed_dsm_loss(model, points(6, 2, dtype=torch.float32), LADDER, **kwargs)


@pytest.mark.parametrize(
    "sigma, message",
    [
        (-torch.ones(6), "sigma must hold positive finite noise levels"),
        (torch.zeros(6), "sigma must hold positive finite noise levels"),
        (torch.full((6,), float("inf")), "sigma must hold positive finite noise levels"),
        (torch.ones(5), r"sigma must be a floating tensor of shape \(6,\)"),
        (0.5, "sigma must be a floating tensor"),
    ],
)
def test_sigma_weighted_dsm_checks_sigma(sigma, message):
    from scorelab.training import sigma_weighted_dsm

    x = points(6, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        sigma_weighted_dsm(lambda y: -y, x, sigma, torch.zeros_like(x))


def test_annealed_trainer_needs_a_ladder_of_the_models_number_of_levels():
    with pytest.raises(ValueError, match=r"sigmas must hold as many levels as the model has \(3\)"):
        AnnealedDenoisingScoreMatching(conditional_net(), [1.0, 0.5])
    AnnealedDenoisingScoreMatching(conditional_net(), LADDER)  # three levels: accepted


def test_annealed_trainer_compares_the_ladder_with_the_ncsn_networks_classes():
    from scorelab.ncsn import CondRefineNetDilated

    net = CondRefineNetDilated(channels=1, image_size=8, ngf=2, num_classes=3)
    with pytest.raises(ValueError, match=r"sigmas must hold as many levels as the model has \(3\)"):
        AnnealedDenoisingScoreMatching(net, [1.0, 0.5])


@pytest.mark.parametrize(
    "x, message",
    [
        ([[0.0, 0.0]], "x must be a non-empty tensor of shape"),
        (torch.zeros(0, 2), "x must be a non-empty tensor of shape"),
        (torch.zeros(3), "x must be a non-empty tensor of shape"),
        (torch.zeros(3, 2, dtype=torch.long), "x must be a floating-point tensor"),
        (torch.full((3, 2), float("nan")), "x must contain only finite values"),
    ],
)
@pytest.mark.parametrize(
    "loss",
    [
        lambda x: dsm_loss(BasicNetwork(), x, 0.1),
        lambda x: sliced_score_matching_loss(BasicNetwork(), x),
        lambda x: exact_score_matching_loss(BasicNetwork(), x),
        lambda x: annealed_dsm_loss(conditional_net(), x, LADDER),
    ],
)
def test_every_loss_checks_its_batch(loss, x, message):
    with pytest.raises(ValueError, match=message):
        loss(x)


def test_run_checks_its_steps_hooks_and_batches():
    trainer = DenoisingScoreMatching(BasicNetwork(hidden_dims=(8,)), sigma=1.0)
    batches = Batches(torch.randn(10, 2, generator=seeded(0)), 2, generator=seeded(1))
    for n_steps in (0, -3, 2.0):
        with pytest.raises(ValueError, match="n_steps must be a positive integer"):
            trainer.run(batches, n_steps, progress=False)
    with pytest.raises(ValueError, match=r"hooks\[0\] must be a callable hook\(done, loss\) or "
                                         r"a pair \(every, hook\), got 'a'"):
        trainer.run(batches, 1, hooks=["a"], progress=False)
    with pytest.raises(ValueError, match=r"hooks\[1\] must be .*, got \(2, 3\)"):
        trainer.run(batches, 1, hooks=[print, (2, 3)], progress=False)
    with pytest.raises(ValueError, match="hooks must be an iterable"):
        trainer.run(batches, 1, hooks=None, progress=False)
    with pytest.raises(ValueError, match=r"the period of hooks\[0\] \(print\) must be a positive"):
        trainer.run(batches, 1, hooks=[(-5, print)], progress=False)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer, got -5"):
        trainer.run(batches, 1, hooks=[(-5, print, "checkpoint_every")], progress=False)
    with pytest.raises(ValueError, match="every batch of batches must be a non-empty tensor"):
        trainer.run(iter([torch.zeros(0, 2)]), 1, progress=False)
    with pytest.raises(ValueError, match="callback must be a callable"):
        trainer.train(torch.zeros(5, 2), 1, 1, callback="a", progress=False)
    calls = []
    history = trainer.run(batches, 4, hooks=[(2, lambda done, loss: calls.append(done),
                                              "sample_every")], progress=False, log_every=2)
    assert len(history) == 4 and calls == [2, 4]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: exponential_moving_average("a", 0.9), "model must be a torch.nn.Module"),
        (lambda: DenoisingScoreMatching(nn.Identity(), 0.1), "model must have parameters"),
        (lambda: SlicedScoreMatching(lambda x: x), "model must be a torch.nn.Module"),
        (lambda: AnnealedDenoisingScoreMatching(nn.Identity(), LADDER),
         "model must have parameters"),
    ],
)
def test_models_without_parameters_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def shuffled_batches():
    batches = Batches(torch.arange(10.0).reshape(5, 2), 2, replacement=False, generator=seeded(0))
    next(batches)
    return batches


@pytest.mark.parametrize(
    "state, message",
    [
        ({}, "state must be a dict with keys 'order' and 'cursor'"),
        ([1, 2], "state must be a dict"),
        ({"order": torch.randperm(5), "cursor": -5}, r"state\['cursor'\] must be an int in 0\.\.5"),
        ({"order": torch.randperm(5), "cursor": 6}, r"state\['cursor'\] must be an int in 0\.\.5"),
        ({"order": torch.randperm(5), "cursor": "a"}, r"state\['cursor'\] must be an int"),
        ({"order": None, "cursor": 2}, r"state\['cursor'\] must be an int in 0\.\.0"),
        ({"order": torch.randperm(3), "cursor": 0}, r"state\['order'\] must be a LongTensor of "
                                                    r"shape \(5,\)"),
        ({"order": torch.tensor([0, 0, 1, 2, 3]), "cursor": 0},
         r"state\['order'\] must be a permutation of 0\.\.4"),
        ({"order": torch.arange(5.0), "cursor": 0}, r"state\['order'\] must be a LongTensor"),
    ],
)
def test_batches_refuse_a_bad_state(state, message):
    batches = shuffled_batches()
    with pytest.raises(ValueError, match=message):
        batches.load_state_dict(state)


def test_batches_take_a_saved_state_and_check_the_device_at_once():
    batches = shuffled_batches()
    batches.load_state_dict(batches.state_dict())
    batches.load_state_dict({"order": torch.arange(5), "cursor": torch.tensor(4)})
    assert batches.cursor == 4 and isinstance(batches.cursor, int)
    with pytest.raises(ValueError, match="state\\['order'\\] must be None for batches drawn "
                                         "from a sampler"):
        Batches(lambda n: torch.zeros(n, 2), 2).load_state_dict(
            {"order": torch.arange(5), "cursor": 0})
    with pytest.raises(ValueError, match="device must be a torch.device or a device name"):
        Batches(torch.zeros(5, 2), 2, device="nonsense")
    assert Batches(torch.zeros(5, 2), 2, device="cpu").device == torch.device("cpu")


def test_memorised_dsm_floor_is_zero_for_one_point_and_positive_where_points_blur():
    from scorelab.training import memorised_dsm_floor

    one = memorised_dsm_floor(torch.rand(1, 4), [2.0, 0.5, 0.1])
    assert one.shape == (3,) and one.abs().max() < 1e-12  # the noise is all there is to guess
    two = torch.tensor([[0.0], [1.0]])
    floors = memorised_dsm_floor(two, [100.0, 0.5, 0.01], n=20_000,
                                 generator=torch.Generator().manual_seed(0))
    # far apart for sigma = 0.01, one blur for sigma = 100: near 0 at both ends, not between
    assert floors[0] < 1e-3 and floors[2] < 1e-6 and floors[1] > 0.05
    again = memorised_dsm_floor(two, [100.0, 0.5, 0.01], n=20_000,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(floors, again)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        memorised_dsm_floor(two, [1.0], n=0)


def test_loss_by_level_is_zero_for_the_exact_score_of_one_point():
    from scorelab.training import loss_by_level

    sigmas = torch.tensor([3.0, 1.0, 0.1])

    def exact(x, labels):  # the score of N(0, sigma^2 I), the perturbed single point 0
        return -x / sigmas[labels][:, None] ** 2

    losses = loss_by_level(exact, torch.zeros(50, 3), sigmas)
    assert losses.shape == (3,) and losses.abs().max() < 1e-10


def test_loss_by_level_uses_the_same_draws_for_every_model_and_takes_a_students_loss():
    from scorelab.training import annealed_dsm_loss, loss_by_level

    sigmas = [2.0, 0.5]
    net = torch.nn.Linear(2, 2)
    model = lambda x, labels: net(x)  # noqa: E731 -- a score model of the loss's signature
    data = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    got = loss_by_level(model, data, sigmas, seed=5)
    for level in range(2):  # level i: all labels i, noise seeded seed + i
        labels = torch.full((40,), level)
        want = annealed_dsm_loss(model, data, torch.tensor(sigmas), labels=labels,
                                 generator=torch.Generator().manual_seed(5 + level)).mean()
        assert got[level].item() == pytest.approx(want.item(), rel=1e-6)
    assert all(p.grad is None for p in net.parameters()) and not got.requires_grad

    def students(model, x, sigmas, labels, generator=None):  # positional, as exercise 6.2's
        return annealed_dsm_loss(model, x, sigmas, labels=labels, generator=generator)

    assert torch.equal(loss_by_level(model, data, sigmas, loss=students, seed=5), got)
    zero = lambda x, labels: torch.zeros_like(x)  # noqa: E731 -- loss 1/2 ||z||^2: data-free
    assert torch.equal(loss_by_level(zero, data, sigmas), loss_by_level(zero, data + 1, sigmas))


def test_loss_by_level_names_a_bad_argument():
    from scorelab.training import loss_by_level

    model = lambda x, labels: -x  # noqa: E731
    with pytest.raises(ValueError, match="seed must be an integer, got 0.5"):
        loss_by_level(model, torch.zeros(4, 2), [1.0], seed=0.5)
    with pytest.raises(TypeError, match="loss must be a callable"):
        loss_by_level(model, torch.zeros(4, 2), [1.0], loss="dsm")
    with pytest.raises(ValueError, match="sigmas"):
        loss_by_level(model, torch.zeros(4, 2), [0.1, 1.0])
    with pytest.raises(ValueError, match="x must"):
        loss_by_level(model, torch.zeros(0, 2), [1.0])
