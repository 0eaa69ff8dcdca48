"""Trajectory models: LightGBM behind the scikit-learn estimator contract.

:class:`TrajectoryRegressor` predicts the change of a measure over a horizon;
:class:`DeteriorationClassifier` the probability that a zone's change is in the worst decile.
Both follow the scikit-learn contract (``__init__`` stores parameters only, ``fit`` returns
``self``, fitted attributes end with ``_``; checked with ``parametrize_with_checks``) and:

* are small and fast by default (23 leaves, depth at most 8 in ``conf/models.yml``, learning
  rate 0.05, at most 400 rounds);
* stop early on a **spatially blocked** validation split: whole groups (departments) carved
  out of the training rows when ``fit(..., groups=...)`` receives them, a random split
  otherwise; ``best_iteration_`` records the rounds kept;
* are reproducible: ``deterministic=True``, ``force_col_wise=True`` and every LightGBM seed
  set from ``random_state`` (same seed, same data → same predictions). Column-wise histograms
  give the same trees as row-wise ones here, bit for bit, in 0.9 x the time on the commune
  matrices (about 16,000 rows by 170-190 features) on two threads;
* accept ``sample_weight``; the pipelines pass sqrt(population) (small communes are noisy,
  see :func:`territoria.models.targets.sample_weights`);
* take optional monotone constraints (``{feature: +1|-1}``), e.g. from the registry's
  directions with :func:`monotone_constraints_from_registry` (opt-in).

The booster is exposed as ``booster_`` (for MLflow and SHAP).

:func:`design_matrix` builds the features of a target at its origin: the general feature
matrix (``features_at(origin)``) plus target-specific history from the panel (see its doc).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from territoria.features.build import zone_cube
from territoria.features.spatial import neighbour_mean
from territoria.models.lgbm_threads import lightgbm_threads, num_threads_param
from territoria.models.validation import group_validation_split

#: rows below which early stopping is skipped (too few to carve a validation set)
MIN_ROWS_EARLY_STOPPING = 100


class SharedBins:
    """Histogram bins of a design matrix, found once for the models fitted on its rows.

    LightGBM bins every feature before it grows a tree. On a commune design (35,000 rows,
    150-190 features, 63 bins) that takes about 0.2 s per fit, as long as growing a small
    model, and a target's cross-validation fits about a dozen models on subsets of the same
    rows (folds, their early-stopping splits, spread models). Here the bins are found once on
    all the rows, as ``lightgbm.cv`` does, and each fit takes its rows with
    ``Dataset.subset`` (0.02 s). The bin boundaries are quantiles of the features only, never
    of the outcome, so a held-out fold's outcomes stay unseen.

    Parameters
    ----------
    X : DataFrame or array of shape (n_rows, n_features)
        The design matrix (DataFrame columns become the feature names).
    estimator : TrajectoryRegressor or DeteriorationClassifier
        The models that will fit on the bins share its ``max_bin`` and ``random_state``
        (checked at ``fit``); the bins are found with its ``n_jobs`` threads.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3)); y = X[:, 0] + rng.normal(scale=0.1, size=400)
    >>> model = TrajectoryRegressor(n_estimators=50, max_bin=31)
    >>> bins = SharedBins(X, model)
    >>> first = np.arange(300)
    >>> fitted = model.fit(X[first], y[first], bins=bins.take(first))
    >>> fitted.predict(X[300:]).shape
    (100,)
    """

    def __init__(self, X, estimator: _LGBMBase) -> None:
        self.params = self.params_of(estimator)
        self.feature_names = [str(c) for c in X.columns] if hasattr(X, "columns") else "auto"
        data = np.asarray(X, dtype=np.float64)
        with lightgbm_threads(estimator.n_jobs) as threads:
            # the label is set on each subset; LightGBM only needs one to exist here
            self._dataset = lgb.Dataset(data, np.zeros(data.shape[0]), params={**self.params, "num_threads": threads},
                                        feature_name=self.feature_names, free_raw_data=True).construct()
        self.n_features = data.shape[1]
        self.rows = np.arange(data.shape[0])

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def params_of(estimator: _LGBMBase) -> dict:
        """The settings bins are found with for ``estimator`` (those of every model fitted on them)."""
        # no pre-filtering: the spread models' larger min_child_samples may share the bins
        return {**estimator._dataset_params(), "feature_pre_filter": False}

    def take(self, idx) -> SharedBins:
        """The same bins restricted to rows ``idx`` of this view (positions or a boolean mask)."""
        idx = np.asarray(idx)
        view = object.__new__(SharedBins)
        view.__dict__.update(self.__dict__)
        view.rows = self.rows[np.flatnonzero(idx) if idx.dtype == bool else idx.astype(int)]
        return view

    def check(self, estimator: _LGBMBase, shape: tuple[int, int], feature_names) -> None:
        """Raise if ``estimator`` cannot fit a matrix of ``shape`` on these bins."""
        n_rows, n_features = shape
        if n_rows != len(self):
            raise ValueError(f"the shared bins hold {len(self)} rows, the fit got {n_rows}")
        if n_features != self.n_features or feature_names != self.feature_names:
            raise ValueError("the shared bins were found on other features than the fit's")
        own = self.params_of(estimator)
        if own != self.params:
            # LightGBM would go on with a broken booster rather than fail
            raise ValueError(f"the shared bins were found with {self.params}, the model has {own}")

    def subset(self, idx, label, weight=None, n_jobs: int | None = None) -> lgb.Dataset:
        """A constructed Dataset of rows ``idx`` of this view, with their label and weight, cut
        with ``n_jobs`` threads (the fit's own: see :mod:`~territoria.models.lgbm_threads`)."""
        rows = self.rows[idx]
        order = np.argsort(rows, kind="stable")  # LightGBM keeps a subset's rows sorted
        with lightgbm_threads(n_jobs) as threads:
            ds = self._dataset.subset(rows[order], params={**self.params, "num_threads": threads}).construct()
        ds.set_label(np.asarray(label, dtype=np.float64)[order])
        if weight is not None:
            ds.set_weight(np.asarray(weight, dtype=np.float64)[order])
        return ds


class _LGBMBase(BaseEstimator):
    #: cross_val_predict_groups passes ``groups`` to fit
    _accepts_groups = True

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 20,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        reg_alpha: float = 0.0,
        min_split_gain: float = 0.0,
        max_bin: int = 255,
        objective: str | None = None,
        early_stopping_rounds: int | None = 30,
        validation_fraction: float = 0.15,
        monotone_constraints=None,
        n_jobs: int = 2,
        random_state: int = 42,
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.min_split_gain = min_split_gain
        self.max_bin = max_bin
        self.objective = objective
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.monotone_constraints = monotone_constraints
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # ----------------------------------------------------------------- internals
    def _params(self, objective: str, extra: dict | None = None) -> dict:
        seed = int(self.random_state)
        params = {
            "objective": self.objective or objective,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": 1 if self.subsample < 1.0 else 0,
            "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda,
            "lambda_l1": self.reg_alpha,
            "min_gain_to_split": self.min_split_gain,
            "max_bin": self.max_bin,
            "num_threads": num_threads_param(self.n_jobs),
            "seed": seed,
            "bagging_seed": seed + 1,
            "feature_fraction_seed": seed + 2,
            "data_random_seed": seed + 3,
            "deterministic": True,
            "force_col_wise": True,
            "verbose": -1,
        }
        mono = self._monotone_list()
        if mono is not None and any(mono):
            params["monotone_constraints"] = mono
            params["monotone_constraints_method"] = "advanced"
        params.update(extra or {})
        return params

    def _monotone_list(self) -> list[int] | None:
        mc = self.monotone_constraints
        if mc is None:
            return None
        if isinstance(mc, dict):
            names = getattr(self, "feature_names_in_", None)
            if names is None:
                raise ValueError("monotone_constraints as a dict needs a DataFrame with column names")
            unknown = set(mc) - set(names)
            if unknown:
                raise ValueError(f"monotone constraints on unknown features: {sorted(unknown)}")
            return [int(mc.get(n, 0)) for n in names]
        mono = [int(v) for v in mc]
        if len(mono) != self.n_features_in_:
            raise ValueError("monotone_constraints must have one entry per feature")
        return mono

    def _dataset_params(self) -> dict:
        """The parameters LightGBM fixes when it bins a Dataset (a fit must use the same; the
        threads, which do not change the bins, are each fit's own)."""
        return {"max_bin": self.max_bin, "data_random_seed": int(self.random_state) + 3, "verbose": -1}

    def _train(self, X, y, sample_weight, groups, objective: str, extra: dict | None = None,
               bins: SharedBins | None = None):
        params = self._params(objective, extra)
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"n_samples = {n}: LightGBM needs at least 2 samples to fit")
        w = _check_sample_weight(sample_weight, X) if sample_weight is not None else None
        if bins is not None:
            bins.check(self, X.shape, self._feature_names(X))
            params.update(bins.params)

        def dataset(rows, reference=None):
            yr, wr = y[rows], None if w is None else w[rows]
            if bins is not None:
                return bins.subset(rows, yr, wr, self.n_jobs)
            # the booster keeps the real feature names (MLflow signature, SHAP tables)
            return lgb.Dataset(X[rows], yr, weight=wr, reference=reference, free_raw_data=True,
                               feature_name=self._feature_names(X))

        es = self.early_stopping_rounds
        with lightgbm_threads(self.n_jobs):
            if es and n >= MIN_ROWS_EARLY_STOPPING:
                g = np.asarray(groups) if groups is not None else np.arange(n)
                if groups is None:  # rows as their own groups: a random split
                    g = np.arange(n)
                tr, va = group_validation_split(g, self.validation_fraction, seed=int(self.random_state))
                dtr = dataset(tr)
                booster = lgb.train(
                    params, dtr, num_boost_round=self.n_estimators, valid_sets=[dataset(va, reference=dtr)],
                    callbacks=[lgb.early_stopping(es, verbose=False)],
                )
                self.best_iteration_ = int(booster.best_iteration or self.n_estimators)
            else:
                booster = lgb.train(params, dataset(np.arange(n)), num_boost_round=self.n_estimators)
                self.best_iteration_ = int(self.n_estimators)
        self.booster_ = booster
        return self

    def _feature_names(self, X) -> list[str] | str:
        names = getattr(self, "feature_names_in_", None)
        return [str(n) for n in names] if names is not None and len(names) == X.shape[1] else "auto"

    def _raw_predict(self, X):
        check_is_fitted(self, "booster_")
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        with lightgbm_threads(self.n_jobs) as threads:
            return self.booster_.predict(X, num_iteration=self.best_iteration_, num_threads=threads)

    @property
    def feature_importances_(self) -> np.ndarray:
        check_is_fitted(self, "booster_")
        return self.booster_.feature_importance(importance_type="gain")


class TrajectoryRegressor(RegressorMixin, _LGBMBase):
    """LightGBM regressor of a trajectory (change over a horizon).

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, max_depth, min_child_samples, subsample,
    colsample_bytree, reg_lambda, reg_alpha, min_split_gain, max_bin
        LightGBM parameters (subsample is ``bagging_fraction``, colsample_bytree
        ``feature_fraction``; ``max_bin`` is the number of histogram bins per feature, the
        main cost of growing a tree).
    objective : str, optional
        LightGBM objective (default ``"regression"``, i.e. L2; ``"huber"`` is more robust).
    early_stopping_rounds : int or None
        Stop when the validation loss has not improved for this many rounds (None: never).
    validation_fraction : float
        Share of rows (whole groups when ``groups`` are given to ``fit``) kept for it.
    monotone_constraints : dict or list, optional
        ``{feature: +1 | -1}`` (with a DataFrame) or one entry per column.
    n_jobs : int
        LightGBM threads.
    random_state : int
        Seed of every random choice (bagging, feature sampling, validation split).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 3)); y = 2 * X[:, 0] + rng.normal(scale=0.1, size=300)
    >>> m = TrajectoryRegressor(n_estimators=100).fit(X, y)
    >>> round(float(np.corrcoef(m.predict(X), y)[0, 1]), 2) > 0.95
    True
    """

    def fit(self, X, y, sample_weight=None, groups=None, bins: SharedBins | None = None):
        """Fit on ``X`` (``bins``: the :class:`SharedBins` of these rows, to reuse their bins)."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64, y_numeric=True)
        return self._train(X, y.astype(float), sample_weight, groups, "regression", bins=bins)

    def predict(self, X) -> np.ndarray:
        return self._raw_predict(X)


class DeteriorationClassifier(ClassifierMixin, _LGBMBase):
    """LightGBM classifier of "deteriorating" zones (worst decile of a change).

    Same parameters as :class:`TrajectoryRegressor`. Binary targets use the ``binary``
    objective, more classes ``multiclass``. ``predict_proba`` returns one column per class
    of ``classes_``.
    """

    def fit(self, X, y, sample_weight=None, groups=None, bins: SharedBins | None = None):
        """Fit on ``X`` (``bins``: the :class:`SharedBins` of these rows, to reuse their bins)."""
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64)
        check_classification_targets(y)
        self._le = LabelEncoder().fit(y)
        self.classes_ = self._le.classes_
        yi = self._le.transform(y)
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"y has {n_classes} class: DeteriorationClassifier needs at least two")
        if n_classes == 2:
            return self._train(X, yi.astype(float), sample_weight, groups, "binary", bins=bins)
        return self._train(X, yi.astype(float), sample_weight, groups, "multiclass",
                           {"num_class": n_classes}, bins=bins)

    def predict_proba(self, X) -> np.ndarray:
        raw = self._raw_predict(X)
        if raw.ndim == 1:
            return np.column_stack([1.0 - raw, raw])
        return raw

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def decision_function(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        if proba.shape[1] == 2:
            p = np.clip(proba[:, 1], 1e-12, 1 - 1e-12)
            return np.log(p / (1 - p))
        return np.log(np.clip(proba, 1e-12, 1.0))


class HurdleRegressor(RegressorMixin, BaseEstimator):
    """A change that is sometimes structurally zero: ``(1 - P(zero)) * E[change | not zero]``.

    Census rates of small communes do not move between two results that share one rolling
    survey (see :func:`territoria.models.targets.repeated_survey_mask`). Which communes
    repeat a survey is a fixed design of the census, partly visible in the past results (the
    timing of past surveys leaves a signature on past changes), so a classifier learns it
    and the regressor learns the genuine change on the other zones. ``fit`` takes the
    training mask ``structural_zero`` (dated at the end of the transition: a training label,
    never a feature); without it, this is the plain regressor.
    """

    _accepts_groups = True

    def __init__(self, regressor=None, classifier=None) -> None:
        self.regressor = regressor
        self.classifier = classifier

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X, y, sample_weight=None, groups=None, structural_zero=None, bins: SharedBins | None = None):
        """Fit both parts on ``X`` (``bins``: the :class:`SharedBins` of these rows)."""
        from sklearn.base import clone

        names = np.asarray(X.columns, dtype=object) if hasattr(X, "columns") else None
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan", dtype=np.float64, y_numeric=True)
        if names is not None:
            X = pd.DataFrame(X, columns=names)
        y = np.asarray(y, dtype=float)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, X)
        g = None if groups is None else np.asarray(groups)
        zero = np.zeros(len(y), bool) if structural_zero is None else np.asarray(structural_zero, bool)
        reg = clone(self.regressor if self.regressor is not None else TrajectoryRegressor())
        keep = ~zero
        rows = X.iloc[keep] if hasattr(X, "iloc") else X[keep]

        def fit_regressor():
            reg.fit(rows, y[keep], sample_weight=None if w is None else w[keep],
                    groups=None if g is None else g[keep], bins=None if bins is None else bins.take(keep))

        clf = None
        if zero.any() and not zero.all():
            clf = clone(self.classifier if self.classifier is not None else DeteriorationClassifier())
        if clf is None or min(fits_at_once(reg.n_jobs, 2), fits_at_once(clf.n_jobs, 2)) < 2:
            fit_regressor()
            if clf is not None:
                clf.fit(X, zero.astype(int), sample_weight=w, groups=g, bins=bins)
        else:
            # both parts at once on one LightGBM thread each, as the backtest's folds: the same
            # trees (deterministic), and two one-thread fits side by side waste less than
            # two-thread fits one after the other, whose threads wait for each other at every tree
            jobs = reg.n_jobs, clf.n_jobs
            reg.n_jobs = clf.n_jobs = 1
            try:
                with ThreadPoolExecutor(1, thread_name_prefix="hurdle") as pool:
                    part = pool.submit(clf.fit, X.copy(deep=False) if hasattr(X, "iloc") else X, zero.astype(int),
                                       sample_weight=w, groups=g, bins=bins)
                    fit_regressor()
                    part.result()
            finally:
                reg.n_jobs, clf.n_jobs = jobs
        self.regressor_ = reg
        self.classifier_ = clf
        return self

    def _check(self, X):
        check_is_fitted(self, "regressor_")
        Xv = validate_data(self, X, reset=False, ensure_all_finite="allow-nan", dtype=np.float64)
        names = getattr(self, "feature_names_in_", None)
        return pd.DataFrame(Xv, columns=names) if names is not None else Xv

    def zero_probability(self, X) -> np.ndarray:
        X = self._check(X)
        if self.classifier_ is None:
            return np.zeros(X.shape[0])
        return self.classifier_.predict_proba(X)[:, 1]

    def predict(self, X) -> np.ndarray:
        X = self._check(X)
        p = np.zeros(X.shape[0]) if self.classifier_ is None else self.classifier_.predict_proba(X)[:, 1]
        return (1.0 - p) * self.regressor_.predict(X)


def fits_at_once(n_jobs: int | None, n_fits: int) -> int:
    """How many of ``n_fits`` fits of models with ``n_jobs`` LightGBM threads run side by side,
    on one thread each: as many as ``n_jobs`` and the machine's cores allow. The trees are the
    same (``deterministic``), and two one-thread fits at once waste less than one two-thread fit
    after the other, whose threads wait for each other at every tree (benchmarks/README.md,
    fifteenth measurement)."""
    return max(1, min(int(n_jobs or 1), os.cpu_count() or 1, n_fits))


def predicting_with(model, n_jobs: int | None):
    """``model``, fitted, set to predict with ``n_jobs`` LightGBM threads (its trees unchanged).

    A fold model fitted on one thread beside another fold (:func:`~territoria.models.backtest.map_folds`)
    predicts with one thread; the stability audit's forecasts, later and alone, use every thread.
    """
    if isinstance(model, _LGBMBase):
        model.n_jobs = n_jobs
    elif isinstance(model, HurdleRegressor):
        for part in (model.regressor, model.classifier, getattr(model, "regressor_", None),
                     getattr(model, "classifier_", None)):
            if isinstance(part, _LGBMBase):
                part.n_jobs = n_jobs
    return model


def monotone_constraints_from_registry(
    feature_names, meta: pd.DataFrame, registry, target_sign: int, relation: int = 1,
    transforms: tuple[str, ...] = ("level",),
) -> dict[str, int]:
    """Monotone constraints oriented by the registry's directions (opt-in).

    For every feature of the given ``transforms`` whose indicator is scored, the constraint
    says: "a zone worse on this indicator is expected to move ``relation``-wards on the
    target" (``relation=+1``: worse levels predict deterioration; ``-1``: catch-up). The
    predicted quantity is the raw change, whose "worse" direction is ``target_sign``.
    Returns ``{feature: +1 | -1}`` for :class:`TrajectoryRegressor`.
    """
    m = meta.set_index("feature")
    out = {}
    for f in feature_names:
        if f not in m.index or m.at[f, "transform"] not in transforms:
            continue
        ind = m.at[f, "indicator"]
        if ind not in registry.indicators or not registry.indicator(ind).scored:
            continue
        out[f] = int(registry.indicator(ind).sign * target_sign * relation)
    return out


# --------------------------------------------------------------------------- design matrix
ID_COLUMNS = ["zone_code", "zone_name", "departement", "region", "epci", "zone", "reference_period"]


def _count_like(measure: str, registry) -> bool:
    """Counts change in % (population, jobs, fiscal households...), the rest in points/euros."""
    if measure in registry.variables:
        return registry.variable(measure).kind == "count"
    if measure in registry.indicators:
        var = registry.indicator(measure).definition.variable
        return var is not None and registry.variable(var).kind == "count"
    return False


def _meta_row(feature, measure, registry, transform, periods):
    if measure in registry.indicators:
        ind = registry.indicator(measure)
        domain, lever, label = ind.domain, bool(ind.lever), ind.label_en
    elif measure in registry.variables:
        var = registry.variable(measure)
        domain, lever, label = "context", False, var.label_en
    else:
        domain, lever, label = "context", False, measure
    return {
        "feature": feature, "indicator": measure, "domain": domain, "is_lever": lever,
        "transform": transform, "period_from": float(periods[0]), "period_to": float(periods[1]),
        "label_en": f"{label} ({transform})", "label_fr": f"{label} ({transform})",
    }


def history_features(
    panel: pd.DataFrame,
    measure: str,
    origin: int,
    graph,
    identity: pd.DataFrame,
    registry,
    cross_measures: bool = True,
    min_coverage: float = 0.5,
    max_lags: int = 4,
    cube: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Target-specific history from the panel, every value dated <= ``origin``.

    Changes are annualised (in % for counts) and named by their *lag* (``lag1`` is the
    change between the two latest vintages <= origin, ``lag2`` the one before...), not by
    their years, so that a model fitted at one origin applies at another (temporal backtests,
    ``run --as-of``); the metadata keep the vintages.

    * the target's own ``measure``: the changes of up to ``max_lags`` consecutive vintage
      pairs, their neighbours' mean (graph) and department mean (population-weighted), the
      mean of all its past changes and the origin level with its gap to the department and its
      neighbours' mean;
    * with ``cross_measures``, every other commune measure of the panel with two vintages or
      more covering ``min_coverage`` of the communes (raw counts such as jobs and fiscal
      households included): its changes (up to ``max_lags``) and their neighbours' mean.

    ``cube`` is ``zone_cube(panel, origin)`` when the caller has it (read, never modified).

    Returns the features (indexed like ``identity``) and their metadata (same columns as
    ``features_meta.csv``; ``period_to`` <= origin by construction).
    """
    cube = zone_cube(panel, origin) if cube is None else cube
    index = identity.index
    cols: dict[str, pd.Series] = {}
    meta: list[dict] = []
    dep = identity["departement"]
    measures = set(cube.columns.get_level_values(0))

    rows = cube.index.get_indexer(index)
    present = rows >= 0

    def column(m, p) -> np.ndarray:
        """Column ``(m, p)`` of the cube in the order of ``index`` (NaN where the cube has no row):
        the changes are computed on arrays, not on Series realigned one by one."""
        out = np.full(len(index), np.nan)
        out[present] = cube[(m, p)].to_numpy(float)[rows[present]]
        return out

    def periods_of(m, coverage=0.0):
        if m not in measures:
            return []
        return sorted(int(p) for p in cube[m].columns if (~np.isnan(cube[(m, p)].to_numpy(float))).mean() > coverage)

    pop_periods = periods_of("population")
    pop = pd.Series(column("population", pop_periods[-1]), index=index) if pop_periods else None

    lagged: dict[str, tuple[str, pd.Series]] = {}  # neighbour means, computed in one product

    def add(name, values, m, transform, periods):
        cols[name] = values.reindex(index).astype(float) if values is not None else None
        meta.append(_meta_row(name, m, registry, transform, periods))

    def add_nbr(name, values, m, transform, periods):
        lagged[name] = values.reindex(index).astype(float)
        add(name, None, m, transform, periods)

    def lagged_changes(m, per):
        rel = _count_like(m, registry)
        pairs = list(zip(per[:-1], per[1:]))[::-1][:max_lags]
        return {
            j + 1: ((a, b), pd.Series(change_series(column(m, b), column(m, a), rel) / (b - a), index=index))
            for j, (a, b) in enumerate(pairs)
        }

    own = periods_of(measure)
    changes = lagged_changes(measure, own) if len(own) >= 2 else {}
    if changes:
        frame = pd.DataFrame({f"lag{j}": c for j, (_, c) in changes.items()})
        for j, (span, c) in changes.items():
            add(f"hist__{measure}__lag{j}", c, measure, "change_annual", span)
            add_nbr(f"hist__{measure}__lag{j}__nbr", c, measure, "change_annual_nbr_mean", span)
            add(f"hist__{measure}__lag{j}__dep", _group_mean(c, dep, pop), measure, "change_annual_dep_mean", span)
        if len(changes) >= 2:
            span = (own[0], own[-1])
            allc = frame.mean(axis=1)
            add(f"hist__{measure}__lag_mean", allc, measure, "change_annual_mean", span)
            add_nbr(f"hist__{measure}__lag_mean__nbr", allc, measure, "change_annual_mean_nbr_mean", span)
    if own:
        last = own[-1]
        lvl = pd.Series(column(measure, last), index=index)
        add(f"hist__{measure}__level", lvl, measure, "level", (last, last))
        add(f"hist__{measure}__level__gap_dep", lvl - _group_mean(lvl, dep, pop), measure, "gap_dep", (last, last))
        add_nbr(f"hist__{measure}__level__nbr", lvl, measure, "nbr_mean", (last, last))
    if cross_measures:
        new = {}
        for m in sorted(measures - {measure}):
            per = periods_of(m, min_coverage)
            if len(per) < 2:
                continue
            for j, (span, c) in lagged_changes(m, per).items():
                new[f"{m}__lag{j}"] = (m, span, c)
        for k, (m, span, c) in new.items():
            add(f"hist__{k}", c, m, "change_annual", span)
            add_nbr(f"hist__{k}__nbr", c, m, "change_annual_nbr_mean", span)
    if lagged:
        nbr = neighbour_mean(graph, pd.DataFrame(lagged, index=index))
        for name in lagged:
            cols[name] = nbr[name]
    X = pd.DataFrame(cols, index=index)
    return X, pd.DataFrame(meta)


def change_series(cur: np.ndarray, prev: np.ndarray, relative: bool) -> np.ndarray:
    """``cur - prev``, or the change in % of a positive ``prev`` when ``relative``."""
    if relative:
        with np.errstate(invalid="ignore"):
            return (cur - prev) / np.where(prev > 0, prev, np.nan) * 100.0
    return cur - prev


def _group_mean(values: pd.Series, groups: pd.Series, weights: pd.Series | None) -> pd.Series:
    """Weighted mean of each zone's group (department), broadcast to the zones."""
    v = values.reindex(groups.index)
    w = pd.Series(1.0, index=groups.index) if weights is None else weights.reindex(groups.index).fillna(0.0)
    has = v.notna()
    num = (v.fillna(0.0) * w * has).groupby(groups).transform("sum")
    den = (w * has).groupby(groups).transform("sum")
    return num / den.where(den > 0)


def select_features(X: pd.DataFrame, max_missing: float = 0.95, corr_threshold: float = 0.995) -> list[str]:
    """Columns worth keeping: not (almost) empty, not constant, not a near-duplicate.

    Unsupervised (never looks at the target), so it can run on all rows of a design matrix
    before cross-validation. Of two columns whose Spearman correlation exceeds
    ``corr_threshold``, the first (in column order) is kept.
    """
    A = X.to_numpy(dtype=float)
    ranks, distinct = _average_ranks(A, distinct=True)
    missing = np.isnan(A).mean(axis=0) if len(A) else np.ones(A.shape[1])
    kept = np.flatnonzero((missing <= max_missing) & (distinct > 1))
    keep = [X.columns[j] for j in kept]
    corr = np.abs(np.corrcoef(ranks[:, kept].T))
    corr = np.nan_to_num(corr)
    dropped = np.zeros(len(keep), bool)
    for i in range(len(keep)):
        if not dropped[i]:
            dropped[i + 1:] |= corr[i, i + 1:] > corr_threshold
    return [c for c, d in zip(keep, dropped) if not d]


def _average_ranks(A: np.ndarray, distinct: bool = False, threads: int | None = None):
    """Column-wise ranks (1-based, ties averaged, as ``DataFrame.rank``), a missing value
    taking its column's mean rank; with ``distinct``, also each column's number of distinct
    values (missing ones left out, as ``nunique``).

    One sort per column, by numpy's quicksort: tied values share their average rank, so the
    order a sort leaves them in does not matter, and the vectorised quicksort takes 0.35 x the
    time of a stable sort on a commune design matrix. The columns are shared among ``threads``
    threads (default: one per core), which sort without the GIL: on a key target's design
    (16.5 k rows x 184-206 columns, 2 cores) 0.10-0.12 s instead of 0.20-0.24 s, the same
    ranks (benchmarks/README.md, twenty-fifth measurement)."""
    # a column per row: each sort reads and writes contiguous memory
    AT = np.ascontiguousarray(A.T)
    out = np.empty_like(AT)
    counts = np.zeros(A.shape[1], int)

    def rank_columns(columns) -> None:
        for j in columns:
            x = AT[j]
            ok = ~np.isnan(x)
            v = x[ok]
            order = np.argsort(v)
            sv = v[order]
            starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]]) if len(sv) else np.zeros(0, int)
            ties = np.diff(np.r_[starts, len(sv)])
            r = np.empty(len(v))
            r[order] = np.repeat(starts + (ties + 1) / 2.0, ties)
            row = out[j]
            row[ok] = r
            row[~ok] = r.mean() if len(r) else np.nan
            counts[j] = len(starts)

    n = max(1, min(threads or os.cpu_count() or 1, A.shape[1]))
    if n == 1:
        rank_columns(range(A.shape[1]))
    else:
        with ThreadPoolExecutor(n, thread_name_prefix="ranks") as pool:
            # every n-th column: neighbouring columns (one indicator's transforms) cost alike
            list(pool.map(rank_columns, [range(k, A.shape[1], n) for k in range(n)]))
    return (out.T, counts) if distinct else out.T


def fill_spatial_periods(meta: pd.DataFrame) -> pd.DataFrame:
    """Vintages of neighbourhood and group-gap features, taken from their indicator's level.

    The feature stage leaves ``period_from``/``period_to`` empty for spatial context built on
    a level; they read the level's vintage, which this fills in (for the no-leakage check).
    """
    M = meta.copy()
    levels = M[M["transform"] == "level"].drop_duplicates("indicator").set_index("indicator")
    for col in ("period_from", "period_to"):
        missing = M[col].isna()
        M.loc[missing, col] = M.loc[missing, "indicator"].map(levels[col])
    return M


def design_matrix(
    features: pd.DataFrame,
    meta: pd.DataFrame,
    panel: pd.DataFrame,
    graph,
    identity: pd.DataFrame,
    registry,
    measure: str,
    origin: int,
    rows=None,
    history: bool = True,
    select: bool = True,
    **history_options,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of a target at its origin: ``features_at(origin)`` plus its panel history.

    ``features`` and ``meta`` come from ``FeatureBuild.features_at(origin)`` (identity
    columns are dropped). ``rows`` (zone codes) restricts the matrix, and the unsupervised
    selection of :func:`select_features` runs on those rows. Returns ``(X, meta)`` with one
    metadata row per column of ``X``.
    """
    F = features.set_index("zone_code") if "zone_code" in features.columns else features
    X = F.drop(columns=[c for c in ID_COLUMNS if c in F.columns]).astype(float)
    M = fill_spatial_periods(meta)
    if history:
        H, HM = history_features(panel, measure, origin, graph, identity, registry, **history_options)
        H = H.drop(columns=[c for c in H.columns if c in X.columns])
        X = pd.concat([X, H.reindex(X.index)], axis=1)
        M = pd.concat([M, HM[HM["feature"].isin(H.columns)]], ignore_index=True)
    return restrict_design(X, M, rows, select)


def restrict_design(X: pd.DataFrame, M: pd.DataFrame, rows=None, select: bool = True
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A design matrix on ``rows`` (zone codes; all when None), with the unsupervised
    :func:`select_features` run on those rows when ``select``, and its metadata in the same
    column order."""
    if rows is not None:
        X = X.reindex(pd.Index(rows))
    if select:
        X = X[select_features(X)]
    M = M.set_index("feature").reindex(X.columns).rename_axis("feature").reset_index()
    return X, M
