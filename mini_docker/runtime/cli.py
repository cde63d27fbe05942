"""`mini-runc`: the runtime's command line, shaped like runc's.

containerd's runc shim and dockerd call an OCI runtime with runc's global
flags and verbs (shared/reference has a trace). Speaking the same command
line lets them use mini-runc in place of runc:

    dockerd --add-runtime mini=/usr/local/bin/mini-runc
    docker run --runtime mini busybox echo hi

Errors go to stderr and, when --log is given, to that file as one JSON
object per line ({"level": "error", "msg": ..., "time": ...}), which is
where containerd looks for the reason a runtime failed.

containerd starts a runtime process for every step of every container, so
the command line must start fast. Importing argparse and building a parser
for fifteen verbs costs more than a small container takes to run, so the
verbs called for every container are read by `_quick_parse`, a plain loop
over the arguments; anything it does not recognise, --help and every error
included, is left to argparse, which gives the same result (a test checks
that the two agree).
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

from mini_docker import __version__
from mini_docker.errors import MiniDockerError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse

RUNC_COMPATIBLE = "1.1.5"

# The options _quick_parse reads: flag -> (attribute, takes a value). The
# defaults are argparse's (see _parser, which stays the reference).
GLOBAL_OPTIONS = {"--root": ("root", True), "--log": ("log", True),
                  "--log-format": ("log_format", True), "--debug": ("debug", False),
                  "--systemd-cgroup": ("systemd_cgroup", False), "--rootless": ("rootless", True),
                  "--criu": ("criu", True)}
GLOBAL_DEFAULTS = {"root": None, "log": None, "log_format": "text", "debug": False,
                   "systemd_cgroup": False, "rootless": None, "criu": None, "version": False}
CREATE_OPTIONS = {"-b": ("bundle", True), "--bundle": ("bundle", True),
                  "--pid-file": ("pid_file", True), "--console-socket": ("console_socket", True),
                  "--preserve-fds": ("preserve_fds", True), "--no-pivot": ("no_pivot", False),
                  "--no-new-keyring": ("no_new_keyring", False)}
CREATE_DEFAULTS = {"bundle": ".", "pid_file": None, "console_socket": None, "preserve_fds": 0,
                   "no_pivot": False, "no_new_keyring": False}
# verb -> (its options, its positional arguments, the defaults of both)
QUICK_VERBS = {
    "create": (CREATE_OPTIONS, ["id"], CREATE_DEFAULTS),
    "run": ({**CREATE_OPTIONS, "-d": ("detach", False), "--detach": ("detach", False),
             "--keep": ("keep", False)}, ["id"], {**CREATE_DEFAULTS, "detach": False, "keep": False}),
    "start": ({}, ["id"], {}),
    "state": ({}, ["id"], {}),
    "kill": ({"-a": ("all", False), "--all": ("all", False)}, ["id", "signal"],
             {"all": False, "signal": "SIGTERM"}),
    "delete": ({"-f": ("force", False), "--force": ("force", False)}, ["id"], {"force": False}),
    "exec": ({"-p": ("process", True), "--process": ("process", True),
              "-d": ("detach", False), "--detach": ("detach", False),
              "--pid-file": ("pid_file", True), "--console-socket": ("console_socket", True),
              "--preserve-fds": ("preserve_fds", True)}, ["id"],
             {"process": None, "detach": False, "pid_file": None, "console_socket": None,
              "tty": False, "cwd": None, "env": [], "user": None, "preserve_fds": 0,
              "command": []}),
}


def _quick_parse(argv: list[str]) -> SimpleNamespace | None:
    """runc's usual argument shapes, parsed without argparse; None for anything else.

    Global options, then a verb of QUICK_VERBS, then its options and
    positional arguments in any order; a long option as `--flag value` or
    `--flag=value`. A positional argument with a default may be left out.
    """
    args = dict(GLOBAL_DEFAULTS)
    options, names, positionals = GLOBAL_OPTIONS, [], None
    words = iter(argv)
    for word in words:
        flag, has_value, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if positionals is None and word in QUICK_VERBS:  # the verb: its own options from here
            options, names, defaults = QUICK_VERBS[word]
            args.update(defaults, verb=word)
            positionals = []
        elif flag in options:
            attribute, takes_value = options[flag]
            if not takes_value:
                if has_value:
                    return None
                args[attribute] = True
                continue
            if not has_value:
                value = next(words, None)
                if value is None or value.startswith("-"):
                    return None
            args[attribute] = value
        elif positionals is not None and word and not word.startswith("-"):
            positionals.append(word)
        else:
            return None  # --help, an option we do not know, "--"...: argparse's work
    if positionals is None:
        return None
    required = [name for name in names if name not in args]
    if not len(required) <= len(positionals) <= len(names):
        return None
    args.update(zip(names, positionals))
    if args["log_format"] not in ("text", "json"):
        return None
    if "preserve_fds" in args:
        if not str(args["preserve_fds"]).isdigit():
            return None
        args["preserve_fds"] = int(args["preserve_fds"])
    return SimpleNamespace(**args)


def _parser(prog: str) -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="An OCI runtime, runc's command line.")
    p.add_argument("--root", default=None, help="where container state lives "
                   "(default /run/mini-docker/runtime)")
    p.add_argument("--log", default=None, help="file to write errors and debug messages to")
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--rootless", default=None, help="accepted for runc compatibility")
    p.add_argument("--criu", default=None, help="accepted for runc compatibility")
    p.add_argument("-v", "--version", action="store_true")
    verbs = p.add_subparsers(dest="verb", metavar="COMMAND")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=text, description=text)

    def with_create_flags(v: argparse.ArgumentParser) -> None:
        v.add_argument("-b", "--bundle", default=".", help="the bundle directory")
        v.add_argument("--pid-file", default=None)
        v.add_argument("--console-socket", default=None)
        v.add_argument("--preserve-fds", type=int, default=0)
        v.add_argument("--no-pivot", action="store_true")
        v.add_argument("--no-new-keyring", action="store_true")
        v.add_argument("id")

    with_create_flags(verb("create", "create a container, its init waiting for start"))
    run = verb("run", "create, start and wait for a container")
    with_create_flags(run)
    run.add_argument("-d", "--detach", action="store_true")
    run.add_argument("--keep", action="store_true", help="do not delete it after it exits")
    verb("start", "start a created container").add_argument("id")
    verb("pause", "freeze every process of a container").add_argument("id")
    verb("resume", "thaw a paused container").add_argument("id")
    ev = verb("events", "print a container's resource usage (with --stats) as JSON")
    ev.add_argument("--stats", action="store_true", help="one reading, then exit")
    ev.add_argument("--interval", default="5s", help="accepted for runc compatibility")
    ev.add_argument("id")
    verb("state", "print a container's state as JSON").add_argument("id")
    k = verb("kill", "send a signal to a container's init")
    k.add_argument("-a", "--all", action="store_true", help="to every process in the container")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = verb("delete", "delete a stopped container")
    d.add_argument("-f", "--force", action="store_true")
    d.add_argument("id")
    e = verb("exec", "run another process in a running container")
    e.add_argument("-p", "--process", default=None, help="a JSON file with the process object")
    e.add_argument("-d", "--detach", action="store_true")
    e.add_argument("--pid-file", default=None)
    e.add_argument("--console-socket", default=None)
    e.add_argument("-t", "--tty", action="store_true")
    e.add_argument("--cwd", default=None)
    e.add_argument("-e", "--env", action="append", default=[])
    e.add_argument("-u", "--user", default=None, help="UID[:GID]")
    e.add_argument("--preserve-fds", type=int, default=0)
    e.add_argument("id")
    e.add_argument("command", nargs=argparse.REMAINDER)
    ps = verb("ps", "list the processes in a container")
    ps.add_argument("-f", "--format", default="table", choices=["table", "json"])
    ps.add_argument("id")
    ls = verb("list", "list containers")
    ls.add_argument("-f", "--format", default="table", choices=["table", "json"])
    ls.add_argument("-q", "--quiet", action="store_true")
    sp = verb("spec", "write a default config.json")
    sp.add_argument("-b", "--bundle", default=".")
    sp.add_argument("--rootless", action="store_true")
    verb("features", "print what this runtime supports, as JSON")
    return p


def main(argv: list[str] | None = None, prog: str = "mini-runc") -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _quick_parse(argv) or _parser(prog).parse_args(argv)
    if args.version:
        print(f"{prog} version {__version__}\ncommit: runc-compatible {RUNC_COMPATIBLE}\n"
              f"spec: 1.0.2-dev")
        return 0
    if not args.verb:
        _parser(prog).print_help()
        return 2
    try:
        return int(_dispatch(args) or 0)
    except (MiniDockerError, OSError) as err:
        message = str(err)
        _log(args, "error", message)
        print(f"{prog}: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _log(args: argparse.Namespace, level: str, message: str) -> None:
    if not args.log:
        return
    from mini_docker.runtime.state import now_rfc3339

    with open(args.log, "a") as f:
        if args.log_format == "json":
            f.write(json.dumps({"level": level, "msg": message, "time": now_rfc3339()}) + "\n")
        else:
            f.write(f"{now_rfc3339()} {level}: {message}\n")


def _dispatch(args: argparse.Namespace) -> int | None:
    import mini_docker.runtime as rt

    root = args.root
    if args.verb == "create":
        rt.create(args.id, args.bundle, root=root, pid_file=args.pid_file,
                  console_socket=args.console_socket, preserve_fds=args.preserve_fds)
    elif args.verb == "start":
        rt.start(args.id, root=root)
    elif args.verb == "pause":
        rt.pause(args.id, root=root)
    elif args.verb == "resume":
        rt.resume(args.id, root=root)
    elif args.verb == "events":
        _events(args)
    elif args.verb == "run":
        return rt.run(args.id, args.bundle, root=root, pid_file=args.pid_file,
                      console_socket=args.console_socket, detach=args.detach, keep=args.keep)
    elif args.verb == "state":
        print(json.dumps(rt.state(args.id, root=root), indent=2))
    elif args.verb == "kill":
        rt.kill(args.id, args.signal, all_processes=args.all, root=root)
    elif args.verb == "delete":
        _delete(args, rt)
    elif args.verb == "exec":
        return _exec(args, rt)
    elif args.verb == "ps":
        _ps(args, rt)
    elif args.verb == "list":
        _list(args, rt)
    elif args.verb == "spec":
        _spec(args, rt)
    elif args.verb == "features":
        from mini_docker.runtime.features import features

        print(json.dumps(features(), indent=2))
    return 0


def _events(args: argparse.Namespace) -> None:
    import time

    from mini_docker.runtime.events import stats

    seconds = float(args.interval.rstrip("s") or 5)
    while True:
        print(json.dumps(stats(args.id, root=args.root)), flush=True)
        if args.stats:
            return
        time.sleep(seconds)


def _delete(args: argparse.Namespace, rt) -> None:
    from mini_docker.errors import NotFound

    try:
        rt.delete(args.id, force=args.force, root=args.root)
    except NotFound:
        if not args.force:  # runc: deleting what is gone, with --force, is not an error
            raise


def _exec(args: argparse.Namespace, rt) -> int:
    from mini_docker.kernel import constants as C
    from mini_docker.kernel import prctl
    from mini_docker.runtime.spec import Process, User

    if args.process:
        process = rt.load_process(args.process)
    else:
        if not args.command:
            raise MiniDockerError("exec needs a command or --process FILE")
        state = rt.state(args.id, root=args.root)
        base = rt.load(state["bundle"]).process
        uid, _, gid = (args.user or f"{base.user.uid}:{base.user.gid}").partition(":")
        process = Process(args=args.command, env=base.env + args.env, cwd=args.cwd or base.cwd,
                          user=User(int(uid), int(gid or 0)), terminal=args.tty,
                          capabilities=base.capabilities,
                          no_new_privileges=base.no_new_privileges)
    console = None
    if process.terminal:
        if not args.console_socket:
            raise MiniDockerError("a terminal needs --console-socket")
        from mini_docker.runtime.create import _connect

        console = _connect(args.console_socket)
    if not args.detach:
        prctl(C.PR_SET_CHILD_SUBREAPER, 1)
    try:
        return rt.exec_in(args.id, process, root=args.root, detach=args.detach,
                          pid_file=args.pid_file, preserve_fds=args.preserve_fds,
                          console=console.fileno() if console else None)
    finally:
        if console:
            console.close()


def _ps(args: argparse.Namespace, rt) -> None:
    from mini_docker.runtime.kill import processes

    states = rt.StateDir(args.root) if args.root else rt.StateDir()
    pids = processes(states.load(args.id))
    if args.format == "json":
        print(json.dumps(pids))
        return
    print(f"{'PID':>7}  CMD")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except FileNotFoundError:
            continue
        print(f"{pid:>7}  {cmd}")


def _list(args: argparse.Namespace, rt) -> None:
    states = rt.StateDir(args.root) if args.root else rt.StateDir()
    reports = [states.report(states.load(i)) for i in states.ids()]
    if args.quiet:
        print("\n".join(r["id"] for r in reports))
    elif args.format == "json":
        print(json.dumps(reports))
    else:
        print(f"{'ID':<20} {'PID':>7}  {'STATUS':<8} {'BUNDLE':<40} CREATED")
        for r in reports:
            print(f"{r['id']:<20} {r['pid']:>7}  {r['status']:<8} {r['bundle']:<40} {r['created']}")


def _spec(args: argparse.Namespace, rt) -> None:
    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise MiniDockerError(f"File {path} exists. Remove it first")
    with open(path, "w") as f:
        json.dump(rt.default_spec(), f, indent="\t")


def entry() -> None:
    """The `mini-runc` program: main(), then leave at once.

    A short-lived command gains nothing from the interpreter's orderly
    shutdown (freeing every module and object, some 7 ms here): flush what we
    printed and let the kernel reclaim the rest, as a C program's exit does.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
