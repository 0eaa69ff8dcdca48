"""The smallest change in a zone's levers that takes it out of the priority set, under the model.

A bounded greedy search: every lever indicator the zone has may move in its improving
direction (registry direction) by steps of a tenth of its national 5-95 % range, never beyond
its plausible range (0-100 for percentages, >= 0) nor beyond the best value observed
nationally. At each step the move that lowers the priority score most is kept, until the score
falls below the threshold of the list or no move helps. The size of a change is counted in
steps, so that levers with different units compare.

The zone's own features move (level, its past change, its gaps to neighbours, EPCI and
department, and the target's own history); its neighbours' features are left as they are, a
first-order reading of a local policy. Like scenarios, the result is an association learned
from observational data, not a causal estimate, and the greedy path is a plausible small
change, not a proven minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: feature transforms that shift one for one with the zone's own level
SHIFTED = frozenset({"level", "change", "gap_nbr", "gap_epci", "gap_dep"})


@dataclass
class Lever:
    """One lever of the search: its features and its step."""

    indicator: str
    direction: int  # -1: lower is better, +1: higher is better
    step: float
    low: float
    high: float


def lever_space(features: pd.DataFrame, meta: pd.DataFrame, registry, n_steps: int = 10) -> list[Lever]:
    """Levers with an own level in the feature matrix, their step and bounds.

    Third-party estimates are left out: a policy target should be an official figure.
    """
    levels = set(meta.loc[meta["transform"] == "level", "indicator"])
    out = []
    for name, ind in registry.indicators.items():
        if not ind.lever or ind.third_party or name not in levels or name not in features:
            continue
        if ind.unit in ("facilities", "practitioners", "premises", "sites", "IRIS"):
            continue  # counts change relatively (past changes in %): not a shift
        x = features[name].dropna().to_numpy(float)
        if len(x) < 100:
            continue
        p1, p5, p95, p99 = np.percentile(x, [1, 5, 95, 99])
        step = (p95 - p5) / n_steps
        if step <= 0:
            continue
        low, high = (0.0, 100.0) if ind.unit.startswith("%") else (0.0, np.inf)
        better = -ind.sign
        # never beyond the best value observed in France
        if better < 0:
            low = max(low, p1)
        else:
            high = min(high, p99)
        out.append(Lever(name, better, float(step), float(low), float(high)))
    return out


def shift_rows(rows: pd.DataFrame, meta: pd.DataFrame, indicator: str, delta: np.ndarray) -> pd.DataFrame:
    """Add ``delta`` to the features of ``rows`` that move one for one with the indicator."""
    m = meta[(meta["indicator"] == indicator)]
    own = m.loc[m["transform"].isin(SHIFTED) | m["feature"].str.startswith(f"hist__{indicator}__level"), "feature"]
    cols = [c for c in own if c in rows.columns and not c.endswith("__nbr")]
    out = rows.copy()
    if cols:
        out[cols] = out[cols].to_numpy(float) + np.asarray(delta, float)[:, None]
    return out


def greedy_exit(
    score: Callable[[dict[str, float]], np.ndarray],
    levers: list[Lever],
    current: dict[str, float],
    threshold: float,
    max_steps: int = 40,
) -> tuple[pd.DataFrame, float, bool]:
    """Greedy search of lever moves until ``score(moves) < threshold``.

    ``score`` takes a list of candidate move sets (indicator → total change) and returns their
    scores. Returns the moves (indicator, current, target, change, steps), the final score and whether the
    zone leaves the list.
    """
    moves: dict[str, float] = {}
    steps: dict[str, int] = {}
    best = float(score([moves])[0])
    for _ in range(max_steps):
        if best < threshold:
            break
        candidates, names = [], []
        for lv in levers:
            v = current.get(lv.indicator)
            if v is None or not np.isfinite(v):
                continue
            new = moves.get(lv.indicator, 0.0) + lv.direction * lv.step
            if not (lv.low - 1e-9 <= v + new <= lv.high + 1e-9):
                continue
            candidates.append({**moves, lv.indicator: new})
            names.append(lv.indicator)
        if not candidates:
            break
        s = np.asarray(score(candidates), float)
        k = int(np.nanargmin(s))
        if not s[k] < best - 1e-9:
            break
        best = float(s[k])
        moves = candidates[k]
        steps[names[k]] = steps.get(names[k], 0) + 1
    table = pd.DataFrame(
        [{"indicator": n, "current": current[n], "target": current[n] + d, "change": d, "steps": steps[n]}
         for n, d in moves.items()],
        columns=["indicator", "current", "target", "change", "steps"],
    )
    return table, best, best < threshold
