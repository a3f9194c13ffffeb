"""Figures of the course: densities, score fields, samples, trajectories, animations, image grids.

Every drawing function takes a matplotlib ``ax`` and returns it, and none calls ``plt.show()``,
so a chapter composes panels freely and the same code runs under a non-interactive backend.
Two-dimensional functions are evaluated on a regular grid of points of shape (G*G, 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes

from scorelab._validation import check_positive, check_positive_int

Limits = tuple[float, float]

__all__ = [
    "grid_points",
    "plot_density",
    "plot_score_field",
    "plot_score_error",
    "plot_samples",
    "plot_trajectories",
    "coordinate_ticks",
    "architecture_diagram",
    "animate_particles",
    "animate_images",
    "animation_html",
    "image_grid",
    "image_samples",
]


def _check_limits(name: str, limits) -> Limits:
    try:
        low, high = (float(v) for v in limits)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {limits!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} must be finite with low < high, got {limits!r}")
    return low, high


def _check_ax(ax) -> Axes:
    if not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    return ax


def _to_numpy(name: str, values, ndim: int, last: int | None = None) -> np.ndarray:
    """``values`` as a float array of ``ndim`` dimensions (last size ``last``), without NaN.

    A NaN would be drawn as nothing at all (a blank plot, no warning); infinities are left to
    the caller (a log-density may be -inf where the density is zero).
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim != ndim or (last is not None and array.shape[-1] != last):
        expected = f"{ndim} dimensions" + (f" with last size {last}" if last is not None else "")
        raise ValueError(f"{name} must have {expected}, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds NaN values, which would not be drawn (did a sampler "
                         "diverge?)")
    return array


def _log_prob_fn(density_or_log_prob) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(density_or_log_prob, "log_prob"):
        return density_or_log_prob.log_prob
    if callable(density_or_log_prob):
        return density_or_log_prob
    raise ValueError(
        "density_or_log_prob must have a .log_prob method or be a callable (N, 2) -> (N,), "
        f"got {type(density_or_log_prob).__name__}"
    )


def _score_fn(score_or_density) -> Callable[[torch.Tensor], torch.Tensor]:
    if hasattr(score_or_density, "score"):
        return score_or_density.score
    if callable(score_or_density):
        return score_or_density
    raise ValueError(
        "score_fn must have a .score method or be a callable (N, 2) -> (N, 2), "
        f"got {type(score_or_density).__name__}"
    )


def grid_points(xlim: Limits, ylim: Limits, n_grid: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A regular grid over ``xlim`` x ``ylim``.

    Returns
    -------
    xs, ys : numpy arrays of shape (G,)
        The grid coordinates along each axis.
    points : torch.Tensor of shape (G*G, 2)
        Every grid point, row-major in y (so ``values.reshape(G, G)`` has y along axis 0).
    """
    xlim, ylim = _check_limits("xlim", xlim), _check_limits("ylim", ylim)
    n_grid = check_positive_int("n_grid", n_grid)
    xs, ys = np.linspace(*xlim, n_grid), np.linspace(*ylim, n_grid)
    xx, yy = np.meshgrid(xs, ys)  # (G, G) each
    points = torch.from_numpy(np.stack([xx.ravel(), yy.ravel()], axis=1)).float()  # (G*G, 2)
    return xs, ys, points


def _density_grid(density_or_log_prob, xlim, ylim, n_grid: int, log: bool) -> np.ndarray:
    log_prob = _log_prob_fn(density_or_log_prob)
    _, _, points = grid_points(xlim, ylim, n_grid)
    with torch.no_grad():
        values = log_prob(points)
    values = _to_numpy("log_prob(points)", values, ndim=1).reshape(n_grid, n_grid)  # (G, G)
    return values if log else np.exp(values)


def plot_density(
    ax: Axes,
    density_or_log_prob,
    xlim: Limits,
    ylim: Limits,
    *,
    n_grid: int = 200,
    log: bool = False,
    kind: str = "heatmap",
    cmap: str = "viridis",
    levels: int = 8,
    colorbar: bool = False,
    **kwargs,
) -> Axes:
    """Draw a 2-D density as a heatmap or as contour lines.

    Parameters
    ----------
    ax : matplotlib Axes
    density_or_log_prob : object with ``.log_prob`` or callable
        Maps points of shape (N, 2) to log-densities of shape (N,).
    xlim, ylim : (low, high)
        The plotted window.
    n_grid : int
        Grid points per axis (the density is evaluated at n_grid**2 points).
    log : bool
        Draw the log-density rather than the density.
    kind : {"heatmap", "contour", "contourf"}
    levels : int
        Number of contour levels (contour kinds only).
    colorbar : bool
        Add a colour bar next to ``ax``.
    **kwargs
        Passed to ``imshow`` or ``contour``.
    """
    _check_ax(ax)
    if kind not in ("heatmap", "contour", "contourf"):
        raise ValueError(f"kind must be 'heatmap', 'contour' or 'contourf', got {kind!r}")
    xlim, ylim = _check_limits("xlim", xlim), _check_limits("ylim", ylim)
    levels = check_positive_int("levels", levels)
    values = _density_grid(density_or_log_prob, xlim, ylim, n_grid, log)  # (G, G)
    if kind == "heatmap":
        mappable = ax.imshow(values, origin="lower", extent=(*xlim, *ylim), cmap=cmap,
                             aspect="auto", **kwargs)
    else:
        xs, ys, _ = grid_points(xlim, ylim, n_grid)
        draw = ax.contour if kind == "contour" else ax.contourf
        mappable = draw(xs, ys, values, levels=levels, cmap=cmap, **kwargs)
    if colorbar:
        ax.figure.colorbar(mappable, ax=ax, label="log density" if log else "density")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return ax


def plot_score_field(
    ax: Axes, score_fn, xlim: Limits, ylim: Limits, *, n_grid: int = 20, normalize: bool = True,
    cmap: str = "magma", color: str | None = None, colorbar: bool = False, **kwargs,
) -> Axes:
    """Draw a 2-D score field as arrows.

    Scores grow without bound away from the modes, so by default every arrow has the same
    length (``normalize=True``) and its colour gives the magnitude ``|s(x)|``.

    Parameters
    ----------
    ax : matplotlib Axes
    score_fn : object with ``.score`` or callable
        Maps points of shape (N, 2) to scores of shape (N, 2).
    xlim, ylim : (low, high)
    n_grid : int
        Arrows per axis.
    normalize : bool
        Unit-length arrows coloured by magnitude; otherwise raw arrows in one colour.
    color : str, optional
        A single arrow colour (turns the magnitude colouring off).
    colorbar : bool
        Add a colour bar of the magnitude (only with magnitude colouring).
    **kwargs
        Passed to ``ax.quiver``.
    """
    _check_ax(ax)
    score = _score_fn(score_fn)
    xs, ys, points = grid_points(xlim, ylim, n_grid)
    with torch.no_grad():
        values = score(points)
    values = _to_numpy("score_fn(points)", values, ndim=2, last=2)  # (G*G, 2)
    if values.shape[0] != points.shape[0]:
        raise ValueError(f"score_fn must return shape {tuple(points.shape)}, got {values.shape}")
    magnitude = np.linalg.norm(values, axis=1)  # (G*G,)
    if normalize:
        values = values / np.maximum(magnitude, 1e-12)[:, None]
    xx, yy = np.meshgrid(xs, ys)
    u, v = values[:, 0].reshape(xx.shape), values[:, 1].reshape(xx.shape)
    if normalize:
        # unit arrows drawn at 80% of the grid spacing, so neighbouring arrows never overlap
        spacing = min(xs[1] - xs[0], ys[1] - ys[0]) if n_grid > 1 else 1.0
        kwargs = {"angles": "xy", "scale_units": "xy", "scale": 1.0 / (0.8 * spacing), **kwargs}
    if normalize and color is None:
        quiver = ax.quiver(xx, yy, u, v, magnitude.reshape(xx.shape), cmap=cmap, **kwargs)
        if colorbar:
            ax.figure.colorbar(quiver, ax=ax, label=r"$\|s(x)\|$")
    else:
        ax.quiver(xx, yy, u, v, color=color or "black", **kwargs)
    ax.set_xlim(*_check_limits("xlim", xlim))
    ax.set_ylim(*_check_limits("ylim", ylim))
    ax.set_aspect("equal")
    return ax


def plot_score_error(
    ax: Axes, score_fn, reference, xlim: Limits, ylim: Limits, *, n_grid: int = 80,
    vmin: float = -1.5, vmax: float = 1.0, cmap: str = "coolwarm",
):
    r"""Draw :math:`\log_{10} \|s(\mathbf{x}) - s_{\text{ref}}(\mathbf{x})\|` as a heatmap.

    Where a learned score is wrong, and by how much, on a log scale so that small and large
    errors both show (chapters 4 and 5 compare it with the density's contours).

    Parameters
    ----------
    ax : matplotlib Axes
    score_fn, reference : object with ``.score`` or callable
        The score to judge and the one it should be (each maps (N, 2) to (N, 2)); for
        instance a trained network and ``density.score``.
    xlim, ylim : (low, high)
    n_grid : int
        Grid points per axis.
    vmin, vmax : float
        The colour scale's ends, in log10 units (values beyond them take the end colours).
    cmap : str

    Returns
    -------
    matplotlib.image.AxesImage
        For a colour bar: ``fig.colorbar(image, ax=ax)``.
    """
    _check_ax(ax)
    if not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin}, vmax={vmax}")
    _, _, points = grid_points(xlim, ylim, n_grid)
    with torch.no_grad():
        values = [_to_numpy(f"{name}(points)", _score_fn(fn)(points), ndim=2, last=2)
                  for name, fn in [("score_fn", score_fn), ("reference", reference)]]
    error = np.linalg.norm(values[0] - values[1], axis=1)  # (G*G,)
    log_error = np.log10(np.maximum(error, 1e-12)).reshape(n_grid, n_grid)  # (G, G)
    return ax.imshow(log_error, origin="lower", extent=(*_check_limits("xlim", xlim),
                     *_check_limits("ylim", ylim)), cmap=cmap, vmin=vmin, vmax=vmax,
                     aspect="auto")


def plot_samples(
    ax: Axes,
    x,
    *,
    density=None,
    xlim: Limits | None = None,
    ylim: Limits | None = None,
    max_points: int | None = 5000,
    s: float = 2.0,
    alpha: float = 0.4,
    color: str = "tab:red",
    label: str | None = None,
    **kwargs,
) -> Axes:
    """Scatter 2-D samples, optionally over the contours of the true density.

    Parameters
    ----------
    ax : matplotlib Axes
    x : tensor or array of shape (N, 2)
        The samples.
    density : object with ``.log_prob`` or callable, optional
        Drawn as grey contour lines of the log-density under the samples (needs ``xlim`` and
        ``ylim``).
    max_points : int or None
        Show only the first ``max_points`` samples, so a figure of 10,000 particles stays small.
    **kwargs
        Passed to ``ax.scatter``.
    """
    _check_ax(ax)
    points = _to_numpy("x", x, ndim=2, last=2)
    if max_points is not None:
        points = points[: check_positive_int("max_points", max_points)]
    if density is not None:
        if xlim is None or ylim is None:
            raise ValueError("xlim and ylim are required when density is given")
        # Contours of the log-density at 1, 2 and 3 "standard deviations" below its peak, so
        # that a light mode is outlined as clearly as a heavy one.
        log_values = _density_grid(density, xlim, ylim, 120, log=True)  # (G, G)
        xs, ys, _ = grid_points(xlim, ylim, 120)
        peak = log_values.max()
        ax.contour(xs, ys, log_values, levels=[peak - 4.5, peak - 2.0, peak - 0.5], colors="0.3",
                   linestyles="solid", linewidths=0.8)
    ax.scatter(points[:, 0], points[:, 1], s=s, alpha=alpha, color=color, label=label,
               linewidths=0, **kwargs)
    if xlim is not None:
        ax.set_xlim(*_check_limits("xlim", xlim))
    if ylim is not None:
        ax.set_ylim(*_check_limits("ylim", ylim))
    ax.set_aspect("equal")
    return ax


def plot_trajectories(
    ax: Axes,
    trajectory,
    *,
    n_show: int = 10,
    cmap: str = "tab10",
    linewidth: float = 0.8,
    alpha: float = 0.8,
    markers: bool = True,
) -> Axes:
    """Draw the paths of a few particles.

    Parameters
    ----------
    ax : matplotlib Axes
    trajectory : tensor or array of shape (T, N, 2)
        States of N particles at T recorded times.
    n_show : int
        How many particles (the first ones) to draw, one line each.
    markers : bool
        Mark each start with a circle and each end with a cross.
    """
    _check_ax(ax)
    path = _to_numpy("trajectory", trajectory, ndim=3, last=2)  # (T, N, 2)
    n_show = min(check_positive_int("n_show", n_show), path.shape[1])
    colours = plt.get_cmap(cmap)
    for i in range(n_show):
        colour = colours(i % colours.N)
        ax.plot(path[:, i, 0], path[:, i, 1], color=colour, lw=linewidth, alpha=alpha)
        if markers:
            ax.plot(*path[0, i], "o", color=colour, ms=4)
            ax.plot(*path[-1, i], "x", color=colour, ms=6, mew=1.5)
    return ax


def coordinate_ticks(
    axes, xticks: Sequence[float], yticks: Sequence[float] | None = None, *,
    outer_only: bool = True, labelsize: float = 9,
) -> list[Axes]:
    """Put the same few coordinate ticks on every visible panel of a grid of 2-D panels.

    For figures whose panels share one window (small multiples, rows of samples): a reader can
    then read positions (where the modes are, how far apart) off the axes.

    Parameters
    ----------
    axes : matplotlib Axes or a sequence (or array) of them, e.g. ``fig.axes``
        Hidden panels (as :func:`scorelab.widgets.small_multiples` leaves in a last row that is
        not full) are skipped.
    xticks, yticks : sequences of numbers
        Tick positions; ``yticks`` defaults to ``xticks``.
    outer_only : bool
        Label the ticks only where no visible panel of the same grid lies below (x) or to the
        left (y), so a grid of panels is labelled once per row and column; panels that are not
        in a grid are always labelled.
    labelsize : float
        Font size of the tick labels.

    Returns
    -------
    list of the visible Axes. Call ``fig.tight_layout()`` afterwards if labels were added.
    """
    panels = [axes] if isinstance(axes, Axes) else list(np.ravel(np.asarray(axes, dtype=object)))
    panels = [_check_ax(ax) for ax in panels]
    panels = [ax for ax in panels if ax.get_visible()]
    yticks = xticks if yticks is None else yticks
    xticks, yticks = [float(t) for t in xticks], [float(t) for t in yticks]
    cells = {}  # panel -> (rows, columns) it spans in its grid, for panels in a grid
    for ax in panels:
        spec = ax.get_subplotspec()
        if spec is not None:
            cells[ax] = (spec.get_gridspec(), spec.rowspan, spec.colspan)

    def has_neighbour(ax, below: bool) -> bool:
        if not outer_only or ax not in cells:
            return False
        grid, rows, columns = cells[ax]
        for other, (other_grid, other_rows, other_columns) in cells.items():
            if other is ax or other_grid is not grid:
                continue
            if below and other_rows.start >= rows.stop and set(other_columns) & set(columns):
                return True
            if not below and other_columns.stop <= columns.start and set(other_rows) & set(rows):
                return True
        return False

    for ax in panels:
        ax.set_xticks(xticks)
        ax.set_yticks(yticks)
        ax.tick_params(labelsize=labelsize, labelbottom=not has_neighbour(ax, below=True),
                       labelleft=not has_neighbour(ax, below=False))
    return panels


def architecture_diagram(net, ax: Axes | None = None) -> Axes:
    """Draw ``CondRefineNetDilated`` from its module tree, one box per top-level block.

    The encoder (``begin_conv``, ``res1``..``res4``, blue) runs down the left column, the
    RefineNet decoder (``refine1``..``refine4``, ``end_norm``, ``end_conv``, orange) up the
    right one; each box gives the block's type, its output shape ``C x H x W`` (from one forward
    pass, :func:`scorelab.ncsn.block_shapes`) and its parameter count. Solid arrows follow the
    forward pass; dashed arrows are the skip connections res3 -> refine2, res2 -> refine3 and
    res1 -> refine4 (Song & Ermon 2019, Appendix A.3; Lin et al. 2017 for RefineNet). Every
    arrow starts and ends on the outline of its boxes.

    Parameters
    ----------
    net : CondRefineNetDilated, or an NCSN (whose ``.net`` is drawn)
    ax : matplotlib Axes, optional
        Drawn on a new figure's axes when omitted.

    Returns
    -------
    The Axes, with its frame turned off.
    """
    from scorelab.ncsn.refinenet import _refinenet_of, block_shapes

    net = _refinenet_of(net)
    ax = plt.subplots(figsize=(9, 6))[1] if ax is None else _check_ax(ax)
    shapes = block_shapes(net)
    children = dict(net.named_children())
    encoder = [n for n in children if n.startswith(("begin", "res"))]
    decoder = [n for n in children if n not in encoder]
    place = {n: (0, -row) for row, n in enumerate(encoder)}  # top to bottom
    place |= {n: (1, 1 - len(encoder) + row) for row, n in enumerate(decoder)}  # upwards
    boxes = {name: _block_box(ax, name, children[name], shapes[name], place[name])
             for name in children}

    def connect(start: str, end: str, **style) -> None:
        props = {"arrowstyle": "->", "shrinkA": 0, "shrinkB": 0,
                 "patchA": boxes[start].get_bbox_patch(),
                 "patchB": boxes[end].get_bbox_patch()} | style
        ax.annotate("", place[end], place[start], arrowprops=props)

    chain = encoder + decoder
    for start, end in zip(chain, chain[1:]):
        connect(start, end)
    stages = [n for n in encoder if n.startswith("res")]
    refines = [n for n in decoder if n.startswith("refine")]
    for stage, refine in zip(stages[::-1][1:], refines[1:]):  # res3 -> refine2, ...
        connect(stage, refine, ls="--", color="grey")
    rows = [y for _, y in place.values()]
    ax.set(xlim=(-0.6, 1.6), ylim=(min(rows) - 0.6, max(rows) + 0.6))
    ax.axis("off")
    return ax


def _block_box(ax: Axes, name: str, module: torch.nn.Module, shape: tuple[int, ...],
               at: tuple[float, float]):
    """The label box of one block: its name, type, output shape and parameter count."""
    kind = type(module).__name__
    if isinstance(module, torch.nn.ModuleList):
        kind = f"{len(module)} x {type(module[0]).__name__}"
    n_params = sum(p.numel() for p in module.parameters())
    label = (f"{name}: {kind}\n{' x '.join(map(str, shape))}, "
             f"{n_params / 1e3:.1f}k parameters")
    colour = "#dbe9f6" if at[0] == 0 else "#fde2cf"
    return ax.text(*at, label, ha="center", va="center", fontsize=8,
                   bbox={"boxstyle": "round", "fc": colour})


def _frame_indices(n_recorded: int, max_frames: int) -> np.ndarray:
    # evenly spaced frames, always keeping the first and the last state
    n_frames = min(n_recorded, max_frames)
    return np.unique(np.linspace(0, n_recorded - 1, n_frames).round().astype(int))


def animate_particles(
    trajectory, *, density=None, xlim: Limits = (-8.0, 8.0), ylim: Limits = (-8.0, 8.0),
    frame_titles: Sequence[str] | None = None, max_frames: int = 40, max_particles: int = 500,
    interval: int = 150, figsize: tuple[float, float] = (4.0, 4.0), dpi: int = 72,
    n_grid: int = 100, color: str = "white",
) -> FuncAnimation:
    """Animate particles moving over a density (for Langevin and annealed Langevin runs).

    Parameters
    ----------
    trajectory : tensor or array of shape (T, N, 2)
        Recorded states, e.g. from ``langevin_dynamics(..., return_trajectory=True)``.
    density : object with ``.log_prob``, callable, or a sequence of T of them, optional
        The background heatmap; a sequence gives one background per recorded state (so an
        annealed run can show the perturbed density of its current noise level).
    frame_titles : sequence of T strings, optional
        A title per recorded state (default "recorded state t").
    max_frames, max_particles : int
        At most this many evenly spaced states become frames (the page stays small), and
        only the first ``max_particles`` particles are drawn.
    interval, figsize, dpi
        Milliseconds between frames; figure size in inches and resolution of each frame.

    Returns
    -------
    matplotlib.animation.FuncAnimation
        Its figure closed (a notebook shows only what :func:`animation_html` returns).
    """
    path = _to_numpy("trajectory", trajectory, ndim=3, last=2)  # (T, N, 2)
    path = path[:, : check_positive_int("max_particles", max_particles)]
    xlim, ylim = _check_limits("xlim", xlim), _check_limits("ylim", ylim)
    if frame_titles is None:
        frame_titles = [f"recorded state {t}" for t in range(len(path))]
    if len(frame_titles) != len(path):
        raise ValueError(f"frame_titles must have one title per recorded state ({len(path)}), "
                         f"got {len(frame_titles)}")
    frames = _frame_indices(len(path), check_positive_int("max_frames", max_frames))
    backgrounds = _backgrounds(density, len(path), frames, xlim, ylim, n_grid)  # t -> (G, G)
    fig, ax = plt.subplots(figsize=figsize, dpi=check_positive_int("dpi", dpi))
    image = ax.imshow(backgrounds[frames[0]], origin="lower", extent=(*xlim, *ylim),
                      cmap="viridis", aspect="auto") if backgrounds else None
    scatter = ax.scatter(path[0, :, 0], path[0, :, 1], s=4, color=color, alpha=0.7,
                         linewidths=0)
    ax.set(xlim=xlim, ylim=ylim, xticks=[], yticks=[])
    # the first title is set before tight_layout, so the layout leaves room for it
    title = ax.set_title(frame_titles[frames[0]], fontsize=9)
    fig.tight_layout()

    def update(t: int):
        scatter.set_offsets(path[t])
        if image is not None:
            image.set_data(backgrounds[t])
            image.set_clim(backgrounds[t].min(), backgrounds[t].max())
        title.set_text(frame_titles[t])
        return (scatter, title) if image is None else (scatter, title, image)

    anim = FuncAnimation(fig, update, frames=list(frames), interval=check_positive_int(
        "interval", interval), blit=False)
    plt.close(fig)
    return anim


def animate_images(
    path, *, nrow: int = 8, frame_titles: Sequence[str] | None = None, interval: int = 200,
    figsize: tuple[float, float] = (4.5, 2.8), dpi: int = 80,
) -> FuncAnimation:
    """Animate a batch of images as it changes, one frame per recorded state (a sampler's path).

    Parameters
    ----------
    path : tensor or array of shape (T, N, C, H, W)
        Recorded states, e.g. the trajectory of ``NCSN.sample(..., snapshots=True)`` or of
        ``inpaint(..., snapshots=True)``; each frame is drawn by :func:`image_grid` (values
        clipped to [0, 1]).
    nrow : int
        Images per row of each frame.
    frame_titles : sequence of T strings, optional
        A title per recorded state (default "recorded state t").
    interval, figsize, dpi
        Milliseconds between frames; figure size in inches and resolution of each frame.

    Returns
    -------
    matplotlib.animation.FuncAnimation, its figure closed (show it with :func:`animation_html`).
    """
    frames = _to_numpy("path", path, ndim=5)  # (T, N, C, H, W)
    if frame_titles is None:
        frame_titles = [f"recorded state {t}" for t in range(len(frames))]
    if isinstance(frame_titles, str) or len(frame_titles) != len(frames):
        raise ValueError(f"frame_titles must have one title per recorded state ({len(frames)}), "
                         f"got {frame_titles!r}")
    nrow = check_positive_int("nrow", nrow)
    fig, ax = plt.subplots(figsize=figsize, dpi=check_positive_int("dpi", dpi))

    def show(t: int):
        ax.clear()
        image_grid(frames[t], nrow=nrow, ax=ax)
        ax.set_title(frame_titles[t], fontsize=9)

    show(0)
    fig.tight_layout()
    anim = FuncAnimation(fig, show, frames=len(frames), interval=check_positive_int(
        "interval", interval))
    plt.close(fig)
    return anim


def _backgrounds(density, n_recorded: int, frames, xlim, ylim, n_grid: int) -> dict:
    """The density grid (G, G) behind each frame t; one density or a sequence, one per state."""
    if density is None:
        return {}
    per_frame = isinstance(density, Sequence) and not isinstance(density, str)
    if per_frame and len(density) != n_recorded:
        raise ValueError(f"density, when a sequence, must have {n_recorded} entries (one per "
                         f"recorded state), got {len(density)}")
    grids: dict[int, np.ndarray] = {}  # id(density) -> grid: an annealed run shares one per level
    backgrounds = {}
    for t in frames:
        source = density[t] if per_frame else density
        if id(source) not in grids:
            grids[id(source)] = _density_grid(source, xlim, ylim, n_grid, log=False)
        backgrounds[t] = grids[id(source)]
    return backgrounds


def animation_html(anim: FuncAnimation, *, fps: float | None = None, frame_format: str = "jpeg",
                   default_mode: str = "loop"):
    """A self-contained JavaScript player for ``anim``, shown by Jupyter and the static book.

    Parameters
    ----------
    anim : matplotlib.animation.FuncAnimation
    fps : float, optional
        Frames per second (default: from the animation's interval).
    frame_format : {"jpeg", "png"}
        How frames are embedded; JPEG keeps a 40-frame heatmap animation well under 2 MB.
    default_mode : {"loop", "once", "reflect"}

    Returns
    -------
    IPython.display.HTML
    """
    from IPython.display import HTML

    if not isinstance(anim, FuncAnimation):
        raise ValueError(f"anim must be a matplotlib FuncAnimation, got {type(anim).__name__}")
    if frame_format not in ("jpeg", "png"):
        raise ValueError(f"frame_format must be 'jpeg' or 'png', got {frame_format!r}")
    if default_mode not in ("loop", "once", "reflect"):
        raise ValueError(f"default_mode must be 'loop', 'once' or 'reflect', got {default_mode!r}")
    if fps is not None:
        fps = check_positive("fps", fps)
    with plt.rc_context({"animation.frame_format": frame_format}):
        return HTML(anim.to_jshtml(fps=fps, default_mode=default_mode))


def image_grid(images, nrow: int = 8, ax: Axes | None = None, *, padding: int = 1,
               vmin: float = 0.0, vmax: float = 1.0, cmap: str = "gray",
               column_labels: Sequence[str] | None = None) -> Axes:
    """Tile a batch of images into one picture.

    Parameters
    ----------
    images : tensor or array of shape (N, C, H, W), C in {1, 3}
        Values are clipped to [vmin, vmax].
    nrow : int
        Images per row (the number of rows follows from N).
    ax : matplotlib Axes, optional
        Where to draw; a new figure is made when omitted.
    padding : int
        Pixels of background between images.
    column_labels : sequence of str, optional
        One label written above each column (as many as there are columns).

    Returns
    -------
    matplotlib Axes
    """
    batch = _to_numpy("images", images, ndim=4)  # (N, C, H, W)
    n, channels, height, width = batch.shape
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (shape (N, C, H, W)), got C={channels}")
    if n == 0:
        raise ValueError("images must hold at least one image, got N=0")
    nrow = check_positive_int("nrow", nrow)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative integer, got {padding!r}")
    if not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got vmin={vmin}, vmax={vmax}")
    columns, rows = min(nrow, n), math.ceil(n / nrow)
    if column_labels is not None and (isinstance(column_labels, str)
                                      or len(column_labels) != columns):
        raise ValueError(f"column_labels must hold one label per column ({columns}), "
                         f"got {column_labels!r}")
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding,
                      channels), vmax, dtype=float)  # (rows*H', columns*W', C), light background
    for k in range(n):
        top, left = padding + (k // nrow) * (height + padding), padding + (k % nrow) * (width + padding)
        canvas[top:top + height, left:left + width] = batch[k].transpose(1, 2, 0)  # (H, W, C)
    canvas = np.clip(canvas, vmin, vmax)
    if ax is None:
        _, ax = plt.subplots(figsize=(columns * 0.6 + 0.4, rows * 0.6 + 0.4))
    _check_ax(ax)
    if channels == 1:
        ax.imshow(canvas[..., 0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        ax.imshow((canvas - vmin) / (vmax - vmin), interpolation="nearest")
    ax.set_axis_off()
    for k, label in enumerate(column_labels or []):
        centre = padding + k * (width + padding) + (width - 1) / 2
        ax.text(centre, -0.5, str(label), ha="center", va="bottom", fontsize=8)
    return ax


def image_samples(
    model,
    *,
    n: int = 64,
    nrow: int | None = None,
    generator: torch.Generator | None = None,
    images: torch.Tensor | None = None,
    **sample_kwargs,
):
    """A figure with a grid of ``n`` samples of ``model`` (or of the given ``images``).

    Parameters
    ----------
    model : object with ``.sample(n, generator=..., **sample_kwargs)``
        For instance a :class:`scorelab.ncsn.NCSN`.
    n : int
        Number of images.
    nrow : int, optional
        Images per row (default: about sqrt(n)).
    images : Tensor (n, C, H, W), optional
        Draw these instead of sampling.

    Returns
    -------
    matplotlib.figure.Figure
        The caller saves or shows it (and closes it).
    """
    if images is None:
        images = model.sample(check_positive_int("n", n), generator=generator, **sample_kwargs)
    images = images.detach().cpu()
    nrow = max(1, math.ceil(math.sqrt(len(images)))) if nrow is None else check_positive_int(
        "nrow", nrow)
    figure, ax = plt.subplots(figsize=(0.5 * nrow, 0.5 * math.ceil(len(images) / nrow)))
    image_grid(images, nrow=nrow, ax=ax)
    figure.tight_layout(pad=0.1)
    return figure
