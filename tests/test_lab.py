"""The learner's VM: lab/user-data.yaml, lab/Vagrantfile and lab/provision.sh.

No VM is started here. What is checked is what can go wrong before one is: the
cloud-init file is valid (and the validator really rejects a broken one), both
recipes reach the one provisioning script, the scripts parse, and the provisioning
logic (clone or reuse, then host-setup and make setup, idempotently) runs against
stand-in repositories in a temporary directory. Nothing here touches the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "lab"
USER_DATA = LAB / "user-data.yaml"
VAGRANTFILE = LAB / "Vagrantfile"
PROVISION = LAB / "provision.sh"
REPO_DIR = "/opt/mini_docker"

needs_cloud_init = pytest.mark.skipif(
    shutil.which("cloud-init") is None,
    reason="cloud-init is not installed (lab/host-setup.sh --test installs it)")
needs_ruby = pytest.mark.skipif(
    shutil.which("ruby") is None, reason="ruby is not installed; the Vagrantfile is Ruby")
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def user_data() -> dict:
    return yaml.safe_load(USER_DATA.read_text())


def provision_command() -> list[str]:
    """The runcmd entry that provisions: env VAR=... bash -euc SCRIPT."""
    commands = [c for c in user_data()["runcmd"]
                if "lab/provision.sh" in (c if isinstance(c, str) else " ".join(c))]
    assert len(commands) == 1, "exactly one runcmd entry should run lab/provision.sh"
    assert isinstance(commands[0], list), "the provisioning runcmd should be an argv list"
    return commands[0]


def with_env(argv: list[str], **values: str) -> list[str]:
    """argv (an `env NAME=value ... command` list) with some NAME=value replaced."""
    out = []
    for arg in argv:
        name = arg.split("=", 1)[0]
        out.append(f"{name}={values[name]}" if "=" in arg and name in values else arg)
    return out


def git(*args: str, cwd: Path) -> None:
    done = run(["git", "-c", "user.name=lab", "-c", "user.email=lab@example.invalid",
                "-c", "init.defaultBranch=main", *args], cwd=cwd)
    assert done.returncode == 0, done.stderr


def fake_repository(path: Path, marker: Path) -> Path:
    """A stand-in for the mini_docker repository: its lab/ scripts and `make setup`
    only append to marker, so provisioning can be run for real, in seconds."""
    (path / "lab").mkdir(parents=True)
    (path / "lab" / "provision.sh").write_text(PROVISION.read_text())
    (path / "lab" / "host-setup.sh").write_text(f'echo host-setup >> "{marker}"\n')
    (path / "Makefile").write_text(f'setup:\n\techo "make setup in $(CURDIR)" >> "{marker}"\n')
    return path


# --- cloud-init ------------------------------------------------------------------


@needs_cloud_init
def test_user_data_is_valid_cloud_config():
    done = run(["cloud-init", "schema", "--config-file", str(USER_DATA)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


@needs_cloud_init
@pytest.mark.parametrize("breakage", [
    ("packages:\n  - git\n  - make\n  - ca-certificates\n", "packages: 5\n"),
    ("package_update: true", "package_update: sometimes"),
    ("#cloud-config\n", ""),
], ids=["packages-not-a-list", "package_update-not-a-boolean", "no-cloud-config-header"])
def test_schema_check_rejects_broken_user_data(tmp_path, breakage):
    """The validation above means something: a broken copy is refused."""
    old, new = breakage
    text = USER_DATA.read_text()
    assert old in text
    broken = tmp_path / "user-data.yaml"
    broken.write_text(text.replace(old, new, 1))
    done = run(["cloud-init", "schema", "--config-file", str(broken)])
    assert done.returncode != 0, f"cloud-init accepted a broken user-data:\n{broken.read_text()}"
    assert "Valid cloud-config" not in done.stdout


def test_user_data_installs_git_and_provisions():
    assert USER_DATA.read_text().startswith("#cloud-config\n")
    data = user_data()
    assert data["package_update"] is True
    assert {"git", "make"} <= set(data["packages"])
    argv = provision_command()
    settings = dict(a.split("=", 1) for a in argv if re.fullmatch(r"[A-Z_]+=.*", a))
    assert settings["MINI_DOCKER_DIR"] == REPO_DIR
    assert settings["MINI_DOCKER_REPO"], "MINI_DOCKER_REPO must be set for the instructor to edit"
    script = argv[-1]
    assert 'bash "$MINI_DOCKER_DIR/lab/provision.sh"' in script


def test_user_data_runcmd_parses_as_bash():
    done = run(["bash", "-n", "-c", provision_command()[-1]])
    assert done.returncode == 0, done.stderr


@needs_git
def test_user_data_runcmd_clones_then_runs_provision_sh(tmp_path):
    """Run the real runcmd entry, with the repository URL pointed at a local stand-in
    and lab/provision.sh in it replaced by a stub: it clones, then runs the clone's
    lab/provision.sh."""
    marker = tmp_path / "ran"
    origin = tmp_path / "origin"
    (origin / "lab").mkdir(parents=True)
    (origin / "lab" / "provision.sh").write_text(
        f'echo "ran $0" >> "{marker}"\n')
    git("init", "-q", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "lab", cwd=origin)
    clone = tmp_path / "opt" / "mini_docker"
    argv = with_env(provision_command(), MINI_DOCKER_REPO=str(origin),
                    MINI_DOCKER_DIR=str(clone))

    done = run(argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (clone / ".git").is_dir()
    assert marker.read_text().splitlines() == [f"ran {clone}/lab/provision.sh"]

    # A second boot (or a re-run) reuses the clone and provisions again.
    done = run(argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(marker.read_text().splitlines()) == 2


def test_user_data_refuses_the_placeholder_url(tmp_path):
    """Until the instructor sets MINI_DOCKER_REPO, provisioning stops and says why
    (and never tries the network)."""
    argv = with_env(provision_command(), MINI_DOCKER_DIR=str(tmp_path / "mini_docker"))
    assert any("YOUR-ORG" in a for a in argv), "the shipped user-data keeps the placeholder"
    done = run(argv, cwd=tmp_path)
    assert done.returncode != 0
    assert "MINI_DOCKER_REPO" in done.stderr
    assert not (tmp_path / "mini_docker").exists()


# --- Vagrant -----------------------------------------------------------------------


def vagrantfile() -> str:
    # Comments may quote commands; only the code counts.
    return "\n".join(line for line in VAGRANTFILE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))


def test_vagrantfile_provisions_with_provision_sh():
    provisioners = re.findall(
        r'config\.vm\.provision\s+"shell"\s*,\s*path:\s*"([^"]+)"', vagrantfile())
    assert len(provisioners) == 1, "one shell provisioner, running lab/provision.sh"
    # Vagrant resolves the path against the Vagrantfile's directory.
    assert (LAB / provisioners[0]).resolve() == PROVISION.resolve()


def test_vagrantfile_box_resources_folder_and_port():
    text = vagrantfile()
    box = re.search(r'config\.vm\.box\s*=\s*"([^"]+)"', text)
    assert box and box.group(1) in ("bento/ubuntu-24.04", "bento/debian-12",
                                    "debian/bookworm64", "ubuntu/noble64")
    assert re.search(r'synced_folder\s+"\.\."\s*,\s*"/opt/mini_docker"', text)
    assert (LAB / "..").resolve() == ROOT
    port = re.search(r'forwarded_port".*guest:\s*8888.*', text)
    assert port and 'host_ip: "127.0.0.1"' in port.group(0), \
        "JupyterLab must be forwarded to the host's loopback only"
    assert re.search(r"\.cpus\s*=\s*2\b", text)
    assert re.search(r"\.memory\s*=\s*4096\b", text)


@needs_ruby
def test_vagrantfile_is_valid_ruby():
    done = run(["ruby", "-c", str(VAGRANTFILE)])
    assert done.returncode == 0, done.stderr
    assert "Syntax OK" in done.stdout


# A stand-in for Vagrant: records every call the Vagrantfile makes on `config`.
RUBY_RECORDER = r"""
class Recorder
  def initialize(path) @path = path end
  def method_missing(name, *args, **kw, &blk)
    key = "#{@path}.#{name}"
    puts "#{key} #{args.inspect} #{kw.inspect}"
    blk.call(Recorder.new("#{key}(#{args.first})")) if blk
    Recorder.new(key)
  end
  def respond_to_missing?(*) true end
end
module Vagrant
  def self.configure(version) yield Recorder.new("config") end
end
load ARGV[0]
"""


@needs_ruby
def test_vagrantfile_evaluates_to_the_expected_calls(tmp_path):
    recorder = tmp_path / "recorder.rb"
    recorder.write_text(RUBY_RECORDER)
    done = run(["ruby", str(recorder), str(VAGRANTFILE)], cwd=LAB)
    assert done.returncode == 0, done.stderr
    calls = done.stdout
    assert 'config.vm.box= ["bento/ubuntu-24.04"]' in calls
    assert 'config.vm.synced_folder ["..", "/opt/mini_docker"] {}' in calls
    assert re.search(r'config\.vm\.network \["forwarded_port"\] \{.*:?guest.*8888.*'
                     r'host_ip.*"127\.0\.0\.1"', calls)
    assert re.search(r'config\.vm\.provision \["shell"\] \{.*path.*"provision\.sh"', calls)
    assert re.search(r'config\.vm\.provider\(virtualbox\)\.cpus= \[2\]', calls)
    assert re.search(r'config\.vm\.provider\(virtualbox\)\.memory= \[4096\]', calls)


# --- the provisioning script -------------------------------------------------------


def test_scripts_parse():
    for script in (PROVISION, LAB / "host-setup.sh"):
        done = run(["bash", "-n", str(script)])
        assert done.returncode == 0, f"{script.name}: {done.stderr}"


def test_provision_sh_is_executable_and_strict():
    assert os.access(PROVISION, os.X_OK)
    assert PROVISION.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in PROVISION.read_text()


def _provisionable() -> str | None:
    """Why provision.sh cannot be run here without installing anything, if it cannot."""
    if os.geteuid() != 0:
        return "provision.sh runs as root"
    if shutil.which("git") is None or shutil.which("make") is None:
        return "git and make must already be installed (provision.sh would apt-get them)"
    os_release = Path("/etc/os-release")
    text = os_release.read_text() if os_release.exists() else ""
    if not re.search(r"^ID(_LIKE)?=.*\b(debian|ubuntu)\b", text, re.M):
        return "provision.sh runs on Debian or Ubuntu"
    return None


needs_provisionable = pytest.mark.skipif(_provisionable() is not None,
                                         reason=_provisionable() or "")


def provision(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(PROVISION)], cwd=tmp_path, env={**os.environ, **env})


@needs_provisionable
def test_provision_uses_an_existing_checkout_idempotently(tmp_path):
    """Vagrant's case: the repository is already there. Both set-up steps run in it,
    and running again is fine."""
    marker = tmp_path / "ran"
    repo = fake_repository(tmp_path / "mini_docker", marker)
    for _ in range(2):
        done = provision(tmp_path, MINI_DOCKER_DIR=str(repo))
        assert done.returncode == 0, done.stderr
    assert marker.read_text().splitlines() == [
        "host-setup", f"make setup in {repo}", "host-setup", f"make setup in {repo}"]


@needs_provisionable
@needs_git
def test_provision_clones_when_the_repository_is_missing(tmp_path):
    marker = tmp_path / "ran"
    origin = fake_repository(tmp_path / "origin", marker)
    git("init", "-q", cwd=origin)
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "lab", cwd=origin)
    git("tag", "course-2026", cwd=origin)
    target = tmp_path / "opt" / "mini_docker"
    done = provision(tmp_path, MINI_DOCKER_DIR=str(target), MINI_DOCKER_REPO=str(origin),
                     MINI_DOCKER_REF="course-2026")
    assert done.returncode == 0, done.stderr
    assert (target / ".git").is_dir()
    assert marker.read_text().splitlines() == ["host-setup", f"make setup in {target}"]


@needs_provisionable
def test_provision_refuses_the_placeholder_url(tmp_path):
    target = tmp_path / "mini_docker"
    done = provision(tmp_path, MINI_DOCKER_DIR=str(target), MINI_DOCKER_REPO="")
    assert done.returncode == 1
    assert "MINI_DOCKER_REPO" in done.stderr and "placeholder" in done.stderr
    assert not target.exists()


@needs_provisionable
def test_provision_will_not_clone_over_other_files(tmp_path):
    target = tmp_path / "mini_docker"
    target.mkdir()
    (target / "notes.txt").write_text("a learner's work\n")
    done = provision(tmp_path, MINI_DOCKER_DIR=str(target),
                     MINI_DOCKER_REPO=str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "not a mini_docker checkout" in done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_the_three_recipes_agree_on_the_repository_path():
    assert f'MINI_DOCKER_DIR="${{MINI_DOCKER_DIR:-{REPO_DIR}}}"' in PROVISION.read_text()
    assert f"MINI_DOCKER_DIR={REPO_DIR}" in provision_command()
    assert f'"{REPO_DIR}"' in vagrantfile()
