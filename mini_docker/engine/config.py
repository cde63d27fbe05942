"""From `docker run`'s options to a container's Config, HostConfig and OCI spec.

A container is described twice. Config and HostConfig are Docker's words
for it, what `docker inspect` shows and what the user chose: the image's
settings (Cmd, Env, WorkingDir, User) with the user's options on top, and
how the host should run it (limits, restart policy, logging). The OCI
runtime spec (config.json in the bundle) is the runtime's words for the
same thing, and is made again from them at every start, as dockerd does.

The options are docker-py's keyword arguments (`containers.run(image,
command, environment=..., mem_limit=..., restart_policy=...)`), each
checked here so a bad one is a one-line InvalidArgument before anything
exists.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from mini_docker.errors import InvalidArgument
from mini_docker.image.container import (
    checked_env,
    container_spec,
    make_workdir,
    merge_env,
)
from mini_docker.image.oci import ImageConfig

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
LOG_DRIVERS = ("json-file", "none")
INIT_ANNOTATION = "io.mini-docker.init"  # the runtime's tiny init (runtime/reaper.py)

# docker-py's keyword arguments that this engine understands
OPTIONS = ("name", "environment", "working_dir", "user", "entrypoint", "hostname", "labels",
           "tty", "stdin_open", "auto_remove", "restart_policy", "init", "mem_limit",
           "nano_cpus", "cpus", "pids_limit", "stop_signal", "stop_timeout", "log_config",
           "detach")


def as_list(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    """A command as docker-py takes it: a list, or a string split as a shell would."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            raise InvalidArgument(f"{what}: {err}") from None
    if not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{what} must be a string or a list of strings")
    return list(value)


def environment(value: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """NAME=value entries from a dict or a list, as docker-py accepts `environment`."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [f"{k}={v}" for k, v in value.items()]
    return checked_env(value)


def restart_policy(value: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """{"Name": ..., "MaximumRetryCount": n}, from a dict or a `--restart` string."""
    if value is None:
        return {"Name": "no", "MaximumRetryCount": 0}
    if isinstance(value, str):
        name, _, count = value.partition(":")
        value = {"Name": name, "MaximumRetryCount": count or 0}
    name = value.get("Name") or "no"
    if name not in RESTART_POLICIES:
        raise InvalidArgument(f"invalid restart policy '{name}': use one of "
                              f"{', '.join(RESTART_POLICIES)}")
    try:
        count = int(value.get("MaximumRetryCount") or 0)
    except (TypeError, ValueError):
        raise InvalidArgument("invalid restart policy: the retry count must be a number") from None
    if count < 0:
        raise InvalidArgument("invalid restart policy: the retry count cannot be negative")
    if count and name != "on-failure":
        raise InvalidArgument(f"invalid restart policy: a maximum retry count only goes with "
                              f"on-failure, not {name}")
    return {"Name": name, "MaximumRetryCount": count}


def log_config(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """{"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}, checked."""
    from mini_docker.engine.logs import parse_size

    value = dict(value or {})
    kind = value.get("Type") or value.get("type") or "json-file"
    options = {str(k): str(v) for k, v in (value.get("Config") or value.get("config")
                                           or {}).items()}
    if kind not in LOG_DRIVERS:
        raise InvalidArgument(f"logger: no log driver named '{kind}' is registered")
    for key in options:
        if key not in ("max-size", "max-file"):
            raise InvalidArgument(f"unknown log opt '{key}' for {kind} log driver")
    if "max-size" in options:
        parse_size(options["max-size"])
    if "max-file" in options:
        if not options["max-file"].isdigit() or int(options["max-file"]) < 1:
            raise InvalidArgument("max-file must be a positive number")
        if int(options["max-file"]) > 1 and "max-size" not in options:
            raise InvalidArgument("max-file cannot be set without max-size")
    return {"Type": kind, "Config": options}


def make_config(image_name: str, image: ImageConfig, command: str | Sequence[str] | None,
                options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Config and HostConfig for a new container, as dockerd records them."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidArgument(f"unknown option{'s' if len(unknown) > 1 else ''}: "
                              f"{', '.join(unknown)}")
    from mini_docker.cgroups.resources import (
        parse_cpus,
        parse_memory,
        validate_pids_limit,
    )

    settings = image.config
    cmd = as_list(command, "command")
    entrypoint = as_list(options.get("entrypoint"), "entrypoint")
    if entrypoint is not None:  # a new entrypoint drops the image's Cmd too
        cmd = cmd or []
    else:
        entrypoint = list(settings.get("Entrypoint") or [])
        if cmd is None:
            cmd = list(settings.get("Cmd") or [])
    if not entrypoint and not cmd:
        raise InvalidArgument("no command specified")
    labels = dict(settings.get("Labels") or {})
    labels.update(options.get("labels") or {})
    config = {
        "Hostname": options.get("hostname") or "", "Domainname": "",
        "User": options.get("user") if options.get("user") is not None
        else settings.get("User", ""),
        "AttachStdin": False, "AttachStdout": not options.get("detach"),
        "AttachStderr": not options.get("detach"),
        "Tty": bool(options.get("tty")), "OpenStdin": bool(options.get("stdin_open")),
        "StdinOnce": False,
        "Env": merge_env(settings.get("Env") or [], environment(options.get("environment"))),
        "Cmd": cmd, "Image": image_name, "Volumes": None,
        "WorkingDir": options.get("working_dir") or settings.get("WorkingDir") or "",
        "Entrypoint": entrypoint or None, "OnBuild": None, "Labels": labels,
        "StopSignal": options.get("stop_signal") or settings.get("StopSignal") or "SIGTERM",
    }
    if options.get("stop_timeout") is not None:
        config["StopTimeout"] = int(options["stop_timeout"])
    if config["WorkingDir"] and not config["WorkingDir"].startswith("/"):
        raise InvalidArgument(f"the working directory '{config['WorkingDir']}' is invalid, it "
                              "needs to be an absolute path")
    nano_cpus = options.get("nano_cpus")
    if options.get("cpus") is not None:
        if nano_cpus:
            raise InvalidArgument("Conflicting options: cpus and nano_cpus")
        nano_cpus = round(parse_cpus(options["cpus"]) * 1e9)
    memory = options.get("mem_limit")
    pids = options.get("pids_limit")
    policy = restart_policy(options.get("restart_policy"))
    if options.get("auto_remove") and policy["Name"] != "no":
        raise InvalidArgument("Conflicting options: --restart and --rm")
    host_config = {
        "AutoRemove": bool(options.get("auto_remove")), "RestartPolicy": policy,
        "Memory": parse_memory(memory) if memory not in (None, 0, "0") else 0,
        "NanoCpus": int(nano_cpus or 0),
        "PidsLimit": validate_pids_limit(int(pids)) if pids not in (None, 0) else None,
        "Init": bool(options.get("init")) if options.get("init") is not None else None,
        "LogConfig": log_config(options.get("log_config")),
        "NetworkMode": "none", "Privileged": False,
    }
    return config, host_config


def make_spec(container_id: str, image: ImageConfig, config: Mapping[str, Any],
              host_config: Mapping[str, Any], rootfs: str) -> dict[str, Any]:
    """The OCI runtime spec (config.json) for one start of the container."""
    spec = container_spec(image, rootfs, container_id=container_id, cmd=config["Cmd"],
                          entrypoint=config["Entrypoint"] or [], env=config["Env"],
                          workdir=config["WorkingDir"] or None, user=config["User"],
                          hostname=config["Hostname"] or None)
    make_workdir(rootfs, spec["process"]["cwd"])
    spec["process"]["terminal"] = bool(config["Tty"])
    resources: dict[str, Any] = {}
    if host_config["Memory"]:
        resources["memory"] = {"limit": host_config["Memory"]}
    if host_config["NanoCpus"]:
        period = 100_000
        resources["cpu"] = {"quota": host_config["NanoCpus"] * period // 1_000_000_000,
                            "period": period}
    if host_config["PidsLimit"]:
        resources["pids"] = {"limit": host_config["PidsLimit"]}
    if resources:
        spec["linux"].setdefault("resources", {}).update(resources)
    annotations = spec.setdefault("annotations", {})
    if host_config.get("Init"):
        annotations[INIT_ANNOTATION] = "true"
    if not annotations:
        del spec["annotations"]
    return spec
