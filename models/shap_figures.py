"""SHAP figures of a model: the beeswarm summary and the dependence plots of its three most
important features, drawn with shap's plotting functions on a seeded sample of zones.

Kept apart from :mod:`territoria.models.explain` so that a worker process drawing them
(:class:`territoria.workers.SideProcess`) imports matplotlib and shap, not the models.

Examples
--------
>>> import tempfile
>>> rng = np.random.default_rng(0)
>>> X = pd.DataFrame(rng.normal(size=(300, 4)), columns=["a", "b", "c", "d"])
>>> phi = pd.DataFrame(X.to_numpy() * [1.0, 0.5, 0.2, 0.0], columns=X.columns)
>>> with tempfile.TemporaryDirectory() as folder:
...     [p.name for p in plot_global("demo", phi, X, folder)]
['shap_summary_demo.png', 'shap_dependence_demo_a.png', 'shap_dependence_demo_b.png', 'shap_dependence_demo_c.png']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from territoria.io import write_atomic


def plot_sample(contributions: pd.DataFrame, X: pd.DataFrame, n_sample: int = 2000,
                seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """The seeded sample of rows :func:`plot_global` draws: SHAP values (features of ``X``
    only) and feature values, ``n_sample`` rows at most."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(X), size=min(n_sample, len(X)), replace=False)
    cols = [c for c in contributions.columns if c in X.columns]
    return contributions[cols].to_numpy(float)[rows], X[cols].iloc[rows]


def plot_global(model: str, contributions: pd.DataFrame, X: pd.DataFrame, folder, hints: pd.DataFrame | None = None,
                n_sample: int = 2000, seed: int = 0) -> list:
    """Beeswarm summary and dependence plots of the 3 most important features (PNG files),
    coloured by the feature ``hints`` (:func:`interaction_hints`) names as their partner."""
    phi, vals = plot_sample(contributions, X, n_sample, seed)
    partner = dict(zip(hints["feature"], hints["interacts_most_with"])) if hints is not None else {}
    return plot_figures(model, phi, vals, folder, partner)


def plot_figures(model: str, phi: np.ndarray, vals: pd.DataFrame, folder, partner: dict, seed: int = 0) -> list:
    """:func:`plot_global`'s figures from its sample (:func:`plot_sample`) and the
    feature → interaction partner map.

    shap shuffles the points' drawing order and jitters the beeswarm: with ``seed``, so that
    the same inputs give the same images (its dependence plot draws from numpy's global
    generator, seeded here for the call and restored after it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    folder = Path(folder)
    cols = list(vals.columns)
    written = []

    def save(name):
        path = folder / name
        write_atomic(path, lambda tmp: plt.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close("all")
        written.append(path)

    shap.summary_plot(phi, vals, max_display=15, show=False, rng=np.random.default_rng(seed))
    plt.title(f"{model}: SHAP values of the 15 most important features")
    save(f"shap_summary_{model}.png")
    state = np.random.get_state()
    try:
        for i in np.argsort(-np.abs(phi).mean(axis=0))[:3]:
            np.random.seed(seed)
            shap.dependence_plot(int(i), phi, vals, interaction_index=partner.get(cols[i]), show=False)
            save(f"shap_dependence_{model}_{cols[i]}.png")
    finally:
        np.random.set_state(state)
    return written


def plot_all_figures(jobs: list[tuple], folder) -> list:
    """:func:`plot_figures` of each ``(model, phi, vals, partner)`` of ``jobs`` (what a
    worker process runs: the samples are small to send)."""
    return [path for model, phi, vals, partner in jobs for path in plot_figures(model, phi, vals, folder, partner)]
