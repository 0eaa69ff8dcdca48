"""IRIS zones: the neighbourhoods of the communes that INSEE divides into IRIS.

INSEE divides the communes of about 5,000 inhabitants and more into IRIS ("îlots regroupés
pour l'information statistique", about 2,000 inhabitants each); a commune not divided is one
IRIS coded ``<commune>0000`` and has no statistics below the commune. The IRIS level ranks
the IRIS that the IRIS sources of the data folder publish (Filosofi IRIS, CNAF recipients)
at their latest vintage: the IRIS of the divided communes, in the geography of those files.
Undivided communes are ranked by the commune level.

The features of an IRIS at a reference period t (only data dated <= t):

* its own indicators: level at the latest vintage, past changes (as for communes);
* the gap of each scored level to the median IRIS of its commune (the pocket of poverty a
  commune average hides) and to the mean IRIS of its department;
* its commune's features at t (``commune__<feature>``): the wider area it belongs to.

Examples
--------
>>> panel = pd.DataFrame({
...     "zone_code": ["591720101", "591720102", "59172"], "level": ["iris", "iris", "commune"],
...     "parent_commune": ["59172", "59172", "59172"], "period": [2021, 2021, 2021],
...     "measure": ["declared_poverty_rate"] * 3, "value": [40.0, 20.0, 30.0],
...     "source": ["filosofi_iris", "filosofi_iris", "filosofi_commune"]})
>>> iris_universe(panel, ["filosofi_iris"]).to_dict("records")
[{'zone_code': '591720101', 'parent_commune': '59172'}, {'zone_code': '591720102', 'parent_commune': '59172'}]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from territoria.errors import DataError
from territoria.features.build import ID_COLUMNS, FeatureSet, add_levels_and_changes, zone_cube
from territoria.features.spatial import gap_to_group
from territoria.registry import Registry

#: prefix of the parent commune's features in an IRIS feature matrix
COMMUNE_PREFIX = "commune__"


def iris_universe(panel: pd.DataFrame, sources) -> pd.DataFrame:
    """IRIS codes and parent communes published by ``sources`` at their latest vintage.

    Each source's latest vintage gives the IRIS geography of the run: an IRIS recoded since
    (a commune merger renames its IRIS) is not carried under its old code.
    """
    iris = panel[(panel["level"] == "iris") & panel["source"].isin(list(sources))]
    if iris.empty:
        raise DataError("panel", f"no IRIS rows from the IRIS sources {sorted(sources)}: "
                                 "the IRIS level needs at least one of them in the data folder")
    latest = iris.groupby("source", observed=True)["period"].transform("max")
    iris = iris[iris["period"] == latest].dropna(subset=["parent_commune"])
    out = iris[["zone_code", "parent_commune"]].drop_duplicates("zone_code")
    return out.sort_values("zone_code").reset_index(drop=True)


def iris_identity(universe: pd.DataFrame, commune_identity: pd.DataFrame) -> pd.DataFrame:
    """Identity columns of the IRIS, from their commune (name, department, region, EPCI).

    An IRIS is named after its commune and its four-digit IRIS number (the bundled sources
    carry no IRIS names), with the commune code of its IRIS code when that differs (Paris
    arrondissements, former communes). IRIS whose commune is not in the study are left out.
    """
    com = commune_identity.set_index("zone_code")
    known = universe["parent_commune"].isin(com.index)
    uni = universe[known]
    parent = com.loc[uni["parent_commune"]]
    # Paris, Lyon and Marseille IRIS, and those of merged communes, carry another commune code
    # (arrondissement, former commune): shown so that "IRIS 0101" is not ambiguous
    prefix, number = uni["zone_code"].str[:5].to_numpy(), uni["zone_code"].str[5:].to_numpy()
    ident = pd.DataFrame({
        "zone_code": uni["zone_code"].to_numpy(),
        "zone_name": parent["zone_name"].astype(str).to_numpy() + np.where(
            prefix == uni["parent_commune"].to_numpy(), "", " (" + prefix + ")") + " – IRIS " + number,
        "parent_commune": uni["parent_commune"].to_numpy(),
        "commune_name": parent["zone_name"].to_numpy(),
        "departement": parent["departement"].to_numpy(),
        "region": parent["region"].to_numpy(),
        "epci": parent["epci"].to_numpy(),
        "zone": parent["zone"].to_numpy(),
    })
    return ident.set_index("zone_code", drop=False).rename_axis(None)


def add_commune_gaps(fs: FeatureSet, identity: pd.DataFrame, registry: Registry, names: list[str]) -> None:
    """Gap of each scored IRIS level to the median IRIS of its commune and to the mean IRIS of
    its department (IRIS are not weighted: the sources give no IRIS population)."""
    frame = fs.frame()
    scored = [n for n in names if registry.indicator(n).scored]
    values = frame[scored]
    commune = identity["parent_commune"].reindex(values.index)
    median = values.groupby(commune).transform("median")
    gap_dep = gap_to_group(values, identity["departement"])
    for n in scored:
        ind = registry.indicator(n)
        fs.add(f"{n}__gap_commune", values[n] - median[n], ind, "gap_commune")
        fs.add(f"{n}__gap_dep", gap_dep[n], ind, "gap_dep")


def commune_context(
    identity: pd.DataFrame, commune_features: pd.DataFrame, commune_meta: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The commune features of each IRIS's commune (``commune__<feature>``) and their metadata
    (same indicator, domain and lever flag; transform ``commune``)."""
    feats = commune_features.set_index("zone_code")
    cols = [c for c in feats.columns if c not in ID_COLUMNS]
    ctx = feats[cols].reindex(identity["parent_commune"].to_numpy())
    ctx.index = identity.index
    ctx.columns = [COMMUNE_PREFIX + c for c in cols]
    meta = commune_meta.set_index("feature").reindex(cols).reset_index()
    meta["feature"] = COMMUNE_PREFIX + meta["feature"]
    meta["transform"] = "commune"
    meta["label_en"] = meta["label_en"] + " (commune)"
    meta["label_fr"] = meta["label_fr"] + " (commune)"
    return ctx, meta


def iris_feature_matrix(
    panel: pd.DataFrame,
    identity: pd.DataFrame,
    commune_features: pd.DataFrame,
    commune_meta: pd.DataFrame,
    registry: Registry,
    t: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide IRIS feature matrix (identity columns first) and its metadata at period t.

    ``commune_features`` / ``commune_meta`` are the commune feature matrix of the same period
    t (so that no commune value dated after t enters either).
    """
    fs = FeatureSet(identity.index)
    cube = zone_cube(panel, t, level="iris").reindex(identity.index)
    levels = add_levels_and_changes(fs, cube, registry)
    add_commune_gaps(fs, identity, registry, levels)
    ctx, ctx_meta = commune_context(identity, commune_features, commune_meta)
    own = fs.frame()
    ident = identity[["zone_code", "zone_name", "parent_commune", "departement", "region", "epci", "zone"]].copy()
    ident["reference_period"] = t
    frame = pd.concat([ident, own, ctx], axis=1).reset_index(drop=True)
    meta = pd.concat([fs.metadata(), ctx_meta], ignore_index=True)
    return frame, meta


def iris_design(features: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """The model's design matrix: every feature column, indexed by IRIS code, as floats."""
    X = features.set_index("zone_code")[list(meta["feature"])]
    return X.astype(np.float64)
