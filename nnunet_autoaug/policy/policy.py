"""A policy: a frozen, JSON-round-trippable value that names the search space it belongs to."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.policy.space import PolicyError

if TYPE_CHECKING:
    from nnunet_autoaug.policy.space import SearchSpace

FORMAT = "nnunet_autoaug.policy"
VERSION = 1
POLICY_FILE = "autoaug_policy.json"  # what every policy trainer writes into its results folder
_TOP_LEVEL = {"format", "version", "space", "values", "readable", "comment"}


@dataclass(frozen=True)
class Policy:
    """``values`` are (variable, number) pairs in the space's variable order; build policies with ``create``."""

    space: str
    values: tuple[tuple[str, float], ...]

    @classmethod
    def create(cls, space: str, values: dict[str, object], source: str = "policy") -> "Policy":
        return cls(space, get_space(space, source).check_values(values, source))

    @property
    def search_space(self) -> "SearchSpace":
        return get_space(self.space)

    def __getitem__(self, variable: str) -> float:
        return dict(self.values)[variable]

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def to_json_dict(self) -> dict:
        # "readable" is for people looking at the file; it is recomputed, never read back.
        return {"format": FORMAT, "version": VERSION, "space": self.space, "values": self.as_dict(),
                "readable": self.search_space.readable(self)}

    def dumps(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        write_text_atomically(path, self.dumps() + "\n")

    @classmethod
    def from_json_dict(cls, d: object, source: str = "policy", expected_space: str | None = None) -> "Policy":
        check_file_header(d, source, "policy", FORMAT, VERSION, _TOP_LEVEL, ("space", "values"),
                          version_fix=" Upgrade nnunet_autoaug or re-export the policy.")
        if not isinstance(d["values"], dict):
            raise PolicyError(f"{source}: field 'values' must be an object of variable -> number.")
        if expected_space is not None and d["space"] != expected_space:
            raise PolicyError(f"{source}: field 'space' is {d['space']!r}, but this trainer needs a policy of space "
                              f"{expected_space!r}.")
        return cls.create(d["space"], d["values"], f"{source}: field 'values'")

    @classmethod
    def loads(cls, text: str, source: str = "policy", expected_space: str | None = None) -> "Policy":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError(f"{source}: not valid JSON ({e}).") from None
        return cls.from_json_dict(d, source, expected_space)

    @classmethod
    def load(cls, path: str | Path, expected_space: str | None = None) -> "Policy":
        """A policy JSON file, or a trainer's results folder (e.g. ``.../fold_0``) holding one."""
        path = file_in_folder(path, (POLICY_FILE,), "policy", PolicyError,
                              f"e.g. the {POLICY_FILE} of a finished search, or the results folder (fold_X) it is in")
        return cls.loads(path.read_text(), str(path), expected_space)


def file_in_folder(path: str | Path, names: tuple[str, ...], kind: str, error: type[ValueError], example: str
                   ) -> Path:
    """``path`` if it is a file, else the first of ``names`` inside the folder ``path`` (users point at results
    folders); ``error`` says which is missing and what to pass instead (``example``)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in names if (path / name).is_file()]
        if found:
            return found[0]
        raise error(f"folder {str(path)!r} holds no {' or '.join(names)}. Pass the path of a {kind} JSON file, "
                    f"{example}.")
    if not path.is_file():
        raise error(f"{kind} file {str(path)!r} does not exist. Pass the path of a {kind} JSON file, {example}.")
    return path


def check_file_header(d: object, source: str, kind: str, file_format: str, version: int, allowed: set[str],
                      required: tuple[str, ...], error: type[PolicyError] = PolicyError, version_fix: str = "") -> None:
    """The checks every nnunet_autoaug JSON file shares: an object, only known fields, its format and version
    (both optional in the file), and the required fields; ``error`` names the first problem."""
    if not isinstance(d, dict):
        raise error(f"{source}: a {kind} file must hold a JSON object, got {type(d).__name__}.")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise error(f"{source}: unknown top-level field(s) {unknown}; allowed: {sorted(allowed)}.")
    if d.get("format", file_format) != file_format:
        raise error(f"{source}: field 'format' is {d.get('format')!r}, expected {file_format!r}.")
    if d.get("version", version) != version:
        raise error(f"{source}: field 'version' is {d.get('version')!r}; this nnunet_autoaug reads version "
                    f"{version}.{version_fix}")
    for key in required:
        if key not in d:
            raise error(f"{source}: missing field '{key}'.")


def get_space(name: str, source: str = "policy") -> "SearchSpace":
    from nnunet_autoaug.policy.registry import SPACES  # late: the spaces themselves build Policy objects

    if name not in SPACES:
        raise PolicyError(f"{source}: unknown space {name!r}; known spaces: {sorted(SPACES)}.")
    return SPACES[name]
