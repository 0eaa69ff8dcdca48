"""Pipeline ``build_features``: official files → harmonised panel → feature matrix.

Node functions are pure (DataFrame in, DataFrame out) and live in
:mod:`territoria.features`; this module wires them by name, does the I/O at the edges and
shows progress. Outputs (written atomically under ``out_dir``):

``panel.parquet``
    zone × period × measure at the target COG (communes and IRIS).
``features.parquet``
    one row per commune: identity columns then features dated <= the reference period.
``features_meta.csv``
    each feature's indicator, domain, lever/context flag, transform and vintages.
``data_report.json``
    files read (with SHA-256), codes not mapped to the target COG, zones left out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console

from territoria.features import build as fb
from territoria.features.panel import build_panel, commune_universe
from territoria.features.sources import all_sources
from territoria.features.sources.base import file_sha256
from territoria.features.sources.cog import Cog, CogEpci
from territoria.features.access import territory_of
from territoria.features.spatial import build_commune_graph
from territoria.errors import DataError
from territoria.io import write_csv, write_json, write_parquet
from territoria.paths import bundled_data_dir
from territoria.registry import Registry, load_registry
from territoria.pipelines.cache import load_all
from territoria.settings import Parameters, load_parameters


@dataclass
class FeatureBuild:
    """Everything the stage produced, for the next stages and for the summary."""

    panel: pd.DataFrame
    features: pd.DataFrame
    meta: pd.DataFrame
    identity: pd.DataFrame
    graph: object
    reference_period: int
    townhalls: pd.DataFrame | None = None
    points: dict[str, pd.DataFrame] = field(default_factory=dict)
    params: Parameters | None = None
    out_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    report_lines: list[str] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    #: the folder of parsed sources the build read through (``<out>/.cache``), if any
    source_cache: Path | None = None
    #: access measures already taken, for the feature matrices at other periods
    #: (:func:`~territoria.features.build.add_access`)
    access_memo: dict = field(default_factory=dict, repr=False, compare=False)

    def release_panel(self) -> bool:
        """Free the in-memory panel (about 0.75 GB for all communes) when ``panel.parquet``
        in ``out_dir`` holds it; the next use of ``panel`` reads the file back. Returns whether
        it was freed.

        The main job calls it before the report, which reads its inputs from disk.
        """
        path = self.out_dir / "panel.parquet" if self.out_dir is not None else None
        if path is None or not path.exists() or "panel" not in self.__dict__:
            return False
        stat = path.stat()
        self._panel_file = (path, stat.st_size, stat.st_mtime_ns)
        del self.panel
        return True

    def __getattr__(self, name: str):
        # only reached when normal lookup fails, i.e. after release_panel()
        released = self.__dict__.get("_panel_file")
        if name != "panel" or released is None:
            raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
        path, size, mtime = released
        stat = path.stat() if path.exists() else None
        if stat is None or (stat.st_size, stat.st_mtime_ns) != (size, mtime):
            raise DataError(path, "the panel was released from memory and this file, which held it, "
                                  "has since been removed or rewritten by another run: rebuild the "
                                  "features (territoria features)")
        self.panel = pd.read_parquet(path)
        return self.panel

    def features_at(self, t: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Feature matrix and metadata at another reference period, reusing the loaded data.

        Only panel rows and facilities dated <= t enter (the origin of a backtest).
        """
        return build_feature_matrix(
            self.panel, self.identity, self.graph, self.townhalls, self.points,
            load_registry(), self.params, t, access_memo=self.access_memo,
        )

    def summary(self) -> str:
        n_zones = len(self.features)
        n_feat = len(self.meta)
        lines = [
            f"panel: {len(self.panel):,} rows; features: {n_zones:,} communes × {n_feat} features "
            f"(reference period {self.reference_period})",
            *self.report_lines,
        ]
        if self.out_dir is not None:
            lines.append(f"outputs in {self.out_dir}")
        return "\n".join(lines)


def identity_table(cog: pd.DataFrame, epci: pd.DataFrame) -> pd.DataFrame:
    """Communes of the study with their department, region, EPCI and zone (metro/drom)."""
    uni = commune_universe(cog)
    ident = uni[["code", "name", "departement", "region", "zone"]].rename(
        columns={"code": "zone_code", "name": "zone_name"}
    )
    ident = ident.merge(epci[["code", "epci", "epci_name"]].rename(columns={"code": "zone_code"}),
                        on="zone_code", how="left")
    # communes outside any EPCI (a few islands) form their own group
    ident["epci"] = ident["epci"].fillna("none-" + ident["zone_code"])
    return ident.set_index("zone_code", drop=False).rename_axis(None)


def townhall_points(identity: pd.DataFrame, geoms: pd.DataFrame) -> pd.DataFrame:
    """Town-hall longitude/latitude of each commune and the territory used for access."""
    pts = geoms.set_index("zone_code")[["townhall_lon", "townhall_lat"]]
    pts = pts[~pts.index.duplicated()]
    out = pts.reindex(identity.index).rename(columns={"townhall_lon": "lon", "townhall_lat": "lat"})
    out["territory"] = territory_of(identity.index).to_numpy()
    return out


def _spatial_weights(geoms: pd.DataFrame, identity: pd.DataFrame, k: int) -> tuple[object, pd.DataFrame, float]:
    """The communes' graph (:func:`build_commune_graph` of the zones of ``identity``), their
    town halls, and the seconds it took."""
    t0 = time.perf_counter()
    # get_indexer, not isin: pandas' isin on strings converts the codes one by one
    in_study = identity.index.get_indexer(geoms["zone_code"]) >= 0
    graph = build_commune_graph(geoms[in_study], k=k)
    return graph, townhall_points(identity, geoms), time.perf_counter() - t0


def build_feature_matrix(
    panel: pd.DataFrame,
    identity: pd.DataFrame,
    graph,
    townhalls: pd.DataFrame,
    points: dict[str, pd.DataFrame],
    registry: Registry,
    params: Parameters,
    t: int,
    access_memo: dict | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide feature matrix (identity columns first) and its metadata, for reference period t
    (``access_memo``: see :func:`~territoria.features.build.add_access`)."""
    fs = fb.FeatureSet(identity.index)
    cube = fb.zone_cube(panel, t)
    levels = fb.add_levels_and_changes(fs, cube, registry)
    fb.add_access(fs, cube, townhalls, points, registry, params.features, t, memo=access_memo)
    fb.add_iris_contrasts(fs, panel, registry, params.features, t)
    fb.add_spatial_context(fs, graph, identity, registry, levels)
    feats = fs.frame()
    ident = identity[["zone_code", "zone_name", "departement", "region", "epci", "zone"]].copy()
    ident["reference_period"] = t
    return pd.concat([ident, feats], axis=1).reset_index(drop=True), fs.metadata()


def run_build_features(
    data_dir: Path | None = None,
    out_dir: Path | None = Path("out"),
    conf: Path | None = None,
    as_of: int | None = None,
    console: Console | None = None,
    cache: bool = True,
    source_cache: Path | None = None,
    sources_read: Callable[[], None] | None = None,
) -> FeatureBuild:
    """Run the stage end to end on a data folder and write its outputs.

    Parsed sources are cached under ``<out_dir>/.cache`` (see :mod:`.cache`) unless
    ``cache`` is false or there is no output folder. ``source_cache`` names a cache folder to
    read only instead (a finished run's ``.cache``: its entries are used while the files and the
    code they were parsed with are unchanged; nothing is written there). ``sources_read`` is
    called once the sources are read: the parsing workers are done, and the panel is built on
    one core (the main job starts worker processes there).
    """
    console = console or Console(quiet=True)
    data_dir = Path(data_dir) if data_dir is not None else bundled_data_dir()
    params = load_parameters(conf)
    registry = load_registry()
    t = as_of if as_of is not None else params.reference_period
    timings: dict[str, float] = {}
    sources = {name: cls(data_dir) for name, cls in all_sources().items()}
    cache_dir = Path(out_dir) / ".cache" if (cache and out_dir is not None) else None
    write_cache = True
    if cache_dir is None and source_cache is not None and Path(source_cache).is_dir():
        cache_dir, write_cache = Path(source_cache), False

    def step(label: str):
        console.log(label)
        return time.perf_counter()

    t0 = step("reading the COG and EPCI")
    cog = Cog(data_dir).read_vintage(params.target_cog)
    identity = identity_table(cog, CogEpci(data_dir).read_vintage(params.target_cog))
    timings["cog"] = time.perf_counter() - t0

    t0 = step("reading the sources")
    # every vintage, even as of a past year: a file published later can carry earlier periods
    # (the census series of the comparateur); the panel keeps periods <= as_of, and point
    # snapshots are taken at or before t by the feature matrix
    requests = {name: (src, None) for name, src in sources.items()
                if src.kind in ("table", "points") or name == "commune_geometries"}
    console.log(f"  {', '.join(requests)}")
    loaded = load_all(requests, cache_dir, write=write_cache)
    tables = {name: df for name, df in loaded.items() if sources[name].kind == "table"}
    points = {name: df for name, df in loaded.items() if sources[name].kind == "points"}
    geoms = loaded["commune_geometries"]
    del loaded  # the tables are freed as the panel is built: build_panel(consume=True)
    timings["sources"] = time.perf_counter() - t0
    if sources_read is not None:
        sources_read()

    # the spatial weights need the geometries only: a thread builds them while the panel is
    # harmonised, mostly in shapely's predicates, which run without the GIL; the same thread
    # then writes the panel (benchmarks/README.md, nineteenth measurement)
    step(f"harmonising to the COG {params.target_cog} and computing indicators; spatial weights")
    writer = ThreadPoolExecutor(1, thread_name_prefix="features-side")
    try:
        spatial = writer.submit(_spatial_weights, geoms, identity, params.features.knn_fallback)
        t0 = time.perf_counter()
        panel, report = build_panel(tables, cog, registry, target_cog=params.target_cog, consume=True)
        if as_of is not None:
            panel = panel[panel["period"] <= as_of].reset_index(drop=True)
        timings["panel"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        graph, townhalls, timings["graph"] = spatial.result()
        timings["graph_wait"] = time.perf_counter() - t0

        # the panel (6.8 M rows) is written while the features are built: Arrow encodes it
        # without the GIL
        panel_written = (writer.submit(write_parquet, panel, Path(out_dir) / "panel.parquet")
                         if out_dir is not None else None)

        t0 = step(f"feature matrix at t = {t}")
        access_memo: dict = {}
        features, meta = build_feature_matrix(
            panel, identity, graph, townhalls, points, registry, params, t, access_memo=access_memo
        )
        timings["features"] = time.perf_counter() - t0

        hashes = {}
        for src in sources.values():
            for v in src.vintages:
                p = src.path(v)
                if p.exists():
                    hashes[str(p.relative_to(data_dir))] = file_sha256(p)
        result = FeatureBuild(
            panel=panel, features=features, meta=meta, identity=identity, graph=graph,
            reference_period=t, townhalls=townhalls, points=points, params=params, timings=timings, report_lines=report.lines(), file_hashes=hashes,
            source_cache=cache_dir, access_memo=access_memo,
        )
        if out_dir is not None:
            t0 = step(f"writing outputs to {out_dir}")
            out_dir = Path(out_dir)
            panel_written.result()
            write_parquet(features, out_dir / "features.parquet", float_dictionary=False)
            write_csv(meta, out_dir / "features_meta.csv")
            write_json(
                {
                    "reference_period": t,
                    "target_cog": params.target_cog,
                    "data_dir": str(data_dir),
                    "files": hashes,
                    "problems": report.lines(),
                    "unmapped_codes": {
                        k: sorted(v["zone_code"].unique().tolist()) for k, v in report.unmapped.items() if len(v)
                    },
                },
                out_dir / "data_report.json",
            )
            timings["write"] = time.perf_counter() - t0
            result.out_dir = out_dir
    finally:
        writer.shutdown(wait=True)
    return result
