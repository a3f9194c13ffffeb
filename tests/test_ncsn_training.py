"""The annealed DSM loss of NCSN and its training loop."""

import torch

from scorelab.ncsn import NCSN, train_NCSN
from scorelab.noise import geometric_sigmas


def _model(seed=0, ngf=4, n_steps_each=100):
    torch.manual_seed(seed)
    return NCSN(ngf=ngf, sigmas=geometric_sigmas(1.0, 0.05, 4), n_steps_each=n_steps_each)


def test_loss_equals_hand_computation():
    model = _model()
    x = torch.rand(6, 1, 8, 8)
    loss = model.loss(x, generator=torch.Generator().manual_seed(3))
    # Same draws as the loss: the level of each example, then the noise.
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(4, (6,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    sigma = model.sigmas[labels].reshape(6, 1, 1, 1)
    noisy = x + sigma * noise
    target = -(noisy - x) / sigma**2  # score of N(x, sigma^2 I) at the noisy point
    score = model(noisy, labels)
    expected = (0.5 * sigma.flatten() ** 2 * ((score - target) ** 2).sum(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    model = _model()
    x = torch.rand(16, 1, 8, 8)
    fixed = lambda: model.loss(x, generator=torch.Generator().manual_seed(0))  # noqa: E731
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = fixed()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = fixed()
    assert after < before


def test_training_is_reproducible_and_ends_on_the_ema_weights(tmp_path):
    data = torch.rand(40, 1, 8, 8)
    runs = []
    for _ in range(2):
        model = _model()
        losses = train_NCSN(model, data, n_steps=6, batch_size=8, seed=1, progress=False)
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 6
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key])


def test_final_weights_are_the_exponential_moving_average():
    data = torch.rand(40, 1, 8, 8)
    model = _model()
    shadow = {k: v.clone() for k, v in model.state_dict().items()}

    def record(step, loss):  # the EMA recurrence, by hand, from the raw weights of each step
        for k, v in model.state_dict().items():
            shadow[k] = 0.9 * shadow[k] + 0.1 * v if v.is_floating_point() else v.clone()

    train_NCSN(model, data, n_steps=5, batch_size=8, seed=1, ema_rate=0.9, progress=False, callback=record)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, shadow[key], rtol=1e-5, atol=1e-6)


def test_training_rejects_data_of_the_wrong_shape():
    import pytest

    with pytest.raises(ValueError, match="data must have shape"):
        train_NCSN(_model(), torch.rand(10, 3, 8, 8), n_steps=1, batch_size=2, progress=False)


def test_samples_are_images_on_the_data_scale_and_grids_are_figures():
    import matplotlib

    matplotlib.use("Agg")
    from scorelab.plotting import image_samples

    model = _model()
    images, path = model.sample(5, generator=torch.Generator().manual_seed(0), n_steps_each=3, snapshots=True)
    assert images.shape == (5, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    # One frame at the start, one per level, and the denoised images.
    assert path.shape == (1 + 4 + 1, 5, 1, 8, 8)
    torch.testing.assert_close(path[-1], images)
    figure = image_samples(model, images=images, nrow=5)
    assert len(figure.axes) == 1


def test_training_writes_sample_grids_without_changing_the_run(tmp_path):
    data = torch.rand(16, 1, 8, 8)
    with_grids, plain = _model(n_steps_each=2), _model(n_steps_each=2)
    losses = train_NCSN(with_grids, data, n_steps=2, batch_size=4, out_dir=tmp_path, sample_every=2,
                        n_samples=4, progress=False)
    assert (tmp_path / "samples_step_0000002.png").stat().st_size > 0
    assert losses == train_NCSN(plain, data, n_steps=2, batch_size=4, progress=False)
    for key, value in with_grids.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key])


def test_train_NCSN_is_the_annealed_trainer_on_shuffled_passes():
    from scorelab.training import AnnealedDenoisingScoreMatching, Batches

    data = torch.rand(40, 1, 8, 8)
    trained, by_hand = _model(), _model()
    losses = train_NCSN(trained, data, n_steps=7, batch_size=8, seed=2, ema_rate=None, progress=False)
    generator = torch.Generator().manual_seed(2)
    trainer = AnnealedDenoisingScoreMatching(by_hand, by_hand.sigmas)
    batches = Batches(data, 8, replacement=False, generator=generator)
    assert losses == trainer.run(batches, 7, generator=generator, progress=False)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, by_hand.state_dict()[key])


def test_float64_data_trains_as_the_models_float32(single_thread):
    """train_NCSN converts the data to the model's dtype once (float64 comes from NumPy)."""
    data = torch.rand(16, 1, 8, 8)
    as_float64 = train_NCSN(_model(ngf=2), data.double(), n_steps=2, batch_size=4, progress=False)
    assert as_float64 == train_NCSN(_model(ngf=2), data, n_steps=2, batch_size=4, progress=False)


def test_integer_data_is_refused():
    import pytest

    with pytest.raises(ValueError, match="data must be a floating-point tensor"):
        train_NCSN(_model(ngf=2), torch.ones(8, 1, 8, 8, dtype=torch.uint8), n_steps=1,
                   batch_size=4, progress=False)


def test_a_bad_output_period_is_named_by_its_argument(tmp_path):
    import pytest

    model = NCSN(ngf=8, sigmas=geometric_sigmas(1.0, 0.1, 3))
    data = torch.rand(8, 1, 8, 8)
    for name in ("checkpoint_every", "sample_every"):
        with pytest.raises(ValueError, match=f"{name} must be a positive integer, got -5"):
            train_NCSN(model, data, n_steps=2, out_dir=tmp_path, progress=False, **{name: -5})


def test_images_off_the_unit_interval_and_a_fractional_seed_are_refused():
    import pytest

    model = NCSN(ngf=2, sigmas=geometric_sigmas(1.0, 0.1, 3))
    images = torch.rand(8, 1, 8, 8)
    for scaled in (255 * images, 2 * images - 1):
        with pytest.raises(ValueError, match=r"data must lie on the data's scale \[0, 1\]"):
            train_NCSN(model, scaled, n_steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        train_NCSN(model, images, n_steps=1, batch_size=4, seed=0.5, progress=False)
