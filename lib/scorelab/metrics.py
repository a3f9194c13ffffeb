"""How good is a score model or a sample set: Fisher divergence, mode weights, MMD, digits quality.

Four families of figures:

- score fields: the Fisher divergence between a model score and the true score, on samples;
- likelihoods: bits per dimension of dequantised images;
- 2-D samples: the share of samples nearest to each mixture centre (mode weights), the maximum
  mean discrepancy (MMD) with a Gaussian kernel and the energy distance between two sample sets;
- 8x8 digit samples: the confidence and class shares a digits classifier gives them, and the
  Fréchet distance to real digits in a 20-component PCA space.

Calibration of the digit figures on real data (scikit-learn's digits, pixels in [0, 1], PCA and
classifier fitted on the 1,257 training digits of :func:`scorelab.data.load_digits`):

=================================================  ===========  ======================
sample set                                          confident    PCA Fréchet distance
=================================================  ===========  ======================
real test digits (540)                              0.71         0.04 (to the training set)
two disjoint sets of 500 real digits                 --          0.06-0.07 (to each other)
test digits blurred (Gaussian filter, 0.6 pixel)     --          0.7 (to the training set)
test digits blurred (Gaussian filter, 1 pixel)       0.03        2.3
test digits of classes 5-9 only                      --          0.58 (to the training set)
uniform noise images                                 0.05        --
=================================================  ===========  ======================

The Fréchet distance is computed on the *unscaled* PCA coordinates of pixels in [0, 1]
(no whitening, no division by the data's standard deviation): that normalisation gives the
calibration figures above (real halves about 0.07, blurred about 0.7, half the classes about 0.6).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from scorelab._validation import (check_batch, check_callable, check_points, check_positive,
                                  check_flag, check_positive_int, check_score_shape,
                                  check_values)
from scorelab.scores import sigma_per_example

DIGITS_PIXELS = 64  # 8 x 8
DIGITS_CLASSES = 10
PIXEL_SLACK = 0.5  # pixels may stray this far outside [0, 1] (unclamped samples), no further


# ---------------------------------------------------------------------------------------------
# Score fields
# ---------------------------------------------------------------------------------------------


def fisher_divergence(
    score_fn: Callable,
    true_score_fn: Callable,
    x: torch.Tensor,
    relative: bool = False,
    *,
    sigma=None,
    batch_size: int = 10_000,
) -> float:
    """Monte-Carlo Fisher divergence between a model score and a true score.

    ``D_F = E_{x ~ p} || s(x) - grad log p(x) ||^2``, the objective ``J(theta)`` of Hyvärinen
    (2005, Sec. 2) without its 1/2, estimated on the samples ``x``. With ``relative=True`` it is divided by
    ``E_{x ~ p} || grad log p(x) ||^2``, so 0 is perfect and 1 is as bad as predicting zero.

    Parameters
    ----------
    score_fn, true_score_fn : callable
        ``(N, *D) -> (N, *D)`` score functions (a ``BasicNetwork`` or a density's ``.score``);
        with ``sigma``, noise-conditional ones called as ``score_fn(x, sigma)`` (the score
        contract of :mod:`scorelab.scores`, e.g. ``mixture.perturbed_score``).
    x : Tensor, shape (N, *D)
        Samples of the distribution under which the divergence is taken. To compare with the
        score of a *perturbed* density (denoising score matching learns that one), pass samples
        of the perturbed density.
    relative : bool
        Divide by the mean squared norm of the true score.
    sigma : float or Tensor (N,), optional
        The noise level at which both noise-conditional scores are compared (a float is
        passed on as a float, a tensor in slices (n,) of its batches).
    batch_size : int
        Points scored at once (memory bound only).

    Returns
    -------
    float
    """
    signature = "(x)" if sigma is None else "(x, sigma)"
    check_callable("score_fn", score_fn, "score_fn" + signature)
    check_callable("true_score_fn", true_score_fn, "true_score_fn" + signature)
    x = check_batch("x", x)
    per_example = sigma_per_example(sigma, x) if sigma is not None else None  # checked (N,)
    error, norm = 0.0, 0.0
    for start in range(0, x.shape[0], check_positive_int("batch_size", batch_size)):
        chunk = x[start : start + batch_size]
        levels = () if sigma is None else (
            per_example[start : start + batch_size] if isinstance(sigma, torch.Tensor) else sigma,)
        model = _finite_score("score_fn", score_fn(chunk, *levels), chunk)
        true = _finite_score("true_score_fn", true_score_fn(chunk, *levels), chunk)
        error += float(((model - true) ** 2).reshape(len(chunk), -1).sum(dim=1).sum())
        norm += float((true**2).reshape(len(chunk), -1).sum(dim=1).sum())
    if check_flag("relative", relative):
        if norm == 0:
            raise ValueError("relative Fisher divergence needs a true score that is not zero on x")
        return error / norm
    return error / x.shape[0]


def _finite_score(name: str, score, x: torch.Tensor) -> torch.Tensor:
    """A score function's output, checked: x's shape, finite values (else the figure is NaN)."""
    score = check_score_shape(name, score, x).detach()
    if not torch.isfinite(score).all():
        raise ValueError(f"{name} returned NaN or infinite values")
    return score


# ---------------------------------------------------------------------------------------------
# Likelihoods
# ---------------------------------------------------------------------------------------------


def bits_per_dim(log_prob: torch.Tensor, n_dims: int, *, n_levels: int | None = None) -> torch.Tensor:
    r"""Bits per dimension, :math:`-\log_2 p(x) / D`, of log-densities (N,) in nats.

    With ``n_levels`` = K, ``log_prob`` is the log-density of *dequantised* images in
    :math:`[0, 1]^D`, :math:`x = (k + u) / K` with integer levels :math:`k \in \{0, \dots, K-1\}^D`
    and :math:`u \sim U(0, 1)^D` (:func:`scorelab.data.load_digits` with ``dequantize=True``,
    K = 17). Any density p of x bounds the probability of the discrete image k, by Jensen's
    inequality over u (Theis et al. 2016, Sec. 3.1):

    .. math:: \log P(k) = \log \int_{[0,1]^D} p\big(\tfrac{k + u}{K}\big) K^{-D} du
              \ \ge\ \E_u\big[\log p\big(\tfrac{k + u}{K}\big)\big] - D \log K,

    so the figure returned, :math:`-\log_2 p(x) / D + \log_2 K`, is (in expectation over u) an
    upper bound on the bits per dimension of k. The uniform density on :math:`[0, 1]^D` scores
    :math:`\log_2 K` (4.09 for the digits).

    Parameters
    ----------
    log_prob : Tensor, shape (N,)
        log p(x) in nats, e.g. from :func:`scorelab.sde.log_likelihood`.
    n_dims : int
        D, the number of pixels (64 for the 8x8 digits).
    n_levels : int, optional
        K, the grey levels of the images before dequantisation; without it, the plain
        :math:`-\log_2 p(x) / D` of continuous data.

    Returns
    -------
    Tensor, shape (N,)
        A log-density of minus infinity (a point the model gives no mass) is infinitely many bits.
    """
    if not isinstance(log_prob, torch.Tensor) or log_prob.ndim != 1 or not log_prob.is_floating_point():
        got = (f"shape {tuple(log_prob.shape)}, dtype {log_prob.dtype}"
               if isinstance(log_prob, torch.Tensor) else type(log_prob).__name__)
        raise ValueError(f"log_prob must be a floating-point tensor of shape (N,), got {got}")
    if log_prob.isnan().any():
        raise ValueError("log_prob holds NaN: the likelihood computation failed")
    n_dims = check_positive_int("n_dims", n_dims)
    offset = 0.0
    if n_levels is not None:
        if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
            raise ValueError(f"n_levels must be an integer >= 2 (grey levels), got {n_levels!r}")
        offset = math.log2(n_levels)
    return -log_prob / (n_dims * math.log(2)) + offset


# ---------------------------------------------------------------------------------------------
# 2-D samples
# ---------------------------------------------------------------------------------------------


def mode_weights(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Share of the samples nearest to each centre.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    centers : Tensor, shape (K, D)
        For instance a mixture's means.

    Returns
    -------
    Tensor, shape (K,)
        Shares that sum to one.
    """
    x = check_values("x", check_points("x", x))
    centers = check_values("centers", check_points("centers", centers, dim=x.shape[1]))
    if len(x) == 0 or len(centers) == 0:
        raise ValueError(f"x and centers must hold at least one row each, got {len(x)} and "
                         f"{len(centers)}")
    nearest = torch.cdist(x, centers.to(x)).argmin(dim=1)  # (N,)
    return torch.bincount(nearest, minlength=len(centers)).to(x.dtype) / len(x)


def _check_pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    x = check_values("x", check_points("x", x))
    y = check_values("y", check_points("y", y, dim=x.shape[1])).to(x)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"x and y need at least 2 samples each, got {len(x)} and {len(y)}")
    return x, y


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median heuristic: the median distance between distinct points of ``x`` and ``y``."""
    x, y = _check_pair(x, y)
    pooled = torch.cat([x, y])  # (N + M, D)
    distances = torch.pdist(pooled)
    return float(distances.median().clamp_min(torch.finfo(x.dtype).tiny))


def mmd(x: torch.Tensor, y: torch.Tensor, *, bandwidth: float | None = None) -> float:
    """Squared maximum mean discrepancy with a Gaussian kernel (unbiased U-statistic).

    ``MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y)`` with
    ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``, estimated by the unbiased statistic MMD^2_u of
    Gretton et al. (2012), which can be slightly negative when the two sets come from one
    distribution.

    Parameters
    ----------
    x : Tensor, shape (N, D)
    y : Tensor, shape (M, D)
    bandwidth : float, optional
        The kernel width ``h``; the median heuristic (:func:`median_bandwidth`) when omitted.

    Returns
    -------
    float
    """
    x, y = _check_pair(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else check_positive("bandwidth", bandwidth)
    # 2 h^2 floored at the dtype's smallest normal number: a tiny bandwidth (collapsed samples)
    # must give k = 1 at distance 0 and 0 elsewhere, not 0 / 0 = NaN.
    two_h2 = max(2 * h * h, torch.finfo(x.dtype).tiny)

    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b) ** 2 / two_h2)

    n, m = len(x), len(y)
    # The U-statistic leaves out the diagonal k(x_i, x_i) = 1.
    k_xx = (kernel(x, x).sum() - n) / (n * (n - 1))
    k_yy = (kernel(y, y).sum() - m) / (m * (m - 1))
    return float(k_xx + k_yy - 2 * kernel(x, y).mean())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance ``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` (Székely & Rizzo 2013).

    Parameters
    ----------
    x : Tensor, shape (N, D)
    y : Tensor, shape (M, D)

    Returns
    -------
    float
        Non-negative up to Monte-Carlo error (U-statistics within each set); zero only when
        the two distributions are equal.
    """
    x, y = _check_pair(x, y)
    n, m = len(x), len(y)
    within_x = torch.cdist(x, x).sum() / (n * (n - 1))
    within_y = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * torch.cdist(x, y).mean() - within_x - within_y)


# ---------------------------------------------------------------------------------------------
# 8x8 digits
# ---------------------------------------------------------------------------------------------


def _digit_array(name: str, images) -> np.ndarray:
    """Images (N, 64), (N, 8, 8) or (N, 1, 8, 8) in [0, 1], tensor or array -> float64 (N, 64)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    array = np.asarray(images, dtype=np.float64)
    if array.shape[1:] not in ((DIGITS_PIXELS,), (8, 8), (1, 8, 8)):
        raise ValueError(
            f"{name} must hold 8x8 images of shape (N, 64), (N, 8, 8) or (N, 1, 8, 8), "
            f"got shape {array.shape}"
        )
    array = array.reshape(len(array), DIGITS_PIXELS)  # (N, 64)
    if len(array) == 0:
        raise ValueError(f"{name} must hold at least one image")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite pixel values")
    low, high = array.min(), array.max()
    if low < -PIXEL_SLACK or high > 1 + PIXEL_SLACK:
        raise ValueError(
            f"{name} must hold pixels on the [0, 1] scale, got values from {low:.3g} to "
            f"{high:.3g} (divide 0-16 grey levels by 16, 0-255 bytes by 255)"
        )
    return array


def _training_digits():
    from scorelab.data import load_digits

    images, labels = load_digits("train", return_labels=True)
    return images, labels


def digits_classifier(
    images=None,
    labels=None,
    *,
    regularization: float = 1.0,
    max_iter: int = 2000,
):
    """A multinomial logistic-regression classifier of 8x8 digits.

    Logistic regression rather than a neural network: it is fitted in under a second, reaches
    about 97 % test accuracy, and is confident on real digits (71 % of the test digits above
    probability 0.9) but not on blurred digits or noise (3-5 %), which is what a sample-quality
    figure needs (an MLP is confident on 70 % of uniform-noise images).

    Parameters
    ----------
    images : Tensor or array, shape (N, 64) or (N, 1, 8, 8), optional
        Training images in [0, 1]; the training split of :func:`scorelab.data.load_digits`
        when omitted.
    labels : Tensor or array, shape (N,), optional
        Their classes 0-9 (required when ``images`` is given).
    regularization : float
        The inverse regularisation strength ``C`` of scikit-learn's ``LogisticRegression``.
    max_iter : int
        Iterations of the L-BFGS solver.

    Returns
    -------
    sklearn.linear_model.LogisticRegression
        Fitted; its ``predict_proba`` takes (N, 64) arrays.
    """
    from sklearn.linear_model import LogisticRegression

    if images is None:
        images, labels = _training_digits()
    if labels is None:
        raise ValueError("labels must be given with images")
    features = _digit_array("images", images)
    targets = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if len(targets) != len(features):
        raise ValueError(f"labels must have {len(features)} entries, got {len(targets)}")
    if not np.issubdtype(targets.dtype, np.integer) or not set(targets.tolist()) <= set(
            range(DIGITS_CLASSES)):
        raise ValueError(f"labels must be the digits 0..9 (integers), got the values "
                         f"{sorted(set(targets.tolist()))[:12]}")
    classifier = LogisticRegression(C=check_positive("regularization", regularization),
                                    max_iter=max_iter)
    return classifier.fit(features, targets)


def _check_classifier(classifier, method: str) -> None:
    """Raise unless ``classifier`` has ``method`` and, where it says (scikit-learn's
    ``classes_``), predicts the ten digits 0..9: a classifier trained on labels 1..10 would
    give shares that silently miss a class."""
    if not callable(getattr(classifier, method, None)):
        raise ValueError(f"classifier must be a fitted classifier with a {method}() method "
                         f"(for instance digits_classifier()), got {type(classifier).__name__}")
    classes = getattr(classifier, "classes_", None)
    if classes is not None and list(np.asarray(classes).tolist()) != list(range(DIGITS_CLASSES)):
        raise ValueError(f"classifier must predict the {DIGITS_CLASSES} digits 0..9, got the "
                         f"classes {np.asarray(classes).tolist()}")


def classifier_confidence(classifier, samples, *, threshold: float = 0.9) -> float:
    """Share of the samples whose largest class probability exceeds ``threshold``.

    Parameters
    ----------
    classifier : fitted classifier with ``predict_proba``
        For instance :func:`digits_classifier`.
    samples : Tensor or array, shape (N, 64) or (N, 1, 8, 8)
        Images in [0, 1].
    threshold : float
        In (0, 1).

    Returns
    -------
    float
    """
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    _check_classifier(classifier, "predict_proba")
    probabilities = classifier.predict_proba(_digit_array("samples", samples))  # (N, 10)
    return float((probabilities.max(axis=1) > threshold).mean())


def class_coverage(classifier, samples) -> np.ndarray:
    """Share of the samples assigned to each class (predicted label).

    Parameters
    ----------
    classifier : fitted classifier with ``predict``
    samples : Tensor or array, shape (N, 64) or (N, 1, 8, 8)

    Returns
    -------
    ndarray, shape (10,)
        Shares that sum to one; a sampler that covers every class gives each at least
        about 3 % (the real digits give 9-11 % each).
    """
    _check_classifier(classifier, "predict")
    predicted = classifier.predict(_digit_array("samples", samples)).astype(np.int64)
    return np.bincount(predicted, minlength=DIGITS_CLASSES)[:DIGITS_CLASSES] / len(predicted)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors.

    ``||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^{1/2})``, the formula of the FID
    (Heusel et al. 2017) applied to any features.

    Parameters
    ----------
    a : ndarray or Tensor, shape (N, F)
    b : ndarray or Tensor, shape (M, F)

    Returns
    -------
    float
    """
    from scipy import linalg

    a, b = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
            for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"a and b must be (N, F) and (M, F) with N, M >= 2, got {a.shape}, {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must hold finite values (no NaN or infinity)")
    mean_gap = a.mean(axis=0) - b.mean(axis=0)
    cov_a, cov_b = (np.atleast_2d(np.cov(v, rowvar=False)) for v in (a, b))  # (F, F), F = 1 too
    # sqrtm of a product of two PSD matrices is real up to round-off; drop the imaginary dust.
    cross = linalg.sqrtm(cov_a @ cov_b).real
    return float(mean_gap @ mean_gap + np.trace(cov_a + cov_b - 2 * cross))


def pca_frechet_distance(samples, reference, pca_train=None, *, n_components: int = 20) -> float:
    """Fréchet distance between two sets of digits in a PCA space fitted on training digits.

    The images are projected on the first ``n_components`` principal components of
    ``pca_train`` (unscaled coordinates of pixels in [0, 1]) and :func:`frechet_distance` is
    taken there: a small-image analogue of FID. See the module docstring for calibration values
    (real vs real about 0.07 at 500 images each; blurred about 0.7; half the classes about 0.6).

    Parameters
    ----------
    samples, reference : Tensor or array, shape (N, 64) or (N, 1, 8, 8)
        Images in [0, 1] (for instance generated samples and the test digits).
    pca_train : Tensor or array, shape (N, 64) or (N, 1, 8, 8), optional
        Images the PCA is fitted on; the training split of :func:`scorelab.data.load_digits`
        when omitted.
    n_components : int

    Returns
    -------
    float
    """
    from sklearn.decomposition import PCA

    n_components = check_positive_int("n_components", n_components)
    if pca_train is None:
        pca_train, _ = _training_digits()
    pca = PCA(n_components=n_components).fit(_digit_array("pca_train", pca_train))
    features_a = pca.transform(_digit_array("samples", samples))  # (N, n_components)
    features_b = pca.transform(_digit_array("reference", reference))  # (M, n_components)
    return frechet_distance(features_a, features_b)
