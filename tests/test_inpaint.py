"""scorelab.ncsn.inpaint: Song & Ermon (2019), Algorithm 2, checked on a model with an exact score.

A Gaussian "image" distribution has a closed-form perturbed score and a closed-form
conditional law of the unknown pixels given the known ones, so the sampler's completions
can be compared with the exact answer; the shipped digits model is only run on a few images.
"""

from __future__ import annotations

import pytest
import torch

from scorelab.ncsn import inpaint
from scorelab.ncsn.inpaint import completion_shares, keep_columns, keep_rows, mean_fill


class GaussianImageModel:
    """Exact scores of N(mu, Sigma) on (1, 2, 2) "images", perturbed on a ladder: an NCSN stand-in."""

    def __init__(self, sigmas, *, step_size=0.02, n_steps_each=60):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
        self.step_size, self.n_steps_each = step_size, n_steps_each
        self.mu = torch.tensor([0.5, 0.3, 0.6, 0.4], dtype=torch.float64)
        a = torch.tensor([[1.0, 0.8, 0.6, 0.4], [0.0, 0.6, 0.3, 0.2], [0.0, 0.0, 0.7, 0.3],
                          [0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)
        self.cov = 0.05 * a.T @ a  # (4, 4), correlated pixels of spread ~0.2
        self.calls: list[tuple[float, torch.Tensor]] = []

    def score(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        assert any(abs(sigma - s) < 1e-6 * s for s in self.sigmas.tolist()), sigma
        self.calls.append((sigma, x.clone()))
        flat = x.reshape(len(x), 4).double() - self.mu  # (N, 4)
        precision = torch.linalg.inv(self.cov + sigma**2 * torch.eye(4, dtype=torch.float64))
        return (-flat @ precision).reshape(x.shape).to(x.dtype)

    def conditional(self, known: list[int], values: torch.Tensor):
        """Mean and covariance of the unknown pixels given the known ones (values (K,))."""
        unknown = [i for i in range(4) if i not in known]
        s_uk = self.cov[unknown][:, known]
        s_kk_inv = torch.linalg.inv(self.cov[known][:, known])
        mean = self.mu[unknown] + s_uk @ s_kk_inv @ (values.double() - self.mu[known])
        cov = self.cov[unknown][:, unknown] - s_uk @ s_kk_inv @ s_uk.T
        return mean, cov


SIGMAS = [1.0, 0.5, 0.25, 0.12, 0.06, 0.03]


def test_completions_follow_the_exact_conditional_law():
    """Known pixels 0 and 3 fixed: the unknown pixels 1, 2 must have the conditional mean and
    covariance (the last level's sigma_L^2 is removed by the denoising step, up to O(sigma_L^2))."""
    model = GaussianImageModel(SIGMAS, step_size=0.001, n_steps_each=200)
    n = 4000
    observed = torch.tensor([0.9, 0.0, 0.0, 0.2]).reshape(1, 1, 2, 2).expand(n, 1, 2, 2)
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2)  # (C, H, W): one mask for all
    out = inpaint(model, observed, mask, generator=torch.Generator().manual_seed(0), clamp=False)
    completed = out.reshape(n, 4)[:, [1, 2]].double()  # (n, 2)
    mean, cov = model.conditional([0, 3], torch.tensor([0.9, 0.2]))
    standard_error = (cov.diagonal() / n).sqrt()
    assert ((completed.mean(0) - mean).abs() < 4 * standard_error + 2e-3).all()
    # relative standard error of a variance from n draws: sqrt(2 / n) = 0.022
    assert torch.allclose(completed.T.cov().diagonal(), cov.diagonal(), rtol=0.12)
    assert torch.equal(out.reshape(n, 4)[:, [0, 3]], observed.reshape(n, 4)[:, [0, 3]])


def test_known_pixels_are_kept_exactly_and_carry_each_levels_noise_while_sampling():
    model = GaussianImageModel(SIGMAS, n_steps_each=5)
    images = torch.rand(500, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(500, 1, 2, 2)
    mask[:, :, 0, :] = 1.0  # the top row known
    out = inpaint(model, images, mask, generator=torch.Generator().manual_seed(2))
    known = mask.bool()
    assert torch.equal(out[known], images[known])
    assert out.min() >= 0 and out.max() <= 1  # clamped
    # Algorithm 2: within level i the score sees the known pixels as images + sigma_i * z, one
    # draw per level. Skip each level's first call (it still sees the previous level's draw).
    for sigma in SIGMAS:
        seen = [x for s, x in model.calls if abs(s - sigma) < 1e-6 * sigma]
        assert len(seen) == 5 + (sigma == SIGMAS[-1])  # + the denoising step
        residual = (seen[1][known] - images[known]) / sigma  # 1,000 standard normal draws
        assert abs(residual.std().item() - 1.0) < 0.1 and abs(residual.mean().item()) < 0.15
        assert all(torch.equal(seen[1][known], later[known]) for later in seen[2:])


def test_inpaint_is_reproducible_and_uses_the_models_settings():
    model = GaussianImageModel(SIGMAS, n_steps_each=3)
    images = torch.rand(4, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    first = inpaint(model, images, mask, generator=torch.Generator().manual_seed(3))
    assert len(model.calls) == len(SIGMAS) * 3 + 1
    second = inpaint(model, images, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)
    other = inpaint(model, images, mask, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(first, other)
    model.calls.clear()
    inpaint(model, images, mask, generator=torch.Generator().manual_seed(3), n_steps_each=2,
            denoise=False)
    assert len(model.calls) == len(SIGMAS) * 2


def test_everything_known_gives_the_images_back_and_nothing_known_samples():
    model = GaussianImageModel(SIGMAS, n_steps_each=2)
    images = torch.rand(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(inpaint(model, images, torch.ones(1, 2, 2)), images)
    free = inpaint(model, images, torch.zeros(3, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    assert not torch.equal(free, images)


@pytest.mark.parametrize(
    "mask, message",
    [
        (torch.ones(3, 1, 2, 3), "mask must have the shape"),
        (torch.ones(2, 1, 2, 2), "mask must have the shape"),  # 2 masks for 3 images
        (torch.ones(1, 1, 1, 2, 2), "mask must have the shape"),
        (torch.full((1, 2, 2), 0.5), "only 0"),
        (torch.tensor([[1.0, 2.0], [0.0, 1.0]]), "only 0"),
        ([[1, 0], [0, 1]], "mask must be a tensor"),
    ],
)
def test_bad_masks_are_named(mask, message):
    model = GaussianImageModel(SIGMAS)
    with pytest.raises(ValueError, match=message):
        inpaint(model, torch.rand(3, 1, 2, 2), mask)


def test_bool_and_integer_masks_are_accepted():
    model = GaussianImageModel(SIGMAS, n_steps_each=1)
    images = torch.rand(2, 1, 2, 2)
    for mask in (torch.tensor([[True, False], [False, True]]), torch.tensor([[1, 0], [0, 1]])):
        out = inpaint(model, images, mask, generator=torch.Generator().manual_seed(0))
        assert out[:, 0, 0, 0].equal(images[:, 0, 0, 0])


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(1, 2, 2), "images must be a non-empty tensor of shape \\(N, C, H, W\\)"),
        (torch.rand(0, 1, 2, 2), "images must be a non-empty"),
        (torch.ones(2, 1, 2, 2, dtype=torch.long), "floating-point"),
        (torch.full((2, 1, 2, 2), float("nan")), "finite"),
    ],
)
def test_bad_images_are_named(images, message):
    with pytest.raises(ValueError, match=message):
        inpaint(GaussianImageModel(SIGMAS), images, torch.ones(2, 2))


def test_snapshots_record_the_start_every_level_and_the_completion():
    """The path is (L + 2, N, C, H, W): the uniform start, each level's state (its known pixels
    noisy at that level, as the network saw them) and the completion; recording draws nothing."""
    model = GaussianImageModel(SIGMAS, n_steps_each=3)
    images = torch.rand(200, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    plain = inpaint(model, images, mask, generator=torch.Generator().manual_seed(3))
    completed, path = inpaint(model, images, mask, generator=torch.Generator().manual_seed(3),
                              snapshots=True)
    assert torch.equal(completed, plain)
    assert path.shape == (len(SIGMAS) + 2, 200, 1, 2, 2)
    assert torch.equal(path[-1], completed)
    assert path.min() >= 0 and path.max() <= 1
    known = mask.expand_as(images).bool()
    noise_of_level = [(path[k + 1][known] - images[known]).abs().mean().item()
                      for k in range(len(SIGMAS))]
    assert noise_of_level[0] > 0.2 and noise_of_level[-1] < 0.05  # sigma 1 ... 0.03
    assert noise_of_level == sorted(noise_of_level, reverse=True)
    with pytest.raises(ValueError, match="snapshots must be True or False"):
        inpaint(model, images, mask, snapshots="yes")


def test_bad_settings_are_named():
    model = GaussianImageModel(SIGMAS)
    images, mask = torch.rand(2, 1, 2, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match="step_size"):
        inpaint(model, images, mask, step_size=0.0)
    with pytest.raises(ValueError, match="n_steps_each"):
        inpaint(model, images, mask, n_steps_each=0)
    with pytest.raises(ValueError, match="generator"):
        inpaint(model, images, mask, generator=0)
    with pytest.raises(ValueError, match="model"):
        inpaint(lambda x, s: x, images, mask)


def test_a_diverging_chain_names_the_level():
    model = GaussianImageModel(SIGMAS, step_size=5.0, n_steps_each=200)
    with pytest.raises(ValueError, match="diverged at level .* smaller step_size"):
        inpaint(model, torch.rand(2, 1, 2, 2), torch.zeros(2, 2))


def test_the_shipped_model_keeps_the_known_half_and_checks_the_image_shape(single_thread):
    from scorelab.data import load_digits
    from scorelab.ncsn import load_pretrained

    model = load_pretrained("digits")
    digits = load_digits("test")[:3]
    mask = keep_rows(4)
    out = inpaint(model, digits, mask, generator=torch.Generator().manual_seed(0), n_steps_each=1)
    assert out.shape == digits.shape
    assert torch.equal(out[:, :, :4], digits[:, :, :4])
    assert not torch.equal(out[:, :, 4:], digits[:, :, 4:])
    assert 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="images must have shape \\(N, 1, 8, 8\\)"):
        inpaint(model, torch.rand(2, 1, 7, 7), torch.ones(7, 7))


def test_masks_and_mean_fill():
    assert keep_rows(3).shape == (1, 1, 8, 8)
    assert keep_rows(3)[0, 0, :, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert keep_rows(2, from_top=False)[0, 0, :, 5].tolist() == [0] * 6 + [1, 1]
    assert keep_columns(4)[0, 0, 2].tolist() == [1] * 4 + [0] * 4
    assert keep_columns(4, from_left=False)[0, 0, 2].tolist() == [0] * 4 + [1] * 4
    assert keep_rows(0).sum() == 0 and keep_rows(8).sum() == 64
    with pytest.raises(ValueError, match="n_rows"):
        keep_rows(9)
    with pytest.raises(ValueError, match="n_columns"):
        keep_columns(-1)
    images = torch.rand(5, 1, 8, 8)
    mean_image = torch.full((1, 8, 8), 0.25)
    filled = mean_fill(images, keep_rows(4), mean_image)
    assert torch.equal(filled[:, :, :4], images[:, :, :4])
    assert (filled[:, :, 4:] == 0.25).all()
    with pytest.raises(ValueError, match="mean_image"):
        mean_fill(images, keep_rows(4), torch.zeros(8, 8))


def test_completion_shares_on_real_digits_and_on_blanks():
    from scorelab.data import load_digits

    digits, labels = load_digits("test", return_labels=True)
    real = completion_shares(digits[:200], labels[:200])
    assert real["true digit"] > 0.9 and 0.6 < real["confident"] < 0.85
    blank = completion_shares(torch.zeros(10, 1, 8, 8), labels[:10])
    assert blank["confident"] < 0.5
    shuffled = completion_shares(digits[:200], labels[:200].roll(1))
    assert shuffled["true digit"] < 0.3
    with pytest.raises(ValueError, match="labels"):
        completion_shares(digits[:5], labels[:4])
    with pytest.raises(ValueError, match="completions"):
        completion_shares(digits[:5, :, :4], labels[:5])


def test_images_off_the_unit_interval_are_refused_with_a_hint():
    model = GaussianImageModel(SIGMAS, n_steps_each=1)
    with pytest.raises(ValueError, match=r"images must lie on the data's scale \[0, 1\], got "
                                         r"values from 0 to 255 \(divide .* by 255;"):
        inpaint(model, torch.tensor([0.0, 255.0, 3.0, 7.0]).reshape(1, 1, 2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"images must lie on the data's scale \[0, 1\]"):
        inpaint(model, torch.full((1, 1, 2, 2), -0.5), torch.ones(2, 2))


class _ModelWith(GaussianImageModel):
    """The Gaussian model with another ladder or a score of another shape."""

    def __init__(self, sigmas, score_shape=None):
        super().__init__([1.0], n_steps_each=1)
        self.sigmas, self.score_shape = sigmas, score_shape

    def score(self, x, sigma):
        return torch.zeros(self.score_shape or x.shape)


@pytest.mark.parametrize(
    "model, message",
    [
        (_ModelWith(torch.tensor([])), "model.sigmas must hold at least one noise level"),
        (_ModelWith([0.1, 1.0]), "model.sigmas must be strictly decreasing"),
        (_ModelWith([1.0, 0.1], score_shape=(1, 1, 2, 2)), r"model.score must return a tensor "
                                                           r"of the input's shape \(3, 1, 2, 2\)"),
        (_ModelWith([1.0, 0.1], score_shape=(4,)), "model.score must return"),
    ],
)
def test_a_custom_models_ladder_and_score_shape_are_checked(model, message):
    with pytest.raises(ValueError, match=message):
        inpaint(model, torch.rand(3, 1, 2, 2), torch.zeros(2, 2))


def test_the_shipped_model_names_images_of_another_dtype(single_thread):
    from scorelab.ncsn import load_pretrained

    with pytest.raises(ValueError, match=r"images must have the dtype .*images.float\(\)"):
        inpaint(load_pretrained("digits"), torch.rand(2, 1, 8, 8, dtype=torch.float64),
                keep_rows(4))


def test_completion_shares_and_mean_fill_refuse_what_would_give_wrong_numbers():
    from scorelab.ncsn.inpaint import completion_shares, mean_fill

    completions = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="labels must be integers from 0 to 9"):
        completion_shares(completions, torch.tensor([1, 2, 42, 3]))
    with pytest.raises(ValueError, match=r"labels must hold one digit per completion, shape \(4,\)"):
        completion_shares(completions, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"completions must lie on the data's scale \[0, 1\]"):
        completion_shares(255 * completions, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="images must be a floating-point tensor"):
        mean_fill((255 * completions).long(), torch.ones(8, 8), completions[0])


def test_class_coverage_refuses_a_classifier_of_other_classes():
    from scorelab.data import load_digits
    from scorelab.metrics import class_coverage, digits_classifier

    from sklearn.linear_model import LogisticRegression

    images, labels = load_digits("train", return_labels=True)
    with pytest.raises(ValueError, match=r"labels must be the digits 0..9"):
        digits_classifier(images, labels + 1)
    shifted = LogisticRegression(max_iter=200).fit(images.reshape(len(images), -1).numpy(),
                                                   (labels + 1).numpy())
    with pytest.raises(ValueError, match=r"classifier must predict the 10 digits 0..9"):
        class_coverage(shifted, images[:5])


def test_a_blown_up_inpainting_chain_warns_about_the_pixels_filled_in():
    import warnings

    from scorelab.data import load_digits
    from scorelab.ncsn import load_pretrained
    from scorelab.ncsn.inpaint import keep_rows

    model, digits = load_pretrained("digits"), load_digits("test")[:4]
    with pytest.warns(RuntimeWarning, match="of the pixels filled in lay outside"):
        inpaint(model, digits, keep_rows(4), step_size=1.0, n_steps_each=5,
                generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inpaint(model, digits, keep_rows(4), generator=torch.Generator().manual_seed(0))
