"""Score networks: shapes, conditioning, smoothness and bad input."""

import pytest
import torch

from scorelab.nets import ACTIVATIONS, BasicNetwork, NoiseConditionalNetwork


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_basic_network_maps_points_to_scores_of_the_same_shape(activation):
    model = BasicNetwork(input_dim=3, hidden_dims=(16, 8, 4), activation=activation)
    assert model(torch.randn(5, 3)).shape == (5, 3)
    linear = [layer for layer in model.net if isinstance(layer, torch.nn.Linear)]
    linear_widths = [layer.out_features for layer in linear]
    assert linear_widths == [16, 8, 4, 3]


def test_softplus_network_has_non_vanishing_second_derivatives():
    # Exact and sliced score matching differentiate the Jacobian once more; with ReLU the
    # second derivative is zero almost everywhere.
    torch.manual_seed(0)
    x = torch.randn(4, 2, requires_grad=True)
    for activation, nonzero in [("softplus", True), ("relu", False)]:
        model = BasicNetwork(input_dim=2, hidden_dims=(16,), activation=activation)
        first = torch.autograd.grad(model(x)[:, 0].sum(), x, create_graph=True)[0]
        second = torch.autograd.grad(first[:, 0].sum(), x, allow_unused=True)[0]
        assert (second is not None and bool(second.abs().sum() > 0)) == nonzero


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(activation="sigmoidish"), "activation"),
        (dict(hidden_dims=()), "hidden_dims"),
        (dict(hidden_dims=(16, 0)), "hidden_dims"),
        (dict(input_dim=0), "input_dim"),
    ],
)
def test_bad_network_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BasicNetwork(**kwargs)
    with pytest.raises(ValueError, match=message):
        NoiseConditionalNetwork(**kwargs)


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        BasicNetwork(input_dim=2)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2\)"):
        model = NoiseConditionalNetwork(input_dim=2, n_levels=3)
        model(torch.zeros(4), torch.zeros(4, dtype=torch.long))


def test_noise_conditional_network_depends_on_the_level():
    torch.manual_seed(0)
    model = NoiseConditionalNetwork(input_dim=2, n_levels=4, hidden_dims=(16, 16))
    x = torch.randn(6, 2)
    first, last = model(x, torch.zeros(6, dtype=torch.long)), model(x, torch.full((6,), 3))
    assert first.shape == (6, 2)
    assert not torch.allclose(first, last)
    # Each example uses its own level.
    mixed = model(x, torch.tensor([0, 3, 0, 3, 0, 3]))
    torch.testing.assert_close(mixed[0::2], first[0::2])
    torch.testing.assert_close(mixed[1::2], last[1::2])


def test_sigmas_divide_the_output_by_the_level_noise():
    torch.manual_seed(0)
    sigmas = torch.tensor([4.0, 2.0, 1.0])
    plain = NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,))
    scaled = NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,), sigmas=sigmas)
    scaled.load_state_dict({**plain.state_dict(), "sigmas": sigmas})
    x, labels = torch.randn(5, 2), torch.tensor([0, 1, 2, 1, 0])
    torch.testing.assert_close(scaled(x, labels), plain(x, labels) / sigmas[labels][:, None])


def test_bad_labels_and_sigmas_are_refused():
    model = NoiseConditionalNetwork(input_dim=2, n_levels=3)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        model(torch.zeros(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels must be an integer tensor of shape \\(2,\\)"):
        model(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="sigmas must hold n_levels = 3 noise levels, got 2"):
        NoiseConditionalNetwork(n_levels=3, sigmas=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="sigmas must be positive"):
        NoiseConditionalNetwork(n_levels=3, sigmas=torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        NoiseConditionalNetwork(n_levels=3, sigmas=torch.tensor([1.0, 2.0, 0.5]))


def test_score_is_the_network_at_the_level_of_sigma():
    torch.manual_seed(0)
    sigmas = torch.tensor([4.0, 2.0, 1.0])
    model = NoiseConditionalNetwork(input_dim=2, n_levels=3, hidden_dims=(8,), sigmas=sigmas)
    x = torch.randn(4, 2)
    torch.testing.assert_close(model.score(x, 2.0), model(x, torch.full((4,), 1)))
    per_example = model.score(x, torch.tensor([4.0, 1.0, 2.0, 4.0]))
    torch.testing.assert_close(per_example, model(x, torch.tensor([0, 2, 1, 0])))
    with pytest.raises(ValueError, match="sigma must be one of the model's noise levels"):
        model.score(x, 3.0)
    with pytest.raises(ValueError, match="sigmas must be given"):
        NoiseConditionalNetwork(input_dim=2, n_levels=3).score(x, 1.0)


@pytest.mark.parametrize(
    ("hidden_dims", "message"),
    [
        ("64", "hidden_dims must be a non-empty sequence of positive integers, got '64'"),
        (None, "hidden_dims must be a non-empty sequence of positive integers, got None"),
        (64, "hidden_dims must be a non-empty sequence of positive integers, got 64"),
        ({64: 1}, "hidden_dims must be a non-empty sequence"),
        ([16, 16.0], r"hidden_dims\[1\] must be a positive integer, got 16.0"),
    ],
)
def test_hidden_dims_must_be_a_sequence_of_positive_ints(hidden_dims, message):
    with pytest.raises(ValueError, match=message):
        BasicNetwork(2, hidden_dims)
    with pytest.raises(ValueError, match=message):
        NoiseConditionalNetwork(2, 3, hidden_dims)
    assert BasicNetwork(2, [8, 4]).net[2].out_features == 4  # a list is a sequence too


@pytest.mark.parametrize("args, name", [((-2, 4, 3), "in_features"), ((2, 0, 3), "out_features"),
                                        ((2, 4, 0), "n_levels")])
def test_conditional_linear_names_a_bad_size(args, name):
    from scorelab.nets import ConditionalLinear

    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        ConditionalLinear(*args)
