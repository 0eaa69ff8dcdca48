"""Optional hyper-parameter search of the trajectory models (``territoria tune``, optuna).

:func:`tune_target` searches the LightGBM parameters of one target of ``conf/models.yml``
with optuna's TPE sampler seeded by the configuration's ``seed`` (same data, seed and trials
→ same trials and best parameters). Every trial is scored like the backtest scores the model:
:func:`~territoria.models.backtest.cross_validate_target` on the department-blocked folds of
:func:`~territoria.models.backtest.assign_folds` (the same folds for every trial), Spearman
rho of the out-of-fold predictions on the zones of at least ``min_population`` inhabitants;
early stopping inside each fit uses departments carved out of the training folds, never the
scored fold.

The first trial is the configuration's defaults (enqueued), so the best score is never below
the default score. :meth:`TuningResult.write` writes ``tuning/<target>.json`` (best and
default parameters and scores, every trial) and ``tuning/<target>_params.yml`` (a ``model:``
block to paste into ``conf/models.yml``).

optuna is an optional dependency (``pip install territoria[tune]``); without it,
:func:`require_optuna` raises :class:`OptionalDependencyError`, which the CLI prints as one
line with exit code 2.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from territoria.errors import DataError
from territoria.models.backtest import MODEL, FeatureCache, cross_validate_target, prepare_target
from territoria.models.targets import ModelConfig, load_model_config, target_spec
from territoria.registry import load_registry

#: search space: parameter -> (low, high, log scale); bounds widen to include the defaults
SEARCH_SPACE: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.01, 0.2, True),
    "num_leaves": (8, 128, True),
    "min_child_samples": (5, 200, True),
    "subsample": (0.5, 1.0, False),
    "colsample_bytree": (0.3, 1.0, False),
    "reg_lambda": (1e-3, 100.0, True),
}
INT_PARAMS = ("num_leaves", "min_child_samples", "n_estimators")
#: default cap on boosting rounds (early stopping usually ends a fit well before)
MAX_ESTIMATORS = 1000


class OptionalDependencyError(DataError):
    """An optional dependency needed by a command is not installed."""


def require_optuna():
    """The ``optuna`` module, or a one-line error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise OptionalDependencyError(
            "optuna", "not installed; `territoria tune` needs it: pip install territoria[tune]"
        ) from None
    return optuna


@dataclass
class TuningResult:
    """The outcome of a search: best and default parameters, scores and every trial."""

    target: str
    scheme: str
    seed: int
    best_params: dict
    best_score: float
    default_params: dict
    default_score: float
    trials: pd.DataFrame  # number, state, score, mae, r2, duration_s, then one column per parameter
    search_space: dict
    n_scored: int
    n_features: int
    elapsed_s: float
    budget: dict = field(default_factory=dict)

    def model_block(self) -> dict:
        """The ``model:`` block of ``conf/models.yml`` with the best parameters."""
        return {k: _plain(v) for k, v in self.best_params.items()}

    def to_dict(self) -> dict:
        trials = [
            {k: _plain(v) for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in self.trials.to_dict(orient="records")
        ]
        return {
            "target": self.target, "scheme": self.scheme, "seed": self.seed,
            "metric": "spearman (out-of-fold, zones of at least min_population inhabitants)",
            "best_score": _plain(self.best_score), "default_score": _plain(self.default_score),
            "improvement": _plain(self.best_score - self.default_score),
            "best_params": self.model_block(),
            "default_params": {k: _plain(v) for k, v in self.default_params.items()},
            "search_space": self.search_space, "n_scored": self.n_scored,
            "n_features": self.n_features, "elapsed_s": round(self.elapsed_s, 1),
            "budget": self.budget, "trials": trials,
        }

    def write(self, out_dir: Path | str) -> dict[str, Path]:
        """Write ``tuning/<target>.json`` and ``tuning/<target>_params.yml`` under ``out_dir``."""
        from territoria.io import write_atomic, write_json

        folder = Path(out_dir) / "tuning"
        header = (
            f"# LightGBM parameters tuned for {self.target} ({self.scheme}, seed {self.seed}):\n"
            f"# Spearman {self.best_score:.4f} vs {self.default_score:.4f} with the defaults.\n"
            "# Paste into conf/models.yml in place of its `model:` block.\n"
        )
        text = header + yaml.safe_dump({"model": self.model_block()}, sort_keys=False)
        return {
            "json": write_json(self.to_dict(), folder / f"{self.target}.json"),
            "params": write_atomic(folder / f"{self.target}_params.yml",
                                   lambda p: p.write_text(text, encoding="utf-8")),
        }


def _plain(v):
    """JSON/YAML-friendly scalar (numpy numbers to Python ones)."""
    return v.item() if hasattr(v, "item") else v


def search_space(defaults: dict, max_estimators: int) -> dict[str, tuple[float, float, bool]]:
    """Bounds of every searched parameter, widened to hold the default (enqueued) values.

    ``n_estimators`` (a cap: early stopping picks the rounds) ranges from a quarter of
    ``max_estimators`` to ``max_estimators``.
    """
    space = {}
    for name, (lo, hi, log) in SEARCH_SPACE.items():
        d = defaults.get(name)
        if d is not None:
            lo, hi = min(lo, d), max(hi, d)
        space[name] = (lo, hi, log)
    n_default = min(int(defaults.get("n_estimators", max_estimators)), max_estimators)
    space["n_estimators"] = (min(max(1, max_estimators // 4), n_default), max_estimators, False)
    return space


def _suggest(trial, space: dict) -> dict:
    out = {}
    for name, (lo, hi, log) in space.items():
        if name in INT_PARAMS:
            out[name] = trial.suggest_int(name, int(lo), int(hi), log=log)
        else:
            out[name] = trial.suggest_float(name, float(lo), float(hi), log=log)
    return out


def tune_target(
    fb,
    target: str,
    *,
    config: ModelConfig | None = None,
    n_trials: int = 30,
    timeout: float | None = None,
    max_estimators: int = MAX_ESTIMATORS,
    scheme: str | None = None,
    log=None,
) -> TuningResult:
    """Search the LightGBM parameters of ``target`` on the department-blocked CV.

    Parameters
    ----------
    fb : FeatureBuild
        The feature build (``run_build_features``) holding the target's vintages.
    target : str
        A target name of ``conf/models.yml``.
    config : ModelConfig, optional
        The model configuration (default: ``conf/models.yml``); its ``model`` block gives the
        defaults (the first trial) and the fixed parameters, its ``seed`` the sampler's seed.
    n_trials : int
        Number of trials, the defaults included.
    timeout : float, optional
        Stop starting new trials after this many seconds (a running trial completes).
    max_estimators : int
        Upper bound of the ``n_estimators`` search (the defaults are capped at it too).
    scheme : str, optional
        CV grouping (``departement`` or ``region``; default from the configuration).
    log : callable, optional
        Receives one progress line per trial.

    Returns
    -------
    TuningResult
    """
    optuna = require_optuna()
    if n_trials < 1:
        raise DataError("tune", f"--trials must be at least 1 (got {n_trials})")
    config = config or load_model_config()
    spec = target_spec(target, config)
    log = log or (lambda msg: None)
    group_col = scheme or config.cv.groups
    scheme_name = f"cv_{group_col}"
    start = time.perf_counter()
    data = prepare_target(fb, spec, config, FeatureCache.of(fb), load_registry(), group_col)
    log(f"{spec.name}: {int(data.scored.sum())} zones scored, {data.X.shape[1]} features")

    fixed = dict(config.model)
    defaults = {**fixed, "n_estimators": min(int(fixed.get("n_estimators", max_estimators)), max_estimators)}
    space = search_space(defaults, max_estimators)

    def objective(trial) -> float:
        params = {**defaults, **_suggest(trial, space)}
        t0 = time.perf_counter()
        # intervals and the classifier do not enter the score: skipped
        rows, *_ = cross_validate_target(fb, data, config, scheme_name, params,
                                         intervals=False, classifier=False)
        m = {r["metric"]: r["value"] for r in rows if r["model"] == MODEL}
        trial.set_user_attr("mae", m.get("mae"))
        trial.set_user_attr("r2", m.get("r2"))
        trial.set_user_attr("duration_s", round(time.perf_counter() - t0, 2))
        log(f"trial {trial.number}: spearman {m['spearman']:.4f} ({time.perf_counter() - t0:.0f} s)")
        return m["spearman"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed))
    study.enqueue_trial({k: defaults[k] for k in space})
    study.optimize(objective, n_trials=n_trials, timeout=timeout)

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done or study.trials[0].state != optuna.trial.TrialState.COMPLETE:
        raise DataError(spec.name, "tuning: the default parameters could not be scored (Spearman undefined)")
    best = study.best_trial
    trials = pd.DataFrame([
        {"number": t.number, "state": t.state.name, "score": t.value,
         **{k: t.user_attrs.get(k) for k in ("mae", "r2", "duration_s")}, **t.params}
        for t in study.trials
    ])
    return TuningResult(
        target=spec.name, scheme=scheme_name, seed=config.seed,
        best_params={**defaults, **best.params}, best_score=float(best.value),
        default_params=defaults, default_score=float(study.trials[0].value), trials=trials,
        search_space={k: {"low": _plain(lo), "high": _plain(hi), "log": log_}
                      for k, (lo, hi, log_) in space.items()},
        n_scored=int(data.scored.sum()), n_features=int(data.X.shape[1]),
        elapsed_s=time.perf_counter() - start,
        budget={"n_trials": n_trials, "timeout_s": timeout, "max_estimators": max_estimators,
                "completed": len(done)},
    )
