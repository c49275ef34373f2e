"""An appraisal district's bulk files, as a YAML file validated by pydantic.

The district file lists each release file (a URL template with ``{year}``), the archive
members to load and, per member, its layout: delimited or fixed-width, encoding, header,
columns with types, key and required columns, normalization. Layouts are data, not code, so a
new district is a new YAML file. A mistake in the file is reported with its line:
``hcad.yaml line 42 (layouts.real_acct.columns[3].type): Input should be 'text', ...``.
"""

import codecs
import itertools
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ARCHIVE_KINDS = ("zip", "tar", "tar.gz", "gz")
TABLES = ("property_records", "owners", "building_details", "extra_features")
NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
PACKAGED_DISTRICTS = Path(__file__).resolve().parent.parent / "districts"  # hcad.yaml, ...


class DistrictConfigError(ValueError):
    """The district file cannot be used; the message names the file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Strict):
    """One field of a record. ``start`` (1-based) and ``width`` are for fixed-width layouts."""

    name: str = Field(pattern=NAME)
    type: Literal["text", "integer", "decimal", "date"] = "text"
    required: bool = False
    zero_pad: int | None = Field(default=None, ge=1, description="left-pad digits to this width")
    upper: bool = False
    date_format: str = "%Y-%m-%d"
    start: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: object) -> object:
        """A bare name is a text column: ``- mail_city``."""
        return {"name": value} if isinstance(value, str) else value


class Layout(_Strict):
    """How one member file is read: the record shape and what makes a record usable."""

    format: Literal["delimited", "fixed_width"]
    encoding: str = "cp1252"
    delimiter: str = "\t"
    header: bool = True
    key: list[str] = Field(min_length=1)
    full_release: bool = Field(default=True, description=(
        "the file lists every record of the year: keys missing from it are marked removed"))
    columns: list[Column] = Field(min_length=1)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError as err:
            raise ValueError(f"unknown encoding {value!r}") from err

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n":
            raise ValueError("the delimiter is one character, not a line end")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Layout":
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"column names repeat: {repeated}")
        if missing := [k for k in self.key if k not in names]:
            raise ValueError(f"key columns {missing} are not among the columns")
        if self.format == "fixed_width":
            if unplaced := [c.name for c in self.columns if c.start is None or c.width is None]:
                raise ValueError(f"fixed-width columns need start and width: {unplaced}")
            spans = sorted((c.start, c.start + c.width, c.name) for c in self.columns)
            for (_, end, first), (start, _, second) in itertools.pairwise(spans):
                if start < end:
                    raise ValueError(f"columns {first} and {second} overlap")
        return self

    @property
    def record_width(self) -> int:
        """A fixed-width record's length in characters (the end of its last column)."""
        return max(c.start + c.width - 1 for c in self.columns)


class Member(_Strict):
    """A file inside an archive and the table its records load into."""

    path: str
    table: Literal[TABLES]  # type: ignore[valid-type]
    layout: str


class ReleaseFile(_Strict):
    """One download of a release, e.g. ``Real_acct_owner.zip``."""

    name: str = Field(pattern=NAME)
    url: str
    archive: Literal[ARCHIVE_KINDS] | None = None  # type: ignore[valid-type]
    sha256: dict[int, str] = Field(default_factory=dict, description="expected digest per year")
    extract: list[str] = Field(default_factory=list, description="more member patterns to keep")
    members: list[Member] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _year_template(cls, value: str) -> str:
        if "{year}" not in value:
            raise ValueError("the URL template must contain {year}")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digests(cls, value: dict[int, str]) -> dict[int, str]:
        if bad := [y for y, d in value.items() if not re.fullmatch(r"[0-9a-fA-F]{64}", d)]:
            raise ValueError(f"not a SHA-256 hex digest for years {bad}")
        return {y: d.lower() for y, d in value.items()}

    @property
    def kind(self) -> str:
        """The archive kind, from ``archive`` or the URL's ending."""
        if self.archive:
            return self.archive
        path = self.url.split("?")[0].lower()
        for kind, endings in (("tar.gz", (".tar.gz", ".tgz")), ("zip", (".zip",)),
                              ("tar", (".tar",)), ("gz", (".gz",))):
            if path.endswith(endings):
                return kind
        raise DistrictConfigError(f"{self.name}: cannot tell the archive kind of {self.url}; "
                                  f"set archive: to one of {', '.join(ARCHIVE_KINDS)}")

    def url_for(self, year: int) -> str:
        return self.url.format(year=year)

    @property
    def patterns(self) -> list[str]:
        """Member patterns to extract: the loaded members and any ``extract`` extras."""
        return [m.path for m in self.members] + self.extract


class District(_Strict):
    """An appraisal district: its release files and the layouts of their members."""

    district: str = Field(pattern=NAME)
    name: str
    first_year: int = Field(ge=1990, le=2100)
    files: list[ReleaseFile] = Field(min_length=1)
    layouts: dict[str, Layout]

    @model_validator(mode="after")
    def _members_resolve(self) -> "District":
        tables: dict[str, str] = {}
        for file in self.files:
            file.kind  # noqa: B018 - fails here, at load, for a URL with no known ending
            for member in file.members:
                if member.layout not in self.layouts:
                    raise ValueError(f"{file.name}/{member.path}: no layout named {member.layout!r}"
                                     f" (layouts: {', '.join(self.layouts)})")
                if member.table in tables:
                    raise ValueError(f"table {member.table} is loaded from both "
                                     f"{tables[member.table]} and {member.path}")
                tables[member.table] = member.path
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("file names repeat")
        return self

    def members(self) -> list[tuple[ReleaseFile, Member, Layout]]:
        """Every loaded member with its file and layout, in the order the file lists them."""
        return [(f, m, self.layouts[m.layout]) for f in self.files for m in f.members]


def _line_of(node: yaml.Node, loc: tuple) -> int:
    """The 1-based line of the YAML node at pydantic location ``loc`` (its nearest parent)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def load_district(path: str | Path) -> District:
    """The district file at ``path``, validated; errors name the file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as err:
        raise DistrictConfigError(f"cannot read district file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DistrictConfigError(f"{path.name}{where}: not valid YAML "
                                  f"({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise DistrictConfigError(f"{path.name}: expected a mapping with district, files and "
                                  "layouts")
    try:
        return District.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            loc = error["loc"]
            field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc)
            field = field.replace(".[", "[") or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{path.name} line {_line_of(node, loc)} ({field}): {message}")
        raise DistrictConfigError("; ".join(problems)) from None
