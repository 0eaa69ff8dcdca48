"""Matching commune NAMES to COG codes, for official lists published without codes.

Names are compared after normalisation (:func:`normalise_name`): case, hyphens, apostrophes
and punctuation removed, ``St``/``Ste`` read as ``Saint``/``Sainte``, ``œ`` as ``oe``
(including its mojibake ``½``/``¼`` from Latin-9 files read as Latin-1), and accents removed
(a name equal WITH its accents is preferred: ``Vergne`` is La Vergne, not Vergné). A second
key drops the leading article (``Le``, ``La``, ``Les``, ``L'``), which some lists omit
(``Mans`` for Le Mans, ``Abymes`` for Les Abymes); for lists that omit articles
systematically, both keys rank the same.

Candidates come from the COG tables given (current, delegated and associated communes, so
that names of communes merged since the list was made are found). When a name has several
candidates (about 4,000 commune names are shared), the row is resolved, in this order:

1. by its own geometry when the list comes with one: the department where it lies, then the
   candidate whose town hall lies in the row's polygon;
2. by the department order when the list is sorted by department: the department must lie
   between those of the neighbouring rows with an unambiguous name (a single candidate
   outside that bracket is rejected too: it is then a homonym of a renamed or merged
   commune);
3. by preference: a name equal with its accents, then without, then without its article; a
   current commune before a delegated one; the earliest COG given.

Homonyms listed together (two rows ``Longeville`` in the Doubs, for Longeville and
La Longeville) get the candidates in code order (method ``homonyms all listed``); a row whose
tied candidates are all but one designated by other rows of the list gets the remaining one
(method ``elimination``). Rows left
with no candidate or with several equally good ones are never guessed nor dropped silently:
they are returned in the ``unmatched`` table with the reason and the candidates; so are the
rows naming a commune already matched by an earlier row (reason starting with
:data:`DUPLICATE`: the commune is designated, the row is redundant).
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import shapely

_MOJIBAKE = {"½": "oe", "¼": "oe", "œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae"}
_PUNCT = re.compile(r"[-'’‘`´.,;:/()\"«»]")
_ARTICLE = re.compile(r"^(?:le|la|les|l|los|las|lo)\s+")

#: reason of the rows designating a commune already matched by an earlier row
DUPLICATE = "duplicate: same commune as"

_TYPE_RANK = {
    "commune-actuelle": 0,
    "arrondissement-municipal": 1,
    "commune-deleguee": 2,
    "commune-associee": 2,
}


def _clean(name: str) -> str:
    s = str(name)
    for bad, good in _MOJIBAKE.items():
        s = s.replace(bad, good)
    s = unicodedata.normalize("NFC", s).lower()
    s = _PUNCT.sub(" ", s)
    s = re.sub(r"\bste\b", "sainte", s)
    s = re.sub(r"\bst\b", "saint", s)
    return " ".join(s.split())


def _unaccent(s: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))


def normalise_name(name: str) -> str:
    """Comparable form of a commune name.

    Examples
    --------
    >>> normalise_name("St-Étienne-du-Rouvray")
    'saint etienne du rouvray'
    >>> normalise_name("Vand½uvre-lès-Nancy") == normalise_name("Vandœuvre-lès-Nancy")
    True
    >>> normalise_name("L'Haÿ-les-Roses")
    'l hay les roses'
    """
    return _unaccent(_clean(name))


def strip_article(norm: str) -> str:
    """A normalised name without its leading article (``le mans`` → ``mans``)."""
    return _ARTICLE.sub("", norm)


@dataclass(frozen=True)
class Candidate:
    code: str
    departement: str
    name: str
    type: str
    cog_year: int
    #: 0 equal with accents, 1 equal without accents, 2 equal without the article
    level: int

    @property
    def rank(self) -> tuple[int, int, int]:
        return (self.level, _TYPE_RANK.get(self.type, 3), self.cog_year)


class NameIndex:
    """Normalised names of the communes of one or more COG tables.

    Parameters
    ----------
    cogs : dict
        ``{cog_year: table}`` as returned by :meth:`Cog.read_vintage` (all types kept).
    """

    def __init__(self, cogs: dict[int, pd.DataFrame]) -> None:
        self.by_bare: dict[str, list[tuple]] = defaultdict(list)
        self.size = 0
        for year, cog in sorted(cogs.items()):
            cog = cog[cog["departement"].notna()]
            clean = _clean_series(cog["name"])
            plain = _unaccent_series(clean)
            bare = plain.str.replace(_ARTICLE, "", regex=True)
            for entry in zip(
                bare, cog["code"], cog["departement"], cog["name"], cog["type"], clean, plain
            ):
                self.by_bare[entry[0]].append((*entry[1:5], year, *entry[5:]))
            self.size += len(cog)

    def candidates(self, name: str, *, articles_dropped: bool = False) -> list[Candidate]:
        """Distinct communes (by code) that the name may designate, best first."""
        clean = _clean(name)
        norm = _unaccent(clean)
        bare_clean, bare_norm = strip_article(clean), strip_article(norm)
        found: dict[str, Candidate] = {}
        for code, dep, cname, typ, year, cclean, cplain in self.by_bare.get(bare_norm, []):
            if cclean == clean or (articles_dropped and strip_article(cclean) == bare_clean):
                level = 0
            elif cplain == norm or articles_dropped:
                level = 1
            else:
                level = 2
            cand = Candidate(code, dep, cname, typ, year, level)
            if code not in found or cand.rank < found[code].rank:
                found[code] = cand
        return sorted(found.values(), key=lambda c: (c.rank, c.code))


def _clean_series(names: pd.Series) -> pd.Series:
    s = names.astype(str)
    for bad, good in _MOJIBAKE.items():
        s = s.str.replace(bad, good, regex=False)
    s = s.str.normalize("NFC").str.lower().str.replace(_PUNCT, " ", regex=True)
    s = s.str.replace(r"\bste\b", "sainte", regex=True).str.replace(r"\bst\b", "saint", regex=True)
    return s.str.split().str.join(" ")


def _unaccent_series(clean: pd.Series) -> pd.Series:
    return clean.str.normalize("NFKD").str.replace(r"[\u0300-\u036f]", "", regex=True)


def match_names(
    rows: pd.DataFrame,
    index: NameIndex,
    *,
    ordered_by_departement: bool = False,
    articles_dropped: bool = False,
    locations: dict[str, object] | None = None,
    same: Sequence[str] = (),
    span: int = 3,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match the ``name`` column of ``rows`` to commune codes.

    Parameters
    ----------
    rows : DataFrame
        ``name`` and, optionally, ``departement_hint`` (the department where the row's own
        geometry lies) and ``geometry`` (the row's polygon, or None); any other column is
        carried to the outputs. Row order matters when
        ``ordered_by_departement``.
    index : NameIndex
    ordered_by_departement : bool
        The list is sorted by department code: use the neighbouring rows' departments.
    articles_dropped : bool
        The list omits leading articles: a name without its article is as good as equal.
    locations : dict, optional
        ``{code: shapely point}`` of candidate communes, for rows with a geometry.
    same : sequence of str
        Columns that must be equal for homonyms listed together to share their candidates.
    span : int
        Number of unambiguous rows, before and after, whose departments bracket a row's
        department (the lowest before, the highest after: one wrong neighbour only widens it).

    Returns
    -------
    matched, unmatched : DataFrame
        ``matched`` adds ``zone_code``, ``departement``, ``cog_name`` and ``method``
        (``unique``, ``geometry``, ``department order``, ``preference``,
        ``homonyms all listed``, ``elimination``); ``unmatched`` adds ``reason`` and ``candidates``
        (``code (dep) name; ...``).
    """
    rows = rows.reset_index(drop=True)
    cands = [index.candidates(n, articles_dropped=articles_dropped) for n in rows["name"]]
    deps = [sorted({c.departement for c in cs}) for cs in cands]
    anchor_pos = [i for i, d in enumerate(deps) if len(d) == 1]
    anchor_dep = [deps[i][0] for i in anchor_pos]
    geoms = rows["geometry"].tolist() if "geometry" in rows else [None] * len(rows)
    hints = rows["departement_hint"].tolist() if "departement_hint" in rows else [None] * len(rows)

    done: dict[int, tuple[Candidate, str]] = {}
    lost: dict[int, tuple[str, str]] = {}
    ties: dict[int, list[Candidate]] = {}
    for i, cs in enumerate(cands):
        if not cs:
            lost[i] = ("no commune of that name in the COG", "")
            continue
        pool, method = cs, "unique"
        if len(pool) > 1 and isinstance(hints[i], str) and hints[i]:
            in_dep = [c for c in pool if c.departement == hints[i]]
            if in_dep:
                pool, method = in_dep, "geometry"
        if len(pool) > 1 and geoms[i] is not None and locations:
            near = _within(pool, geoms[i], locations)
            if near:
                pool, method = near, "geometry"
        if ordered_by_departement and method != "geometry":
            lo, hi = _bracket(i, anchor_pos, anchor_dep, span)
            inside = [
                c
                for c in pool
                if (lo is None or c.departement >= lo) and (hi is None or c.departement <= hi)
            ]
            if not inside and (lo is not None or hi is not None):
                lost[i] = (
                    f"candidates outside the departments of the neighbouring rows ({lo}-{hi})",
                    _show(cs),
                )
                continue
            if len(inside) < len(pool):
                method = "department order"
            pool = inside
        best = [c for c in pool if c.rank == pool[0].rank]
        if len(best) > 1:
            ties[i] = best
            continue
        if len(pool) > 1 and method == "unique":
            method = "preference"
        done[i] = (best[0], method)

    _share_listed_homonyms(rows, ties, done, same)
    seen: dict[str, int] = {}
    for i in sorted(done):
        code = done[i][0].code
        if code in seen:
            lost[i] = (
                f"{DUPLICATE} row {seen[code] + 1} ({rows['name'][seen[code]]})",
                _show(cands[i]),
            )
        else:
            seen[code] = i
    for i, best in sorted(ties.items()):
        if i in done:
            continue
        free = [c for c in best if c.code not in seen]
        if len(free) == 1:  # the other homonyms are designated by other rows
            done[i] = (free[0], "elimination")
            seen[free[0].code] = i
        elif free:
            lost[i] = (f"homonyms: {len(free)} candidates", _show(free))
        else:
            twin = seen[best[0].code]
            lost[i] = (f"{DUPLICATE} row {twin + 1} ({rows['name'][twin]})", _show(best))
    keep = [i for i in sorted(done) if i not in lost]

    matched = rows.iloc[keep].copy()
    matched["zone_code"] = pd.Series(
        [done[i][0].code for i in keep], index=matched.index, dtype=str
    )
    matched["departement"] = [done[i][0].departement for i in keep]
    matched["cog_name"] = [done[i][0].name for i in keep]
    matched["method"] = pd.Series([done[i][1] for i in keep], index=matched.index, dtype=str)
    order = sorted(lost)
    unmatched = rows.iloc[order].copy()
    unmatched["reason"] = pd.Series([lost[i][0] for i in order], index=unmatched.index, dtype=str)
    unmatched["candidates"] = pd.Series(
        [lost[i][1] for i in order], index=unmatched.index, dtype=str
    )
    drop = [c for c in ("geometry", "departement_hint") if c in rows]
    return matched.drop(columns=drop), unmatched.drop(columns=drop)


def _share_listed_homonyms(
    rows: pd.DataFrame, ties: dict[int, list[Candidate]], done: dict, same: Sequence[str]
) -> None:
    """Rows with the same name, the same tied candidates, as many rows as candidates."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, best in ties.items():
        key = (
            normalise_name(rows["name"][i]),
            tuple(c.code for c in best),
            *(rows[c][i] for c in same),
        )
        groups[key].append(i)
    for (_, codes, *_), members in groups.items():
        if len(members) == len(codes):
            for i, cand in zip(sorted(members), ties[members[0]]):
                done[i] = (cand, "homonyms all listed")


def _bracket(i: int, pos: list[int], dep: list[str], span: int) -> tuple[str | None, str | None]:
    """Lowest department of the ``span`` previous anchors and highest of the next ones.

    Departments compare as their codes sort (``29`` < ``2A`` < ``2B`` < ``30`` < ``971``), the
    order of the official lists.
    """
    k = bisect.bisect_left(pos, i)
    before = dep[max(0, k - span) : k]
    after_start = k + 1 if k < len(pos) and pos[k] == i else k
    after = dep[after_start : after_start + span]
    return (min(before) if before else None, max(after) if after else None)


def _within(
    pool: list[Candidate], geom, locations: dict[str, object], tol: float = 0.01
) -> list[Candidate]:
    area = shapely.buffer(geom, tol)
    return [c for c in pool if c.code in locations and shapely.contains(area, locations[c.code])]


def _show(cands: list[Candidate]) -> str:
    return "; ".join(f"{c.code} ({c.departement}) {c.name}" for c in cands[:6]) + (
        "; ..." if len(cands) > 6 else ""
    )
