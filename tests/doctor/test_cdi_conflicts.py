"""Doctor's CDI conflict probe over a host root of spec directories: which files claim the kind,
and whether engines would prefer them to ours (/var/run/cdi is read after /etc/cdi)."""

from __future__ import annotations

from pathlib import Path

from nvplugin.cli.doctor import Facts, probe_cdi_conflicts
from nvplugin.core.config import Config

TOOLKIT = "cdiVersion: 0.7.0\nkind: nvidia.com/gpu\ndevices: []\n"


def host(tmp_path: Path) -> tuple[Path, Path, Path]:
    etc, run = tmp_path / "etc/cdi", tmp_path / "var/run/cdi"
    etc.mkdir(parents=True)
    run.mkdir(parents=True)
    (run / "nvidia-docker.json").write_text('{"kind": "nvidia.com/gpu"}')  # ours
    return tmp_path, etc, run


def probe(root: Path, cdi_dir: Path | None, kind: str = "nvidia.com/gpu"):
    return probe_cdi_conflicts(Config(host_root=root, cdi_dir=cdi_dir, cdi_kind=kind), Facts())


def test_our_own_file_is_no_conflict(tmp_path):
    root, _etc, run = host(tmp_path)
    assert probe(root, run).status == "PASS"


def test_a_static_spec_in_etc_cdi_warns(tmp_path):
    root, etc, run = host(tmp_path)
    (etc / "nvidia.yaml").write_text(TOOLKIT)
    (etc / "notes.txt").write_text("kind: nvidia.com/gpu\n")  # engines read .json and .yaml
    check = probe(root, run)
    assert check.status == "WARN" and str(etc / "nvidia.yaml") in check.detail
    assert "notes.txt" not in check.detail


def test_a_spec_beside_ours_or_read_after_it_fails(tmp_path):
    root, etc, run = host(tmp_path)
    (run / "nvidia.yaml").write_text(TOOLKIT)
    assert probe(root, run).status == "FAIL"
    # Ours in /etc/cdi: a /var/run/cdi spec wins every name both define.
    (etc / "nvidia-docker.json").write_text('{"kind": "nvidia.com/gpu"}')
    (run / "nvidia-docker.json").unlink()
    check = probe(root, etc)
    assert check.status == "FAIL" and str(run / "nvidia.yaml") in check.detail


def test_another_kind_and_a_custom_directory(tmp_path):
    root, _etc, run = host(tmp_path)
    (run / "nvidia.yaml").write_text(TOOLKIT)
    assert probe(root, None, kind="example.com/gpu").status == "PASS"
    custom = tmp_path / "srv/cdi"
    custom.mkdir(parents=True)
    # No known order against the engines' own directories: a warning...
    check = probe(root, custom)
    assert check.status == "WARN" and str(run / "nvidia.yaml") in check.detail
    # ...but beside ours, engines refuse both wherever the directory is.
    (custom / "other.json").write_text('{"kind": "nvidia.com/gpu"}')
    check = probe(root, custom)
    assert check.status == "FAIL" and check.detail.startswith(f"{custom / 'other.json'} also")
