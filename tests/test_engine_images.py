"""engine.images: docker-py's image collection over the image store (chapter 4's layer)."""

from __future__ import annotations

import io

import pytest

from mini_docker.errors import Conflict, InvalidArgument, NotFound


def test_get_list_and_tag(engine):
    busybox = engine.images.get("busybox")
    assert busybox.id.startswith("sha256:") and busybox.tags == ["busybox:latest"]
    assert busybox.attrs["RootFS"]["Layers"][0].startswith("sha256:")
    assert busybox.attrs["Config"]["Cmd"] == ["sh"]
    assert engine.images.list() == [busybox]
    assert busybox.tag("mine/tools", "1.0") is True
    busybox.reload()
    assert busybox.tags == ["busybox:latest", "mine/tools:1.0"]
    assert [i.id for i in engine.images.list(name="mine/tools")] == [busybox.id]
    assert engine.images.list(name="nothing") == []
    assert busybox.history()[0]["Size"] > 0
    with pytest.raises(NotFound):
        engine.images.get("nosuch")


def test_save_and_load_round_trip(engine):
    out = io.BytesIO()
    engine.images.save("busybox", out)
    engine.images.remove("busybox")
    assert engine.images.list() == []
    loaded = engine.images.load(out.getvalue())
    assert [i.tags for i in loaded] == [["busybox:latest"]]
    assert engine.containers.run("busybox", ["echo", "back"], remove=True) == b"back\n"


def test_remove_refuses_an_image_in_use_and_prune_keeps_it(engine):
    c = engine.containers.create("busybox", ["true"])
    with pytest.raises(Conflict, match="is being used"):
        engine.images.remove(engine.images.get("busybox").id)
    assert engine.images.prune(filters={"dangling": False})["ImagesDeleted"] is None
    c.remove()
    result = engine.images.prune(filters={"dangling": False})
    assert result["SpaceReclaimed"] > 0 and engine.images.list() == []


def test_commit_makes_an_image_of_a_containers_changes(engine):
    c = engine.containers.run("busybox", ["sh", "-c", "echo made > /made"], detach=True)
    c.wait(timeout=10)
    image = c.commit("snapshot", "v1", changes={"Cmd": ["cat", "/made"]})
    c.remove()
    assert image.tags == ["snapshot:v1"]
    assert engine.containers.run("snapshot:v1", remove=True) == b"made\n"


def test_bootstrap_makes_busybox_offline(engine):
    engine.images.remove("busybox")
    image = engine.images.bootstrap()
    assert image.tags == ["busybox:latest"]
    assert engine.images.bootstrap().id == image.id  # the same busybox, the same image
    with pytest.raises(InvalidArgument, match="only busybox"):
        engine.images.bootstrap("alpine")
