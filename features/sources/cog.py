"""Code officiel géographique (COG): communes, EPCI, departments and regions.

Read from the JSON files of Etalab's ``@etalab/decoupage-administratif`` package, which
carries INSEE's COG with the ``anciensCodes`` of merged communes (used by
:mod:`territoria.features.harmonise` to convert tables between COG years).
"""

from __future__ import annotations

import json

import pandas as pd
import pandera.pandas as pa

from territoria.errors import DataError
from territoria.features.sources.base import Coverage, Source
from territoria.readers import read_text

COMMUNES_SCHEMA = pa.DataFrameSchema(
    {
        "code": pa.Column(str, pa.Check.str_matches(r"^(?:\d{5}|2[AB]\d{3})$")),
        "name": pa.Column(str),
        "type": pa.Column(
            str,
            pa.Check.isin(
                ["commune-actuelle", "commune-deleguee", "commune-associee", "arrondissement-municipal"]
            ),
        ),
        "departement": pa.Column(str, nullable=True),
        "region": pa.Column(str, nullable=True),
        "zone": pa.Column(str, nullable=True),
        "parent": pa.Column(str, nullable=True),
        "population": pa.Column(float, pa.Check.ge(0), nullable=True),
        "anciens_codes": pa.Column(object),
    },
    strict=True,
    coerce=True,
)

_DROM = ("971", "972", "973", "974", "976")


class Cog(Source):
    """Communes of the COG of one year, with the former codes they absorbed.

    The table has one row per code and type: current communes, delegated and associated
    communes (``parent`` = the current commune they belong to) and municipal arrondissements
    of Paris, Lyon and Marseille (``parent`` = the commune).

    Examples
    --------
    >>> cog = Cog().read_vintage(2026)
    >>> row = cog[(cog.code == "14061") & (cog.type == "commune-actuelle")].iloc[0]
    >>> len(row.anciens_codes)  # Souleuvre-en-Bocage
    21
    """

    name = "cog"
    producer = "INSEE (via Etalab decoupage-administratif)"
    dataset = "Code officiel géographique - communes"
    kind = "reference"
    level = "commune"
    files = {2021: "cog/communes_cog2021.json", 2026: "cog/communes_cog2026.json"}
    cog_years = {2021: 2021, 2026: 2026}
    coverage = Coverage("commune", 34000)

    def schema(self) -> pa.DataFrameSchema:
        return COMMUNES_SCHEMA

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        records = _read_json_list(path)
        df = pd.DataFrame.from_records(records)
        for col in ("code", "nom", "type"):
            if col not in df:
                raise DataError(path, "missing field", column=col)
        for col in ("departement", "region", "zone", "chefLieu", "commune", "population", "anciensCodes"):
            if col not in df:
                df[col] = None
        parent = df["chefLieu"].where(df["chefLieu"].notna(), df["commune"])
        zone = df["zone"].where(
            df["zone"].notna(),
            df["departement"].map(lambda d: "drom" if d in _DROM else ("com" if d is None else "metro")),
        )
        out = pd.DataFrame(
            {
                "code": df["code"].astype(str),
                "name": df["nom"].astype(str),
                "type": df["type"].astype(str),
                "departement": df["departement"],
                "region": df["region"],
                "zone": zone,
                "parent": parent,
                "population": pd.to_numeric(df["population"], errors="coerce"),
                "anciens_codes": df["anciensCodes"].map(lambda v: list(v) if isinstance(v, list) else []),
            }
        )
        current = out[out["type"] == "commune-actuelle"]
        dup = current["code"][current["code"].duplicated()]
        if len(dup):
            raise DataError(path, f"duplicated current commune code {dup.iloc[0]!r}", column="code")
        return out

    def current(self, vintage: int) -> pd.DataFrame:
        """Current communes only (one row per commune)."""
        df = self.validate(self.read_vintage(vintage), vintage)
        return df[df["type"] == "commune-actuelle"].reset_index(drop=True)


class CogEpci(Source):
    """EPCI (intercommunal bodies) of the COG and their member communes.

    ``read_vintage`` returns one row per member commune: ``code`` (commune), ``epci``,
    ``epci_name``, ``epci_type`` (CC, CA, CU, METRO, MET69).
    """

    name = "cog_epci"
    producer = "INSEE/DGCL (via Etalab decoupage-administratif)"
    dataset = "EPCI à fiscalité propre et leurs communes membres"
    kind = "reference"
    level = "commune"
    files = {2026: "cog/epci_cog2026.json"}
    cog_years = {2026: 2026}
    coverage = Coverage("commune", 34000)

    def schema(self) -> pa.DataFrameSchema:
        return pa.DataFrameSchema(
            {
                "code": pa.Column(str, pa.Check.str_matches(r"^(?:\d{5}|2[AB]\d{3})$"), unique=True),
                "epci": pa.Column(str, pa.Check.str_matches(r"^\d{9}$")),
                "epci_name": pa.Column(str),
                "epci_type": pa.Column(str),
            },
            strict=True,
            coerce=True,
        )

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        path = self.path(vintage)
        rows = []
        for i, epci in enumerate(_read_json_list(path)):
            for field in ("code", "nom", "type", "membres"):
                if field not in epci:
                    raise DataError(path, f"EPCI #{i} has no field", column=field)
            rows.extend(
                (m["code"], epci["code"], epci["nom"], epci["type"]) for m in epci["membres"]
            )
        return pd.DataFrame(rows, columns=["code", "epci", "epci_name", "epci_type"])


class CogDepartements(Source):
    """Departments of the COG: ``code``, ``name``, ``region``, ``zone`` (metro/drom)."""

    name = "cog_departements"
    producer = "INSEE (via Etalab decoupage-administratif)"
    dataset = "Départements"
    kind = "reference"
    level = "departement"
    files = {2026: "cog/departements_cog2026.json"}
    cog_years = {2026: 2026}
    coverage = Coverage("departement", 100)

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        df = pd.DataFrame.from_records(_read_json_list(self.path(vintage)))
        _require(df, ("code", "nom", "region", "zone"), self.path(vintage))
        return df[["code", "nom", "region", "zone"]].rename(columns={"nom": "name"})


class CogRegions(Source):
    """Regions of the COG: ``code``, ``name``, ``zone``."""

    name = "cog_regions"
    producer = "INSEE (via Etalab decoupage-administratif)"
    dataset = "Régions"
    kind = "reference"
    level = "region"
    files = {2026: "cog/regions_cog2026.json"}
    cog_years = {2026: 2026}
    coverage = Coverage("region", 18)

    def read_vintage(self, vintage: int) -> pd.DataFrame:
        df = pd.DataFrame.from_records(_read_json_list(self.path(vintage)))
        _require(df, ("code", "nom", "zone"), self.path(vintage))
        return df[["code", "nom", "zone"]].rename(columns={"nom": "name"})


def _require(df: pd.DataFrame, fields: tuple[str, ...], path) -> None:
    for col in fields:
        if col not in df:
            raise DataError(path, "missing field", column=col)


def _read_json_list(path) -> list[dict]:
    text = read_text(path)
    if not text.strip():
        raise DataError(path, "empty file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON ({exc.msg})", line=exc.lineno) from None
    if not isinstance(doc, list) or not doc:
        raise DataError(path, "expected a non-empty JSON list of records")
    return doc
