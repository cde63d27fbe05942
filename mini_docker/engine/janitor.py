"""A removed container's files, deleted after `rm` has returned.

`rm` renames the container's directories out of the way (its record and its
writable layer, each to a `.removing-` name: one rename, atomic) and is done:
the container is gone, for everyone, at once. Deleting the files inside takes
longer, an unlink or an rmdir per file: a millisecond and more, even for a
container that wrote nothing. Nobody needs to wait for that, so one thread of
the engine deletes them, in the order they come, while `docker run --rm`
returns. An engine that dies before it is done leaves `.removing-`
directories behind; the next one deletes them as it starts
(RecordStore.clear_leftovers, Snapshots.clear_removals).

A container removed as it exits (`--rm`) has its root filesystem still
mounted: the mount moves with the rename, and its unmount is part of the
deferred work too (Snapshotter.remove), done before anything is deleted.

The same thread waits for what the container's shim still does after the
container has exited: it deletes the runtime's state and the container's
cgroup (a rmdir in each cgroup v1 hierarchy) once it has told the engine of
the exit. The container's processes are gone by then; only its shim is
tidying up, and `rm` need not wait for it.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Callable
from contextlib import suppress


class Janitor:
    """One thread that deletes the directory trees handed to it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | Callable[[], object] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def dispose(self, path: str) -> None:
        """Delete `path` and everything below it, soon."""
        self._put(str(path))

    def later(self, work: Callable[[], object]) -> None:
        """Call `work()` soon, in turn with the deletions (what it raises is dropped)."""
        self._put(work)

    def _put(self, item: str | Callable[[], object]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)
                self._thread.start()
        self._queue.put(item)

    def drain(self) -> None:
        """Wait until everything handed over so far is deleted."""
        self._queue.join()

    def close(self) -> None:
        """Finish what was handed over, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if callable(item):
                    with suppress(Exception):
                        item()
                    continue
                # What cannot be deleted stays as .removing-: the next engine tries again.
                shutil.rmtree(item, ignore_errors=True)
            finally:
                self._queue.task_done()
