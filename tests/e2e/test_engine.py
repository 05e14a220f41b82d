"""The test images and the real Docker Engine work, before any GPU part is involved."""

from __future__ import annotations

from tests.dockerenv import DockerEngine, ImageFactory


def test_imported_image_runs_a_container(docker_engine: DockerEngine, make_image: ImageFactory):
    tag = make_image(labels={"com.nvidia.volumes.needed": "nvidia_driver"})
    command = ["sh", "-c", "echo hello; echo $LD_LIBRARY_PATH"]
    out = docker_engine.client.containers.run(tag, command, network_mode="none", remove=True)
    assert out.decode().splitlines() == ["hello", "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"]
    labels = docker_engine.api.inspect_image(tag)["Config"]["Labels"]
    assert labels == {"com.nvidia.volumes.needed": "nvidia_driver"}


def test_unlabelled_image_has_no_labels(docker_engine: DockerEngine, make_image: ImageFactory):
    tag = make_image()
    assert not docker_engine.api.inspect_image(tag)["Config"].get("Labels")
