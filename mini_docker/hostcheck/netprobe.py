"""Proving that veth pairs and bridges work, by making them where no one can see.

A module list says a driver exists; only making a link proves the kernel will
let us. The probe does that in a throwaway network namespace: the kernel layer's
`run_isolated` forks a child, unshares CLONE_NEWNET in it (a child that is not
root unshares CLONE_NEWUSER too, which makes it root in a user namespace of its
own; the probe needs no uid map there, as netlink only asks for CAP_NET_ADMIN
over the new namespace), and runs `_make_links`, which adds a veth pair and a
bridge with pyroute2 and plugs one into the other. The namespace belongs to the
child alone, so when it exits the kernel destroys the namespace and every link
in it: there is nothing to clean up and nothing can leak into the host's
namespace. pyroute2 is imported only in the child, so the command line never
pays for it.

A probe must not hang the report. The child arms an alarm before it starts;
if netlink has not answered when it rings, the signal's default action ends the
child, and the parent, receiving no result, reports the timeout.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from mini_docker.kernel import CLONE_NEWNET, CLONE_NEWUSER, ChildError, SyscallError, run_isolated


@dataclass(frozen=True)
class NetProbe:
    """What a throwaway network namespace let us build.

    ready: the namespace and a netlink socket in it were made, so `veth` and
    `bridge` are the kernel's verdict; when False, `error` says what stopped
    the probe before it could ask.
    """

    ready: bool
    veth: bool = False
    bridge: bool = False
    error: str = ""


def probe_veth_bridge(timeout: float = 10.0) -> NetProbe:
    """Create a veth pair and a bridge, and plug one into the other, in a new network namespace.

    timeout: seconds the child may take before it is killed.
    """
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
    try:
        return run_isolated(_make_links, timeout, flags=flags)
    except SyscallError as err:  # the child could not enter its namespaces
        return NetProbe(False, error=f"{err.syscall}: {err.strerror}")
    except ChildError:  # the alarm ended the child before it answered
        return NetProbe(False, error=f"the probe gave no answer within {timeout:g}s")


def _make_links(timeout: float) -> NetProbe:
    """In the child, in its new namespace: add a veth pair and a bridge, and report how far it got."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a caller's handler must not catch it
    signal.setitimer(signal.ITIMER_REAL, timeout)
    ready = veth = bridge = False
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ready = True
            ipr.link("add", ifname="probe-veth0", kind="veth", peer="probe-veth1")
            veth = True
            ipr.link("add", ifname="probe-br0", kind="bridge")
            master = ipr.link_lookup(ifname="probe-br0")[0]
            ipr.link("set", index=ipr.link_lookup(ifname="probe-veth1")[0], master=master)
            bridge = True
    except BaseException as err:  # report every failure as a verdict, not as a crash
        return NetProbe(ready, veth, bridge, f"{type(err).__name__}: {err}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return NetProbe(ready, veth, bridge)
