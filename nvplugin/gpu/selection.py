"""The one device-selection grammar: NV_GPU, the REST `dev=` query and (later) CDI names.

    spec     := "" | "all" | "*" | item (sep item)*        sep := "+" | "," | whitespace
    item     := index | "GPU-" uuid-prefix | index ":" mig-index | "MIG-" uuid-prefix
              | "all" | "*"

An index is the NVML index; a UUID may be shortened to any prefix that names exactly one device.
Duplicates collapse and the result is in index order. The result holds records only, never text
from the input, so nothing a user typed can reach a docker argument. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nvplugin.core.errors import SelectionError
from nvplugin.core.text import quote_untrusted
from nvplugin.gpu.records import Gpu, MigDevice

ITEM_LIMIT = 64  # characters of an offending item quoted back
_SEPARATORS = re.compile(r"[+,\s]+")
_INDEX = re.compile(r"[0-9]{1,6}")
_MIG_INDEX = re.compile(r"([0-9]{1,6}):([0-9]{1,6})")


@dataclass(frozen=True, slots=True)
class Selection:
    """GPUs to expose (whole ones and the parents of chosen MIG devices) and the MIG devices."""

    gpus: tuple[Gpu, ...] = ()
    mig_devices: tuple[tuple[Gpu, MigDevice], ...] = ()


def quote_item(item: str, limit: int = ITEM_LIMIT) -> str:
    """An untrusted item for an error line: cut to `limit` characters, controls escaped."""
    return quote_untrusted(item, limit)


def _invalid(item: str) -> SelectionError:
    return SelectionError(f"invalid device: {quote_item(item)}")


def split(spec: str | None) -> list[str]:
    """The items of a spec; `None`, empty and blank give no items."""
    return [item for item in _SEPARATORS.split(spec or "") if item]


def _by_prefix(candidates: Sequence[tuple[str, object]], item: str) -> object:
    wanted = item.lower()
    exact = [value for uuid, value in candidates if uuid.lower() == wanted]
    if exact:
        return exact[0]
    matches = [value for uuid, value in candidates if uuid.lower().startswith(wanted)]
    if len(matches) != 1:  # unknown or ambiguous
        raise _invalid(item)
    return matches[0]


def means_all(spec: str | None) -> bool:
    """Whether `spec` asks for every GPU (absent, empty, `all` or `*` among its items) rather
    than naming GPUs."""
    items = split(spec)
    return not items or any(item.lower() in ("all", "*") for item in items)


def select(gpus: Sequence[Gpu], spec: str | None) -> Selection:
    """Parse `spec` against `gpus`; raises `SelectionError("invalid device: <item>")`."""
    items = split(spec)
    if means_all(spec):
        if any(item.lower() not in ("all", "*") for item in items):
            _resolve_all(gpus, items)  # still reject junk next to "all"
        return Selection(gpus=tuple(sorted(gpus, key=lambda g: g.index)))
    whole, migs = _resolve_all(gpus, items)
    parents = {gpu.index: gpu for gpu in whole} | {gpu.index: gpu for gpu, _ in migs}
    unique_migs = {(gpu.index, mig.index): (gpu, mig) for gpu, mig in migs}
    return Selection(gpus=tuple(parents[i] for i in sorted(parents)),
                     mig_devices=tuple(unique_migs[k] for k in sorted(unique_migs)))


def _resolve_all(gpus: Sequence[Gpu], items: list[str]
                 ) -> tuple[list[Gpu], list[tuple[Gpu, MigDevice]]]:
    by_index = {gpu.index: gpu for gpu in gpus}
    whole: list[Gpu] = []
    migs: list[tuple[Gpu, MigDevice]] = []
    for item in items:
        if item.lower() in ("all", "*"):
            continue
        if _INDEX.fullmatch(item):
            if int(item) not in by_index:
                raise _invalid(item)
            whole.append(by_index[int(item)])
        elif match := _MIG_INDEX.fullmatch(item):
            gpu = by_index.get(int(match.group(1)))
            mig = next((m for m in gpu.mig_devices if m.index == int(match.group(2))), None) \
                if gpu is not None and gpu.mig_mode else None
            if gpu is None or mig is None:
                raise _invalid(item)
            migs.append((gpu, mig))
        elif item[:4].upper() == "GPU-" and len(item) > 4:
            found = _by_prefix([(gpu.uuid, gpu) for gpu in gpus], item)
            whole.append(found)  # type: ignore[arg-type]
        elif item[:4].upper() == "MIG-" and len(item) > 4:
            candidates = [(mig.uuid, (gpu, mig)) for gpu in gpus if gpu.mig_mode
                          for mig in gpu.mig_devices]
            migs.append(_by_prefix(candidates, item))  # type: ignore[arg-type]
        else:
            raise _invalid(item)
    return whole, migs
