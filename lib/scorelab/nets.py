"""Score models for low-dimensional data: a plain MLP and a noise-conditional MLP.

Both map points (N, D) to scores (N, D). The activation is smooth (softplus) by default because
exact and sliced score matching put the trace of the score's Jacobian (or ``v^T J v``) in the
loss (Hyvärinen 2005, Theorem 1), and training differentiates that term once more, with respect
to the parameters. With ReLU the network is piecewise linear in x, so its Jacobian
``W_3 M_2 W_2 M_1 W_1`` is piecewise constant (``M_l`` the diagonal 0/1 masks of the active
units; two hidden layers). The trace term still has a gradient with respect to every weight matrix,
but none through the activation, whose second derivative is zero except at the kinks, where
autograd does not see it: the hidden biases, which enter the Jacobian only by moving the kinks, get no
gradient from the trace at all, and the gradient of a batch average misses how moving the kinks
changes the expected trace, so it is a biased estimate of the objective's gradient. A smooth
activation has curvature everywhere, and the trace term's gradient reaches every weight and
hidden bias (not the output bias: it shifts the score by a constant, outside the Jacobian).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scorelab._tensors import broadcast_like
from scorelab._validation import check_labels, check_points, check_positive_int, check_values
from scorelab.noise import check_sigmas
from scorelab.scores import as_score_fn

ACTIVATIONS = {
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _check_hidden_dims(hidden_dims: Sequence[int]) -> tuple[int, ...]:
    """The hidden widths as a tuple: a non-empty sequence (list, tuple) of positive ints."""
    if (isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence)
            or len(hidden_dims) == 0):
        raise ValueError("hidden_dims must be a non-empty sequence of positive integers, "
                         f"got {hidden_dims!r}")
    return tuple(check_positive_int(f"hidden_dims[{index}]", width)
                 for index, width in enumerate(hidden_dims))


def _check_input(x: torch.Tensor, model: nn.Module) -> None:
    """x must be finite points (N, model.input_dim) of the dtype of the model's weights."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != model.input_dim:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (N, {model.input_dim}), got {got}")
    check_values("x", check_points("x", x))
    dtype = next(model.parameters()).dtype
    if x.dtype != dtype:
        raise ValueError(f"x must have the network's dtype {dtype}, got {x.dtype} "
                         f"(convert one of them: x.to({dtype}) or model.to({x.dtype}))")


class BasicNetwork(nn.Module):
    """A multilayer perceptron score model ``s_theta: R^D -> R^D``.

    Parameters
    ----------
    input_dim : int
        The data dimension D (the output has the same dimension).
    hidden_dims : sequence of int
        Widths of the hidden layers.
    activation : {"softplus", "elu", "silu", "tanh", "relu"}
        Non-linearity after each hidden layer. Keep a smooth one for exact and sliced score
        matching, whose trace term needs its curvature (see the module docstring).

    Examples
    --------
    >>> model = BasicNetwork(input_dim=2, hidden_dims=(64, 64))
    >>> model(torch.zeros(5, 2)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        input_dim: int = 2,
        hidden_dims: Sequence[int] = (128, 128),
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        widths = (self.input_dim, *_check_hidden_dims(hidden_dims))
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), _activation(activation)]
        layers.append(nn.Linear(widths[-1], self.input_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score at ``x``: (N, D) -> (N, D)."""
        _check_input(x, self)
        return self.net(x)


class ConditionalLinear(nn.Module):
    """A linear layer whose output is scaled per noise level: ``gamma[label] * (W x + b)``.

    A conditioning widely used for toy noise-conditional score networks (the authors' own toy
    experiments use exact scores): each level learns its own feature scales, initialised
    uniformly in [0, 1].

    Parameters
    ----------
    in_features, out_features : int
    n_levels : int
        Number of noise levels (labels run over 0..n_levels-1).
    """

    def __init__(self, in_features: int, out_features: int, n_levels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(check_positive_int("in_features", in_features),
                                check_positive_int("out_features", out_features))
        self.embedding = nn.Embedding(check_positive_int("n_levels", n_levels), out_features)
        nn.init.uniform_(self.embedding.weight, 0.0, 1.0)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, in_features), LongTensor (N,) -> (N, out_features)."""
        return self.embedding(labels) * self.linear(x)


class NoiseConditionalNetwork(nn.Module):
    """A noise-conditional MLP score model ``s_theta(x, i)`` for 2-D toys (NCSN on points).

    Every hidden layer is a :class:`ConditionalLinear` that scales its features by a learned
    vector of the level ``i``. With ``sigmas`` given the output is divided by ``sigmas[i]``
    (the output scaling of NCSNv2's Technique 3, Song & Ermon 2020, which there replaces the
    level conditioning altogether; here it comes on top of it) because the true perturbed
    score scales like ``1 / sigma``: the network then only learns an O(1) quantity at every level.

    Parameters
    ----------
    input_dim : int
        The data dimension D.
    n_levels : int
        Number of noise levels L; labels run over 0..L-1.
    hidden_dims : sequence of int
        Widths of the hidden layers.
    activation : str
        As in :class:`BasicNetwork`.
    sigmas : Tensor, shape (L,), optional
        The decreasing noise ladder; when given the output is scaled by
        ``1 / sigmas[labels]``, and :meth:`score` maps a noise level to its label.
    """

    def __init__(
        self,
        input_dim: int = 2,
        n_levels: int = 10,
        hidden_dims: Sequence[int] = (128, 128),
        activation: str = "softplus",
        sigmas: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.n_levels = check_positive_int("n_levels", n_levels)
        widths = (self.input_dim, *_check_hidden_dims(hidden_dims))
        self.hidden = nn.ModuleList(
            ConditionalLinear(w_in, w_out, self.n_levels)
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.activation = _activation(activation)
        self.output = nn.Linear(widths[-1], self.input_dim)
        if sigmas is not None:
            sigmas = check_sigmas(sigmas).to(torch.get_default_dtype())
            if len(sigmas) != self.n_levels:
                raise ValueError(f"sigmas must hold n_levels = {self.n_levels} noise levels, "
                                 f"got {len(sigmas)}")
            self.register_buffer("sigmas", sigmas)
        else:
            self.sigmas = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score at ``x`` for noise level ``labels``: (N, D), integer tensor (N,) -> (N, D).

        ``labels`` is checked: shape (N,), an integer dtype, values in 0..L-1 (read on the
        CPU only).
        """
        _check_input(x, self)
        labels = check_labels(labels, x.shape[0], self.n_levels, x.device)
        h = x
        for layer in self.hidden:
            h = self.activation(layer(h, labels))  # (N, width)
        score = self.output(h)  # (N, D)
        if self.sigmas is not None:
            score = score / broadcast_like(self.sigmas[labels], score)
        return score

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """The score contract ``score(x, sigma)``: (N, D), a float or a tensor (N,) -> (N, D).

        ``sigma`` must be levels of the network's ladder (see :func:`scorelab.scores.as_score_fn`).
        """
        if self.sigmas is None:
            raise ValueError("sigmas must be given to NoiseConditionalNetwork(..., sigmas=...) "
                             "to map a noise level to its label")
        return as_score_fn(self, self.sigmas)(x, sigma)
