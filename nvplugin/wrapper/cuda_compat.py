"""Pure checks of an image's CUDA needs against what the host's driver offers.

Two mechanisms, both checked by the wrapper before it starts a GPU container:

1. 1.0's label `com.nvidia.cuda.version` (e.g. `8.0.61`): only the first two numbers count, and the
   image is refused iff (label major, minor) > (driver CUDA major, minor), with 1.0's exact text
   `unsupported CUDA version: driver <X> < image <Y>`.
2. libnvidia-container's `NVIDIA_REQUIRE_*` variables of the image's (or user's) environment:
   an expression is a space-separated list of alternatives (OR), each a comma-separated list of
   terms (AND), each `<rule><op><value>` with rule cuda/driver/arch/brand. All variables are ANDed
   (`NVIDIA_REQUIRE_JETPACK` excluded). Evaluated once per selected GPU (arch and brand are per
   GPU), or once with arch/brand unknown when no GPU is selected. A fact that is unknown counts as
   satisfied, as in libnvidia-container — which makes the CUDA images' 60 `brand=…,driver>=R,
   driver<R+1` forward-compatibility alternatives depend on the driver branch only when the brand
   is unknown. Legacy images (`CUDA_VERSION` without `NVIDIA_REQUIRE_CUDA`) require
   `cuda>=<major.minor>`. A truthy `NVIDIA_DISABLE_REQUIRE` skips both mechanisms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nvplugin.core.errors import CudaRequirementError, DockerError

CUDA_LABEL = "com.nvidia.cuda.version"
DISABLE_REQUIRE = "NVIDIA_DISABLE_REQUIRE"
_RULES = frozenset({"cuda", "driver", "arch", "brand"})
_TERM = re.compile(r"^([a-z]+)(>=|<=|!=|=|<|>)([^<>=!].*)$")
_LEADING_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?")
# Go's strconv.ParseBool, which the NVIDIA toolkit uses for NVIDIA_DISABLE_REQUIRE.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})


@dataclass(frozen=True, slots=True)
class Term:
    """One term of an image's NVIDIA_REQUIRE_CUDA: a rule, an operator, a value."""

    rule: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.rule}{self.op}{self.value}"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One NVIDIA_REQUIRE_* variable: alternatives (OR) of conjunctions (AND) of terms."""

    variable: str
    text: str
    alternatives: tuple[tuple[Term, ...], ...]


@dataclass(frozen=True, slots=True)
class HostFacts:
    """What the requirements are checked against; None means unknown (and satisfies any term)."""

    cuda: str | None
    driver: str | None
    arch: str | None = None
    brand: str | None = None


def major_minor(text: str) -> tuple[int, int] | None:
    """The first two numbers of a version (`8.0.61` → (8, 0), `9` → (9, 0)); None if none."""
    m = _LEADING_VERSION.match(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def check_cuda_label(driver_cuda: str | None, label: str | None) -> None:
    """Refuse an image whose `com.nvidia.cuda.version` is newer than the driver's CUDA (1.0)."""
    if not label or not label.strip():
        return
    image = major_minor(label)
    if image is None:
        raise DockerError(f"invalid image label {CUDA_LABEL}={label!r}: expected MAJOR.MINOR")
    if driver_cuda is None:
        return  # unknown driver CUDA: 1.0 said `driver 0.0`, a false refusal (#99, #190)
    driver = major_minor(driver_cuda)
    if driver is not None and image > driver:
        raise CudaRequirementError(
            f"unsupported CUDA version: driver {driver_cuda} < image {label.strip()}"
        )


def version_key(text: str) -> tuple[int, ...]:
    """Numeric components, trailing zeros dropped (`13.0` == `13`); `580.159.04` → (580, 159, 4)."""
    parts = [int(p) if p.isdigit() else -1 for p in text.strip().split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def parse_requirement(variable: str, text: str) -> Requirement:
    alternatives: list[tuple[Term, ...]] = []
    for alternative in text.split():
        terms: list[Term] = []
        for raw in alternative.split(","):
            if not raw:
                continue
            m = _TERM.match(raw)
            if m is None or m.group(1) not in _RULES:
                raise DockerError(
                    f"invalid {variable} condition {raw!r}: expected cuda|driver|arch|brand "
                    f"followed by one of = != < <= > >= and a value"
                )
            rule, op, value = m.groups()
            if rule == "brand" and op not in ("=", "!="):
                raise DockerError(f"invalid {variable} condition {raw!r}: brand takes = or !=")
            terms.append(Term(rule, op, value))
        if terms:
            alternatives.append(tuple(terms))
    return Requirement(variable, text, tuple(alternatives))


def _compare(left: tuple[int, ...], op: str, right: tuple[int, ...]) -> bool:
    return {
        "=": left == right, "!=": left != right, "<": left < right,
        "<=": left <= right, ">": left > right, ">=": left >= right,
    }[op]  # fmt: skip


def term_holds(term: Term, facts: HostFacts) -> bool:
    fact = getattr(facts, term.rule)
    if fact is None:
        return True
    if term.rule == "brand":
        same = fact.lower() == term.value.lower()
        return same if term.op == "=" else not same
    return _compare(version_key(fact), term.op, version_key(term.value))


def requirement_holds(req: Requirement, facts: HostFacts) -> bool:
    if not req.alternatives:
        return True
    return any(all(term_holds(t, facts) for t in alt) for alt in req.alternatives)


def requirements_from_env(env: Mapping[str, str]) -> list[Requirement]:
    """Every NVIDIA_REQUIRE_* of the container's environment (legacy CUDA_VERSION synthesised)."""
    reqs = [
        parse_requirement(name, value)
        for name, value in sorted(env.items())
        if name.startswith("NVIDIA_REQUIRE_") and name != "NVIDIA_REQUIRE_JETPACK"
    ]
    legacy = env.get("CUDA_VERSION")
    if "NVIDIA_REQUIRE_CUDA" not in env and legacy:
        mm = major_minor(legacy)
        if mm is not None:
            reqs.append(parse_requirement("CUDA_VERSION", f"cuda>={mm[0]}.{mm[1]}"))
    return reqs


def requirements_disabled(env: Mapping[str, str]) -> bool:
    return env.get(DISABLE_REQUIRE, "") in _TRUE


def check_requirements(
    env: Mapping[str, str], host: HostFacts, gpus: Sequence[HostFacts] = ()
) -> None:
    """Raise CudaRequirementError for the first NVIDIA_REQUIRE_* a selected GPU fails."""
    per_gpu = [HostFacts(host.cuda, host.driver, g.arch, g.brand) for g in gpus] if gpus else [host]
    for req in requirements_from_env(env):
        for facts in per_gpu:
            if not requirement_holds(req, facts):
                raise CudaRequirementError(_refusal(req, facts))


def _refusal(req: Requirement, facts: HostFacts) -> str:
    first = ",".join(str(t) for t in req.alternatives[0])
    others = len(req.alternatives) - 1
    alternatives = f" (or one of {others} other alternatives)" if others else ""
    known = [f"{name} {getattr(facts, name)}" for name in ("driver", "cuda", "arch", "brand")]
    host = ", ".join(k for k in known if not k.endswith(" None"))
    # libnvidia-container's wording, plus the host's facts and the way out.
    return (
        f"unsatisfied condition: {first}{alternatives} from {req.variable} (host: {host}), "
        f"please update your driver to a newer version, or use an earlier cuda container "
        f"(set {DISABLE_REQUIRE}=1 to skip this check)"
    )


def check_image(
    labels: Mapping[str, str],
    env: Mapping[str, str],
    host: HostFacts,
    gpus: Sequence[HostFacts] = (),
) -> None:
    """Both checks for one container; `env` is the image environment with the user -e applied."""
    if requirements_disabled(env):
        return
    check_cuda_label(host.cuda, labels.get(CUDA_LABEL))
    check_requirements(env, host, gpus)
