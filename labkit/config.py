"""Labs, profiles and command-line overrides.

A lab is a folder ``labs/<name>/`` with a ``lab.yaml`` (metadata) and one YAML file per profile in
``profiles/``. Profiles of one lab hold the same keys and differ only in values (model id or local
path, dataset source, sizes, precision, device, hyperparameters), so every profile runs the same
code path. Any value can be overridden as ``key=value`` (``SET="learning_rate=0"`` in make); a key
is a dotted path (``training.learning_rate``) or a leaf name that is unique in the profile.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labkit.errors import LabError

REPO_ROOT = Path(__file__).resolve().parent.parent
LABS_DIR = REPO_ROOT / "labs"


#: The two kinds of profile every lab (and every lab variant) has: ``smoke`` (a tiny model of the same
#: architecture, bundled data, CPU, offline) and ``full`` (the course's model and data on an accelerator).
KINDS = ("smoke", "full")


def profile_name(kind: str, variant: str | None = None) -> str:
    """The file name (``profiles/<name>.yaml``, ``expected/<name>.yaml``, ``outputs/<lab>/<name>/``) of
    profile ``kind`` in ``variant``: ``smoke``, or ``course-smoke`` for the course variant's."""
    return f"{variant}-{kind}" if variant else kind


@dataclass(frozen=True)
class Lab:
    """Metadata of one lab, read from ``labs/<name>/lab.yaml``.

    Attributes:
        name: folder name, also the make target suffix (``make lab-<name>``).
        dir: absolute path of the lab folder.
        title, chapter, summary: what the course chapter teaches.
        image: shared base image the lab's Dockerfile builds on (``cuda`` or ``ascend``).
        entrypoint: script run for every profile, relative to the lab folder.
        variants: ``lab.yaml`` ``variants``: a variant name (``course``, ``npu``) maps to its own
            ``dockerfile`` and ``requirements`` lock (the quantization lab's ``course`` variant pins the
            course's older libraries) and optionally the shared ``image`` it builds on (``npu``:
            ``ascend``). Every variant has both :data:`KINDS` of profile (``course-smoke``, ``course-full``).
        gpu_memory_gib: accelerator memory the full profile needs, in GiB (``invoke doctor``).
        broken_override: ``key=value`` overrides (shell-quoted) that break the pipeline (learning rate 0,
            say); the test suite runs them and expects verification to fail.
        broken_fails: the checks that run must fail (the break is caught where it should be).
        meta: the whole ``lab.yaml``; ``launches_itself: true`` says the lab starts its ranks itself
            (deepspeed-zero), else :mod:`labkit.lab.runner` starts ``nproc_per_node`` of them with torchrun.
    """

    name: str
    dir: Path
    title: str
    chapter: int
    summary: str
    image: str
    entrypoint: str
    variants: dict
    gpu_memory_gib: float
    broken_override: str
    broken_fails: tuple[str, ...]
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def profiles(self) -> tuple[str, ...]:
        """Every profile name: ``smoke``, ``full``, then each variant's (``course-smoke``, ...)."""
        return tuple(self._profile_table())

    def _profile_table(self) -> dict[str, tuple[str, str | None]]:
        return {profile_name(k, v): (k, v) for v in (None, *self.variants) for k in KINDS}

    def profile_of(self, name: str) -> tuple[str, str | None]:
        """``(kind, variant)`` of profile file ``name`` (``course-smoke`` -> ``("smoke", "course")``),
        looked up in the lab's own table of names.

        Raises:
            LabError: the lab has no such profile (lists them).
        """
        table = self._profile_table()
        if name not in table:
            raise LabError(f"lab {self.name!r} has no profile {name!r}. Profiles: {', '.join(table)}")
        return table[name]

    def profile_path(self, profile: str) -> Path:
        return self.dir / "profiles" / f"{profile}.yaml"

    def expected_path(self, profile: str) -> Path:
        return self.dir / "expected" / f"{profile}.yaml"

    def shared_image(self, variant: str | None = None, flavor: str | None = None) -> str:
        """The shared image (``images/<name>``) under ``variant``'s image: its ``image``, else the lab's;
        ``flavor`` (``cuda12``) stands in for the CUDA image (the CUDA 12 flavor, for older drivers)."""
        base = self.variants[variant].get("image", self.image) if variant else self.image
        return flavor if flavor and base == "cuda" else base

    def base_image(self, variant: str | None = None) -> str:
        """The shared image under ``variant``'s image: its ``image``, else the lab's (``cuda``, ``ascend``)."""
        return self.shared_image(variant)

    def image_name(self, variant: str | None = None, flavor: str | None = None) -> str:
        """``<lab>`` or ``<lab>-<variant>``: the image (and native environment) of ``variant``; ``-cuda12``
        added on the CUDA 12 flavor."""
        name = f"{self.name}-{variant}" if variant else self.name
        shared = self.shared_image(variant, flavor)
        return name if shared == self.base_image(variant) else f"{name}-{shared}"

    def dockerfile(self, variant: str | None = None) -> Path:
        """The Dockerfile of ``variant``'s image (``lab.yaml`` ``variants.<variant>.dockerfile``, else
        ``Dockerfile``): the lab's own if it keeps one, else the shared one of that name in ``labs/``
        (``labs/Dockerfile``, ``labs/Dockerfile.npu``: ``ARG LAB``)."""
        name = self.variants[variant]["dockerfile"] if variant else "Dockerfile"
        own = self.dir / name
        return own if own.is_file() else self.dir.parent / name

    def requirements(self, variant: str | None = None, flavor: str | None = None) -> Path:
        """The hash-locked requirements of ``variant``'s image (the lab's own for ``None``); on a CUDA
        image flavor, ``requirements-<flavor>.txt`` (the same ``requirements.in`` locked on that image;
        it may not exist: a lab whose pins need the CUDA image's torch has none)."""
        if variant:
            return self.dir / self.variants[variant]["requirements"]
        shared = self.shared_image(None, flavor)
        return self.dir / ("requirements.txt" if shared == self.image else f"requirements-{shared}.txt")


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; raise :class:`LabError` naming the file if it is missing or malformed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LabError(f"{path} is not valid YAML: {exc}") from exc


def list_labs() -> list[Lab]:
    """All labs (folders of ``labs/`` holding a ``lab.yaml``), sorted by name."""
    return [_load_lab(p.parent) for p in sorted(LABS_DIR.glob("*/lab.yaml"))]


def get_lab(name: str) -> Lab:
    """The lab called ``name``; :class:`LabError` listing the known labs if there is none."""
    if (LABS_DIR / name / "lab.yaml").is_file():
        return _load_lab(LABS_DIR / name)
    known = ", ".join(lab.name for lab in list_labs()) or "(none)"
    raise LabError(f"unknown lab {name!r}. Known labs: {known}")


def _load_lab(lab_dir: Path) -> Lab:
    meta = read_yaml(lab_dir / "lab.yaml")
    required = (
        "title",
        "chapter",
        "summary",
        "image",
        "entrypoint",
        "gpu_memory_gib",
        "broken_override",
        "broken_fails",
    )
    missing = [key for key in required if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise LabError(f"{lab_dir / 'lab.yaml'} lacks {', '.join(missing)}")
    return Lab(
        name=lab_dir.name,
        dir=lab_dir.resolve(),
        title=meta["title"],
        chapter=int(meta["chapter"]),
        summary=meta["summary"],
        image=meta["image"],
        entrypoint=meta["entrypoint"],
        variants=dict(meta.get("variants") or {}),
        gpu_memory_gib=float(meta["gpu_memory_gib"]),
        broken_override=meta["broken_override"],
        broken_fails=tuple(meta["broken_fails"]),
        meta=meta,
    )


def load_profile(lab: Lab, profile: str, overrides: list[str] | None = None) -> tuple[dict, dict]:
    """Read a profile and apply ``key=value`` overrides.

    Returns:
        ``(config, applied)``: the nested profile dict with overrides applied, and the overrides
        as ``{dotted_key: value}`` (recorded in the run manifest).

    Raises:
        LabError: unknown profile (lists the lab's profiles), malformed profile file, malformed
            override, unknown or ambiguous key (lists the valid keys), or a value whose type does
            not match the profile's.
    """
    lab.profile_of(profile)  # LabError naming the lab's profiles
    config = read_yaml(lab.profile_path(profile))
    if not isinstance(config, dict):
        raise LabError(f"{lab.profile_path(profile)} must hold a mapping of settings")
    return apply_overrides(config, overrides or [], source=str(lab.profile_path(profile)))


def leaf_keys(config: dict, prefix: str = "") -> list[str]:
    """Dotted paths of every non-mapping value in ``config``, e.g. ``training.learning_rate``."""
    keys = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        keys.extend(leaf_keys(value, path + ".") if isinstance(value, dict) else [path])
    return keys


def parse_value(text: str) -> Any:
    """YAML scalar parsing, plus floats YAML 1.1 leaves as strings (``1e-3``)."""
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: dict, overrides: list[str], source: str = "profile") -> tuple[dict, dict]:
    """Apply ``key=value`` strings to a copy of ``config``; see :func:`load_profile`."""
    config = copy.deepcopy(config)
    keys = leaf_keys(config)
    applied: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise LabError(
                f"override {item!r} is not of the form key=value (e.g. learning_rate=0); a value with spaces "
                "needs quotes: SET=\"data.files.train='/data/my reviews/train.csv'\""
            )
        matches = [k for k in keys if k == key] or [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(matches) != 1:
            why = "is ambiguous, it matches " + ", ".join(matches) if matches else "is not a setting"
            names = sorted({k.rsplit(".", 1)[-1] for k in keys} | set(keys))
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close and not matches else ""
            raise LabError(f"override key {key!r} {why} in {source}.{hint} Valid keys: {', '.join(keys)}")
        path = matches[0]
        *parents, leaf = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        try:
            value = parse_value(raw)
        except yaml.YAMLError as exc:
            where = f" ({exc.problem})" if getattr(exc, "problem", None) else ""
            raise LabError(
                f"override {path}={raw!r} is not a value{where}: write a list as [a, b] or a,b and quote text "
                "with spaces"
            ) from None
        node[leaf] = _coerce(path, node[leaf], value)
        applied[path] = node[leaf]
    return config, applied


def _coerce(path: str, old: Any, new: Any) -> Any:
    if old is None or new is None or type(old) is type(new):
        return new
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, list) and not isinstance(new, list):  # a,b is the list [a, b]; a alone is [a]
        return [parse_value(part.strip()) for part in new.split(",")] if isinstance(new, str) else [new]
    raise LabError(f"override {path}={new!r}: expected a {type(old).__name__} like the profile's {old!r}")
