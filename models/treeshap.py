"""Exact TreeSHAP of LightGBM regression trees, by tables of leaf patterns (compiled with numba).

LightGBM's ``pred_contrib`` computes path-dependent TreeSHAP row by row in time proportional
to trees × leaves × depth². The same values come cheaper from one observation: a leaf's
part of a row's contributions depends on the row only through which of the leaf's path
conditions it meets, feature by feature. With ``d`` distinct features on the path from the
root to leaf ``l`` (value ``v``), ``z_j`` the share of the training rows that follow the
path's splits on feature ``j`` (product of child / parent counts) and ``o_j`` 1 when the
row follows all of them, 0 otherwise, the leaf adds to feature ``i``

    v (o_i - z_i) sum_k k! (d - 1 - k)! / d! c_k,    sum_k c_k t^k = prod_{j != i} (z_j + o_j t)

(the Shapley value of ``i`` in the leaf's game ``f(S) = v prod_{j in S} o_j prod_{j not in
S} z_j``; Lundberg et al. 2020, path-dependent TreeSHAP; the idea of the tables is Fast
TreeSHAP v2's, Yang 2021). There are ``2^d`` patterns ``o``: each leaf's table of
contributions is computed once, and a row costs trees × leaves × depth (its pattern at each
leaf and ``d`` additions); threads share the rows. The base value is the trees' mean leaf
value weighted by their training counts.

Only what these trees use is supported: numerical splits, LightGBM's missing-value rules
(``missing_type`` None, Zero or NaN with the default direction), one tree per iteration,
paths of at most :data:`MAX_PATH_FEATURES` distinct features (tables of 2^d rows).
:func:`tree_shap` raises :class:`Unsupported` otherwise, and :func:`contributions`, which
every stage calls, then uses ``pred_contrib``.

Examples
--------
>>> import lightgbm as lgb
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(500, 4)); X[::7, 1] = np.nan
>>> y = X[:, 0] * 2 + np.nan_to_num(X[:, 1]) + rng.normal(size=500)
>>> booster = lgb.train({"num_leaves": 15, "verbose": -1}, lgb.Dataset(X, y), num_boost_round=20)
>>> phi = tree_shap(booster, X)
>>> bool(np.abs(phi - booster.predict(X, pred_contrib=True)).max() < 1e-9)
True
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from territoria.models.lgbm_threads import lightgbm_threads

#: longest path (distinct features from the root to a leaf) the tables serve: 2^12 patterns
MAX_PATH_FEATURES = 12

#: rows processed together, tree by tree (their decisions and contributions stay in cache)
ROW_BLOCK = 256
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
#: LightGBM's kZeroThreshold, the float 1e-35: |x| at most this is "zero" for missing_type Zero
_ZERO = float(np.float32(1e-35))


class Unsupported(ValueError):
    """The booster has a tree these tables do not serve (see the module's docstring)."""


def _flatten(model: dict, n_iter: int | None):
    """Arrays of the trees' internal nodes and leaves (paths, distinct features, shares)."""
    if model.get("num_tree_per_iteration", 1) != 1:
        raise Unsupported("one tree per iteration only (not multiclass)")
    if model.get("average_output", False):
        raise Unsupported("averaged trees (random forest mode)")
    trees = model["tree_info"][: n_iter] if n_iter else model["tree_info"]
    feat, thr, dleft, miss = [], [], [], []
    base = 0.0
    leaf_value, leaf_d, leaf_feat, leaf_z = [], [], [], []
    cond_start, cond_node, cond_left, cond_slot = [0], [], [], []
    tree_nodes, tree_leaves = [0], [0]
    for tree in trees:
        root = tree["tree_structure"]
        if "split_index" not in root:  # a single leaf: only the base value
            base += float(root["leaf_value"])
            continue
        offset = len(feat)
        total = float(root["internal_count"])
        stack = [(root, [])]
        while stack:
            node, path = stack.pop()
            if "split_index" in node:
                if node.get("decision_type", "<=") != "<=":
                    raise Unsupported("categorical splits")
                k = offset + int(node["split_index"])
                grow = k + 1 - len(feat)
                if grow > 0:
                    feat += [0] * grow
                    thr += [0.0] * grow
                    dleft += [False] * grow
                    miss += [0] * grow
                feat[k], thr[k] = int(node["split_feature"]), float(node["threshold"])
                dleft[k], miss[k] = bool(node["default_left"]), _MISSING[node["missing_type"]]
                count = float(node["internal_count"])
                for child, left in ((node["left_child"], True), (node["right_child"], False)):
                    c = float(child["internal_count"] if "split_index" in child else child["leaf_count"])
                    stack.append((child, path + [(k, left, c / count)]))
                continue
            # a leaf: its distinct features in order of first split, their shares and conditions
            slots: dict[int, int] = {}
            z: list[float] = []
            for k, left, share in path:
                j = slots.setdefault(feat[k], len(slots))
                if j == len(z):
                    z.append(1.0)
                z[j] *= share
                cond_node.append(k)
                cond_left.append(left)
                cond_slot.append(j)
            if len(slots) > MAX_PATH_FEATURES:
                raise Unsupported(f"a path with {len(slots)} distinct features (at most {MAX_PATH_FEATURES})")
            cond_start.append(len(cond_node))
            leaf_value.append(float(node["leaf_value"]))
            leaf_d.append(len(slots))
            leaf_feat.append(list(slots))
            leaf_z.append(z)
            base += float(node["leaf_value"]) * float(node["leaf_count"]) / total
        tree_nodes.append(len(feat))
        tree_leaves.append(len(leaf_d))
    width = max([1, *leaf_d])
    return (np.array(feat, np.int64), np.array(thr, np.float64), np.array(dleft, np.bool_), np.array(miss, np.int64),
            np.array(leaf_value, np.float64), np.array(leaf_d, np.int64), _padded(leaf_feat, width, 0, np.int64),
            _padded(leaf_z, width, 1.0, np.float64), np.array(cond_start, np.int64), np.array(cond_node, np.int64),
            np.array(cond_left, np.bool_), np.array(cond_slot, np.int64), np.array(tree_nodes, np.int64),
            np.array(tree_leaves, np.int64), base)


def _padded(rows: list[list], width: int, fill, dtype) -> np.ndarray:
    return np.array([r + [fill] * (width - len(r)) for r in rows], dtype=dtype).reshape(-1, width)


@njit(cache=True)
def _tables(leaf_value, leaf_d, leaf_z):
    """Each leaf's contributions for each of its 2^d patterns: flat, with each leaf's offset."""
    n = len(leaf_d)
    offsets = np.zeros(n + 1, np.int64)
    for leaf in range(n):
        offsets[leaf + 1] = offsets[leaf] + (1 << leaf_d[leaf]) * leaf_d[leaf]
    table = np.zeros(offsets[n])
    weights = np.zeros(MAX_PATH_FEATURES + 1)
    poly = np.zeros(MAX_PATH_FEATURES + 1)
    for leaf in range(n):
        d = leaf_d[leaf]
        # k! (d - 1 - k)! / d!
        for k in range(d):
            w = 1.0 / d
            for m in range(1, k + 1):
                w *= m / (d - m)
            weights[k] = w
        for code in range(1 << d):
            for i in range(d):
                poly[:] = 0.0
                poly[0] = 1.0
                deg = 0
                for j in range(d):
                    if j == i:
                        continue
                    zj = leaf_z[leaf, j]
                    if (code >> j) & 1:  # (z_j + t) * poly
                        for k in range(deg + 1, 0, -1):
                            poly[k] = poly[k] * zj + poly[k - 1]
                        poly[0] *= zj
                        deg += 1
                    else:
                        for k in range(deg + 1):
                            poly[k] *= zj
                s = 0.0
                for k in range(deg + 1):
                    s += weights[k] * poly[k]
                oi = float((code >> i) & 1)
                table[offsets[leaf] + code * d + i] = leaf_value[leaf] * (oi - leaf_z[leaf, i]) * s
    return table, offsets


@njit(nogil=True, cache=True)
def _contributions(X, out, first, last, feat, thr, dleft, miss, tree_nodes, tree_leaves, leaf_d, leaf_feat,
                   cond_start, cond_node, cond_left, cond_slot, table, offsets, base, zero, block):
    # rows first..last-1 into out, by blocks of rows, tree by tree: a tree's tables stay in
    # cache while the block's rows read them; without the GIL, so threads share the rows.
    # The block's contributions are summed feature by feature (acc: features x rows), each
    # leaf's addition to a feature then running over contiguous rows; a value's additions
    # come in the same order as row by row, so the sums are the same to the last bit
    n_feat = X.shape[1]
    n_trees = len(tree_nodes) - 1
    widest = 1
    for t in range(n_trees):
        widest = max(widest, tree_nodes[t + 1] - tree_nodes[t])
    goes_left = np.empty((widest, block), np.bool_)
    codes = np.empty(block, np.int64)
    at = np.empty(block, np.int64)
    acc = np.empty((n_feat, block))
    for r0 in range(first, last, block):
        m = min(last, r0 + block) - r0
        acc[:, :m] = 0.0
        for t in range(n_trees):
            n0 = tree_nodes[t]
            for k in range(n0, tree_nodes[t + 1]):
                f, th, mk, dl = feat[k], thr[k], miss[k], dleft[k]
                for r in range(m):
                    x = X[r0 + r, f]
                    # LightGBM's predictor reads |x| <= kZeroThreshold as 0, and NaN as 0
                    # unless NaN is the split's missing value
                    if np.isnan(x):
                        if mk != 2:
                            x = 0.0
                    elif -zero <= x <= zero:
                        x = 0.0
                    if (mk == 1 and x == 0.0) or (mk == 2 and np.isnan(x)):
                        goes_left[k - n0, r] = dl
                    else:
                        goes_left[k - n0, r] = x <= th
            for leaf in range(tree_leaves[t], tree_leaves[t + 1]):
                d = leaf_d[leaf]
                codes[:m] = (1 << d) - 1
                for c in range(cond_start[leaf], cond_start[leaf + 1]):
                    # the condition's bit cleared where the row goes the other way
                    k, bit, want = cond_node[c] - n0, np.int64(1) << cond_slot[c], np.int64(cond_left[c])
                    for r in range(m):
                        codes[r] &= ~(bit & -(np.int64(goes_left[k, r]) ^ want))
                for r in range(m):
                    at[r] = offsets[leaf] + codes[r] * d
                for j in range(d):
                    f = leaf_feat[leaf, j]
                    for r in range(m):
                        acc[f, r] += table[at[r] + j]
        for r in range(m):
            for f in range(n_feat):
                out[r0 + r, f] = acc[f, r]
            out[r0 + r, n_feat] = base


def _iterations(booster, num_iteration: int | None) -> int | None:
    """Trees used, as ``predict`` reads ``num_iteration`` (None: the best iteration if any)."""
    n = booster.best_iteration if num_iteration is None else num_iteration
    return int(n) if n and n > 0 else None


def tree_shap(booster, X, num_iteration: int | None = None, n_jobs: int | None = None) -> np.ndarray:
    """Exact TreeSHAP contributions of ``X``'s rows: the layout of LightGBM's
    ``booster.predict(X, pred_contrib=True, num_iteration=...)``, one column per feature and
    the base value last.

    Parameters
    ----------
    booster : lightgbm.Booster
        A regression (or binary, raw score) booster with one tree per iteration.
    X : array-like
        Rows × the booster's features, as given to ``predict``.
    num_iteration : int, optional
        Use the first ``num_iteration`` trees (<= 0: all; None: the booster's best iteration
        if it has one, as ``predict`` does).
    n_jobs : int, optional
        Threads sharing the rows (default: the machine's cores).

    Raises
    ------
    Unsupported
        When the booster has a tree these tables do not serve.
    """
    n_iter = _iterations(booster, num_iteration)
    parts = _flatten(booster.dump_model(num_iteration=n_iter or -1), n_iter)
    (feat, thr, dleft, miss, leaf_value, leaf_d, leaf_feat, leaf_z, cond_start, cond_node, cond_left, cond_slot,
     tree_nodes, tree_leaves, base) = parts
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    if X.ndim != 2 or X.shape[1] != booster.num_feature():
        raise ValueError(f"X has shape {X.shape}: the booster takes {booster.num_feature()} features")
    table, offsets = _tables(leaf_value, leaf_d, leaf_z)
    out = np.empty((X.shape[0], X.shape[1] + 1))  # every cell is written
    n = len(X)
    threads = max(1, min(n_jobs or os.cpu_count() or 1, -(-n // ROW_BLOCK)))
    bounds = np.linspace(0, n, threads + 1).astype(int)

    def run(i: int) -> None:
        _contributions(X, out, bounds[i], bounds[i + 1], feat, thr, dleft, miss, tree_nodes, tree_leaves, leaf_d,
                       leaf_feat, cond_start, cond_node, cond_left, cond_slot, table, offsets, base, _ZERO, ROW_BLOCK)

    if threads == 1:
        run(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, range(threads)))
    return out


def compile_kernels() -> None:
    """Compile the numba kernels into numba's cache (next to this module) by explaining a
    tiny model: ``scripts/install.sh`` calls it, so that the first run does not spend 1.5 s
    compiling them in each process that explains (the main job's and MLflow's worker)."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    with lightgbm_threads(1) as threads:
        booster = lgb.train({"num_leaves": 4, "verbose": -1, "num_threads": threads},
                            lgb.Dataset(X, X[:, 0] + rng.normal(size=200)), num_boost_round=2)
    tree_shap(booster, X, n_jobs=1)


def contributions(booster, X, num_iteration: int | None = None, n_jobs: int | None = None) -> np.ndarray:
    """TreeSHAP contributions of ``X``'s rows (layout of ``pred_contrib``): :func:`tree_shap`
    when it serves the booster, LightGBM's ``pred_contrib`` otherwise (the same values)."""
    try:
        return tree_shap(booster, X, num_iteration, n_jobs)
    except Unsupported:
        with lightgbm_threads(n_jobs) as threads:
            return booster.predict(np.asarray(X, dtype=np.float64), pred_contrib=True, num_iteration=num_iteration,
                                   num_threads=threads)
