"""scorelab: the code behind the course *Score matching and Langevin sampling*.

Modules, one idea each:

- :mod:`scorelab.densities`   analytical targets (Gaussian mixture, banana) and their scores
- :mod:`scorelab.langevin`    Langevin, annealed Langevin and MALA samplers
- :mod:`scorelab.noise`       the noise ladder sigma_1 > ... > sigma_L, built and checked once
- :mod:`scorelab.scores`      the score contract ``score_fn(x, sigma)`` and its network adapter
- :mod:`scorelab.plotting`    score fields, densities, trajectories, animations, image grids
- :mod:`scorelab.nets`        MLP score models for low-dimensional data
- :mod:`scorelab.training`    denoising, sliced and exact score matching, and the training loop
- :mod:`scorelab.ncsn`        the Noise Conditional Score Network (CondRefineNetDilated)
- :mod:`scorelab.data`        toy data sets and the 8x8 digits
- :mod:`scorelab.metrics`     Fisher divergence, mode weights, MMD, sample quality
- :mod:`scorelab.widgets`     sliders over figures (mixture weights, step size, noise level)
- :mod:`scorelab.seeding`     one call that makes a notebook reproducible

Every score function follows one contract: ``score_fn(x)`` (or ``score_fn(x, sigma)``
for noise-conditional scores, ``sigma`` a float or a tensor (N,)) returns a tensor of the
same shape as ``x``.
"""

from scorelab.seeding import seed_everything

__version__ = "0.1.0"

__all__ = ["seed_everything", "__version__"]
