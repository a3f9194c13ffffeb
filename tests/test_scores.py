"""The score contract and its one adapter (scorelab.scores), and the noise ladder (scorelab.noise)."""

import pytest
import torch

from scorelab.noise import check_sigmas, geometric_sigmas
from scorelab.nets_continuous import SigmaConditionedMLP
from scorelab.scores import as_score_fn, sigma_per_example, sigma_to_level


def test_geometric_sigmas_is_the_papers_ladder():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    ratios = sigmas[:-1] / sigmas[1:]
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == pytest.approx(0.01)
    assert torch.allclose(ratios, torch.full_like(ratios, 0.01 ** (-1 / 9)), rtol=1e-5)


@pytest.mark.parametrize("bad, message", [([], "at least one"), ([1.0, 1.0], "strictly decreasing"),
                                          ([1.0, -0.1], "positive"), ([[1.0]], "shape")])
def test_check_sigmas_names_the_argument(bad, message):
    with pytest.raises(ValueError, match=message):
        check_sigmas(bad, "ladder")
    with pytest.raises(ValueError, match="ladder"):
        check_sigmas(bad, "ladder")


def test_sigma_per_example_broadcasts_a_float_and_checks_shapes():
    x = torch.zeros(3, 2)
    assert torch.equal(sigma_per_example(0.5, x), torch.full((3,), 0.5))
    assert torch.equal(sigma_per_example(torch.tensor([1.0, 2.0, 3.0]), x), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        sigma_per_example(torch.ones(2), x)
    with pytest.raises(ValueError, match="positive"):
        sigma_per_example(-1.0, x)


def test_level_indexed_adapter_maps_each_sigma_to_its_level():
    ladder = geometric_sigmas(1.0, 0.01, 5)
    seen = {}

    def net(x, labels):
        seen["labels"] = labels
        return x * 0 + labels[:, None].float()

    score_fn = as_score_fn(net, ladder)
    x = torch.zeros(3, 2)
    out = score_fn(x, ladder[[4, 0, 2]])
    assert seen["labels"].tolist() == [4, 0, 2] and out[:, 0].tolist() == [4.0, 0.0, 2.0]
    assert score_fn(x, float(ladder[1])).sum() == 6.0
    with pytest.raises(ValueError, match="noise levels"):
        score_fn(x, 0.5)
    assert sigma_to_level(ladder[[3]], ladder).tolist() == [3]


@pytest.mark.parametrize("sigma", [1e5, 1e-8], ids=["overflows", "underflows"])
def test_a_float_sigma_is_checked_in_the_datas_dtype(sigma):
    # checked on the host (no wait for a GPU), as the value the network would see
    assert sigma_per_example(sigma, torch.zeros(2, 1)).dtype == torch.float32
    with pytest.raises(ValueError, match="sigma must be positive and finite"):
        sigma_per_example(sigma, torch.zeros(2, 1, dtype=torch.float16))


def test_a_float_sigma_finds_the_level_a_tensor_of_it_finds():
    ladder = geometric_sigmas(1.0, 0.01, 10)
    score_fn = as_score_fn(lambda x, labels: x * 0 + labels[:, None], ladder)
    x = torch.zeros(3, 1, dtype=torch.float64)
    for level, sigma in enumerate(ladder.tolist()):
        for nearby in (sigma, sigma * (1 + 5e-5), sigma * (1 - 5e-5)):  # within LEVEL_RTOL
            by_float = score_fn(x, nearby)
            assert by_float.tolist() == [[level]] * 3
            assert torch.equal(by_float, score_fn(x, torch.full((3,), nearby)))
    with pytest.raises(ValueError, match=r"sigma must be one of the model's noise levels"):
        score_fn(x, ladder[0].item() * (1 + 2e-4))


def test_sigma_conditioned_adapter_passes_one_sigma_per_example():
    score_fn = as_score_fn(lambda x, sigma: -x / sigma[:, None] ** 2)
    x = torch.ones(4, 2)
    assert torch.allclose(score_fn(x, 2.0), torch.full((4, 2), -0.25))
    assert torch.allclose(score_fn(x, torch.tensor([1.0, 1.0, 2.0, 2.0]))[:, 0],
                          torch.tensor([-1.0, -1.0, -0.25, -0.25]))


@pytest.mark.parametrize("call, match", [
    (lambda: sigma_per_example(1.0, [[0.0, 0.0]]), r"x must be a tensor of shape \(N, \*D\), got list"),
    (lambda: sigma_to_level(torch.tensor([float("nan")]), geometric_sigmas(1.0, 0.1, 3)),
     "sigma must hold positive finite noise levels"),
    (lambda: sigma_to_level(1.0, geometric_sigmas(1.0, 0.1, 3)), r"sigma must be a tensor of shape \(N,\)"),
    (lambda: sigma_to_level(torch.tensor([1.0]), torch.tensor([0.1, 1.0])), "strictly decreasing"),
    (lambda: sigma_to_level(torch.tensor([1.0]), geometric_sigmas(1.0, 0.1, 3), rtol=-1), "rtol must be"),
], ids=["list x", "NaN sigma", "float sigma", "increasing ladder", "negative rtol"])
def test_the_adapters_refuse_bad_input_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda net: SigmaConditionedMLP(2, 64), "hidden_dims must be a non-empty sequence"),
    (lambda net: net(torch.zeros(3, 2), torch.tensor([1.0, 0.0, 1.0])), "sigma must hold positive finite"),
    (lambda net: net(torch.zeros(3, 2), torch.full((3,), float("nan"))), "sigma must hold positive finite"),
    (lambda net: net(torch.zeros(3, 2, dtype=torch.float64), torch.ones(3)), "x must have the network's dtype"),
], ids=["int widths", "zero sigma", "NaN sigma", "float64 x"])
def test_the_sigma_conditioned_network_refuses_bad_input_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call(SigmaConditionedMLP(2, (8,)))
