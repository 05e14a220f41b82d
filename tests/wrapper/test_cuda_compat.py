"""The CUDA gate: 1.0's label check and libnvidia-container's NVIDIA_REQUIRE_* expressions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvplugin.core.errors import CudaRequirementError, DockerError
from nvplugin.wrapper.cuda_compat import (
    HostFacts,
    Term,
    check_cuda_label,
    check_image,
    major_minor,
    parse_requirement,
    requirement_holds,
    version_key,
)

BRANDS = "unknown grid tesla nvidia quadro quadrortx nvidiartx vapps vpc vcs vws cloudgaming"
# The CUDA 13.0 image's value: `cuda>=13.0` OR 60 forward-compatibility branch alternatives.
CUDA13_REQUIRE = "cuda>=13.0 " + " ".join(
    f"brand={b},driver>={r},driver<{r + 1}"
    for r in (535, 550, 565, 570, 575)
    for b in BRANDS.split()
)
H200 = HostFacts(cuda="13.0", driver="580.159.04")


@pytest.mark.parametrize(
    ("driver", "label"),
    [("13.0", "13.0"), ("13.0", "12.9.1"), ("8.0", "8.0.61"), ("10.1", "9.2"), ("13.0", ""),
     ("13.0", None), (None, "99.0")],
    ids=["equal", "older", "patch-ignored", "numeric-not-text", "empty", "absent",
         "driver-unknown"],
)  # fmt: skip
def test_label_accepted(driver: str | None, label: str | None) -> None:
    check_cuda_label(driver, label)


@pytest.mark.parametrize(
    ("driver", "label", "message"),
    [
        ("7.0", "7.5", "unsupported CUDA version: driver 7.0 < image 7.5"),
        ("13.0", "13.1.0", "unsupported CUDA version: driver 13.0 < image 13.1.0"),
        ("9.2", "10.0", "unsupported CUDA version: driver 9.2 < image 10.0"),
    ],
    ids=["1.0-example", "minor", "major-numeric"],
)
def test_label_refused_with_exact_message(driver: str, label: str, message: str) -> None:
    with pytest.raises(CudaRequirementError) as info:
        check_cuda_label(driver, label)
    assert str(info.value) == message


def test_unparsable_label_is_an_error_naming_the_label() -> None:
    with pytest.raises(DockerError, match=r"com\.nvidia\.cuda\.version='latest'"):
        check_cuda_label("13.0", "latest")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8.0.61", (8, 0)), ("13", (13, 0)), (" 12.4", (12, 4)), ("x", None)],
)
def test_major_minor(text: str, expected: tuple[int, int] | None) -> None:
    assert major_minor(text) == expected


def test_version_key_ignores_trailing_zeros_and_leading_zero_digits() -> None:
    assert version_key("13.0") == version_key("13") == (13,)
    assert version_key("580.159.04") == (580, 159, 4)
    assert version_key("535.104") > version_key("535.54")


def test_cuda13_value_parses_into_61_alternatives() -> None:
    req = parse_requirement("NVIDIA_REQUIRE_CUDA", CUDA13_REQUIRE)
    assert len(req.alternatives) == 61
    assert req.alternatives[0] == (Term("cuda", ">=", "13.0"),)
    assert req.alternatives[1] == (
        Term("brand", "=", "unknown"), Term("driver", ">=", "535"), Term("driver", "<", "536")
    )


@pytest.mark.parametrize(
    ("facts", "ok"),
    [
        (H200, True),
        (HostFacts("12.2", "535.104.05"), True),  # forward-compat branch, brand unknown
        (HostFacts("12.2", "535.104.05", brand="Tesla"), True),  # brand is case-insensitive
        (HostFacts("12.2", "535.104.05", brand="geforce"), False),
        (HostFacts("12.4", "550.54.15", brand="nvidia"), True),
        (HostFacts("12.6", "560.35.03"), False),  # 560 is not a listed branch
        (HostFacts("12.8", "576.02"), False),  # driver<576 excludes 576
        (HostFacts(None, None), True),  # unknown facts satisfy every term
    ],
    ids=["native-13", "r535", "r535-tesla", "r535-geforce", "r550-nvidia", "r560", "r576",
         "unknown"],
)  # fmt: skip
def test_cuda13_alternatives(facts: HostFacts, ok: bool) -> None:
    req = parse_requirement("NVIDIA_REQUIRE_CUDA", CUDA13_REQUIRE)
    assert requirement_holds(req, facts) is ok


def test_comma_is_and_space_is_or() -> None:
    both = parse_requirement("NVIDIA_REQUIRE_X", "cuda>=12.0,driver>=600")
    either = parse_requirement("NVIDIA_REQUIRE_X", "cuda>=12.0 driver>=600")
    assert not requirement_holds(both, H200)
    assert requirement_holds(either, H200)


@pytest.mark.parametrize(
    "text", ["cuda~12", "gpu>=1", "brand>=tesla", "cuda>="], ids=["op", "rule", "brand-op", "empty"]
)
def test_bad_conditions_are_reported(text: str) -> None:
    with pytest.raises(DockerError, match="invalid NVIDIA_REQUIRE_CUDA condition"):
        parse_requirement("NVIDIA_REQUIRE_CUDA", text)


def test_refusal_names_the_condition_the_host_and_the_way_out() -> None:
    env = {"NVIDIA_REQUIRE_CUDA": CUDA13_REQUIRE}
    with pytest.raises(CudaRequirementError) as info:
        check_image({}, env, HostFacts("12.6", "560.35.03"))
    assert str(info.value) == (
        "unsatisfied condition: cuda>=13.0 (or one of 60 other alternatives) from "
        "NVIDIA_REQUIRE_CUDA (host: driver 560.35.03, cuda 12.6), please update your driver to "
        "a newer version, or use an earlier cuda container "
        "(set NVIDIA_DISABLE_REQUIRE=1 to skip this check)"
    )


def test_every_selected_gpu_must_satisfy_arch() -> None:
    env = {"NVIDIA_REQUIRE_ARCH": "arch>=8.0"}
    check_image({}, env, H200, [HostFacts(None, None, arch="9.0")])
    gpus = [HostFacts(None, None, arch="9.0"), HostFacts(None, None, arch="7.5")]
    with pytest.raises(CudaRequirementError, match=r"arch 7\.5"):
        check_image({}, env, H200, gpus)


def test_all_require_variables_are_anded_but_jetpack_is_ignored() -> None:
    env = {"NVIDIA_REQUIRE_CUDA": "cuda>=12.0", "NVIDIA_REQUIRE_DRIVER": "driver>=600",
           "NVIDIA_REQUIRE_JETPACK": "cuda>=99"}  # fmt: skip
    with pytest.raises(CudaRequirementError, match="NVIDIA_REQUIRE_DRIVER"):
        check_image({}, env, H200)
    del env["NVIDIA_REQUIRE_DRIVER"]
    check_image({}, env, H200)


def test_legacy_cuda_version_env_is_a_requirement() -> None:
    with pytest.raises(CudaRequirementError, match=r"cuda>=13\.1 from CUDA_VERSION"):
        check_image({}, {"CUDA_VERSION": "13.1.0"}, H200)
    check_image({}, {"CUDA_VERSION": "13.1.0", "NVIDIA_REQUIRE_CUDA": "cuda>=12.0"}, H200)


@pytest.mark.parametrize(("value", "skipped"), [("1", True), ("true", True), ("True", True),
                                                ("0", False), ("false", False), ("", False)])
def test_disable_require_skips_both_checks(value: str, skipped: bool) -> None:
    labels = {"com.nvidia.cuda.version": "14.0"}
    env = {"NVIDIA_DISABLE_REQUIRE": value, "NVIDIA_REQUIRE_CUDA": "cuda>=14.0"}
    if skipped:
        check_image(labels, env, H200)
    else:
        with pytest.raises(CudaRequirementError, match="unsupported CUDA version"):
            check_image(labels, env, H200)


_version = st.lists(st.integers(0, 999), min_size=1, max_size=3).map(
    lambda parts: ".".join(map(str, parts))
)


@given(_version, _version)
def test_property_label_gate_matches_tuple_order(driver: str, image: str) -> None:
    refused = major_minor(image) > major_minor(driver)  # type: ignore[operator]
    try:
        check_cuda_label(driver, image)
    except CudaRequirementError as e:
        assert refused
        assert str(e) == f"unsupported CUDA version: driver {driver} < image {image}"
    else:
        assert not refused
