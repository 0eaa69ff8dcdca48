"""The streamlit script of ``territoria dashboard`` (views only; see :mod:`.dashboard`).

Started by ``territoria dashboard --out DIR`` as ``streamlit run dashboard_app.py -- --out DIR
--lang fr``: the run folder is an argument of this script, resolved once per server, and the
app reads only that run's outputs. Four views: the national map, the ranked table with
filters, a zone's detail (rank, score and interval, levers, indicators over time against its
department) and live scenarios on lever indicators.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from territoria.errors import DataError
from territoria.pipelines import dashboard as dash

# --------------------------------------------------------------------------- fixed at launch


@st.cache_resource(show_spinner=False)
def _config(argv: tuple[str, ...]) -> dash.AppConfig:
    # resolved once per server: the folder never changes while it runs
    return dash.parse_app_args(list(argv))


@st.cache_resource(show_spinner=False)
def _priorities(run_dir: str) -> pd.DataFrame:
    return dash.load_priorities(Path(run_dir))


@st.cache_resource(show_spinner=False)
def _registry():
    from territoria.registry import load_registry

    return load_registry()


@st.cache_resource(show_spinner=False)
def _series(run_dir: str) -> pd.DataFrame:
    return dash.load_series(Path(run_dir), dash.series_measures(_registry()))


@st.cache_resource(show_spinner=False)
def _geometries(run_dir: str) -> dict:
    return dash.load_geometries(Path(run_dir))


@st.cache_resource(show_spinner=False)
def _department_names(run_dir: str) -> dict[str, str]:
    from territoria.pipelines.report import department_names

    return department_names(dash.read_json(dash.run_file(Path(run_dir), "data_report")).get("data_dir"))


@st.cache_data(show_spinner=False, max_entries=64)
def _map_png(run_dir: str, column: str, lang: str, department: str | None, highlight: str | None) -> bytes:
    return dash.render_map(_geometries(run_dir), _priorities(run_dir), column, lang, department, highlight)


# one scenario at a time: each rebuilds every commune's features (CPU and memory bound)
_SCENARIO_LOCK = threading.Lock()


@st.cache_resource(show_spinner=False)
def _engine_future(run_dir: str) -> Future:
    """The run's engine, loaded in the background once the first page is drawn: rebuilding
    the features from the run's parsed sources takes about 20 s for all communes on two
    cores, which a planner spends on the map and the table."""
    # import the scientific stack here first: two threads importing sklearn at once can see
    # it partially initialised
    import territoria.pipelines.build_features  # noqa: F401
    import territoria.pipelines.prioritise  # noqa: F401

    future: Future = Future()

    def load() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(dash.load_run_engine(Path(run_dir)))
        except BaseException as exc:  # noqa: BLE001 - handed to the page that waits for it
            future.set_exception(exc)

    # a daemon thread, not an executor: stopping the server must not wait for the load
    threading.Thread(target=load, name="territoria-engine", daemon=True).start()
    return future


# --------------------------------------------------------------------------- helpers
def _md(s: str) -> str:
    """Text shown literally in markdown (names and sentences may hold * _ [ ] # < >)."""
    for ch in "\\`*_[]<>#|~$":
        s = s.replace(ch, "\\" + ch)
    return s


def _dep_label(code: str, names: dict[str, str]) -> str:
    return f"{code} — {names[code]}" if code in names else code


def _select_zone(code: str) -> None:
    st.session_state["zone"] = code
    st.query_params["zone"] = code


def _zone_picker(pri: pd.DataFrame, T: dict) -> pd.Series | None:
    """Search box and result list; the chosen zone is kept in the session."""
    query = st.text_input(T["search"], key="zone_query", max_chars=80)
    if query.strip():
        hits = dash.search_zones(pri, query)
        if hits.empty:
            st.warning(T["no_match"].format(q=query.strip()))
        else:
            options = hits["zone_code"].tolist()
            labels = {r.zone_code: f"{r.zone_name} ({r.zone_code}) — {r.department}" for r in hits.itertuples()}
            current = st.session_state.get("zone")
            choice = st.selectbox(T["matches"], options, format_func=labels.get,
                                  index=options.index(current) if current in options else 0, key="zone_choice")
            if choice != current:
                _select_zone(choice)
    code = st.session_state.get("zone")
    if not code:
        st.info(T["pick_zone"])
        return None
    try:
        return dash.zone_row(pri, code)
    except DataError:
        st.session_state.pop("zone", None)
        st.info(T["pick_zone"])
        return None


def _rank_metrics(row: pd.Series, n: int, lang: str, T: dict) -> None:
    c1, c2, c3, c4 = st.columns(4)
    rank = row["priority_rank"]
    c1.metric(T["rank_of"].format(n=dash.fmt_num(n, lang, 0)), "–" if pd.isna(rank) else dash.fmt_num(rank, lang, 0))
    c2.metric(T["score"], dash.fmt_num(row["priority_score"], lang))
    c3.metric(T["interval"], f"{dash.fmt_num(row['priority_score_low'], lang)} – "
                             f"{dash.fmt_num(row['priority_score_high'], lang)}")
    flag = T["flag_yes"] if row["priority_flag"] else T["flag_no"]
    status = T["status"].get(row.get("flag_status", ""), "")
    c4.metric(T["flag"], flag + (f" ({status})" if row["priority_flag"] and status != "—" else ""))
    if pd.notna(rank):
        st.caption(T["rank_range"].format(
            best=dash.fmt_num(row["priority_rank_best"], lang, 0), worst=dash.fmt_num(row["priority_rank_worst"], lang, 0),
            dep=_ordinal(row["priority_rank_department"], lang), epci=_ordinal(row["priority_rank_epci"], lang)))


def _ordinal(k, lang: str) -> str:
    from territoria.pipelines.explain_zone import _ordinal as ordinal

    return "–" if pd.isna(k) else ordinal(int(k), lang)


# --------------------------------------------------------------------------- views
def view_map(cfg: dash.AppConfig, pri: pd.DataFrame, T: dict) -> None:
    run_dir = str(cfg.run_dir)
    names = _department_names(run_dir)
    variables = dash.map_variables(pri, cfg.lang)
    c1, c2 = st.columns([2, 1])
    column = c1.selectbox(T["map_variable"], list(variables), format_func=variables.get, key="map_variable")
    deps = sorted(pri["department"].unique())
    department = c2.selectbox(T["map_department"], [""] + deps, key="map_department",
                              format_func=lambda d: T["mainland"] if not d else _dep_label(d, names))
    try:
        with st.spinner("…"):
            # the national map is drawn once per variable; a department's outlines the chosen zone
            png = _map_png(run_dir, column, cfg.lang, department or None,
                           st.session_state.get("zone") if department else None)
    except DataError as exc:
        st.error(str(exc))
        return
    st.image(png, caption=T["map_caption"], width="content")


def view_ranking(cfg: dash.AppConfig, pri: pd.DataFrame, T: dict) -> None:
    F = T["filters"]
    names = _department_names(str(cfg.run_dir))
    c1, c2, c3, c4 = st.columns(4)
    department = c1.selectbox(F["department"], [""] + sorted(pri["department"].unique()), key="f_department",
                              format_func=lambda d: F["all"] if not d else _dep_label(d, names))
    epcis = pri[pri["department"] == department] if department else pri
    epci_names = epcis.drop_duplicates("epci").set_index("epci")["epci_name"].to_dict()
    epci = c2.selectbox(F["epci"], [""] + sorted(epci_names, key=lambda e: epci_names[e]), key="f_epci",
                        format_func=lambda e: F["all"] if not e else f"{epci_names.get(e) or e}")
    domain = c3.selectbox(F["domain"], [""] + dash.domains(pri), key="f_domain",
                          format_func=lambda d: F["all"] if not d else dash.domain_label(d, cfg.lang))
    flags = ["", "flagged", *dash.FLAG_STATUSES, "not_flagged"]
    flag = c4.selectbox(F["flag"], flags, key="f_flag",
                        format_func=lambda f: F["all"] if not f else F.get(f, T["status"].get(f, f)))
    df = dash.filter_ranking(pri, department or None, epci or None, domain or None, flag or None)
    st.caption(f"{len(df):,}".replace(",", "\u202f" if cfg.lang == "fr" else ","))
    shown = dash.ranking_view(df.head(2000), cfg.lang, domain or None)
    codes = df["zone_code"].head(2000).tolist()

    def open_zone() -> None:
        rows = st.session_state["ranking"].selection.rows
        if rows:
            _select_zone(codes[rows[0]])
            st.session_state["view"] = T["views"][2]

    C = T["columns"]
    st.dataframe(shown, hide_index=True, width="stretch", height=560, key="ranking",
                 on_select=open_zone, selection_mode="single-row",
                 column_config={C["priority_score"]: st.column_config.NumberColumn(format="%.1f")})


def view_zone(cfg: dash.AppConfig, pri: pd.DataFrame, T: dict) -> None:
    lang, run_dir = cfg.lang, str(cfg.run_dir)
    row = _zone_picker(pri, T)
    if row is None:
        return
    names = _department_names(run_dir)
    n = int(pri["priority_score"].notna().sum())
    st.header(f"{row['zone_name']} ({row['zone_code']})")
    st.markdown(_md(f"{_dep_label(row['department'], names)} · {row.get('epci_name') or row['epci']} · "
                    f"{T['population']} {dash.fmt_num(row['population'], lang, 0)}"))
    _rank_metrics(row, n, lang, T)
    st.markdown(_md(T["index"].format(index=dash.fmt_num(row["deprivation_index"], lang),
                                      decile=dash.fmt_num(row["index_decile"], lang, 0))))

    left, right = st.columns([3, 2])
    with left:
        st.subheader(T["levers"])
        levers = dash.lever_texts(row, lang)
        if levers:
            with st.container(key="levers"):
                st.markdown("\n".join(f"- {_md(s)}" for s in levers))
        else:
            st.write(T["no_lever"])
        progs = row.get("programmes") or T["no_programme"]
        st.markdown(_md(T["programmes"].format(p=progs)))
        diag = row.get(f"diagnostic_reasons_{lang}", "")
        if isinstance(diag, str) and diag:
            st.markdown(_md(T["diagnostics"].format(d=diag)))
    with right:
        st.subheader(T["domains"])
        doms = dash.domains(pri)
        d = pd.DataFrame({"domain": [dash.domain_label(x, lang) for x in doms],
                          "score": [row[f"domain_{x}"] for x in doms]}).dropna()
        st.altair_chart(alt.Chart(d).mark_bar().encode(
            x=alt.X("score:Q", title=None), y=alt.Y("domain:N", title=None, sort=None),
            color=alt.condition("datum.score > 0", alt.value("#d94801"), alt.value("#4575b4"))),
            width="stretch")

    st.subheader(T["series"])
    lever_inds = dash.zone_lever_indicators(cfg.run_dir, row["zone_code"])
    measures = list(dict.fromkeys([*dash.KEY_INDICATORS, *lever_inds[:3]]))
    s = dash.zone_series(_series(run_dir), pri, row["zone_code"], measures, lang)
    if not s.empty:
        chart = alt.Chart(s).mark_line(point=True).encode(
            x=alt.X("period:O", title=None), y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
            color=alt.Color("who:N", title=None, legend=alt.Legend(orient="top")),
            tooltip=["label", "who", "period", alt.Tooltip("value:Q", format=".1f")],
        ).properties(width=230, height=150).facet(
            facet=alt.Facet("label:N", title=None, sort=list(dict.fromkeys(s["label"]))), columns=3,
        ).resolve_scale(y="independent")
        st.altair_chart(chart)

    st.subheader(T["points"])
    p = dash.zone_points(cfg.run_dir, row["zone_code"], lang)
    if not p.empty:
        K = T["kind"]
        st.altair_chart(alt.Chart(p).mark_bar().encode(
            x=alt.X("points:Q", title=None),
            y=alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=360)),
            color=alt.Color("kind:N", title=None, scale=alt.Scale(
                domain=[K["lever"], K["context"], K["location"]], range=["#d94801", "#7f7f7f", "#6a51a3"])),
            tooltip=["label", "kind", alt.Tooltip("points:Q", format=".2f")]), width="stretch")


def view_scenario(cfg: dash.AppConfig, pri: pd.DataFrame, T: dict) -> None:
    from territoria.models.scenarios import CAVEAT_EN, CAVEAT_FR

    lang, run_dir = cfg.lang, str(cfg.run_dir)
    row = _zone_picker(pri, T)
    if row is None:
        return
    st.header(f"{row['zone_name']} ({row['zone_code']})")
    st.caption(T["scenario_intro"])
    registry = _registry()
    series = _series(run_dir)
    sliders = dash.lever_sliders(registry, set(series["measure"].astype(str).unique()), lang)
    own = [i for i in dash.zone_lever_indicators(cfg.run_dir, row["zone_code"]) if i in {s.indicator for s in sliders}]
    first = [s for name in own for s in sliders if s.indicator == name][:6]
    rest = [s for s in sliders if s not in first]
    code = row["zone_code"]
    with st.form(f"scenario-{code}"):
        scope = st.radio(T["scope"], list(T["scopes"]), format_func=T["scopes"].get, horizontal=True,
                         key=f"scope-{code}")
        positions = {}
        for s in first:
            positions[s.indicator] = st.slider(s.label, s.low, s.high, 0.0, s.step, key=f"lever-{code}-{s.indicator}")
        with st.expander(T["other_levers"], expanded=not first):
            for s in rest:
                positions[s.indicator] = st.slider(s.label, s.low, s.high, 0.0, s.step,
                                                   key=f"lever-{code}-{s.indicator}")
        submitted = st.form_submit_button(T["apply"], type="primary")
    if submitted:
        sc = dash.make_scenario(positions, sliders, scope, row, registry)
        if sc is None:
            st.session_state.pop("scenario", None)
            st.info(T["no_change"])
        else:
            future = _engine_future(run_dir)
            try:
                if not future.done():
                    with st.spinner(T["loading_engine"]):
                        future.result()
                engine, baseline = future.result()
                with st.spinner(T["computing"]), _SCENARIO_LOCK:
                    table = dash.rerank(engine, baseline, sc)
            except Exception as exc:  # noqa: BLE001 - one line in the page, the details in the server log
                if future.done() and future.exception() is not None:
                    _engine_future.clear()  # the next attempt loads the engine again
                st.error(str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}")
                return
            st.session_state["scenario"] = {"zone": code, "table": table}
    res = st.session_state.get("scenario")
    if not res or res["zone"] != code:
        return
    table = res["table"]
    me = table[table["zone_code"] == code]
    if not me.empty:
        r = me.iloc[0]
        c1, c2 = st.columns(2)
        before, after = r["priority_rank_before"], r["priority_rank_after"]
        c1.metric(T["rank_after"], dash.fmt_num(after, lang, 0),
                  delta=None if pd.isna(before) or pd.isna(after) else int(before - after),
                  help=f"{T['rank']}: {dash.fmt_num(before, lang, 0)}")
        change = r["score_change"]
        c2.metric(T["score_after"], dash.fmt_num(r["priority_score_after"], lang), delta_color="inverse",
                  delta=None if pd.isna(change) else ("+" if change > 0 else "") + dash.fmt_num(change, lang, 2))
    fc = table["flag_change"]
    st.write(T["enter_leave"].format(enter=int((fc == "enters the list").sum()), leave=int((fc == "leaves the list").sum())))
    st.subheader(T["moves"])
    with st.container(key="scenario_table"):
        st.table(dash.scenario_view(table, lang))
    st.caption(CAVEAT_FR if lang == "fr" else CAVEAT_EN)


def main() -> None:
    cfg = _config(tuple(sys.argv[1:]))
    T = dash.text(cfg.lang)
    st.set_page_config(page_title="territoria", layout="wide", menu_items={})
    st.title(T["title"])
    run_dir = str(cfg.run_dir)
    pri = _priorities(run_dir)
    views = T["views"]
    # a shared link (?zone=59172&view=zone) opens a zone directly
    if "zone" not in st.session_state and st.query_params.get("zone"):
        st.session_state["zone"] = st.query_params["zone"].strip()[:10]
    wanted = {"map": 0, "ranking": 1, "zone": 2, "scenario": 3}.get(st.query_params.get("view", ""))
    if "view" not in st.session_state and wanted is not None:
        st.session_state["view"] = views[wanted]
    with st.sidebar:
        st.title("territoria")
        view = st.radio(T["view"], views, key="view")
        period = pri["reference_period"].dropna().iloc[0] if "reference_period" in pri else ""
        st.caption(T["run"].format(period=int(period) if period != "" else "–",
                                   n=dash.fmt_num(len(pri), cfg.lang, 0),
                                   flagged=dash.fmt_num(int(pri["priority_flag"].sum()), cfg.lang, 0)))
    if view == views[0]:
        view_map(cfg, pri, T)
    elif view == views[1]:
        view_ranking(cfg, pri, T)
    elif view == views[2]:
        view_zone(cfg, pri, T)
    else:
        view_scenario(cfg, pri, T)
    # the scenario engine loads in the background once the first page is drawn (not before:
    # both would compete for the interpreter)
    _engine_future(run_dir)


if __name__ == "__main__":
    main()
