"""Records of a district's text file, parsed by its layout into typed Arrow batches.

A file is read in line-aligned blocks (a few MB), so memory stays flat in file size and an
import can resume at a block boundary (byte offset, line number). Each block is decoded in the
declared encoding in one call; only a block that holds undecodable bytes is looked at line by
line, to reject those lines. Delimited blocks are split by pyarrow's CSV reader with quoting off
(stray double quotes stay in the value); fixed-width blocks are read as one column and sliced by
Arrow. Every field is then trimmed, normalized and coerced with Arrow compute, column by column.
A record that cannot be used becomes a reject (file, line, field, raw value, reason) and never a
silent loss or a default: a bad number is not zero, an undecodable byte is not dropped.
"""

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from countysync_assets.resources.district_config import Column, Layout

BLOCK_BYTES = 8 * 1024 * 1024
LINE = "_line"  # the physical line number (1-based) a row came from
REJECT_SCHEMA = pa.schema([("file", pa.string()), ("line", pa.int64()), ("field", pa.string()),
                           ("raw_value", pa.string()), ("reason", pa.string())])
ARROW_TYPES = {"text": pa.string(), "integer": pa.int64(), "decimal": pa.float64(),
               "date": pa.date32()}
PATTERNS = {"integer": r"^[+-]?[0-9]{1,18}$",
            "decimal": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)$"}
REASONS = {"integer": "not a whole number", "decimal": "not a number"}
RECORD = "record"  # the single column a fixed-width block is read into


class LayoutMismatch(ValueError):
    """The file's header is not the layout's column list."""


@dataclass
class Batch:
    """One block's usable rows and rejects, and where the next block starts."""

    rows: pa.Table  # the layout's columns, typed, plus LINE
    rejects: pa.Table  # REJECT_SCHEMA
    end_offset: int  # byte offset of the next block
    last_line: int  # the last physical line of this block
    lines: int  # records (lines) read in this block, rejected ones included


def schema_of(layout: Layout) -> pa.Schema:
    """The Arrow schema of a layout's parsed rows."""
    return pa.schema([(c.name, ARROW_TYPES[c.type]) for c in layout.columns] + [(LINE, pa.int64())])


def header_problem(found: list[str], layout: Layout) -> str | None:
    """What differs between a header and the layout's columns, or None if they agree."""
    expected = [c.name for c in layout.columns]
    if found == expected:
        return None
    lower = [f.lower() for f in found]
    missing = [n for n in expected if n.lower() not in lower]
    unexpected = [f for f in found if f.lower() not in {n.lower() for n in expected}]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if unexpected:
        parts.append(f"unexpected {unexpected}")
    if not parts:
        at = next(i for i, (f, n) in enumerate(zip(found, expected, strict=False)) if f != n)
        parts.append(f"column {at + 1} is {found[at]!r} where the layout has {expected[at]!r}")
    return "; ".join(parts)


def _blocks(path: Path, offset: int, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(start offset, bytes) of line-aligned blocks from ``offset`` to the end of the file."""
    with path.open("rb") as file:
        file.seek(offset)
        while block := file.read(block_bytes):
            if not block.endswith(b"\n"):
                block += file.readline()
            yield offset, block
            offset += len(block)


def _split_raw(line: bytes, layout: Layout) -> list[bytes]:
    """The raw fields of one line (rare path: a line being rejected)."""
    if layout.format == "delimited":
        return line.split(layout.delimiter.encode(layout.encoding))
    return [line[c.start - 1:c.start - 1 + c.width] for c in layout.columns]


def _decode(block: bytes, first_line: int, count: int, layout: Layout, file: str,
            rejects: list[dict]) -> tuple[str, np.ndarray]:
    """The block as text with LF line ends, and the physical line number of each line kept.

    The whole block is decoded at once. Only a block with undecodable bytes, or with a carriage
    return inside a line (the CSV reader would end the record there), is looked at line by
    line: those lines become rejects naming the field that holds the bytes.
    """
    try:
        text = block.decode(layout.encoding).replace("\r\n", "\n")
        if "\r" not in text:
            return text, np.arange(first_line, first_line + count)
    except UnicodeDecodeError:
        pass
    kept, numbers = [], []
    for number, line in enumerate(block.split(b"\n")[:count], start=first_line):
        line = line.removesuffix(b"\r")
        try:
            decoded = line.decode(layout.encoding)
            if "\r" not in decoded:
                kept.append(decoded + "\n")
                numbers.append(number)
                continue
            problem = "a carriage return inside the line"
        except UnicodeDecodeError as err:
            problem = (f"bytes not valid {layout.encoding}: {err.reason} "
                       f"(byte 0x{line[err.start]:02x})")
        fields = _split_raw(line, layout)
        at = next((i for i, f in enumerate(fields) if _unusable(f, layout.encoding)), None)
        field = layout.columns[at].name if at is not None and at < len(layout.columns) else None
        raw = fields[at] if at is not None else line
        rejects.append({"file": file, "line": number, "field": field,
                        "raw_value": raw.decode(layout.encoding, "backslashreplace"),
                        "reason": problem})
    return "".join(kept), np.asarray(numbers, dtype=np.int64)


def _unusable(raw: bytes, encoding: str) -> bool:
    """Whether a raw field holds undecodable bytes or a carriage return."""
    try:
        return "\r" in raw.decode(encoding)
    except UnicodeDecodeError:
        return True


def _split(text: str, numbers: np.ndarray, layout: Layout, file: str,
           rejects: list[dict]) -> tuple[pa.Table, np.ndarray]:
    """The block's fields as strings (one column per layout column, or RECORD for fixed width),
    with the line number of each row; lines with the wrong number of fields are rejects."""
    if layout.format == "delimited":
        names, delimiter = [c.name for c in layout.columns], layout.delimiter
    else:  # one column: a character no fixed-width text holds splits nothing
        names, delimiter = [RECORD], "\x1f"
    bad: list[int] = []

    def invalid(row: pv.InvalidRow) -> str:
        bad.append(row.number)
        rejects.append({"file": file, "line": int(numbers[row.number - 1]), "field": None,
                        "raw_value": row.text,
                        "reason": f"{row.actual_columns} fields where the layout has "
                                  f"{row.expected_columns}"})
        return "skip"

    table = pv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pv.ReadOptions(column_names=names, use_threads=False,
                                    block_size=max(len(text) * 2, 1 << 20)),
        parse_options=pv.ParseOptions(delimiter=delimiter, quote_char=False,
                                      newlines_in_values=False, ignore_empty_lines=False,
                                      invalid_row_handler=invalid),
        convert_options=pv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                          strings_can_be_null=False))
    kept = np.delete(numbers, np.asarray(bad, dtype=np.int64) - 1) if bad else numbers
    if layout.format == "fixed_width":
        table = _slice_fixed(table.column(RECORD), layout, kept, file, rejects)
        kept = table.column(LINE).to_numpy()
        table = table.drop_columns([LINE])
    return table, kept


def _slice_fixed(records: pa.ChunkedArray, layout: Layout, numbers: np.ndarray, file: str,
                 rejects: list[dict]) -> pa.Table:
    """Fixed-width records cut into the layout's columns; records too short are rejects."""
    width = layout.record_width
    short = pc.less(pc.utf8_length(records), width)
    if pc.any(short).as_py():
        mask = short.to_numpy(zero_copy_only=False)
        for number, record in zip(numbers[mask], pc.filter(records, short).to_pylist(),
                                  strict=True):
            rejects.append({"file": file, "line": int(number), "field": None, "raw_value": record,
                            "reason": f"record is {len(record)} characters; the layout needs "
                                      f"{width}"})
        records, numbers = pc.filter(records, pc.invert(short)), numbers[~mask]
    columns = {c.name: pc.utf8_slice_codeunits(records, c.start - 1, c.start - 1 + c.width)
               for c in layout.columns}
    return pa.table({**columns, LINE: pa.array(numbers, pa.int64())})


def _coerce(raw: pa.ChunkedArray,
            column: Column) -> tuple[pa.ChunkedArray, pa.ChunkedArray, list[tuple]]:
    """A column trimmed, normalized and typed; its empty-value mask; (bad mask, reason) pairs."""
    value = pc.utf8_trim_whitespace(raw)
    empty = pc.equal(pc.utf8_length(value), 0)
    value = pc.if_else(empty, pa.scalar(None, pa.string()), value)
    problems = []
    if column.upper:
        value = pc.utf8_upper(value)
    if column.zero_pad:
        digits = pc.match_substring_regex(value, rf"^[0-9]{{1,{column.zero_pad}}}$")
        problems.append((pc.invert(digits),
                         f"not up to {column.zero_pad} digits (to be zero-padded)"))
        value = pc.utf8_lpad(value, column.zero_pad, padding="0")
    if column.required:
        problems.append((empty, "required field is empty"))
    if column.type in PATTERNS:
        ok = pc.match_substring_regex(value, PATTERNS[column.type])
        problems.append((pc.invert(ok), REASONS[column.type]))
        value = pc.cast(pc.if_else(ok, value, pa.scalar(None, pa.string())),
                        ARROW_TYPES[column.type])
    elif column.type == "date":
        parsed = pc.strptime(value, format=column.date_format, unit="s", error_is_null=True)
        problems.append((pc.and_(pc.is_valid(value), pc.is_null(parsed)),
                         f"not a date in the form {column.date_format}"))
        value = pc.cast(parsed, pa.date32())
    # a null in a check means an empty value: that is a problem only for required fields
    return value, empty, [(pc.fill_null(mask, False), reason) for mask, reason in problems]


def _typed(fields: pa.Table, numbers: np.ndarray, layout: Layout, file: str,
           rejects: list[pa.Table]) -> pa.Table:
    """Typed rows of a block; every bad value becomes a reject and its row leaves the batch."""
    columns, bad_rows = {}, np.zeros(len(fields), dtype=bool)
    all_empty = np.ones(len(fields), dtype=bool)
    for column in layout.columns:
        raw = fields.column(column.name)
        columns[column.name], empty, problems = _coerce(raw, column)
        all_empty &= empty.to_numpy(zero_copy_only=False)
        for mask, reason in problems:
            if not pc.any(mask).as_py():
                continue
            hit = mask.to_numpy(zero_copy_only=False)
            bad_rows |= hit
            rejects.append(pa.table({
                "file": pa.array([file] * int(hit.sum()), pa.string()),
                "line": pa.array(numbers[hit], pa.int64()),
                "field": pa.array([column.name] * int(hit.sum()), pa.string()),
                "raw_value": pc.filter(raw, mask).combine_chunks(),
                "reason": pa.array([reason] * int(hit.sum()), pa.string())}))
    if all_empty.any():  # an empty line: one reject for the line, not one per required field
        rejects[:] = [pc.filter(t, pc.invert(pc.is_in(t["line"], pa.array(numbers[all_empty]))))
                      for t in rejects]
        rejects.append(pa.table({
            "file": pa.array([file] * int(all_empty.sum()), pa.string()),
            "line": pa.array(numbers[all_empty], pa.int64()),
            "field": pa.nulls(int(all_empty.sum()), pa.string()),
            "raw_value": pa.array([""] * int(all_empty.sum()), pa.string()),
            "reason": pa.array(["empty line"] * int(all_empty.sum()), pa.string())}))
        bad_rows |= all_empty
    table = pa.table({**columns, LINE: pa.array(numbers, pa.int64())})
    return table.filter(pa.array(~bad_rows)) if bad_rows.any() else table


def read_header(path: Path, layout: Layout) -> tuple[list[str], int]:
    """The header's column names and the byte offset where records start."""
    with path.open("rb") as file:
        line = file.readline()
    names = line.decode(layout.encoding, "backslashreplace").rstrip("\r\n")
    return [n.strip() for n in names.split(layout.delimiter)], len(line)


def read_records(path: Path, layout: Layout, *, file: str, offset: int = 0, line: int = 0,
                 block_bytes: int = BLOCK_BYTES) -> Iterator[Batch]:
    """The file's records in batches, from byte ``offset`` whose line is ``line + 1``.

    ``offset=0`` starts at the top (the header is checked against the layout first); a resumed
    import passes the ``end_offset`` and ``last_line`` of the last batch it committed.
    """
    if offset == 0 and layout.header:
        found, offset = read_header(path, layout)
        if problem := header_problem(found, layout):
            raise LayoutMismatch(f"{file}: the header does not match the layout ({problem}); "
                                 "update the layout in the district file to the release's "
                                 "columns.")
        line = 1
    for start, block in _blocks(path, offset, block_bytes):
        count = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)  # lines in the block
        row_rejects: list[dict] = []
        text, numbers = _decode(block, line + 1, count, layout, file, row_rejects)
        fields, kept = _split(text, numbers, layout, file, row_rejects)
        value_rejects: list[pa.Table] = []
        rows = _typed(fields, kept, layout, file, value_rejects)
        rejects = pa.concat_tables([pa.Table.from_pylist(row_rejects, REJECT_SCHEMA),
                                    *value_rejects]).sort_by([("line", "ascending")])
        line += count
        yield Batch(rows=rows.cast(schema_of(layout)), rejects=rejects,
                    end_offset=start + len(block), last_line=line, lines=count)
