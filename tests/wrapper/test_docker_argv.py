"""The docker argv parser: pflag's rules, current Docker's value options, 1.0's parser bugs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvplugin.wrapper.cmdline import (
    RUN_BOOL_LONG,
    RUN_SHORT_NAMES,
    RUN_VALUE_LONG,
    Option,
    insert_before_image,
    split,
)

# (argv, command, image, the command arguments after the image)
CASES = [
    ("run -e A=B -v x:y --rm -it img cmd -arg", "run", "img", ["cmd", "-arg"]),
    ("run --name=x img", "run", "img", []),
    ("run --name x img sh", "run", "img", ["sh"]),
    ("run -dit img", "run", "img", []),
    ("run -itv x:y img", "run", "img", []),
    ("run -p8080:80 img", "run", "img", []),
    ("run -p 8080:80 -P img", "run", "img", []),
    ("run -d=true img", "run", "img", []),
    ("run --rm=false img", "run", "img", []),
    ("run -- img --rm", "run", "img", ["--rm"]),
    ("run --rm -- img", "run", "img", []),
    ("create --rm --user 1000:1000 img", "create", "img", []),
    ("create --init --use-api-socket -q img", "create", "img", []),
    ("container run -it img", "run", "img", []),
    ("container create --name c img", "create", "img", []),
    ("-H unix:///var/run/docker.sock run img", "run", "img", []),
    ("--host=tcp://h:2375 -D run img", "run", "img", []),
    ("--context ctx --config /c --log-level debug run img", "run", "img", []),
    ("-c ctx -l debug --tls --tlsverify --tlscacert ca run img", "run", "img", []),
    ("--tlscert c --tlskey k run img", "run", "img", []),
    ("run -c 512 -h host -l k=v -m 1g -u 0 -w /tmp -a stdout img", "run", "img", []),
    ("run --entrypoint -x img", "run", "img", []),
    ("run --env-file f --gpus all --mount type=tmpfs,dst=/x img", "run", "img", []),
    ("run --some-new-bool img", "run", "img", []),
    ("run --some-new-value=v img", "run", "img", []),
    ("run --net none --net-alias a --dns-opt o img", "run", "img", []),
    ("run - img", "run", "-", ["img"]),
]


@pytest.mark.parametrize(
    ("line", "command", "image", "rest"), CASES, ids=[c[0] for c in CASES]
)
def test_finds_command_and_image(line: str, command: str, image: str, rest: list[str]) -> None:
    inv = split(line.split())
    assert inv.command == command
    assert inv.image == image
    assert inv.image_index is not None
    assert list(inv.args[inv.image_index + 1 :]) == rest


def test_empty_argument_is_the_image_and_not_rewritable() -> None:
    # 1.0 crashed on ''; docker itself reports it, so the wrapper passes it through.
    inv = split(["run", "--rm", "", "true"])
    assert inv.image == ""
    assert not inv.rewritable


def test_empty_value_of_a_value_option_is_consumed() -> None:
    inv = split(["run", "--name", "", "img"])
    assert inv.image == "img"
    assert inv.run_values("name") == [""]


@pytest.mark.parametrize(
    "line",
    ["run", "run --rm", "run --", "run --name", "run --help img", "container", "container ls"],
)
def test_no_image(line: str) -> None:
    inv = split(line.split())
    assert not inv.rewritable


@pytest.mark.parametrize(
    ("line", "command"),
    [("ps -a", "ps"), ("-H x inspect run", "inspect"), ("version", "version"),
     ("container ls", "container"), ("image inspect run", "image"), ("", None),
     ("--version", None)],
    ids=["ps", "inspect-run", "version", "container-ls", "image", "nothing", "--version"],
)  # fmt: skip
def test_other_commands_are_not_rewritten(line: str, command: str | None) -> None:
    inv = split(line.split())
    assert inv.command == command
    assert not inv.rewritable


def test_options_are_named_by_long_name() -> None:
    inv = split(["run", "-e", "A=1", "--env", "B=2", "-eC=3", "-ite", "D", "-v", "x:y", "img"])
    assert inv.run_values("env") == ["A=1", "B=2", "C=3", "D"]
    assert Option("interactive", None) in inv.run_options
    assert Option("tty", None) in inv.run_options
    assert inv.run_values("volume") == ["x:y"]


def test_global_values_and_flags() -> None:
    inv = split(["-H", "a", "-H", "b", "--tls=false", "--tlsverify", "-D", "run", "img"])
    assert inv.global_values("host") == ["a", "b"]
    assert not inv.global_flag("tls")
    assert inv.global_flag("tlsverify")
    assert inv.global_flag("debug")


def test_dash_dash_as_an_option_value_is_not_the_end_of_options() -> None:
    inv = split(["run", "--name", "--", "img"])
    assert inv.image == "img"
    assert insert_before_image(inv, ["X"]) == ["run", "--name", "--", "X", "img"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("run --rm img cmd", "run --rm X Y img cmd"),
        ("run -- img cmd", "run X Y -- img cmd"),
        ("-D container run -it img", "-D container run -it X Y img"),
    ],
)
def test_insert_before_image(line: str, expected: str) -> None:
    assert insert_before_image(split(line.split()), ["X", "Y"]) == expected.split()


def test_insert_without_image_is_refused() -> None:
    with pytest.raises(ValueError, match="no image"):
        insert_before_image(split(["ps"]), ["X"])


def test_tables_are_disjoint_and_cover_the_short_letters() -> None:
    assert not RUN_VALUE_LONG & RUN_BOOL_LONG
    assert set(RUN_SHORT_NAMES.values()) <= RUN_VALUE_LONG | RUN_BOOL_LONG


# Property: for any run options built from the tables, the parser finds the image we put after
# them, and inserting before it keeps every original argument in order.
_value_long = st.sampled_from(sorted(RUN_VALUE_LONG))
_bool_long = st.sampled_from(sorted(RUN_BOOL_LONG - {"help"}))
_value = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
_option = st.one_of(
    st.tuples(_value_long.map(lambda n: f"--{n}"), _value).map(list),
    _value_long.flatmap(lambda n: _value.map(lambda v: [f"--{n}={v}"])),
    _bool_long.map(lambda n: [f"--{n}"]),
    st.text("diPqt", min_size=1, max_size=4).map(lambda c: [f"-{c}"]),
    st.tuples(st.text("dit", max_size=2), st.sampled_from("ehlpuvw"), _value).map(
        lambda t: [f"-{t[0]}{t[1]}", t[2]]
    ),
)
_image = st.from_regex(r"[a-z0-9][a-z0-9._/:-]{0,20}", fullmatch=True)
_tail = st.lists(_value, max_size=3)


@given(st.lists(_option, max_size=6), _image, _tail, st.booleans())
def test_property_image_found_after_any_options(
    options: list[list[str]], image: str, tail: list[str], dashdash: bool
) -> None:
    flat = [a for group in options for a in group]
    argv = ["run", *flat, *(["--"] if dashdash else []), image, *tail]
    inv = split(argv)
    assert inv.image == image
    assert inv.image_index == len(argv) - len(tail) - 1
    inserted = insert_before_image(inv, ["--device=/dev/nvidia0"])
    assert [a for a in inserted if a != "--device=/dev/nvidia0"] == argv
    assert split(inserted).image == image


@given(st.lists(st.text(max_size=6), max_size=8))
def test_property_never_crashes(argv: list[str]) -> None:
    inv = split(argv)
    if inv.image_index is not None:
        assert 0 <= inv.image_index < len(argv)
