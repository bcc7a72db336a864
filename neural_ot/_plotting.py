"""Pictures for the command line and notebooks (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np


def _figure(**kwargs):
  """A figure with its own Agg canvas: no pyplot, so no global backend switch and no
  figure registered with the user's pyplot state."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def _arrow_handle(label):
  """A legend entry drawn as an arrow (quiver and annotate arrows have no legend handle)."""
  from matplotlib.lines import Line2D
  return Line2D([], [], color="0.3", marker=r"$\rightarrow$", markersize=14, linestyle="none",
                label=label)


def _label_axes(ax, x_label="first coordinate", y_label="second coordinate"):
  ax.set_xlabel(x_label)
  ax.set_ylabel(y_label)


def plot_sinkhorn(x, y, tx, plan, summary, path):
  """Barycentric map arrows and the sorted plan of a Sinkhorn solve."""
  fig = _figure(figsize=(12, 5.6), layout="constrained")
  axes = fig.subplots(1, 2)
  ax = axes[0]
  ax.scatter(x[:, 0], x[:, 1], s=6, c="tab:blue", label="source x")
  ax.scatter(y[:, 0], y[:, 1], s=6, c="tab:orange", label="target y")
  step = max(1, len(x) // 150)
  for i in range(0, len(x), step):
    ax.annotate("", tx[i], x[i], arrowprops=dict(arrowstyle="->", color="0.3", lw=0.6))
  handles, _ = ax.get_legend_handles_labels()
  ax.legend(handles=handles + [_arrow_handle("displacement x -> E[y | x]")], loc="upper right",
            fontsize=8, framealpha=0.9)
  ax.set_title(f"{summary['source']} -> {summary['target']}, n = {summary['n']}: barycentric "
               f"map\n{summary['n_iters']} iterations, Sinkhorn divergence "
               f"{summary['sinkhorn_divergence_W2sq_estimate']:.3g}")
  _label_axes(ax)
  ax.set_aspect("equal")
  ax = axes[1]
  if plan is not None:
    order_x = np.argsort(np.arctan2(x[:, 1], x[:, 0]))
    order_y = np.argsort(np.arctan2(y[:, 1], y[:, 0]))
    img = np.sqrt(plan[order_x][:, order_y] * len(x))
    im = ax.imshow(img, aspect="auto", cmap="magma", vmax=np.quantile(img, 0.999))
    fig.colorbar(im, ax=ax, label="sqrt(n P_ij)")
    ax.set_title("transport plan, rows and columns sorted by angle")
    ax.set_xlabel("target point (sorted by angle)")
    ax.set_ylabel("source point (sorted by angle)")
  else:
    ax.axis("off")
  fig.savefig(path, dpi=110)


def plot_map(x, y, tx, iy, title, path, n_arrows=200):
  """Four panels: samples, forward map T(x), displacements, inverse T^{-1}(y).

  ``title`` names the pair (it heads the first panel; there is no figure title above the
  panel titles).
  """
  fig = _figure(figsize=(11, 10.5), layout="constrained")
  axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
  kw = dict(s=4, alpha=0.6, rasterized=True)
  axes[0].scatter(x[:, 0], x[:, 1], c="tab:blue", label="source x", **kw)
  axes[0].scatter(y[:, 0], y[:, 1], c="tab:orange", label="target y", **kw)
  axes[0].set_title(f"{title}\nheld-out samples")
  axes[1].scatter(y[:, 0], y[:, 1], c="tab:orange", label="target y", **kw)
  axes[1].scatter(tx[:, 0], tx[:, 1], c="tab:green", label="T(x) = grad f(x)", **kw)
  axes[1].set_title("forward map: T(x) should cover the target")
  idx = np.linspace(0, len(x) - 1, min(n_arrows, len(x))).astype(int)
  axes[2].scatter(x[idx, 0], x[idx, 1], c="tab:blue", s=6, label="source x")
  axes[2].quiver(x[idx, 0], x[idx, 1], tx[idx, 0] - x[idx, 0], tx[idx, 1] - x[idx, 1],
                 angles="xy", scale_units="xy", scale=1, width=0.003, color="0.3")
  axes[2].set_title(f"displacements x -> T(x) ({len(idx)} points)")
  axes[3].scatter(x[:, 0], x[:, 1], c="tab:blue", label="source x", **kw)
  axes[3].scatter(iy[:, 0], iy[:, 1], c="tab:purple", label="T^-1(y) = grad f*(y)", **kw)
  axes[3].set_title("inverse map: T^-1(y) should cover the source")
  both = np.concatenate([x, y])
  lo, hi = np.quantile(both, 0.002, axis=0), np.quantile(both, 0.998, axis=0)
  pad = 0.1 * (hi - lo)
  for i, ax in enumerate(axes):
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal")
    ax.tick_params(labelbottom=True, labelleft=True)
    _label_axes(ax)
    handles, _ = ax.get_legend_handles_labels()
    if i == 2:  # the arrow's marker is drawn to scale: no markerscale on this legend
      handles.append(_arrow_handle("displacement T(x) - x"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, markerscale=1 if i == 2 else 3,
              framealpha=0.9)
  fig.savefig(path, dpi=100)
