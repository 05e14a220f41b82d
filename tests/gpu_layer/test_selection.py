"""The selection grammar (pure): examples, hostile input and hypothesis properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nvplugin.core.errors import SelectionError
from nvplugin.gpu.records import Gpu, MigDevice
from nvplugin.gpu.selection import ITEM_LIMIT, quote_item, select, split

UUIDS = ["GPU-836c0c09-1111-2222-3333-444444444444", "GPU-b78a60a0-1111-2222-3333-444444444444",
         "GPU-b78a61ff-1111-2222-3333-444444444444", "GPU-00aa0000-1111-2222-3333-444444444444"]


def make_gpu(index: int, uuid: str, **extra: object) -> Gpu:
    none = {f.name: None for f in dataclasses.fields(Gpu) if f.name not in (
        "index", "uuid", "minor", "path", "host_path", "bus_id", "topology", "mig_devices")}
    none.update(extra)
    return Gpu(index=index, uuid=uuid, minor=index + 3, path=f"/dev/nvidia{index + 3}",
               host_path=f"/dev/nvidia{index + 3}", bus_id=f"00000000:{index:02x}:00.0",
               **none)  # type: ignore[arg-type]


GPUS = tuple(make_gpu(i, u) for i, u in enumerate(UUIDS))
MIG = make_gpu(4, "GPU-cccccccc-1111-2222-3333-444444444444", mig_mode=True, mig_devices=(
    MigDevice(0, "MIG-11111111-aaaa-bbbb-cccc-dddddddddddd"),
    MigDevice(2, "MIG-11112222-aaaa-bbbb-cccc-dddddddddddd")))
ALL = (*GPUS, MIG)


def select_gpus(gpus: tuple[Gpu, ...], spec: str | None) -> tuple[Gpu, ...]:
    return select(gpus, spec).gpus


def indices(spec: str | None) -> list[int]:
    return [g.index for g in select_gpus(GPUS, spec)]


@pytest.mark.parametrize(("spec", "expected"), [
    (None, [0, 1, 2, 3]), ("", [0, 1, 2, 3]), ("  ", [0, 1, 2, 3]), ("*", [0, 1, 2, 3]),
    ("all", [0, 1, 2, 3]), ("ALL", [0, 1, 2, 3]), ("0+all", [0, 1, 2, 3]),
    ("0", [0]), ("2", [2]), ("0+1", [0, 1]), ("0,1", [0, 1]), ("0 1", [0, 1]),
    ("3,0 1+2", [0, 1, 2, 3]), ("1,1,1", [1]), ("+0,", [0]), ("2 0", [0, 2]),
    ("GPU-836c0c09", [0]), ("GPU-836C0C09", [0]), ("GPU-b78a60a", [1]), ("GPU-b78a61", [2]),
    (UUIDS[3], [3]), ("GPU-836c0c09+0", [0]), ("GPU-0+1", [1, 3]),
], ids=repr)
def test_grammar(spec: str | None, expected: list[int]):
    assert indices(spec) == expected


@pytest.mark.parametrize("item", [
    "4", "-1", "1.0", "0x1", "GPU-", "GPU-b78a6", "GPU-zzz",
    "GPU-836c0c09-1111-2222-3333-4444444444445",
    "gpu", "nvidia0", "/dev/nvidia0", "--privileged", ";", "$(reboot)", "`id`", "0;rm", "0:0",
    "MIG-1111", "MIG-", "1000000", "9" * 5000, "0\x00", "\u202e0", "0/../1",
], ids=repr)
def test_invalid_items_are_rejected_with_1_0_wording(item: str):
    with pytest.raises(SelectionError) as err:
        select_gpus(GPUS, f"0 {item}")
    assert str(err.value).startswith("invalid device: ")
    assert len(str(err.value)) <= len("invalid device: ") + 4 * ITEM_LIMIT + 3


def test_ambiguous_prefix_is_invalid():
    with pytest.raises(SelectionError, match=r"^invalid device: GPU-b78a6$"):
        select_gpus(GPUS, "GPU-b78a6")


def test_newlines_separate_items_and_controls_are_escaped():
    with pytest.raises(SelectionError, match=r"^invalid device: --privileged$"):
        select_gpus(GPUS, "0\n--privileged")
    with pytest.raises(SelectionError) as err:
        select_gpus(GPUS, "0\x1b[31m")
    assert str(err.value) == "invalid device: 0\\x1b[31m"


def test_long_items_are_cut():
    with pytest.raises(SelectionError) as err:
        select_gpus(GPUS, "x" * 10_000)
    assert str(err.value) == "invalid device: " + "x" * ITEM_LIMIT + "..."


def test_mig_items():
    picked = select(ALL, "4:2 MIG-11111111 4:2")
    assert picked.gpus == (MIG,)
    assert [m.index for _, m in picked.mig_devices] == [0, 2]
    for bad in ("4:1", "0:0", "MIG-1111", "9:0"):  # empty slot, MIG off, ambiguous, no GPU
        with pytest.raises(SelectionError, match=f"^invalid device: {bad}$"):
            select(ALL, bad)


def test_quote_item_escapes_backslashes_and_separators():
    assert quote_item("a\\b\u2028c\u200bd") == "a\\\\b\\u2028c\\u200bd"


item_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)


@settings(max_examples=400)
@given(st.lists(st.sampled_from(["0", "1", "2", "3", *UUIDS, "GPU-836c", "GPU-b78a61"]),
                min_size=1, max_size=8),
       st.lists(st.sampled_from(["+", ",", " ", "\t", "++", " , "]), min_size=8, max_size=8))
def test_valid_specs_give_unique_gpus_in_index_order(items: list[str], seps: list[str]):
    spec = "".join(item + sep for item, sep in zip(items, seps, strict=False))
    result = select_gpus(GPUS, spec)
    assert [g.index for g in result] == sorted({g.index for g in result})
    assert all(g in GPUS for g in result)
    assert set(result) == {g for item in items for g in select_gpus(GPUS, item)}


@settings(max_examples=500)
@given(item_text)
def test_any_input_gives_gpu_records_or_a_selection_error(spec: str):
    try:
        result = select(ALL, spec)
    except SelectionError as err:
        message = str(err)
        assert message.startswith("invalid device: ")
        assert "\n" not in message and "\x00" not in message
        return
    # the result is made of our records only: nothing typed can come back as text
    assert all(g in ALL for g in result.gpus)
    assert all(m in g.mig_devices for g, m in result.mig_devices)
    assert all(item.lower() in ("all", "*") or item.isascii() for item in split(spec))
