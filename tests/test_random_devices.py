"""Random draws follow the generator's device and land on the data's device."""

import pytest
import torch
from _cuda_helpers import synchronisations
from scorelab import _tensors


@pytest.mark.parametrize("draw", [
    lambda g: _tensors.randn((3, 2), generator=g),
    lambda g: _tensors.rand((4,), generator=g, dtype=torch.float64),
    lambda g: _tensors.randint(10, (5,), generator=g),
    lambda g: _tensors.randperm(7, generator=g),
    lambda g: _tensors.multinomial(torch.tensor([0.2, 0.8]), 6, generator=g),
])
def test_a_seed_gives_the_same_draws(draw):
    first = draw(torch.Generator().manual_seed(3))
    again = draw(torch.Generator().manual_seed(3))
    other = draw(torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_draws_match_torch_on_the_cpu():
    expected = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_tensors.randn((3, 2), generator=torch.Generator().manual_seed(0)), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_cuda_data_with_a_generator_on_either_device(generator_device):
    g = torch.Generator(generator_device).manual_seed(0)
    x = _tensors.randn((4, 2), generator=g, device="cuda")
    again = _tensors.randn((4, 2), generator=torch.Generator(generator_device).manual_seed(0),
                           device="cuda")
    assert x.device.type == "cuda" and torch.equal(x, again)


# ---------------------------------------------------------------------------------------------
# Every public function that takes a generator: reproducible for a seed, and a generator on a
# third device (neither the CPU nor the data's) is a ValueError naming ``generator``.
# ---------------------------------------------------------------------------------------------


class _ElsewhereGenerator(torch.Generator):
    """A CPU generator that reports living on a second CUDA device (no GPU needed to test)."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def _public_draws(device="cpu"):
    """(name, call(generator)) for every public function of the package that takes a generator."""
    from scorelab import data, sde
    from scorelab.densities import Banana, GaussianMixture
    from scorelab.langevin import annealed_langevin_dynamics, langevin_dynamics, mala
    from scorelab.ncsn import NCSN, inpaint
    from scorelab.noise import geometric_sigmas
    from scorelab.training import (Batches, annealed_dsm_loss, dsm_loss,
                                   sliced_score_matching_loss)

    mixture = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
                              torch.tensor([1.0, 1.0]))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)).to(device)
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(device)
    torch.manual_seed(0)
    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3), n_steps_each=2, device=device)
    net = torch.nn.Linear(2, 2).to(device)
    ve = sde.VESDE(0.1, 5.0)
    score = lambda y, sigma: -y / (1.0 + sigma**2)  # noqa: E731
    mask = torch.ones(3, 1, 8, 8, device=device)
    mask[:, :, 4:] = 0
    return [
        ("GaussianMixture.sample", lambda g: mixture.sample(5, g, device=device)),
        ("Banana.sample", lambda g: Banana().sample(5, g, device=device)),
        ("PerturbedBanana.sample", lambda g: Banana().perturbed(0.5).sample(5, g, device=device)),
        ("langevin_dynamics", lambda g: langevin_dynamics(
            mixture.score, x, 0.1, 3, generator=g, progress=False)),
        ("annealed_langevin_dynamics", lambda g: annealed_langevin_dynamics(
            score, x, [2.0, 1.0], 0.1, 2, generator=g, progress=False)),
        ("mala", lambda g: mala(mixture.log_prob, mixture.score, x, 0.1, 3, generator=g,
                                progress=False)[0]),
        ("VESDE.prior_sample", lambda g: ve.prior_sample((4, 2), generator=g, device=device)),
        ("euler_maruyama", lambda g: sde.euler_maruyama(score, ve, x, 3, generator=g)),
        ("predictor_corrector", lambda g: sde.predictor_corrector(score, ve, x, 3, snr=0.1,
                                                                  generator=g)),
        ("log_likelihood", lambda g: sde.log_likelihood(score, ve, x, divergence="hutchinson",
                                                        generator=g)),
        ("continuous_dsm_loss", lambda g: sde.continuous_dsm_loss(
            lambda y, sigma: net(y), x, ve, generator=g).detach()),
        ("dsm_loss", lambda g: dsm_loss(net, x, 0.5, generator=g).detach()),
        ("sliced_score_matching_loss", lambda g: sliced_score_matching_loss(
            net, x, generator=g).detach()),
        ("annealed_dsm_loss", lambda g: annealed_dsm_loss(
            model, images, model.sigmas, generator=g).detach()),
        ("Batches", lambda g: next(Batches(images, 2, replacement=False, generator=g))),
        ("NCSN.sample", lambda g: model.sample(2, generator=g)),
        ("NCSN.loss", lambda g: model.loss(images, generator=g).detach()),
        ("inpaint", lambda g: inpaint(model, images, mask, generator=g, n_steps_each=2)),
        ("load_digits", lambda g: data.load_digits("test", dequantize=True, generator=g)[:4]),
    ]


_NAMES = [name for name, _ in _public_draws()]


@pytest.mark.parametrize("name", _NAMES)
def test_every_public_draw_is_reproducible_with_a_cpu_generator(name, single_thread):
    draw = dict(_public_draws())[name]
    first = draw(torch.Generator().manual_seed(0))
    again = dict(_public_draws())[name](torch.Generator().manual_seed(0))
    assert torch.equal(first, again)


@pytest.mark.parametrize("name", _NAMES)
def test_a_generator_on_a_third_device_names_the_generator(name, single_thread):
    draw = dict(_public_draws())[name]
    with pytest.raises(ValueError, match="generator must live on the CPU or on the data's device"):
        draw(_ElsewhereGenerator().manual_seed(0))


def test_sample_without_a_device_goes_where_the_generator_lives():
    from scorelab.densities import GaussianMixture

    mixture = GaussianMixture(torch.tensor([1.0]), torch.tensor([[0.0, 0.0]]), torch.tensor([1.0]))
    assert mixture.sample(3, torch.Generator().manual_seed(0)).device.type == "cpu"
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        mixture.sample(3, generator=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
@pytest.mark.parametrize("name", _NAMES)
def test_every_public_draw_on_cuda_data_with_a_generator_on_either_device(name, generator_device):
    if name == "load_digits" and generator_device == "cuda":  # CPU data: a CUDA generator fails
        with pytest.raises(ValueError, match="generator must live on the CPU"):
            dict(_public_draws("cuda"))[name](torch.Generator("cuda").manual_seed(0))
        return
    first = dict(_public_draws("cuda"))[name](torch.Generator(generator_device).manual_seed(0))
    again = dict(_public_draws("cuda"))[name](torch.Generator(generator_device).manual_seed(0))
    assert torch.equal(first, again)
    assert first.device.type == ("cpu" if name == "load_digits" else "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_annealed_langevin_steps_on_cuda_never_wait_for_the_device():
    # The sampler reads its particles every check_every steps and at the end of each level;
    # the steps in between, the network's calls through the score adapter included, must
    # not wait: 2 and 8 steps a level synchronise equally often.
    from scorelab.langevin import annealed_langevin_dynamics
    from scorelab.ncsn import NCSN
    from scorelab.noise import geometric_sigmas
    from scorelab.scores import as_score_fn

    torch.manual_seed(0)
    model = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.05, 4), device="cuda").eval()
    score_fn = as_score_fn(model, model.sigmas)
    x0 = torch.rand(8, 1, 8, 8, device="cuda")

    def sample(n_steps_each):
        return lambda: annealed_langevin_dynamics(
            score_fn, x0, model.sigmas, 1e-4, n_steps_each, check_every=1000, progress=False,
            generator=torch.Generator("cuda").manual_seed(0))

    sample(2)()  # first-use work
    few, many = synchronisations(sample(2)), synchronisations(sample(8))
    assert few == many, (few, many)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inpainting_steps_on_cuda_never_wait_for_the_device():
    # Inpainting reads its images at each level's end; the steps in between, the model's score
    # calls included, must not wait: 2 and 8 steps a level synchronise equally often.
    from scorelab.ncsn import NCSN, inpaint
    from scorelab.ncsn.inpaint import keep_rows
    from scorelab.noise import geometric_sigmas

    torch.manual_seed(0)
    model = NCSN(ngf=4, sigmas=geometric_sigmas(1.0, 0.05, 4), device="cuda")
    images = torch.rand(4, 1, 8, 8, device="cuda")
    mask = keep_rows(4).to("cuda")

    def fill(n_steps_each):
        return lambda: inpaint(model, images, mask, n_steps_each=n_steps_each, step_size=1e-4,
                               generator=torch.Generator("cuda").manual_seed(0))

    fill(2)()  # first-use work
    few, many = synchronisations(fill(2)), synchronisations(fill(8))
    assert few == many, (few, many)
