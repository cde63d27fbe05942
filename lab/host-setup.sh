#!/usr/bin/env bash
# Installs the host packages mini_docker needs on Debian 12 or Ubuntu 24.04.
#
#   lab/host-setup.sh          what the book and the engine need
#   lab/host-setup.sh --test   that, plus the peers and tools the tests compare against
#
# The Makefile, the cloud-init user-data and the Vagrantfile all call this one
# script, so the lab VM and CI cannot drift apart. It is idempotent: when every
# package is already installed it changes nothing and does not touch the network.
set -euo pipefail

# The engine's own needs: static busybox for the base image, iproute2 and a
# firewall for networking, the venv module for the Python environment; runc,
# which chapter 2 runs side by side with mini-runc.
packages=(busybox-static iproute2 iptables nftables kmod procps psmisc util-linux
          python3 python3-venv make git ca-certificates runc)

if [[ "${1:-}" == "--test" ]]; then
    # cloud-init validates the lab's user-data, ruby checks the Vagrantfile,
    # chromium screenshots the book. crun is the other OCI runtime that
    # mini-runc is compared against (tests/test_runc_interop.py, tests/bench/).
    # docker.io and containerd (dockerd, ctr) run mini-runc in place of runc
    # (tests/test_docker_interop.py).
    packages+=(cloud-init ruby chromium crun docker.io containerd skopeo umoci)
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "host-setup: run as root (sudo $0 $*)" >&2
    exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "host-setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "host-setup: host packages ready"
