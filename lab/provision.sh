#!/usr/bin/env bash
# Provisions a learner's lab VM for mini_docker: run it as root in a fresh
# Ubuntu 24.04 or Debian 12 machine.
#
#   MINI_DOCKER_REPO=https://git.example.edu/course/mini_docker.git bash provision.sh
#
# It makes sure the repository is at MINI_DOCKER_DIR (cloning it if it is not
# there), then installs the host packages (lab/host-setup.sh) and the Python
# venv with Jupyter's allow_root setting (make setup). The Vagrantfile and the
# cloud-init user-data both run this one script, so every student's VM is built
# the same way. It is idempotent: run it again and it changes nothing that is
# already in place, and it never overwrites a learner's work in the repository.
#
# Settings, from the environment:
#   MINI_DOCKER_REPO  where to clone from when the repository is not there yet.
#                     The default is a placeholder: instructors set it (in
#                     lab/user-data.yaml) to the course's copy of the repository.
#   MINI_DOCKER_REF   branch or tag to check out when cloning (default: the
#                     repository's default branch). Pin a tag to freeze a course.
#   MINI_DOCKER_DIR   where the repository lives (default: /opt/mini_docker; the
#                     Vagrantfile syncs the host's checkout there).
set -euo pipefail

MINI_DOCKER_REPO="${MINI_DOCKER_REPO:-https://github.com/YOUR-ORG/mini_docker.git}"
MINI_DOCKER_REF="${MINI_DOCKER_REF:-}"
MINI_DOCKER_DIR="${MINI_DOCKER_DIR:-/opt/mini_docker}"

say() { echo "provision: $*"; }
die() { echo "provision: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (sudo bash $0)"
[[ -r /etc/os-release ]] && . /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" ubuntu "*|*" debian "*) ;;
    *) die "this lab is for Ubuntu 24.04 or Debian 12, not '${PRETTY_NAME:-unknown}'" ;;
esac

# git is needed to clone, make to run the set-up. host-setup.sh installs both
# again later; this is only what must exist before the repository does.
if ! command -v git >/dev/null || ! command -v make >/dev/null; then
    say "installing git and make"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends git make ca-certificates >/dev/null
fi

# The repository: Vagrant's synced folder, an earlier clone, or a fresh clone.
if [[ -f "$MINI_DOCKER_DIR/lab/host-setup.sh" ]]; then
    say "using the repository at $MINI_DOCKER_DIR"
elif [[ -e "$MINI_DOCKER_DIR" && -n "$(ls -A "$MINI_DOCKER_DIR" 2>/dev/null)" ]]; then
    die "$MINI_DOCKER_DIR exists but is not a mini_docker checkout; move it away first"
else
    case "$MINI_DOCKER_REPO" in
        *YOUR-ORG*) die "set MINI_DOCKER_REPO to the course's repository URL (it is still the placeholder)" ;;
    esac
    say "cloning $MINI_DOCKER_REPO into $MINI_DOCKER_DIR"
    git clone --quiet ${MINI_DOCKER_REF:+--branch "$MINI_DOCKER_REF"} \
        "$MINI_DOCKER_REPO" "$MINI_DOCKER_DIR"
fi

cd "$MINI_DOCKER_DIR"
bash lab/host-setup.sh   # busybox-static, iproute2, nftables, python3-venv, ...
make setup               # .venv with the pinned packages, Jupyter's allow_root

say "the lab is ready: cd $MINI_DOCKER_DIR && sudo make lab"
