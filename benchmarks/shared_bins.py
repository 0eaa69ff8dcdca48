"""Cross-validation of the key targets with bins found once per target, against each fit
binning its own rows, or against changed LightGBM parameters: time and accuracy over seeds.

Run with ``.venv/bin/python benchmarks/shared_bins.py [--seeds 1,2,3] [--params k=v,...]
[--features-pickle FILE]``.

Without ``--params``: the department-blocked CV of the three key targets (no temporal
backtest) with ``share_bins=False`` (every fold, early-stopping split and spread model bins
its own rows, as before :class:`territoria.models.trajectory.SharedBins`) and with the
default shared bins, alternating, once per LightGBM seed. With ``--params``
(e.g. ``subsample=0.8``): the default configuration against the same with these parameters
changed, both on shared bins (the variants' order alternates from seed to seed). Prints the
mean over the seeds of the seconds, Spearman's
rho, the 80 % interval's coverage and width per target, and the ratios to the reference
(the first variant). The seed-to-seed spread of Spearman's rho is about 0.003-0.005, so a
difference of one seed says little: average several.
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import pandas as pd

from territoria.memory import configure_allocators
from territoria.models.backtest import run_backtest

METRICS = ["spearman", "coverage_80", "width_80"]


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="1,2,3", help="LightGBM seeds (random_state), comma-separated")
    parser.add_argument("--params", default=None, help="k=v,... compared with the default configuration")
    parser.add_argument("--features-pickle", type=Path, default=None)
    args = parser.parse_args()
    configure_allocators()  # as territoria's commands do
    if args.features_pickle is not None:
        fb = pickle.loads(args.features_pickle.read_bytes())
    else:
        from territoria.pipelines.build_features import run_build_features

        fb = run_build_features(out_dir=None)
    if args.params:
        changed = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.params.split(","))}
        variants = {"default": ({}, True), args.params: (changed, True)}
    else:
        variants = {"bins per fit": ({}, False), "shared bins": ({}, True)}
    rows = []
    for i, seed in enumerate(int(s) for s in args.seeds.split(",")):
        # the order alternates: the process's first fit also pays its warm-up (about 4 s)
        for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
            params, share = variants[name]
            start = time.perf_counter()
            res = run_backtest(fb, temporal=False, params={"random_state": seed, **params}, share_bins=share)
            seconds = time.perf_counter() - start
            print(f"seed {seed}, {name}: {seconds:.1f} s", flush=True)
            m = res.metrics
            m = m[(m["model"] == "lightgbm") & m["metric"].isin(METRICS)]
            rows += [{"variant": name, "seed": seed, "target": r.target, "metric": r.metric, "value": r.value}
                     for r in m.itertuples(index=False)]
            rows.append({"variant": name, "seed": seed, "target": "(all)", "metric": "seconds", "value": seconds})
    table = pd.DataFrame(rows).pivot_table(index=["metric", "target"], columns="variant", values="value",
                                           aggfunc="mean")[list(variants)]
    ref, other = list(variants)
    table["difference"] = table[other] - table[ref]
    table["ratio"] = table[other] / table[ref]
    print(f"\nmean over seeds {args.seeds}")
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
