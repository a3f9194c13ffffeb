r"""The score contract: ``score_fn(x, sigma)``, and the one adapter that gives a network that contract.

Every sampler, loss and metric of the package that needs a noise-conditional score calls::

    score_fn(x, sigma) -> Tensor shaped like x

with ``x`` of shape (N, *D) and ``sigma`` either a Python float (one noise level for the
whole batch) or a tensor of shape (N,) (one level per example, as the SDE samplers and the
continuous-sigma losses need). The result estimates :math:`\nabla_x \log p_\sigma(x)`, the
score of the data convolved with :math:`N(0, \sigma^2 I)`.

Networks come in two kinds: *level-indexed* ones, ``net(x, labels)`` with ``labels`` a
LongTensor (N,) of indices into a fixed ladder (the NCSN of Song & Ermon 2019), and
*sigma-conditioned* ones, ``net(x, sigma)`` with ``sigma`` a tensor (N,) (continuous noise,
as in score SDEs). :func:`as_score_fn` turns either into the contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scorelab._validation import check_ladder_fits, check_positive, check_positive_values
from scorelab.noise import check_sigmas

__all__ = ["ScoreFn", "sigma_per_example", "sigma_to_level", "as_score_fn"]

#: ``score_fn(x, sigma)``: x (N, *D), sigma a float or a tensor (N,) -> tensor (N, *D).
ScoreFn = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]


def sigma_per_example(sigma, x: torch.Tensor, name: str = "sigma") -> torch.Tensor:
    """``sigma`` (a float or a tensor of shape (N,) or ()) as a tensor (N,) on x's device and dtype.

    Raises a ValueError naming ``name`` unless every value is finite and positive (in x's
    dtype) and the shape is (), (1,) or (N,) with N = x.shape[0]. A float is checked on the
    host; a tensor's values are read, which on a GPU waits for the device.
    """
    n = _batch_size(x)
    if not isinstance(sigma, torch.Tensor):
        return torch.full((n,), _sigma_number(sigma, x, name), device=x.device, dtype=x.dtype)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] not in (1, n)):
        raise ValueError(f"{name} must be a float or a tensor of shape ({n},), "
                         f"got shape {tuple(sigma.shape)}")
    values = sigma.detach().to(device=x.device, dtype=x.dtype).reshape(-1).expand(n)
    return values if values.device.type == "meta" else check_positive_values(name, values)


def _batch_size(x) -> int:
    """N of a tensor ``x`` of shape (N, *D), or a ValueError naming x."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (N, *D), got {got}")
    return x.shape[0]


def _sigma_number(sigma, x: torch.Tensor, name: str) -> float:
    """A number ``sigma`` as a float, checked positive and finite in x's dtype on the host."""
    try:
        number = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float or a tensor of shape ({x.shape[0]},), "
                         f"got {type(sigma).__name__}") from None
    rounded = float(torch.tensor(number, dtype=x.dtype))  # the value the network would see
    if not (rounded > 0 and math.isfinite(rounded)):
        raise ValueError(f"{name} must be positive and finite, got {sigma!r}")
    return number


LEVEL_RTOL = 1e-4  # a sigma this close (relatively) to a level of the ladder is that level


def sigma_to_level(sigma: torch.Tensor, sigmas: torch.Tensor,
                   rtol: float = LEVEL_RTOL) -> torch.Tensor:
    """Indices (N,) into the ladder ``sigmas`` (L,) of the levels ``sigma`` (N,).

    Each sigma must be one of the ladder's levels within relative tolerance ``rtol``: a
    level-indexed network knows nothing in between, so any other value is a ValueError.
    """
    if not isinstance(sigma, torch.Tensor) or sigma.ndim != 1:
        got = tuple(sigma.shape) if isinstance(sigma, torch.Tensor) else type(sigma).__name__
        raise ValueError(f"sigma must be a tensor of shape (N,), got {got} "
                         f"(scorelab.scores.sigma_per_example makes one from a float)")
    check_positive_values("sigma", sigma)
    return _sigma_to_level(sigma, check_sigmas(sigmas), check_positive("rtol", rtol))


def _sigma_to_level(sigma: torch.Tensor, sigmas: torch.Tensor, rtol: float) -> torch.Tensor:
    """:func:`sigma_to_level` on checked arguments (the score adapter's path, every call)."""
    ladder = sigmas.to(device=sigma.device, dtype=torch.float64)
    log_gap = sigma.double().log()[:, None] - ladder.log()[None, :]  # (N, L)
    labels = log_gap.abs().argmin(dim=1)
    nearest = ladder[labels]
    if bool(((nearest - sigma.double()).abs() > rtol * sigma.double()).any()):
        raise ValueError(f"sigma must be one of the model's noise levels "
                         f"{[round(s, 6) for s in sigmas.tolist()]}, got {sigma.unique().tolist()}")
    return labels


def as_score_fn(net: Callable, sigmas=None) -> ScoreFn:
    """The score contract ``score_fn(x, sigma)`` for a noise-conditional network ``net``.

    Parameters
    ----------
    net : callable
        Level-indexed, ``net(x, labels)`` with labels a LongTensor (N,), when ``sigmas`` is
        given; sigma-conditioned, ``net(x, sigma)`` with sigma a tensor (N,), when it is not.
    sigmas : sequence of float or Tensor (L,), optional
        The decreasing ladder a level-indexed network was trained on.

    Returns
    -------
    score_fn(x, sigma) -> Tensor shaped like x, sigma a float or a tensor (N,).
    """
    if not callable(net):
        raise ValueError(f"net must be a callable network, got {type(net).__name__}")
    if sigmas is None:
        def score_fn(x: torch.Tensor, sigma) -> torch.Tensor:
            return net(x, sigma_per_example(sigma, x))
        return score_fn

    ladder = check_sigmas(sigmas).double()  # float64, as the level search compares
    check_ladder_fits(net, len(ladder))

    def level_score_fn(x: torch.Tensor, sigma) -> torch.Tensor:
        if isinstance(sigma, torch.Tensor):
            return net(x, _sigma_to_level(sigma_per_example(sigma, x), ladder, LEVEL_RTOL))
        # One float for the batch (the samplers' call): checked and given its level on the
        # host, so that a sampler's step on a GPU never waits for the device.
        n = _batch_size(x)
        number = torch.tensor([_sigma_number(sigma, x, "sigma")], dtype=torch.float64)
        level = int(_sigma_to_level(number, ladder, LEVEL_RTOL))
        return net(x, torch.full((n,), level, device=x.device))
    return level_score_fn
