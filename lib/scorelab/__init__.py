"""scorelab: the code behind the course *Score matching and Langevin sampling*.

Modules, one idea each:

- :mod:`scorelab.densities`   analytical targets (Gaussian mixture, banana) and their scores
- :mod:`scorelab.langevin`    Langevin, annealed Langevin and MALA samplers
- :mod:`scorelab.noise`       the noise ladder sigma_1 > ... > sigma_L, built and checked once
- :mod:`scorelab.scores`      the score contract ``score_fn(x, sigma)`` and its network adapter
- :mod:`scorelab.plotting`    score fields, densities, trajectories, animations, image grids
- :mod:`scorelab.nets`        MLP score models for low-dimensional data
- :mod:`scorelab.training`    denoising, sliced and exact score matching, and the training loop
- :mod:`scorelab.sde`         the VE SDE: reverse-SDE and ODE samplers, likelihoods
- :mod:`scorelab.nets_continuous` a score model conditioned on a continuous sigma
- :mod:`scorelab.ncsn`        NCSN (CondRefineNetDilated): training, checkpoints, inpainting
- :mod:`scorelab.data`        toy data sets and the 8x8 digits
- :mod:`scorelab.metrics`     Fisher divergence, mode weights, MMD, sample quality
- :mod:`scorelab.widgets`     sliders over figures (mixture weights, step size, noise level)
- :mod:`scorelab.checks`      the exercises' checks and hints, feedback in plain words
- :mod:`scorelab.grading`     batch grading of submitted exercise notebooks
- :mod:`scorelab.bench`       the benchmarks behind every figure the README quotes
- :mod:`scorelab.seeding`     one call that makes a notebook reproducible

Every score function follows one contract: ``score_fn(x)`` (or ``score_fn(x, sigma)``
for noise-conditional scores, ``sigma`` a float or a tensor (N,)) returns a tensor of the
same shape as ``x``.
"""

from scorelab.seeding import seed_everything

__version__ = "0.1.0"

__all__ = ["seed_everything", "__version__"]
