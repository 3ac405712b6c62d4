"""Run records (contract schema v1): one input line -> a typed run, or a reject with a reason.

The parser is SQL run by DuckDB over a whole batch of staged lines at once, so
the loader runs at the speed of DuckDB's JSON functions rather than Python's:
fast_sql takes the compact lines the wrapper writes in one parse, slow_sql
names the problem of any other line. The field list below is the single
description of the format: the SQL, the column list of `runs` and the docs all
derive from it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1
MAX_LINE_BYTES = 1 << 20  # a record is ~600 bytes; a 1 MiB line is not a record


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # int | bool | str | sha1 | sha256 | timestamp
    required: bool = False


FIELDS: tuple[Field, ...] = (
    Field("schema_version", "int", required=True),
    Field("ts", "timestamp", required=True),
    Field("success", "bool", required=True),
    Field("exit_code", "int"),
    Field("git_repo", "str"),
    Field("git_branch", "str"),
    Field("git_sha", "sha1"),
    Field("override_sha", "sha256"),
    Field("vault_sha", "sha256"),
    Field("override_path", "str"),
    Field("role", "str"),
    Field("duration_s", "int"),
    # fields after duration_s are absent from records of older wrappers
    Field("git_dirty", "bool"),
    Field("vault_path", "str"),
    Field("host", "str"),
    Field("run_id", "str"),
    Field("started_at", "timestamp"),
    Field("attempt", "int"),
    Field("stage", "str"),
    Field("os", "str"),
    Field("wrapper_version", "str"),
)
KNOWN = tuple(f.name for f in FIELDS)
SEED_FIELDS = KNOWN[:12]

_JSON_TYPES = {
    "int": ("UBIGINT", "BIGINT"),
    "bool": ("BOOLEAN",),
    "str": ("VARCHAR",),
    "sha1": ("VARCHAR",),
    "sha256": ("VARCHAR",),
    "timestamp": ("VARCHAR",),
}
_KIND_WORDS = {
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "sha1": "a 40-hex commit sha",
    "sha256": "a 64-hex sha256",
    "timestamp": "an ISO 8601 timestamp",
}
# A timestamp: date, time to the second, up to 9 digits of fraction, then `Z` or an offset
# the world uses (-12:00 to +14:00, colon optional). ASCII digits only; the same pattern
# serves DuckDB's RE2 (runs) and Python's re (observations).
TIMESTAMP_RE = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|\+((0[0-9]|1[0-3]):?[0-5][0-9]|14:?00)|-((0[0-9]|1[01]):?[0-5][0-9]|12:?00))"
)
# A timestamp is possible when it is a real date and time of day (hour 00..23) between
# these instants: no puppet run predates the epoch, and years past 9999 do not render.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_FORMAT_RE = {
    "sha1": "[0-9a-fA-F]{40}",
    "sha256": "[0-9a-fA-F]{64}",
    "timestamp": TIMESTAMP_RE,
}
# integer fields: (min, max) accepted
_INT_RANGE = {
    "schema_version": (1, 1),
    "exit_code": (0, 255),
    "duration_s": (0, 2**31 - 1),
    "attempt": (1, 2**31 - 1),
}
_SQL_TYPE = {
    "int": "INTEGER",
    "bool": "BOOLEAN",
    "str": "VARCHAR",
    "sha1": "VARCHAR",
    "sha256": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
}


def _lit(text: str) -> str:
    """A SQL string literal for fixed text from this module (never input)."""
    return "'" + text.replace("'", "''") + "'"


def _rules(f: Field, t: str, v: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The checks of field `f` given SQL for its JSON type `t` and string value `v`.

    (accept, [(condition, reason), ...]): the first true condition names the problem;
    `accept` (optional fields: absent, null, '' or 'null') passes before any check.
    reason SQL and the fast path's yes/no SQL are both built from this one list.
    """
    ok_types = ", ".join(_lit(t) for t in _JSON_TYPES[f.kind])
    checks: list[tuple[str, str]] = []
    accept = None
    if f.required:
        checks.append((f"{t} IS NULL", _lit("missing required field " + f.name)))
        checks.append((f"{t} = 'NULL'", _lit(f.name + " is null")))
    else:
        accept = f"{t} IS NULL OR {t} = 'NULL' OR ({t} = 'VARCHAR' AND {v} IN ('', 'null'))"
    wrong_type = f"{t} NOT IN ({ok_types})"
    if f.kind == "int":
        # json_type says DOUBLE for an integer beyond 64 bits: its text is only digits, and
        # the range check below names it as out of range
        wrong_type += (
            f" AND NOT ({t} = 'DOUBLE' AND regexp_full_match(CAST({v} AS VARCHAR), '-?[0-9]+'))"
        )
    checks.append(
        (
            wrong_type,
            f"{_lit(f.name + ': expected ' + _KIND_WORDS[f.kind] + ', got ')} || lower({t})",
        )
    )
    if f.kind in _FORMAT_RE:
        checks.append(
            (
                f"NOT regexp_full_match({v}, {_lit(_FORMAT_RE[f.kind])})",
                f"{_lit(f.name + ': not ' + _KIND_WORDS[f.kind] + ': ')} || left({v}, 80)",
            )
        )
        if f.kind == "timestamp":
            # characters 12-13 are the hour (the format holds); DuckDB reads hour 24 as the
            # next day, Python refuses it: both paths and observations refuse it
            first, last = (_lit(x.isoformat(sep=" ")) for x in (EARLIEST, LATEST))
            checks.append(
                (
                    f"NOT coalesce(substr({v}, 12, 2) < '24' AND try_cast({v} AS TIMESTAMPTZ) "
                    f"BETWEEN CAST({first} AS TIMESTAMPTZ) AND CAST({last} AS TIMESTAMPTZ), false)",
                    f"{_lit(f.name + ': impossible date or time: ')} || left({v}, 80)",
                )
            )
    elif f.kind == "int":
        lo, hi = _INT_RANGE[f.name]
        what = "unsupported schema_version " if f.name == "schema_version" else f.name + ": "
        tail = "" if f.name == "schema_version" else f" || {_lit(f' (outside {lo}..{hi})')}"
        checks.append(
            (
                f"try_cast({v} AS BIGINT) IS NULL OR try_cast({v} AS BIGINT) NOT BETWEEN {lo} AND {hi}",
                f"{_lit(what)} || left({v}, 80){tail}",
            )
        )
    return accept, checks


def _reason_sql(f: Field, t: str, v: str) -> str:
    """SQL for the reason field `f` is invalid, or NULL."""
    accept, checks = _rules(f, t, v)
    head = f"WHEN {accept} THEN NULL " if accept else ""
    return "CASE " + head + " ".join(f"WHEN {c} THEN {m}" for c, m in checks) + " END"


def _valid_sql(f: Field, t: str, v: str) -> str:
    """SQL that is true exactly when _reason_sql(f, t, v) is NULL, without building text.

    The CASE of _reason_sql names the first check that holds; for a yes/no answer their
    order does not matter, so this is `accepted, or no check holds` (a NULL check does
    not hold, as in CASE), which DuckDB evaluates faster than a CASE per field."""
    accept, checks = _rules(f, t, v)
    none_hold = "NOT coalesce(" + " OR ".join(f"({c})" for c, _ in checks) + ", false)"
    return f"(({accept}) IS TRUE OR {none_hold})" if accept else f"({none_hold})"


def _value_sql(f: Field, v: str) -> str:
    """SQL for the typed value of field `f`; '' and 'null' strings read as NULL."""
    if f.kind in ("sha1", "sha256", "timestamp", "str") and not f.required:
        v = f"nullif(nullif({v}, ''), 'null')"
    if f.kind == "bool":
        return f"({v} = 'true')"
    if f.kind in ("sha1", "sha256"):
        return f"lower({v})"
    if f.kind == "int":
        return f"TRY_CAST({v} AS INTEGER)"
    if f.kind == "timestamp":
        return f"TRY_CAST({v} AS TIMESTAMPTZ)"
    return v


def _out_name(f: Field) -> str:
    return f.name if f.name != "host" else "reported_host"


def _run_id_sql() -> str:
    """run_id as written, or derived from the host and the parsed seed fields, so the compact
    history line and the pretty-printed state file of one run give the same identity."""
    canonical = (
        "to_json([host, "
        + ", ".join(
            "strftime(ts, '%Y-%m-%dT%H:%M:%S.%f')" if n == "ts" else f"CAST({n} AS VARCHAR)"
            for n in SEED_FIELDS
        )
        + "])"
    )
    return f"coalesce(run_id, 'derived-' || left(sha256({canonical}), 32))"


# from_json's type for each kind, all others VARCHAR; the same names are json_type's for
# the members the canonical serialisation writes (an integer may also be UBIGINT there:
# the rules accept both alike)
_FROM_JSON_TYPE = {"int": "BIGINT", "bool": "BOOLEAN"}


def _serialised(f: Field) -> str:
    """SQL pieces (for concat) writing typed member `r.<name>` back as the wrapper does."""
    x = f"r.{f.name}"
    if f.kind == "int":
        return f"coalesce(CAST({x} AS VARCHAR), 'null')"
    if f.kind == "bool":
        return f"CASE WHEN {x} THEN 'true' WHEN NOT {x} THEN 'false' ELSE 'null' END"
    # NULL pieces are skipped by concat: a string is "value", a null is null
    return (
        f"CASE WHEN {x} IS NULL THEN 'null' ELSE '\"' END, {x}, "
        f"CASE WHEN {x} IS NOT NULL THEN '\"' END"
    )


def _members(fields: tuple[Field, ...]) -> str:
    return ", ',', ".join(
        f"{_lit(chr(34) + f.name + chr(34) + ':')}, {_serialised(f)}" for f in fields
    )


def _fast_valid_sql(f: Field) -> str:
    """The slow path's rules for typed member `r.<name>` of a canonical line.

    In a line equal to its canonical serialisation, a non-null member's JSON type is the
    one its kind serialises to and its text is the typed value, so _valid_sql with that
    type as a constant is the slow path's verdict (DuckDB folds the constant checks)."""
    x = f"r.{f.name}"
    when_null = "false" if f.required else "true"  # `"name":null`
    if f.kind in ("sha1", "sha256") and not f.required:
        # regexp_full_match(x, '[0-9a-fA-F]{n}') costs 2x this: unhex takes exactly the
        # hex digits (tests/test_load_perf_invariants.py tries every other character)
        n = 40 if f.kind == "sha1" else 64
        rules = f"({x} IN ('', 'null') OR (strlen({x}) = {n} AND TRY(unhex({x})) IS NOT NULL))"
    else:
        rules = _valid_sql(f, _lit(_FROM_JSON_TYPE.get(f.kind, "VARCHAR")), x)
    return f"(CASE WHEN {x} IS NULL THEN {when_null} ELSE {rules} END)"


def _fast_value_sql(f: Field) -> str:
    x = f"r.{f.name}"
    if f.kind == "bool":
        return x
    if f.kind == "int":
        return f"TRY_CAST({x} AS INTEGER)"
    return _value_sql(f, x)


def fast_sql(staged: str, tolerant: bool = True) -> str:
    """The fast path: a SELECT over `staged` joined to `staged_files` (for the host) that
    accepts the lines the wrapper writes and marks every other line `ok = false` for
    slow_sql to judge. Rows carry file_idx, not the file's source and path: the loader
    joins those in when it inserts (a path per row costs time to store and read back).

    Each line is parsed once, by from_json into typed members, and written back the way
    the wrapper writes a record (contract key order, no whitespace, strings in quotes,
    `null` for nulls; the 12-field form of older wrappers too). A line is taken only when
    it equals that serialisation byte for byte and has no backslash or NUL byte, so
    the line *is* the canonical text of the typed values: every member has the JSON type
    its kind serialises to (a string in quotes, an integer as its digits, a boolean as
    true or false), there is no unknown, repeated or reordered key and no whitespace,
    and slow_sql reads exactly these values from it. The field rules are then slow_sql's
    own (_fast_valid_sql). tests/test_load_perf_invariants.py checks the two paths agree
    on generated lines. (So the fast path never takes a line slow_sql rejects as a whole:
    a repeated key, a trailing comma, NaN or Infinity are never in the canonical text.)
    """
    struct = (
        "{"
        + ", ".join(f'"{f.name}": "{_FROM_JSON_TYPE.get(f.kind, "VARCHAR")}"' for f in FIELDS)
        + "}"
    )
    seed, later = FIELDS[: len(SEED_FIELDS)], FIELDS[len(SEED_FIELDS) :]
    checks = " AND ".join(_fast_valid_sql(f) for f in FIELDS)
    values = ",\n        ".join(f"{_fast_value_sql(f)} AS {_out_name(f)}" for f in FIELDS)
    return f"""
WITH parsed AS (
    SELECT s.file_idx, s.byte_offset, s.line, s.pre_reason,
        CASE WHEN s.pre_reason IS NULL AND starts_with(s.line, '{{')
            AND suffix(s.line, '}}' || chr(10)) AND strlen(s.line) <= {MAX_LINE_BYTES + 1}
            AND NOT contains(s.line, '\\') AND NOT contains(s.line, chr(0))
            THEN {"TRY(" if tolerant else "("}from_json(s.line, {_lit(struct)})) END AS r
    FROM {staged} s
), seeded AS (
    SELECT *, concat('{{', {_members(seed)}) AS head FROM parsed
), judged AS (
    SELECT file_idx, byte_offset, line, pre_reason, r,
        coalesce(line = concat(head, CASE WHEN strlen(line) = strlen(head) + 2
                THEN '}}' || chr(10) ELSE concat(',', {_members(later)}, '}}', chr(10)) END)
            AND {checks}, false) AS ok
    FROM seeded
), valued AS (
    SELECT j.file_idx, sf.host, j.byte_offset, j.ok,
        CASE WHEN NOT j.ok THEN j.line END AS line,
        CASE WHEN NOT j.ok THEN j.pre_reason END AS pre_reason,
        CAST(NULL AS VARCHAR) AS reason, CAST(NULL AS JSON) AS extra,
        {values}
    FROM judged j JOIN staged_files sf USING (file_idx)
)
SELECT *, hash(host, run_id) AS h FROM (
    SELECT * REPLACE (CASE WHEN ok THEN {_run_id_sql()} END AS run_id) FROM valued)
"""


# DuckDB's json_valid is lenient where JSON is not: it takes trailing commas and NaN,
# Infinity, inf and nan in any case. Outside strings such text is only these extensions
# (JSON's own words are true, false and null), so a line is strict JSON when, with its
# strings blanked, it has none of _LENIENT. Only lines with _LENIENT anywhere are
# blanked; load.py then has Python name the error and its column (refine_json_reason).
_LENIENT = r"(?i)nan|inf|,\s*[}\]]"
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'


def slow_sql(lines: str) -> str:
    """The slow path: a SELECT over `lines` (file_idx, host, source, source_path, byte_offset,
    line, pre_reason): every line with its typed columns and a reason (NULL when the line is
    a valid run), names the exact problem of any line, keeps unknown fields in `extra`.

    A line is judged as a whole first (encoding, length, strict JSON, an object, no key
    twice: which value would count is not clear), then field by field."""
    paths = "[" + ", ".join(_lit("$." + n) for n in KNOWN) + "]"
    known_list = "[" + ", ".join(_lit(n) for n in KNOWN) + "]"
    reasons = ",\n        ".join(
        _reason_sql(f, f"types[{i + 1}]", f"vals[{i + 1}]") for i, f in enumerate(FIELDS)
    )
    values = ",\n        ".join(
        f"{_value_sql(f, f'vals[{i + 1}]')} AS {_out_name(f)}" for i, f in enumerate(FIELDS)
    )
    return f"""
WITH checked AS (
    SELECT s.file_idx, s.host, s.source, s.source_path, s.byte_offset, s.line,
        CASE
            WHEN s.pre_reason IS NOT NULL THEN s.pre_reason
            WHEN s.source = 'history' AND s.line IN ('', chr(10)) THEN 'empty line'
            WHEN strlen(s.line) - suffix(s.line, chr(10))::INTEGER > {MAX_LINE_BYTES}
                THEN 'line too long: ' || (strlen(s.line) - suffix(s.line, chr(10))::INTEGER) || ' bytes (limit {MAX_LINE_BYTES})'
            WHEN s.source = 'history' AND starts_with(s.line, chr(65279)) THEN 'byte order mark at start of line'
            WHEN s.source = 'history' AND suffix(s.line, chr(13) || chr(10)) THEN 'CRLF line ending (history lines end with LF only)'
            WHEN contains(s.line, chr(0)) THEN 'NUL byte in line'
            WHEN NOT json_valid(s.line) THEN 'invalid JSON'
            WHEN CASE WHEN regexp_matches(s.line, {_lit(_LENIENT)})
                THEN regexp_matches(regexp_replace(s.line, {_lit(_JSON_STRING)}, '""', 'g'), {_lit(_LENIENT)})
                ELSE false END THEN 'invalid JSON'
            WHEN json_type(s.line) <> 'OBJECT' THEN 'not a JSON object: ' || lower(json_type(s.line))
        END AS pre
    FROM {lines} s
), typed AS (
    SELECT c.*,
        CASE WHEN pre IS NULL THEN json_type(line, {paths}) END AS types,
        CASE WHEN pre IS NULL THEN json_extract_string(line, {paths}) END AS vals,
        CASE WHEN pre IS NULL THEN json_keys(line) END AS keys
    FROM checked c
), keyed AS (
    -- the keys in order with their positions, sorted: equal neighbours are a repeated key
    -- (sorting keeps this n log n for a line of many keys)
    SELECT t.*, list_sort(list_transform(keys, lambda k, i: {{'k': k, 'i': i}})) AS sorted_keys,
        list_filter(keys, lambda k: NOT list_contains({known_list}, k)) AS unknown_keys
    FROM typed t
), judged AS (
    SELECT k.* EXCLUDE (sorted_keys),
        coalesce(pre,
        -- the key whose second occurrence comes first
        'repeated key: ' || left(keys[list_min(list_transform(range(2, len(sorted_keys) + 1),
            lambda j: CASE WHEN sorted_keys[j].k = sorted_keys[j - 1].k THEN sorted_keys[j].i END))], 80),
        nullif(concat_ws('; ',
        {reasons}
        ), '')) AS reason
    FROM keyed k
), valued AS (
    SELECT j.file_idx, j.host, j.source, j.source_path, j.byte_offset, j.line, j.reason,
        -- one parse of the line into (key, JSON text) pairs, the unknown ones kept in order
        -- (a json_extract per key parsed the line once per key: quadratic in its length)
        CASE WHEN j.reason IS NULL AND len(unknown_keys) > 0 THEN
            to_json(map_from_entries(list_filter(
                map_entries(from_json(line, '"MAP(VARCHAR, JSON)"')),
                lambda e: NOT list_contains({known_list}, e.key))))
        END AS extra,
        {values}
    FROM judged j
)
SELECT * REPLACE (CASE WHEN reason IS NULL THEN {_run_id_sql()} END AS run_id)
FROM valued
"""


RUN_COLUMNS: tuple[str, ...] = (
    "host", "run_id", "ts", "started_at", "duration_s", "success", "exit_code", "role",
    "git_repo", "git_branch", "git_sha", "git_dirty", "override_sha", "override_path",
    "vault_sha", "vault_path", "stage", "attempt", "os", "reported_host", "wrapper_version",
    "schema_version", "source", "source_path", "byte_offset", "extra",
)  # fmt: skip


class _NotJson(ValueError):
    """NaN or Infinity: Python's decoder takes them by default, JSON has no such value."""


def _refuse_constant(name: str) -> Any:
    raise _NotJson(name)


_QUOTE_OR_CONSTANT = re.compile(r'"|-?(?:NaN|Infinity)')


def _constant_at(text: str) -> int | None:
    """Where the first NaN or Infinity outside a string starts, in one pass over `text`.

    Only called after json.loads met one, so every string before it is closed; a string
    is skipped from its opening quote to the first quote after an even run of
    backslashes."""
    i = 0
    while (m := _QUOTE_OR_CONSTANT.search(text, i)) is not None:
        if m.group() != '"':
            return m.start()
        j = m.end()
        while True:
            j = text.find('"', j)
            if j < 0:
                return None
            k = j
            while text[k - 1] == "\\":
                k -= 1
            if (j - k) % 2 == 0:
                break
            j += 1
        i = j + 1
    return None


def _at(text: str, pos: int) -> str:
    """` at column C` (with the line when `text` has several, as a state file does)."""
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return f" at line {line} column {column}" if line > 1 else f" at column {column}"


def _unpaired_surrogate(value: Any) -> str | None:
    """The first unpaired UTF-16 surrogate (from a `\\udXXX` escape) in any string of a
    decoded JSON value, as its escape; None when every string is valid Unicode."""
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if not x.isascii():
                for c in x:
                    if "\ud800" <= c <= "\udfff":
                        return f"\\u{ord(c):04x}"
        elif isinstance(x, dict):
            stack.extend(x)
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def loads_strict(raw: bytes, object_pairs_hook: Any = None) -> tuple[Any, str | None]:
    """(value, None) when `raw` is one strict JSON text (RFC 8259: UTF-8, no NaN or
    Infinity, no trailing comma, strings of valid Unicode), else (None, reason) with the
    position of the error. Never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, object_pairs_hook=object_pairs_hook
        )
    except json.JSONDecodeError as exc:
        # some of Python's messages end in "at" ("Unterminated string starting at")
        return None, f"invalid JSON: {exc.msg.removesuffix(' at')}{_at(exc.doc, exc.pos)}"
    except _NotJson as exc:
        found = _constant_at(text)
        where = _at(text, found) if found is not None else ""
        return None, f"invalid JSON: {exc} is not a JSON number{where}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply to read"
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        return None, f"invalid JSON: {str(exc)[:200]}"
    bad = _unpaired_surrogate(value)
    if bad is not None:
        return None, f"invalid JSON: unpaired surrogate {bad} in a string"
    return value, None


def refine_json_reason(raw: bytes) -> str:
    """Python's decoder names the position of a JSON syntax error; DuckDB's check only says no."""
    try:
        reason = loads_strict(raw)[1]
    except Exception:  # never fail the load over naming a reject
        reason = None
    return reason or "invalid JSON"


def parse_timestamp(text: str) -> datetime | None:
    """A TIMESTAMP_RE text as a UTC datetime, or None when it is an impossible date or
    time (no such day or hour, or outside EARLIEST..LATEST): the rule slow_sql applies."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return when if EARLIEST <= when <= LATEST else None


# the value is stripped in Python: `:\s*(.*?)\s*$` takes quadratic time on long lines
_YAML_KEY = re.compile(r"(\s*)([A-Za-z_]+):(.*)")
_LAST_SECOND = int(LATEST.replace(microsecond=0).timestamp())  # 9999-12-31T23:59:59Z


def _count(value: str) -> int:
    """A count as written, or 1 (something failed) when it is not plain digits."""
    try:
        return int(value) if value.isascii() and value.isdigit() else 1
    except ValueError:  # more digits than Python converts
        return 1


def legacy_summary_record(text: str) -> dict[str, object] | None:
    """Puppet's last_run_summary.yaml -> a schema-v1 record, or None when it has no run time.

    Only `time.last_run`, `events.failure`, `resources.failed` and `version.config`
    are read; a tiny reader for that flat two-level shape avoids a YAML dependency.
    A run time that is not a number of seconds, or is an impossible time (NaN, infinite,
    before 1970, past 9999) counts as no run time.
    """
    section, values = "", {}
    for line in text.splitlines():
        m = _YAML_KEY.fullmatch(line)
        if not m:
            continue
        indent, key, value = m.group(1), m.group(2), m.group(3).strip()
        if not indent:
            section = key
        else:
            values[f"{section}.{key}"] = value.strip("'\"")
    try:
        seconds = float(values["time.last_run"])
    except (KeyError, ValueError):
        return None
    if not 0 <= seconds <= _LAST_SECOND:  # also false for NaN
        return None
    last_run = int(seconds)
    failures = sum(_count(values.get(k, "0")) for k in ("events.failure", "resources.failed"))
    config = values.get("version.config") or None
    is_sha = bool(config and re.fullmatch(r"[0-9a-fA-F]{40}", config))
    return {
        "schema_version": SCHEMA_VERSION,
        "ts": datetime.fromtimestamp(last_run, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "success": failures == 0,
        "exit_code": None,
        "git_sha": config.lower() if is_sha and config else None,
        "stage": "puppet",
        "legacy_config_version": config,
    }
