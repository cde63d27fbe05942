"""`mini-docker check-config` and the `mini_docker.hostcheck` library.

Two kinds of test. On the real machine, the report must agree with what the
test reads for itself from /proc, /sys and the ELF headers. On a fake host (a
proc and sys tree built in tmp_path), the report must catch what was left out,
name it, give its fix and exit 1.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mini_docker import hostcheck
from mini_docker.cli.check_config import NAME_WIDTH, format_report
from mini_docker.hostcheck import cgroup_layout, cgroup_mode, elf_interpreter, run_checks

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable
ALL_KINDS = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")
HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:10 - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""
FILESYSTEMS = "".join(f"nodev\t{name}\n" for name in
                      ("sysfs", "tmpfs", "proc", "devpts", "overlay", "mqueue"))
WITHOUT_OVERLAY_AND_MQUEUE = "".join(f"nodev\t{name}\n" for name in
                                     ("sysfs", "tmpfs", "proc", "devpts"))
PROC_CGROUPS = """\
#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t0\t1\t1
cpu\t1\t1\t1
cpuacct\t1\t1\t1
blkio\t0\t1\t1
memory\t4\t44\t1
devices\t0\t1\t1
freezer\t6\t1\t1
hugetlb\t0\t1\t1
pids\t8\t1\t1
"""
PROC_CGROUPS_V2 = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + "".join(
    f"{name}\t0\t1\t1\n" for name in ("cpuset", "cpu", "cpuacct", "blkio", "memory", "devices",
                                      "freezer", "hugetlb", "pids"))


def real_busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path) or elf_interpreter(path) is not None:
        pytest.skip("this host has no static busybox to build a fake host with")
    return path


class FakeHost:
    """A proc and sys tree in a temporary directory: a complete host, until a test breaks it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc, self.sys, self.bin = root / "proc", root / "sys", root / "bin"
        self.modules = root / "lib" / "modules"
        self.write("proc/filesystems", FILESYSTEMS)
        for kind in ALL_KINDS:
            (self.proc / "self" / "ns").mkdir(parents=True, exist_ok=True)
            (self.proc / "self" / "ns" / kind).symlink_to(f"{kind}:[4026531840]")
        self.write("proc/self/mountinfo", HYBRID_MOUNTINFO)
        self.write("proc/cgroups", PROC_CGROUPS)
        self.write("proc/sys/kernel/osrelease", "6.1.0-fake-amd64\n")
        self.write("proc/sys/kernel/cap_last_cap", "40\n")
        self.write("proc/sys/user/max_user_namespaces", "63000\n")
        self.write("proc/sys/net/ipv4/ip_forward", "1\n")
        self.write("proc/self/status", "Name:\tpython\nCapBnd:\t000001ffffffffff\n"
                   "NoNewPrivs:\t0\nSeccomp:\t0\n")
        self.write("sys/fs/cgroup/unified/cgroup.controllers", "hugetlb\n")
        for module in ("veth", "bridge"):
            (self.sys / "module" / module).mkdir(parents=True)
        self.bin.mkdir()
        (self.bin / "busybox").symlink_to(real_busybox())
        for tool in ("iptables", "ip"):
            (self.bin / tool).symlink_to("/bin/true")

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def as_v2(self, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> None:
        self.write("proc/self/mountinfo", V2_MOUNTINFO)
        self.write("proc/cgroups", PROC_CGROUPS_V2)
        self.write("sys/fs/cgroup/cgroup.controllers", controllers + "\n")

    def check(self, euid: int = 0) -> hostcheck.HostReport:
        return run_checks(proc=str(self.proc), sys=str(self.sys), path=str(self.bin),
                          euid=euid, modules=str(self.modules))

    def cli_args(self, euid: int = 0) -> list[str]:
        return ["--proc", str(self.proc), "--sys", str(self.sys), "--path", str(self.bin),
                "--euid", str(euid), "--modules", str(self.modules)]


@pytest.fixture
def fake(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mini_docker check-config ARGS` as a user would."""
    return subprocess.run([PYTHON, "-m", "mini_docker", "check-config", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=env)


def line_of(output: str, name: str) -> str:
    """The report line for check `name`, and the line after it (its fix, if any)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"  {name} ."):
            return line + "\n" + (lines[i + 1] if i + 1 < len(lines) else "")
    raise AssertionError(f"no line for {name!r} in:\n{output}")


# --- the real host ------------------------------------------------------------

def test_cgroups_agree_with_mountinfo() -> None:
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ")
            mounts.append((left.split()[4], right.split()[0], right.split()[2].split(",")))
    v1 = {opt: point for point, fstype, opts in mounts if fstype == "cgroup" for opt in opts}
    cgroup2 = [point for point, fstype, _ in mounts if fstype == "cgroup2"]
    if "/sys/fs/cgroup" in cgroup2:
        expected = "v2"
    elif v1:
        expected = "hybrid" if cgroup2 else "v1"
    else:
        expected = "v2" if cgroup2 else "none"

    report = run_checks()
    assert cgroup_mode() == report.cgroups.mode == expected
    memory = report.get("cgroups", "memory")
    if expected in ("v1", "hybrid"):
        assert report.cgroups.v1["memory"] == v1["memory"]
        assert memory.status == "ok" and memory.detail == f"v1: {v1['memory']}"
        assert report.cgroups.unified == (cgroup2[0] if cgroup2 else None)
    else:
        root = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        assert report.cgroups.v2 == tuple(root)


def test_namespaces_filesystems_and_busybox_agree_with_the_host() -> None:
    report = run_checks()
    present = set(os.listdir("/proc/self/ns"))
    for kind in ALL_KINDS:
        assert (report.get("Namespaces", kind).status == "ok") == (kind in present), kind
    filesystems = Path("/proc/filesystems").read_text().split()
    assert (report.get("Filesystems", "overlay").status == "ok") == ("overlay" in filesystems)

    busybox = report.get("Tools", "busybox")
    found = shutil.which("busybox", path=hostcheck.default_path())
    if found is None or shutil.which("readelf") is None:
        pytest.skip("no busybox or no readelf to compare with")
    headers = subprocess.run(["readelf", "-lW", found], capture_output=True, text=True).stdout
    static = "program interpreter" not in headers
    assert (busybox.status == "ok") == static
    assert found in busybox.detail


def test_elf_interpreter_tells_static_from_dynamic(tmp_path: Path) -> None:
    assert elf_interpreter(real_busybox()) is None
    dynamic = os.path.realpath("/bin/sh")
    headers = subprocess.run(["readelf", "-lW", dynamic], capture_output=True, text=True).stdout \
        if shutil.which("readelf") else ""
    loader = elf_interpreter(dynamic)
    assert loader and loader.startswith("/") and (not headers or loader in headers)
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ValueError):
        elf_interpreter(str(script))


def make_elf(bits: int, order: str, interpreter: bytes | None) -> bytes:
    """A minimal ELF file: a PT_LOAD header, then PT_INTERP if `interpreter` is given.

    p_memsz is set unlike p_filesz, so reading the wrong field shows.
    """
    is64 = bits == 64
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if order == "<" else 2, 1]) + bytes(9)
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    count = 2 if interpreter else 1
    data_at = ehsize + count * phentsize
    word = "Q" if is64 else "I"  # e_entry, e_phoff, e_shoff and most p_ fields
    header = struct.pack(order + f"HHI{word * 3}IHHHHHH", 2, 62 if is64 else 3, 1, 0, ehsize, 0,
                         0, ehsize, phentsize, count, 0, 0, 0)

    def phdr(kind: int, offset: int, size: int) -> bytes:
        if is64:  # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
            return struct.pack(order + "IIQQQQQQ", kind, 4, offset, 0, 0, size, 999, 1)
        # p_type p_offset p_vaddr p_paddr p_filesz p_memsz p_flags p_align
        return struct.pack(order + "IIIIIIII", kind, offset, 0, 0, size, 999, 4, 1)

    body = ident + header + phdr(1, 0, 0)
    if interpreter:
        body += phdr(3, data_at, len(interpreter) + 1) + interpreter + b"\0"
    return body


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("order", ["<", ">"])
def test_elf_interpreter_reads_both_classes_and_byte_orders(
        tmp_path: Path, bits: int, order: str) -> None:
    dynamic, static = tmp_path / "dynamic", tmp_path / "static"
    dynamic.write_bytes(make_elf(bits, order, b"/lib/ld-linux.so.2"))
    static.write_bytes(make_elf(bits, order, None))
    assert elf_interpreter(str(dynamic)) == "/lib/ld-linux.so.2"
    assert elf_interpreter(str(static)) is None


def test_cli_on_this_host_exits_by_its_verdict_without_traceback() -> None:
    result = cli()
    report = run_checks()
    assert result.returncode == (0 if report.ok else 1)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[-1] == report.summary()
    for section in hostcheck.SECTIONS:
        assert section in lines
    assert "\033" not in result.stdout  # a pipe gets no colour
    assert report.cgroups.describe() in line_of(result.stdout, "mode")


def test_json_output_is_the_structured_result() -> None:
    result = cli("--json")
    assert result.stderr == ""
    data = json.loads(result.stdout)
    report = run_checks()
    assert data["ok"] == report.ok and result.returncode == (0 if report.ok else 1)
    assert data["cgroups"] == json.loads(json.dumps(report.cgroups.to_dict()))
    for check in report.checks:
        assert data["sections"][check.section][check.name]["status"] == check.status
    assert data["sections"]["cgroups"]["memory"]["status"] == "ok"


def test_quiet_prints_only_problems() -> None:
    result = cli("--quiet")
    report = run_checks()
    problems = {c.name for c in report.missing + report.warnings}
    shown = {line.split(" .")[0].strip() for line in result.stdout.splitlines() if " ..." in line}
    assert shown == problems
    assert result.stdout.splitlines()[-1] == report.summary()


def test_colour_only_on_a_terminal_without_no_color() -> None:
    def run_on_tty(env: dict[str, str]) -> str:
        leader, follower = pty.openpty()
        with os.fdopen(leader, "rb", buffering=0) as out:
            proc = subprocess.Popen([PYTHON, "-m", "mini_docker", "check-config"], cwd=REPO,
                                    stdout=follower, stderr=subprocess.DEVNULL, env=env)
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = out.read(65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            proc.wait(timeout=60)
        return b"".join(chunks).decode()

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\033[32mok\033[0m" in run_on_tty(env)
    assert "\033[" not in run_on_tty({**env, "NO_COLOR": "1"})


def test_netns_probe_builds_links_and_leaves_nothing_behind() -> None:
    if shutil.which("ip") is None:
        pytest.skip("needs ip to list links")

    def link_names() -> set[str]:
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}

    def net_namespace_holders() -> dict[str, set[int]]:
        holders: dict[str, set[int]] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                holders.setdefault(os.readlink(f"/proc/{pid}/ns/net"), set()).add(int(pid))
            except OSError:
                pass
        return holders

    def descends_from_us(pid: int) -> bool:
        while pid > 1:
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                return False
            if pid == os.getpid():
                return True
        return False

    links_before, netns_before = link_names(), net_namespace_holders()
    probe = hostcheck.probe_veth_bridge()
    assert probe.ready and probe.veth and probe.bridge, probe.error
    # Other tests may add or remove links and namespaces meanwhile: judge only ours.
    changed = links_before ^ link_names()
    assert not [name for name in changed if name.startswith("probe-")]
    assert "probe-veth0" not in link_names() and "probe-br0" not in link_names()
    new = set(net_namespace_holders()) - set(netns_before)
    assert not [ns for ns in new
                if any(descends_from_us(pid) for pid in net_namespace_holders().get(ns, ()))]


# --- simulated hosts -------------------------------------------------------------

def test_complete_fake_host_passes(fake: FakeHost) -> None:
    report = fake.check()
    assert report.ok, report.summary()
    assert report.cgroups.mode == "hybrid"
    assert report.get("cgroups", "cpu").detail == "v1: /sys/fs/cgroup/cpu,cpuacct"
    assert report.get("Kernel", "version").detail == "6.1.0-fake-amd64"


def test_fake_host_missing_things_exits_1_naming_each_with_its_fix(fake: FakeHost) -> None:
    fake.write("proc/filesystems", WITHOUT_OVERLAY_AND_MQUEUE)
    (fake.bin / "busybox").unlink()

    result = cli(*fake.cli_args(euid=1000))
    assert result.returncode == 1
    assert result.stderr == ""
    out = result.stdout
    assert "missing (euid 1000)" in line_of(out, "root")
    assert "fix: run as root" in line_of(out, "root")
    assert "overlay ........" in line_of(out, "overlay") and "missing" in line_of(out, "overlay")
    assert "fix: use a kernel built with CONFIG_OVERLAY_FS" in line_of(out, "overlay")
    assert "missing (not found on PATH)" in line_of(out, "busybox")
    assert "fix: apt-get install busybox-static" in line_of(out, "busybox")
    assert "warning" in line_of(out, "mqueue")
    assert out.splitlines()[-1] == "Summary: 3 required missing (root, overlay, busybox), 1 warning"


def test_overlay_module_on_disk_gives_modprobe_fix(fake: FakeHost) -> None:
    fake.write("proc/filesystems", WITHOUT_OVERLAY_AND_MQUEUE)
    fake.write("lib/modules/6.1.0-fake-amd64/modules.dep",
               "kernel/fs/overlayfs/overlay.ko.xz:\n"
               "kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz\n")
    overlay = fake.check().get("Filesystems", "overlay")
    assert (overlay.status, overlay.fix) == ("warning", "modprobe overlay")


def test_dynamic_busybox_is_not_enough(fake: FakeHost) -> None:
    (fake.bin / "busybox").unlink()
    (fake.bin / "busybox").symlink_to(os.path.realpath("/bin/sh"))
    busybox = fake.check().get("Tools", "busybox")
    assert busybox.status == "missing" and "dynamically linked" in busybox.detail
    assert busybox.fix == "apt-get install busybox-static"


def test_no_firewall_tool_and_no_ip(fake: FakeHost) -> None:
    (fake.bin / "iptables").unlink()
    (fake.bin / "ip").unlink()
    report = fake.check()
    firewall = report.get("Networking", "iptables/nft")
    assert firewall.status == "missing" and firewall.fix == "apt-get install iptables nftables"
    assert report.get("Tools", "ip").status == "warning"


def test_missing_namespace_and_disabled_user_namespaces(fake: FakeHost) -> None:
    (fake.proc / "self" / "ns" / "pid").unlink()
    (fake.proc / "self" / "ns" / "time").unlink()
    fake.write("proc/sys/user/max_user_namespaces", "0\n")
    fake.write("proc/sys/kernel/unprivileged_userns_clone", "0\n")
    report = fake.check()
    clone = report.get("Namespaces", "unprivileged_userns")
    assert clone.status == "info" and clone.detail.startswith("kernel.unprivileged_userns_clone=0")
    assert report.get("Namespaces", "pid").status == "missing"
    assert report.get("Namespaces", "time").status == "warning"
    limit = report.get("Namespaces", "max_user_namespaces")
    assert limit.status == "warning" and "sysctl -w user.max_user_namespaces" in limit.fix
    assert [c.name for c in report.missing] == ["pid"]


def test_capability_bounding_set_without_sys_admin(fake: FakeHost) -> None:
    no_sys_admin = (1 << 41) - 1 & ~(1 << 21)
    fake.write("proc/self/status", f"CapBnd:\t{no_sys_admin:016x}\nNoNewPrivs:\t0\nSeccomp:\t2\n")
    caps = fake.check().get("Security", "capabilities")
    assert caps.status == "missing" and "CAP_SYS_ADMIN" in caps.detail


def test_fake_v2_host_reads_cgroup_controllers(fake: FakeHost) -> None:
    fake.as_v2()
    layout = cgroup_layout(str(fake.proc), str(fake.sys))
    assert cgroup_mode(str(fake.proc), str(fake.sys)) == layout.mode == "v2"
    assert layout.unified == "/sys/fs/cgroup" and layout.v1 == {}
    assert layout.v2 == ("cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc")
    report = fake.check()
    assert report.ok, report.summary()
    assert report.get("cgroups", "memory").detail == "v2: /sys/fs/cgroup"
    assert report.get("cgroups", "blkio/io").detail == "v2: /sys/fs/cgroup"
    assert "cgroup.freeze" in report.get("cgroups", "freezer").detail
    assert report.get("cgroups", "mode").detail == "v2 (unified at /sys/fs/cgroup)"


def test_fake_v2_host_without_pids_controller(fake: FakeHost) -> None:
    fake.as_v2("cpu io memory")
    report = fake.check()
    assert [c.name for c in report.missing] == ["pids"]
    assert report.get("cgroups", "cpuset").status == "warning"


def test_fake_v1_host_and_an_unmounted_controller(fake: FakeHost) -> None:
    fake.write("proc/self/mountinfo", HYBRID_MOUNTINFO.replace(
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "").replace(
        "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n", ""))
    report = fake.check()
    assert report.cgroups.mode == "v1"
    freezer = report.get("cgroups", "freezer")
    assert freezer.status == "missing"
    assert freezer.fix == ("mkdir -p /sys/fs/cgroup/freezer && "
                           "mount -t cgroup -o freezer cgroup /sys/fs/cgroup/freezer")


def test_mountinfo_parsing_handles_escapes_and_optional_fields() -> None:
    text = ("36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext3 /dev/root "
            "rw,errors=continue\n"
            "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
            "garbage\n")
    first, second = hostcheck.parse_mountinfo(text)
    assert (first.mount_point, first.fstype, first.source) == ("/mnt two", "ext3", "/dev/root")
    assert first.options == ("rw", "errors=continue")
    assert (second.mount_point, second.fstype) == ("/sys/fs/cgroup/unified", "cgroup2")


def test_an_empty_host_is_reported_not_crashed_on(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").mkdir()
    result = cli("--proc", str(tmp_path / "proc"), "--sys", str(tmp_path / "sys"),
                 "--path", "", "--modules", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == ""
    assert "missing (none: no cgroup filesystem mounted)" in line_of(result.stdout, "mode")
    assert result.stdout.splitlines()[-1].startswith("Summary: ")

    as_json = cli("--json", "--proc", str(tmp_path / "proc"), "--sys", str(tmp_path / "sys"),
                  "--path", "", "--modules", str(tmp_path))
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_text_format_puts_the_fix_under_the_problem(fake: FakeHost) -> None:
    (fake.bin / "busybox").unlink()
    report = fake.check()
    assert max(len(c.name) for c in report.checks) <= NAME_WIDTH - 3  # room for dots
    text = format_report(report, quiet=True)
    assert text.splitlines() == [
        "Tools",
        "  busybox ................. missing (not found on PATH)",
        "                            fix: apt-get install busybox-static",
        "Summary: 1 required missing (busybox), 0 warnings",
    ]


def test_the_command_stays_light() -> None:
    """pyroute2 is imported only in the probe's child: the command itself never pays for it."""
    code = ("import sys; from mini_docker.cli import check_config; "
            "check_config.run_checks(); print(sorted(m for m in sys.modules if 'pyroute2' in m))")
    result = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
