"""Dataset loading the labs share: a Hub dataset or local JSON lines, column checks, sub-sampling.

Imported by lab code only (it needs ``datasets``); the host tooling never imports it.
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict, load_dataset

from labkit.errors import LabError


def require_columns(dsd: DatasetDict, columns: tuple[str, ...] | list[str], hint: str = "") -> None:
    """Raise :class:`LabError` naming the split, the missing columns and the columns it has."""
    for split, ds in dsd.items():
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise LabError(
                f"{split} split lacks column(s) {', '.join(missing)}; it has: "
                f"{', '.join(ds.column_names)}{'. ' + hint if hint else ''}"
            )


def load_hub_or_json(cfg: dict, repo_root: Path, splits: tuple[str, ...], columns: tuple[str, ...]) -> DatasetDict:
    """``splits`` of ``cfg["hub_dataset"]`` (``source: hub``) or of local JSON-lines files (``source: json``).

    ``cfg`` is a profile's ``data`` section: ``source``, ``hub_dataset``, ``hub_revision`` and
    ``files`` (split name -> path relative to ``repo_root``). The Hub honours ``HF_ENDPOINT`` and ``HF_TOKEN``.

    Raises:
        LabError: unknown source, a missing file, or a split without ``columns`` (lists what is there).
    """
    if cfg["source"] == "hub":
        dsd = load_dataset(cfg["hub_dataset"], revision=cfg["hub_revision"])
    elif cfg["source"] == "json":
        files = {split: repo_root / path for split, path in cfg["files"].items()}
        for path in files.values():
            if not path.is_file():
                raise LabError(f"data file {path} not found")
        dsd = load_dataset("json", data_files={k: str(v) for k, v in files.items()})
    else:
        raise LabError(f"data.source {cfg['source']!r} is not one of hub, json")
    require_columns(dsd, columns)
    return DatasetDict({split: dsd[split] for split in splits})


def subsample(dsd: DatasetDict, sizes: dict[str, int | None], seed: int) -> DatasetDict:
    """The course's demo subsets: ``shuffle(seed=seed).select(range(n))`` per split (None keeps all)."""
    for split, n in sizes.items():
        if n is not None and n < len(dsd[split]):
            dsd[split] = dsd[split].shuffle(seed=seed).select(range(n))
    return dsd
