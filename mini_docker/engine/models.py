"""The engine's Python API, in the shape of docker-py.

Anyone who has written `client.containers.run("busybox", "echo hi")` with
docker-py can use the engine the same way:

    engine = Engine(root="/var/lib/mini-docker")
    c = engine.containers.run("busybox", "sleep 60", detach=True, name="web")
    c.exec_run("hostname")          # ExecResult(exit_code=0, output=b'3f2a...\\n')
    c.logs(); c.stop(); c.remove()

A Container or Image object is a handle: an ID and the attributes read when
it was fetched (`attrs`, what `docker inspect` prints), refreshed by
`reload()`. Every method calls the engine, which owns all the state; the
daemon's REST API (a later chapter) calls the same engine methods, so the
two can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mini_docker.errors import MiniDockerError

if TYPE_CHECKING:
    from mini_docker.engine.engine import Engine


class ContainerError(MiniDockerError):
    """`containers.run` without detach: the command exited non-zero (docker-py's name)."""

    def __init__(self, container: Container, exit_status: int, command: Any, image: str,
                 stderr: bytes) -> None:
        self.container, self.exit_status, self.command = container, exit_status, command
        self.image, self.stderr = image, stderr
        text = stderr.decode(errors="replace").strip()
        super().__init__(f"Command '{command}' in image '{image}' returned non-zero exit status "
                         f"{exit_status}" + (f": {text}" if text else ""))


@dataclass(frozen=True)
class ExecResult:
    """What exec_run returns: the exit code (None while detached or streaming) and output."""

    exit_code: int | None
    output: Any


class Model:
    """A handle: an ID, and the attributes read when it was fetched (`attrs`)."""

    def __init__(self, engine: Engine, attrs: dict[str, Any]) -> None:
        self._engine = engine
        self.attrs = attrs

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def id(self) -> str:
        return self.attrs["Id"]


class Container(Model):
    """A handle on one container."""

    def __repr__(self) -> str:
        return f"<Container: {self.short_id}>"

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        return self.attrs["Name"].lstrip("/")

    @property
    def status(self) -> str:
        return self.attrs["State"]["Status"]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.attrs["Config"].get("Labels") or {})

    @property
    def image(self) -> Image:
        return self._engine.images.get(self.attrs["Image"])

    @property
    def ports(self) -> dict:
        return {}

    def reload(self) -> None:
        self.attrs = self._engine.inspect(self.id)

    def start(self) -> None:
        self._engine.start(self.id)

    def stop(self, timeout: float | None = None) -> None:
        self._engine.stop(self.id, timeout)

    def kill(self, signal: str | int | None = None) -> None:
        self._engine.kill(self.id, signal)

    def restart(self, timeout: float | None = None) -> None:
        self._engine.restart(self.id, timeout)

    def pause(self) -> None:
        self._engine.pause(self.id)

    def unpause(self) -> None:
        self._engine.unpause(self.id)

    def wait(self, timeout: float | None = None, condition: str = "not-running") -> dict:
        return self._engine.wait(self.id, condition, timeout)

    def remove(self, force: bool = False, v: bool = False, link: bool = False) -> None:
        self._engine.remove(self.id, force=force)

    def rename(self, name: str) -> None:
        self._engine.rename(self.id, name)

    def top(self, ps_args: str | None = None) -> dict:
        return self._engine.top(self.id, ps_args)

    def diff(self) -> list[dict[str, Any]]:
        kinds = {"C": 0, "A": 1, "D": 2}
        return [{"Path": path, "Kind": kinds[kind]}
                for kind, path in self._engine.snapshots.diff(self.id)]

    def logs(self, stdout: bool = True, stderr: bool = True, stream: bool = False,
             timestamps: bool = False, tail: int | str = "all", since: Any = None,
             follow: bool | None = None, until: Any = None) -> bytes | Iterator[bytes]:
        """The output so far as bytes, or with stream=True an iterator of lines."""
        lines = self._engine.logs(self.id, stdout=stdout, stderr=stderr, timestamps=timestamps,
                                  tail=tail, since=since, until=until,
                                  follow=stream if follow is None else follow)
        return lines if stream else b"".join(lines)

    def exec_run(self, cmd: str | Sequence[str], stdout: bool = True, stderr: bool = True,
                 stdin: bool = False, tty: bool = False, privileged: bool = False,
                 user: str = "", detach: bool = False, stream: bool = False,
                 environment: Any = None, workdir: str | None = None,
                 demux: bool = False) -> ExecResult:
        """Run `cmd` in the container, as `docker exec`; by default wait and collect output.

        stream: output as an iterator (exit_code stays None); demux: output as
        (stdout, stderr) instead of one interleaved bytes; detach: do not wait.
        """
        session = self._engine.exec_run(
            self.id, cmd, stdout=stdout, stderr=stderr, stdin=stdin, tty=tty, user=user,
            detach=detach, environment=environment, workdir=workdir, privileged=privileged)
        wanted = {"stdout"} if stdout else set()
        if stderr:
            wanted.add("stderr")
        if detach:
            return ExecResult(None, b"")
        if stream:
            def chunks() -> Iterator[Any]:
                with session:
                    for kind, data in session:
                        if kind in wanted:
                            yield (data, None) if demux and kind == "stdout" else \
                                (None, data) if demux else data
            return ExecResult(None, chunks())
        out, err, both = [], [], []
        with session:
            for kind, data in session:
                if kind in wanted:
                    (out if kind == "stdout" else err).append(data)
                    both.append(data)
        if demux:
            return ExecResult(session.exit_code, (b"".join(out) if stdout else None,
                                                  b"".join(err) if stderr else None))
        return ExecResult(session.exit_code, b"".join(both))

    def stats(self, decode: bool | None = None, stream: bool = True,
              one_shot: bool | None = None) -> Any:
        """One reading (stream=False) or an iterator of readings, one a second.

        one_shot with stream=False: a single quick reading, without a CPU percentage.
        """
        import json

        readings = self._engine.stats(self.id, stream=stream, one_shot=bool(one_shot))
        if not stream:
            reading = next(iter(readings))
            return reading if decode is not False else json.dumps(reading).encode()
        if decode:
            return readings
        return (json.dumps(r).encode() for r in readings)

    def commit(self, repository: str | None = None, tag: str | None = None, message: str = "",
               author: str = "", changes: Mapping[str, Any] | None = None) -> Image:
        from mini_docker.image.lifecycle import commit

        ref = f"{repository}:{tag}" if repository and tag else repository
        image = commit(self._engine.image_store, self._engine.snapshots, self.id, ref,
                       changes=changes, comment=message, author=author)
        return self._engine.images.get(image.id)


class ContainerCollection:
    """`engine.containers`: run, create, get, list, prune."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(self, image: str, command: str | Sequence[str] | None = None,
               **kwargs: Any) -> Container:
        record = self._engine.create(image, command, **kwargs)
        return self.get(record.Id)

    def run(self, image: str, command: str | Sequence[str] | None = None, stdout: bool = True,
            stderr: bool = False, remove: bool = False, stream: bool = False,
            **kwargs: Any) -> Container | bytes | Iterator[bytes]:
        """`docker run`: create and start; without detach, wait and return the output.

        As docker-py: the output is read as it comes, so an auto-removed
        container's is not lost; a non-zero exit raises ContainerError (with
        the stderr); remove=True removes the container once it has exited;
        stream=True returns the output as an iterator of lines at once.
        """
        from mini_docker.errors import InvalidArgument

        detach = kwargs.get("detach", False)
        if detach and remove:
            raise InvalidArgument("the options remove and detach cannot be used together; use "
                                  "auto_remove")
        record, entries = self._engine.run(image, command, logs=not detach,
                                           remove_on_failure=remove, **kwargs)
        container = Container(self._engine, record.inspect())  # auto_remove: it may be gone
        if detach:
            return container
        if entries is None:  # no log to read (log driver "none")
            entries = iter(())
        if stream:
            return (entry.data for entry in entries
                    if stdout and entry.stream == "stdout" or stderr and entry.stream == "stderr")
        out, err = [], []
        for entry in entries:  # until the container stops
            (out if entry.stream == "stdout" else err).append(entry)
        status = self._engine.wait(container.id)
        chosen = sorted([*(out if stdout else []), *(err if stderr else [])],
                        key=lambda e: e.time)
        if remove:
            container.remove()
        if status["StatusCode"] != 0:
            raise ContainerError(container, status["StatusCode"], command, image,
                                 b"".join(e.data for e in err))
        return b"".join(e.data for e in chosen)

    def get(self, container_id: str) -> Container:
        return Container(self._engine, self._engine.inspect(container_id))

    def list(self, all: bool = False, before: str | None = None, filters: Mapping | None = None,
             limit: int = -1, since: str | None = None, sparse: bool = False,
             ignore_removed: bool = False) -> list[Container]:
        filters = dict(filters or {})
        if before:
            filters["before"] = before
        if since:
            filters["since"] = since
        return [Container(self._engine, record.inspect())
                for record in self._engine.list(all=all, filters=filters, limit=limit)]

    def prune(self, filters: Mapping | None = None) -> dict:
        return self._engine.prune(filters)


class Image(Model):
    """A handle on one image."""

    def __repr__(self) -> str:
        return f"<Image: {', '.join(repr(t) for t in self.tags) or self.short_id}>"

    @property
    def short_id(self) -> str:
        return self.id[:19]  # "sha256:" and 12 digits, as docker-py shows it

    @property
    def tags(self) -> list[str]:
        return [t for t in self.attrs["RepoTags"] if t != "<none>:<none>"]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.attrs["Config"].get("Labels") or {})

    def reload(self) -> None:
        self.attrs = self._engine.images.get(self.id).attrs

    def tag(self, repository: str, tag: str | None = None) -> bool:
        self._engine.image_store.tag(self.id, f"{repository}:{tag}" if tag else repository)
        return True

    def history(self) -> list[dict[str, Any]]:
        return [{"Id": row.layer_digest or "<missing>", "Created": row.entry.created,
                 "CreatedBy": row.entry.created_by, "Size": row.layer_size,
                 "Comment": row.entry.comment}
                for row in self._engine.image_store.history(self.id)]


class ImageCollection:
    """`engine.images`: get, list, load, save, remove, prune, bootstrap."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get(self, name: str) -> Image:
        details = self._engine.image_store.inspect(name)
        image, config = details.image, details.config
        return Image(self._engine, {
            "Id": image.id, "RepoTags": image.repo_tags or ["<none>:<none>"],
            "RepoDigests": [], "Created": image.created, "Size": image.size,
            "Architecture": image.architecture, "Os": image.os,
            "Config": dict(config.config), "RootFS": {"Type": "layers",
                                                     "Layers": list(config.diff_ids)},
            "Descriptor": {"digest": image.digest}})

    def list(self, name: str | None = None, all: bool = False,
             filters: Mapping | None = None) -> list[Image]:
        images = [self.get(i.digest) for i in self._engine.image_store.images()]
        if name:
            from mini_docker.image.reference import parse_reference

            repository = parse_reference(name).familiar().split(":")[0]
            images = [i for i in images if any(t.rsplit(":", 1)[0] == repository
                                               for t in i.tags)]
        if filters and filters.get("dangling") in (True, "true", "1"):
            images = [i for i in images if not i.tags]
        return images

    def load(self, data: bytes | Any) -> list[Image]:
        """Images from a docker-archive or OCI layout (bytes, a file object or a path)."""
        import io

        from mini_docker.image.layout import load

        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        return [self.get(i.digest) for i in load(self._engine.image_store, source)]

    def save(self, names: str | Sequence[str], dest: Any) -> None:
        """A docker-archive of the images, as `docker save`, to a path or a binary file."""
        from mini_docker.image.layout import save_docker_archive

        save_docker_archive(self._engine.image_store,
                            [names] if isinstance(names, str) else list(names), dest)

    def remove(self, image: str, force: bool = False, noprune: bool = False) -> list[str]:
        from mini_docker.image.lifecycle import remove_image

        return remove_image(self._engine.image_store, self._engine.snapshots, image, force=force)

    def prune(self, filters: Mapping | None = None) -> dict[str, Any]:
        from mini_docker.image.lifecycle import prune_images

        dangling = (filters or {}).get("dangling", True) not in (False, "false", "0")
        lines, freed = prune_images(self._engine.image_store, self._engine.snapshots,
                                    all=not dangling)
        deleted = [{line.split(": ", 1)[0]: line.split(": ", 1)[1]} for line in lines]
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": freed}

    def bootstrap(self, name: str = "busybox") -> Image:
        """busybox:latest made offline from the host's static busybox (see image/bootstrap.py)."""
        import tempfile

        from mini_docker.errors import InvalidArgument
        from mini_docker.image.bootstrap import (
            busybox_rootfs,
            is_busybox_rootfs,
            rootfs_tar,
        )
        from mini_docker.image.oci import image_from_rootfs_tar

        if name not in ("busybox", "busybox:latest"):
            raise InvalidArgument(f"cannot bootstrap '{name}': only busybox (busybox:latest) "
                                  "can be made offline")
        rootfs = self._engine.root / "rootfs" / "busybox"
        if not is_busybox_rootfs(rootfs):
            busybox_rootfs(rootfs)
        with tempfile.TemporaryFile() as tar:
            rootfs_tar(rootfs, tar)
            tar.seek(0)
            image = image_from_rootfs_tar(self._engine.image_store, tar, {"Cmd": ["sh"]},
                                          "busybox:latest")
        return self.get(image.id)
