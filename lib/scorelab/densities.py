"""Analytical target densities with closed-form scores: a Gaussian mixture and a banana.

Both classes follow one interface: ``log_prob(x) -> (N,)``, ``prob(x) -> (N,)``,
``score(x) -> (N, D)`` (the gradient of ``log_prob`` in closed form),
``sample(n, generator=None) -> (n, D)`` and ``perturbed(sigma)``, the density convolved
with ``N(0, sigma^2 I)`` that annealed Langevin dynamics and denoising score matching
target (Song & Ermon, 2019, Section 4.1). ``perturbed_score(x, sigma)`` and
``perturbed_log_prob(x, sigma)`` follow the score contract of :mod:`scorelab.scores`:
``sigma`` is a float, or a tensor (N,) with one noise level per point (as the SDE samplers
and the continuous-sigma losses of :mod:`scorelab.sde` need).

Every method computes in the dtype and on the device of its input, so a float64 input
gives a float64 result (useful for checks against autograd), and every closed form is
differentiable by autograd (the exact divergence of the probability-flow ODE needs it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from scorelab._tensors import multinomial, randn
from scorelab._validation import (check_generator, check_points, check_positive, check_positive_int,
                                  check_values)
from scorelab.scores import sigma_per_example

__all__ = ["GaussianMixture", "Banana", "PerturbedBanana", "ncsn_toy_mixture"]

_LOG_2PI = math.log(2.0 * math.pi)
_WEIGHT_TOLERANCE = 1e-5
_PERTURBED_CACHE_SIZE = 128
_LOG_RATIO_FLOOR = 80.0


def _as_float64(name: str, value) -> torch.Tensor:
    """Convert array-likes to a float64 tensor, or raise a ValueError naming the argument."""
    try:
        tensor = torch.as_tensor(value).detach().to(dtype=torch.float64, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a tensor or array of numbers, got {value!r}") from None
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must contain only finite numbers")
    return tensor


def _sample_device(generator: torch.Generator | None, device) -> torch.device:
    """Where samples go: ``device``, else the generator's device, else the CPU (checked)."""
    if device is None:
        device = generator.device if isinstance(generator, torch.Generator) else "cpu"
    check_generator(generator, device)
    return torch.device(device)


def _check_x(x, dim: int) -> torch.Tensor:
    """Points of shape (N, dim), floating, with values (not 'meta'), all finite; else ValueError."""
    return check_values("x", check_points("x", x, dim))


_LARGEST_SCALE = math.sqrt(torch.finfo(torch.float32).max)  # about 1.8e19


def _check_scale(name: str, value) -> float:
    """A positive finite number whose square (a variance) is a finite float32."""
    value = check_positive(name, value)
    if value > _LARGEST_SCALE:
        raise ValueError(f"{name} must be at most {_LARGEST_SCALE:.3g} (its square is a "
                         f"variance, a float32), got {value!r}")
    return value


def _one_sigma(sigma, x: torch.Tensor) -> float | torch.Tensor:
    """``sigma`` as one float when it is a number or a tensor of equal values, else a tensor (N,).

    A float selects the cached perturbed density (the samplers' fast path); a tensor of
    different levels, checked by :func:`scorelab.scores.sigma_per_example`, the per-point one.
    """
    if not isinstance(sigma, torch.Tensor):
        return _check_scale("sigma", sigma)
    values = sigma_per_example(sigma, x)  # (N,), positive and finite
    if values.numel() and float(values.max()) > _LARGEST_SCALE:
        _check_scale("sigma", float(values.max()))  # raises, naming the largest level
    if values.numel() == 0 or bool((values == values[0]).all()):
        return float(values[0]) if values.numel() else 1.0
    return values


def _check_weights(weights) -> torch.Tensor:
    weights = _as_float64("weights", weights)
    if weights.ndim != 1 or weights.numel() == 0:
        raise ValueError(
            f"weights must have shape (K,) with K >= 1, got shape {tuple(weights.shape)}"
        )
    if (weights < 0).any():
        raise ValueError(f"weights must be non-negative, got {weights.tolist()}")
    total = float(weights.sum())
    if abs(total - 1.0) > _WEIGHT_TOLERANCE:
        raise ValueError(f"weights must sum to one, got a sum of {total:.6g}")
    return weights / total


def _check_means(means, n_components: int) -> torch.Tensor:
    means = _as_float64("means", means)
    if means.ndim != 2 or means.shape[0] != n_components or means.shape[1] == 0:
        raise ValueError(
            f"means must have shape (K, D) = ({n_components}, D) to match the "
            f"{n_components} weights, "
            f"got shape {tuple(means.shape)}"
        )
    return means


def _check_covariances(covariances, n_components: int, dim: int) -> tuple[str, torch.Tensor]:
    """Return the covariance kind ("isotropic", "diagonal" or "full") and the checked tensor."""
    covariances = _as_float64("covariances", covariances)
    if covariances.ndim == 0:
        covariances = covariances.expand(n_components).clone()
    expected = (
        f"(K,) variances, (K, D) diagonals or (K, D, D) matrices with K = {n_components}, D = {dim}"
    )
    if covariances.ndim == 1 and covariances.shape == (n_components,):
        kind = "isotropic"
    elif covariances.ndim == 2 and covariances.shape == (n_components, dim):
        kind = "diagonal"
    elif covariances.ndim == 3 and covariances.shape == (n_components, dim, dim):
        kind = "full"
    else:
        raise ValueError(
            f"covariances must have shape {expected}, got shape {tuple(covariances.shape)}"
        )
    if kind != "full":
        if (covariances <= 0).any():
            raise ValueError("covariances must be positive definite: every variance must be > 0")
        return kind, covariances
    scale = float(covariances.abs().max())
    if float((covariances - covariances.mT).abs().max()) > 1e-8 * max(scale, 1.0):
        raise ValueError(
            "covariances must be symmetric positive definite: a matrix is not symmetric"
        )
    covariances = 0.5 * (covariances + covariances.mT)
    _, info = torch.linalg.cholesky_ex(covariances)
    if (info != 0).any():
        bad = int(torch.nonzero(info)[0])
        raise ValueError(
            f"covariances must be symmetric positive definite: component {bad} "
            "is not positive definite"
        )
    return kind, covariances


class GaussianMixture:
    r"""A mixture of Gaussians :math:`p(x) = \sum_k \pi_k \, N(x; \mu_k, \Sigma_k)`.

    Parameters
    ----------
    weights : array-like, shape (K,)
        Mixture weights :math:`\pi_k`, non-negative, summing to one.
    means : array-like, shape (K, D)
        Component means :math:`\mu_k`.
    covariances : array-like or float
        Shape (K,) for isotropic components :math:`\Sigma_k = v_k I`, shape (K, D) for
        diagonal ones, shape (K, D, D) for full symmetric positive definite matrices; a
        single number is a variance shared by every component. Isotropic and diagonal
        mixtures take an element-wise fast path.

    Notes
    -----
    Constants (log-weights, Cholesky factors, precisions, log-determinants) are computed
    once, in float64, at construction. The score is
    :math:`\nabla_x \log p(x) = -\sum_k r_k(x) \, \Sigma_k^{-1} (x - \mu_k)` with the
    responsibilities :math:`r_k(x) = \pi_k N(x; \mu_k, \Sigma_k) / p(x)`, computed with a
    softmax over log-densities so that it stays finite far from every mode.
    """

    def __init__(self, weights, means, covariances) -> None:
        self._weights = _check_weights(weights)
        self._means = _check_means(means, self._weights.shape[0])
        self.n_components, self.dim = self._means.shape
        self.kind, self._covariances = _check_covariances(covariances, self.n_components, self.dim)
        self._constants = self._precompute()
        self._by_dtype: dict[tuple, object] = {}  # constants (and eigenpairs) per dtype, device
        self._perturbed: dict[float, GaussianMixture] = {}

    def _precompute(self) -> dict[str, torch.Tensor]:
        """Constants of the log-density, in float64: log-weights, precisions, log-normalisers."""
        constants = {"means": self._means}
        if self.kind == "full":
            cholesky = torch.linalg.cholesky(self._covariances)  # (K, D, D)
            self._cholesky = cholesky
            identity = torch.eye(self.dim, dtype=torch.float64).expand_as(cholesky)
            inverse_cholesky = torch.linalg.solve_triangular(cholesky, identity, upper=False)
            constants["inverse_cholesky_t"] = inverse_cholesky.mT.contiguous()  # (K, D, D)
            constants["precisions"] = inverse_cholesky.mT @ inverse_cholesky  # (K, D, D)
            log_det = 2.0 * cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
            offset = torch.zeros(self.n_components, dtype=torch.float64)
        else:
            variances = self._covariances
            if self.kind == "isotropic":
                variances = variances[:, None].expand(self.n_components, self.dim)  # (K, D)
            # The fast path expands |x - mu|^2 / v into matrix products of x, centred on the
            # mixture's mean so that the cancellation error stays small near the modes.
            center = self._weights @ self._means  # (D,)
            centred_means = self._means - center  # (K, D)
            constants["center"] = center
            constants["inverse_variances"] = 1.0 / variances  # (K, D)
            constants["scaled_means"] = self._means / variances  # (K, D): Sigma_k^{-1} mu_k
            constants["centred_scaled_means"] = centred_means / variances  # (K, D)
            constants["half_inverse_variances"] = 0.5 / variances  # (K, D)
            log_det = variances.log().sum(-1)  # (K,)
            offset = -0.5 * (centred_means.square() / variances).sum(-1)  # (K,)
        log_normalisers = -0.5 * (self.dim * _LOG_2PI + log_det)  # (K,)
        log_constants = self._weights.log() + log_normalisers + offset  # (K,)
        constants["log_constants"] = log_constants[:, None]  # (K, 1)
        return constants

    def _params(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The constants in ``x``'s dtype and device, converted once and cached."""
        key = (x.dtype, x.device)
        params = self._by_dtype.get(key)
        if params is None:
            params = {
                name: value.to(dtype=x.dtype, device=x.device)
                for name, value in self._constants.items()
            }
            self._by_dtype[key] = params
        return params

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights, shape (K,)."""
        return self._weights.float()

    @property
    def means(self) -> torch.Tensor:
        """Component means, shape (K, D)."""
        return self._means.float()

    @property
    def covariances(self) -> torch.Tensor:
        """Full component covariances, shape (K, D, D), whatever form was given."""
        return self._full_covariances().float()

    def _full_covariances(self) -> torch.Tensor:
        if self.kind == "full":
            return self._covariances
        variances = self._covariances  # (K, D) or (K,)
        if self.kind == "isotropic":
            variances = variances[:, None].expand(-1, self.dim)  # (K, D)
        return torch.diag_embed(variances)  # (K, D, D)

    @property
    def mean(self) -> torch.Tensor:
        r"""The mixture's mean :math:`\sum_k \pi_k \mu_k`, shape (D,)."""
        return (self._weights @ self._means).float()

    @property
    def covariance(self) -> torch.Tensor:
        r"""The mixture's covariance, shape (D, D).

        :math:`\sum_k \pi_k (\Sigma_k + \mu_k \mu_k^T) - m m^T` with :math:`m` the mean.
        """
        covariances = self._full_covariances()
        mean = self._weights @ self._means
        outer = self._means[:, :, None] * self._means[:, None, :]  # (K, D, D)
        second = torch.einsum("k,kij->ij", self._weights, covariances + outer)
        return (second - torch.outer(mean, mean)).float()

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(n_components={self.n_components}, dim={self.dim}, "
            f"kind={self.kind!r})"
        )

    def _joint_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return log(pi_k N(x; mu_k, Sigma_k)), shape (K, N), and x - mu_k, shape (K, N, D).

        The differences are returned for full covariances only (None otherwise).

        Components come first because reductions over a short last axis (softmax over K = 2
        columns) are many times slower than the same reductions over a leading axis.
        """
        params = self._params(x)
        if self.kind == "full":
            diff = x[None, :, :] - params["means"][:, None, :]  # (K, N, D)
            whitened = torch.bmm(diff, params["inverse_cholesky_t"])  # (K, N, D)
            return params["log_constants"] - 0.5 * whitened.square().sum(-1), diff  # (K, N)
        centred = x - params["center"]  # (N, D)
        # -|x - mu_k|^2 / (2 v_k) = -x^2 / (2 v_k) + x mu_k / v_k - mu_k^2 / (2 v_k),
        # all in the centred frame.
        joint = torch.mm(params["centred_scaled_means"], centred.T)  # (K, N)
        joint -= torch.mm(params["half_inverse_variances"], centred.square().T)
        joint += params["log_constants"]
        return joint, None

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density, shape (N,), for points ``x`` of shape (N, D)."""
        x = _check_x(x, self.dim)
        joint, _ = self._joint_log_prob(x)
        return torch.logsumexp(joint, dim=0)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """Density, shape (N,), for ``x`` of shape (N, D); underflows to 0 far from the modes."""
        return self.log_prob(x).exp()

    def responsibilities(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component probabilities r_k(x), shape (N, K), each row summing to one."""
        x = _check_x(x, self.dim)
        joint, _ = self._joint_log_prob(x)
        return torch.softmax(joint, dim=0).T.contiguous()  # (N, K)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r"""The score :math:`\nabla_x \log p(x)` in closed form, shape (N, D), for ``x`` (N, D)."""
        x = _check_x(x, self.dim)
        params = self._params(x)
        joint, diff = self._joint_log_prob(x)
        # Flooring the log-ratios at -80 keeps exp() out of the subnormal range, whose arithmetic
        # is many times slower on CPUs; it moves a responsibility by at most e^-80.
        # The floor is a constant for autograd (detached), so the score stays differentiable.
        floor = joint.detach().amax(dim=0).sub_(_LOG_RATIO_FLOOR)  # (N,)
        responsibilities = torch.softmax(torch.maximum(joint, floor), dim=0)  # (K, N)
        if self.kind == "full":
            # Precisions are symmetric, so diff @ P_k is P_k (x - mu_k) row by row.
            pulled = torch.bmm(diff, params["precisions"])  # (K, N, D)
            return -(responsibilities[:, :, None] * pulled).sum(0)  # (N, D)
        # Diagonal precisions split the sum into two small matrix products:
        # -sum_k r_k (x - mu_k) / v_k = sum_k r_k mu_k / v_k - x * sum_k r_k / v_k.
        score = torch.mm(responsibilities.T, params["scaled_means"])  # (N, D)
        return score - x * torch.mm(responsibilities.T, params["inverse_variances"])

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               device=None) -> torch.Tensor:
        """Draw ``n`` samples, shape (n, D): a component by weight, then its Gaussian.

        The samples go to ``device`` (default: the generator's device, else the CPU); the
        draws happen on the generator's device, so a (generator device, seed) pair gives
        the same samples wherever they go.
        """
        n = check_positive_int("n", n)
        device = _sample_device(generator, device)
        components = multinomial(self._weights, n, generator=generator)  # (n,)
        noise = randn((n, self.dim), generator=generator, dtype=torch.float64)  # (n, D)
        if self.kind == "full":
            cholesky = self._cholesky[components]  # (n, D, D)
            offsets = (cholesky @ noise[:, :, None])[:, :, 0]  # (n, D)
        else:
            variances = self._covariances[components]  # (n,) or (n, D)
            offsets = noise * (variances[:, None] if self.kind == "isotropic" else variances).sqrt()
        samples = self._means[components] + offsets  # (n, D), float64 on the CPU
        return samples.to(dtype=torch.get_default_dtype(), device=device)

    def perturbed(self, sigma: float) -> GaussianMixture:
        r"""The mixture convolved with :math:`N(0, \sigma^2 I)`: each covariance plus sigma^2 I.

        This is the density of :math:`x + \sigma z`, :math:`z \sim N(0, I)`, the target of
        noise level :math:`\sigma` in Song & Ermon (2019). Results are cached per ``sigma``,
        so ``mixture.perturbed(sigma).score(x)`` inside a sampler loop costs one dictionary
        look-up beyond the score itself.
        """
        sigma = _check_scale("sigma", sigma)
        if sigma not in self._perturbed:
            if len(self._perturbed) >= _PERTURBED_CACHE_SIZE:
                self._perturbed.clear()
            self._perturbed[sigma] = self._scaled_and_noised(1.0, sigma)
        return self._perturbed[sigma]

    def scaled_perturbed(self, scale: float, sigma: float) -> GaussianMixture:
        r"""The law of :math:`a x + \sigma z` for :math:`x` from the mixture, :math:`z \sim N(0, I)`.

        Each mean becomes :math:`a \mu_k` and each covariance :math:`a^2 \Sigma_k + \sigma^2 I`:
        with :math:`a = e^{-\beta t / 2}` and :math:`\sigma^2 = 1 - a^2` it is the marginal at time
        t of the variance-preserving SDE :math:`dx = -\frac12 \beta x\, dt + \sqrt\beta\, dw`
        with a constant :math:`\beta` (Song et al. 2021, Eq. 11), and with :math:`a = 1` it is
        :meth:`perturbed`. ``scale`` and ``sigma`` are positive numbers.
        """
        return self._scaled_and_noised(_check_scale("scale", scale), _check_scale("sigma", sigma))

    def _scaled_and_noised(self, scale: float, sigma: float) -> GaussianMixture:
        """The law of scale * x + sigma * z, on checked numbers (uncached)."""
        covariances = scale**2 * self._covariances
        if self.kind == "full":
            covariances = covariances + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        else:
            covariances = covariances + sigma**2
        return GaussianMixture(self._weights, scale * self._means, covariances)

    def perturbed_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Score of the perturbed mixture, shape (N, D): a ``score_fn(x, sigma)`` for samplers.

        ``sigma`` is a float (one level for every point) or a tensor (N,) (one level per
        point); the result is differentiable in ``x``.
        """
        level = _one_sigma(sigma, x)
        if isinstance(level, float):
            return self.perturbed(level).score(x)
        return self._per_point(_check_x(x, self.dim), level)[1]

    def perturbed_log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Log-density of the perturbed mixture at ``x`` (N, D), shape (N,); sigma as above."""
        level = _one_sigma(sigma, x)
        if isinstance(level, float):
            return self.perturbed(level).log_prob(x)
        return self._per_point(_check_x(x, self.dim), level)[0]

    def _per_point(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Log-density (N,) and score (N, D) of the mixture perturbed at a level per point.

        With :math:`\Sigma_k = U_k \Lambda_k U_k^T`, each covariance plus :math:`\sigma_n^2 I`
        is :math:`U_k (\Lambda_k + \sigma_n^2 I) U_k^T`: one eigendecomposition (made once)
        serves every level, and the quadratic forms are sums over the rotated coordinates.
        """
        rotations, eigenvalues = self._eigen(x)  # (K, D, D) or None, (K, D)
        diff = x[None, :, :] - self._params(x)["means"][:, None, :]  # (K, N, D)
        rotated = diff if rotations is None else torch.bmm(diff, rotations)  # (K, N, D)
        variances = eigenvalues[:, None, :] + sigma.square()[None, :, None]  # (K, N, D)
        pulled = rotated / variances  # (K, N, D)
        log_weights = self._weights.log().to(x)[:, None]  # (K, 1)
        joint = log_weights - 0.5 * ((rotated * pulled) + variances.log() + _LOG_2PI).sum(-1)
        responsibilities = torch.softmax(joint, dim=0)  # (K, N)
        if rotations is not None:
            pulled = torch.bmm(pulled, rotations.mT)  # back to the original axes
        score = -(responsibilities[:, :, None] * pulled).sum(0)  # (N, D)
        return torch.logsumexp(joint, dim=0), score

    def _eigen(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Eigenvectors (None for diagonal kinds) and eigenvalues of the covariances, cached."""
        key = ("eigen", x.dtype, x.device)
        if key not in self._by_dtype:
            if self.kind == "full":
                eigenvalues, rotations = torch.linalg.eigh(self._covariances)  # float64
                pair = (rotations.to(x), eigenvalues.to(x))
            else:
                variances = self._covariances
                if self.kind == "isotropic":
                    variances = variances[:, None].expand(-1, self.dim)
                pair = (None, variances.to(x))
            self._by_dtype[key] = pair
        return self._by_dtype[key]


def ncsn_toy_mixture() -> GaussianMixture:
    """Song & Ermon's (2019, Section 3.2) toy: 0.8 N((5, 5), I) + 0.2 N((-5, -5), I)."""
    return GaussianMixture(
        weights=[0.8, 0.2], means=[[5.0, 5.0], [-5.0, -5.0]], covariances=[1.0, 1.0]
    )


class Banana:
    r"""The twisted-Gaussian "banana" of Haario, Saksman & Tamminen (1999), in two dimensions.

    In chapter 1's notation (coordinates :math:`x_1, x_2`), with
    :math:`\phi(x) = (x_1,\; u)`, :math:`u = x_2 + b (x_1^2 - a^2)`, a map of unit Jacobian,

    .. math:: p(x) = N(x_1; 0, a^2) \, N(x_2 + b (x_1^2 - a^2); 0, 1),

    the Gaussian :math:`N(0, \mathrm{diag}(a^2, 1))` bent along the parabola
    :math:`x_2 = -b (x_1^2 - a^2)`. Haario et al. use :math:`a = 10` with :math:`b = 0.03`
    ("moderately twisted") or :math:`b = 0.1` ("highly twisted"); the course's default
    :math:`a = 1, b = 0.5` fits in a window of a few units.

    Parameters
    ----------
    curvature : float
        The twist :math:`b \ge 0` (0 gives a Gaussian).
    scale : float
        The standard deviation :math:`a > 0` along :math:`x_1`.

    Notes
    -----
    Score (chapter 1): :math:`s_1 = -x_1 / a^2 - 2 b x_1 u`, :math:`s_2 = -u`,
    where :math:`u = x_2 + b (x_1^2 - a^2)`. Mean :math:`(0, 0)`, covariance
    :math:`\mathrm{diag}(a^2, 1 + 2 b^2 a^4)`.
    """

    dim = 2

    def __init__(self, curvature: float = 0.5, scale: float = 1.0) -> None:
        try:
            curvature = float(curvature)
        except (TypeError, ValueError):
            message = f"curvature must be a non-negative number, got {curvature!r}"
            raise ValueError(message) from None
        if not math.isfinite(curvature) or curvature < 0:
            raise ValueError(f"curvature must be a non-negative finite number, got {curvature!r}")
        self.curvature = curvature
        self.scale = _check_scale("scale", scale)
        self._perturbed: dict[tuple[float, int], PerturbedBanana] = {}

    def __repr__(self) -> str:
        return f"Banana(curvature={self.curvature}, scale={self.scale})"

    @property
    def mean(self) -> torch.Tensor:
        """The banana's mean, (0, 0), shape (2,)."""
        return torch.zeros(2)

    @property
    def covariance(self) -> torch.Tensor:
        """The banana's covariance diag(a^2, 1 + 2 b^2 a^4), shape (2, 2)."""
        a2 = self.scale**2
        return torch.diag(torch.tensor([a2, 1.0 + 2.0 * self.curvature**2 * a2**2]))

    def _untwist(self, x: torch.Tensor) -> torch.Tensor:
        """The second coordinate of phi(x), u = x_2 + b (x_1^2 - a^2), shape (N,)."""
        return x[:, 1] + self.curvature * (x[:, 0].square() - self.scale**2)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density, shape (N,), for points ``x`` of shape (N, 2)."""
        x = _check_x(x, 2)
        y1 = self._untwist(x)
        quadratic = (x[:, 0] / self.scale).square() + y1.square()  # (N,)
        return -0.5 * quadratic - _LOG_2PI - math.log(self.scale)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """Density, shape (N,), for points ``x`` of shape (N, 2)."""
        return self.log_prob(x).exp()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The score in closed form (chain rule through the twist included), shape (N, 2)."""
        x = _check_x(x, 2)
        y1 = self._untwist(x)
        s0 = -x[:, 0] / self.scale**2 - 2.0 * self.curvature * x[:, 0] * y1
        return torch.stack([s0, -y1], dim=1)  # (N, 2)

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               device=None) -> torch.Tensor:
        """Draw ``n`` samples, shape (n, 2): x_1 = a z_1, x_2 = z_2 - b (x_1^2 - a^2).

        On ``device`` (default: the generator's device, else the CPU).
        """
        n = check_positive_int("n", n)
        device = _sample_device(generator, device)
        z = randn((n, 2), generator=generator, device=device)  # (n, 2)
        x0 = self.scale * z[:, 0]
        x1 = z[:, 1] - self.curvature * (x0.square() - self.scale**2)
        return torch.stack([x0, x1], dim=1)

    def perturbed(self, sigma: float, n_nodes: int = 64) -> PerturbedBanana:
        """The banana convolved with N(0, sigma^2 I), by Gauss-Hermite quadrature.

        See :class:`PerturbedBanana` for the formula and its accuracy.

        Results are cached per (sigma, n_nodes), so calling it inside a sampler loop is cheap.
        """
        key = (_check_scale("sigma", sigma), check_positive_int("n_nodes", n_nodes))
        if key not in self._perturbed:
            if len(self._perturbed) >= _PERTURBED_CACHE_SIZE:
                self._perturbed.clear()
            self._perturbed[key] = PerturbedBanana(self, *key)
        return self._perturbed[key]

    def perturbed_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Score of the perturbed banana, shape (N, 2): a ``score_fn(x, sigma)`` for samplers.

        ``sigma`` is a float or a tensor (N,); points are grouped by level (one quadrature
        per distinct level), so many distinct levels cost one quadrature each.
        """
        return self._by_level(x, sigma, "score")

    def perturbed_log_prob(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Log-density of the perturbed banana at ``x`` (N, 2), shape (N,); sigma as above."""
        return self._by_level(x, sigma, "log_prob")

    def _by_level(self, x: torch.Tensor, sigma, method: str) -> torch.Tensor:
        level = _one_sigma(sigma, x)
        if isinstance(level, float):
            return getattr(self.perturbed(level), method)(x)
        x = _check_x(x, 2)
        values, index = torch.unique(level, return_inverse=True)
        parts = [getattr(self.perturbed(float(value)), method)(x[index == i])
                 for i, value in enumerate(values.tolist())]
        out = torch.empty((x.shape[0], *parts[0].shape[1:]), dtype=x.dtype, device=x.device)
        out = out.index_put((torch.cat([torch.nonzero(index == i)[:, 0]
                                        for i in range(len(values))]),), torch.cat(parts))
        return out


class PerturbedBanana:
    r"""The banana convolved with :math:`N(0, \sigma^2 I)`, by Gauss-Hermite quadrature.

    In chapter 1's coordinates :math:`x_1, x_2`: the noise on :math:`x_2` integrates in closed
    form, and the product of the two Gaussians in :math:`x_1` is again Gaussian, which leaves
    one smooth 1-D integral:

    .. math::

        p_\sigma(x) = N(x_1; 0, a^2 + \sigma^2)\;
        \mathbb{E}_{w \sim N(m, v)} \big[ N(x_2 + b (w^2 - a^2); 0, 1 + \sigma^2) \big],
        \quad m = \frac{a^2 x_1}{a^2 + \sigma^2},\; v = \frac{a^2 \sigma^2}{a^2 + \sigma^2}.

    The expectation uses ``n_nodes`` Gauss-Hermite nodes :math:`w_j = m + \sqrt{2 v}\, t_j`,
    summed in log space (logsumexp), and the score is the exact gradient of that
    quadrature, in closed form.

    Accuracy: the integrand is a Gaussian bump in :math:`w^2` of width about
    :math:`\sqrt{1 + \sigma^2} / (2 b |w|)`, which the nodes resolve while it is not much
    narrower than :math:`\sqrt{v} \le \sigma`: strongly curved bananas at :math:`\sigma` of
    order one and above are the hard cases. Measured by ``python -m scorelab.bench --only
    densities`` against a converged trapezoid rule (and the default banana against a 2-D grid
    convolution in ``tests/test_densities.py``): the largest relative error of the density at
    2,000 points drawn from :math:`p_\sigma`, for each :math:`\sigma` in 0.1, 0.2, 0.5, 1, 2, 3,
    5, 10, is about 1e-11 for the default :math:`a = 1, b = 0.5` and 2e-10 for Haario's
    moderate :math:`a = 10, b = 0.03`, 3e-4 for :math:`a = 1, b = 1`, but about 0.2 for
    :math:`a = 1, b = 2` (at :math:`\sigma = 1`) and 0.1 for Haario's highly twisted
    :math:`a = 10, b = 0.1` (at :math:`\sigma` from 2 to 5). ``n_nodes = 256`` brings these
    two to 1.5e-4 and 1e-5. Small and very large :math:`\sigma` are always accurate.
    """

    dim = 2

    def __init__(self, banana: Banana, sigma: float, n_nodes: int = 64) -> None:
        self.banana = banana
        self.sigma = _check_scale("sigma", sigma)
        self.n_nodes = check_positive_int("n_nodes", n_nodes)
        nodes, weights = np.polynomial.hermite.hermgauss(self.n_nodes)
        self._nodes = torch.from_numpy(nodes)  # (J,) Hermite nodes t_j, weight exp(-t^2)
        self._log_weights = torch.from_numpy(np.log(weights) - 0.5 * math.log(math.pi))  # (J,)
        a2, s2 = banana.scale**2, self.sigma**2
        self._x0_variance = a2 + s2
        self._shrink = a2 / (a2 + s2)  # dm / dx_1
        self._u_std = math.sqrt(2.0 * a2 * s2 / (a2 + s2))  # sqrt(2 v)
        self._y_variance = 1.0 + s2

    def __repr__(self) -> str:
        return f"PerturbedBanana({self.banana!r}, sigma={self.sigma}, n_nodes={self.n_nodes})"

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-terms of the quadrature, nodes w_j (``u``) and y_j = x_2 + b (w_j^2 - a^2), each
        (N, J)."""
        b, a2 = self.banana.curvature, self.banana.scale**2
        nodes = self._nodes.to(dtype=x.dtype, device=x.device)
        log_weights = self._log_weights.to(dtype=x.dtype, device=x.device)
        u = self._shrink * x[:, 0:1] + self._u_std * nodes  # (N, J)
        y = x[:, 1:2] + b * (u.square() - a2)  # (N, J)
        log_terms = log_weights - 0.5 * y.square() / self._y_variance
        return log_terms, u, y

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the perturbed banana, shape (N,), for ``x`` of shape (N, 2)."""
        x = _check_x(x, 2)
        log_terms, _, _ = self._terms(x)
        log_x0 = -0.5 * (x[:, 0].square() / self._x0_variance + math.log(self._x0_variance))
        log_y = -0.5 * math.log(self._y_variance)
        return log_x0 + log_y - _LOG_2PI + torch.logsumexp(log_terms, dim=1)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """Density of the perturbed banana, shape (N,)."""
        return self.log_prob(x).exp()

    def sample(self, n: int, generator: torch.Generator | None = None, *,
               device=None) -> torch.Tensor:
        """Draw ``n`` samples of x + sigma z, x from the banana, z ~ N(0, I), shape (n, 2).

        On ``device`` (default: the generator's device, else the CPU).
        """
        x = self.banana.sample(n, generator=generator, device=device)
        return x + self.sigma * randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Gradient of ``log_prob`` in closed form, shape (N, 2)."""
        x = _check_x(x, 2)
        log_terms, u, y = self._terms(x)
        node_weights = torch.softmax(log_terms, dim=1)  # (N, J): posterior weight of each node
        pull = y / self._y_variance  # (N, J): -d log N(y_j) / d y_j
        s1 = -(node_weights * pull).sum(1)
        chain = 2.0 * self.banana.curvature * u * self._shrink  # (N, J): d y_j / d x_1
        s0 = -x[:, 0] / self._x0_variance - (node_weights * pull * chain).sum(1)
        return torch.stack([s0, s1], dim=1)  # (N, 2)
