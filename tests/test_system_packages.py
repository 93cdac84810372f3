"""`make test` on a fresh machine: the system programs it needs are installed, or it stops
at once with one line saying what to install.

tests/system_packages.sh runs here with stand-ins for `id`, `uname`, `apt-get`, `sudo` and
`brew` at the front of a PATH that holds nothing else of the machine's package tools, so
every branch (root, sudo, no rights, Homebrew, no installer) is exercised without touching
the real system. CI runs the real path on its fresh machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "system_packages.sh"
# Real tools the script (and the package-manager stand-ins) use besides the stand-ins.
REAL_TOOLS = ("sh", "cut", "tr", "env", "true", "chmod")


class Machine:
    """A PATH of stand-ins; each records its calls in `calls` (one line per call)."""

    def __init__(self, root: Path, *, uid: int = 1000, system: str = "Linux") -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.log = root / "calls"
        self.log.touch()
        for tool in REAL_TOOLS:
            os.symlink(shutil.which(tool), self.bin / tool)
        self.stand_in("id", f'[ "$1" = -u ] && echo {uid}')
        self.stand_in("uname", f"echo {system}")

    def stand_in(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {self.log}\n{body}\n')
        path.chmod(0o755)

    def package_manager(self, name: str, installs: dict[str, str]) -> None:
        """`name install ... PACKAGE` makes PACKAGE's program exist; unknown packages fail."""
        cases = "".join(
            f'    {package}) printf "#!/bin/sh\\n" > {self.bin}/{program}; '
            f"chmod +x {self.bin}/{program}; exit 0;;\n"
            for package, program in installs.items()
        )
        self.stand_in(
            name,
            '[ "$1" = install ] || exit 0\nfor last; do :; done\n'
            f'case "$last" in\n{cases}esac\nexit 100',
        )

    def sudo_without_password(self) -> None:
        self.stand_in("sudo", '[ "$1" = -n ] && shift\n"$@"')

    def calls(self) -> list[str]:
        return [
            line
            for line in self.log.read_text().splitlines()
            if not line.startswith(("id ", "uname "))
        ]

    def run(self, *specs: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", str(SCRIPT), *specs],
            env={"PATH": str(self.bin)},
            capture_output=True,
            text=True,
            timeout=30,
        )


CHROMIUM = "chromium:chromium|chromium-browser:-"
REDIS = "redis-server:redis-server:redis"
NO_PACKAGE_MANAGER = (
    "make: redis-server is needed; "
    "install it with your system's package manager (Debian: redis-server)"
)


@pytest.fixture
def machine(tmp_path) -> Machine:
    return Machine(tmp_path)


def test_a_program_already_there_installs_nothing(machine):
    machine.stand_in("chromium", "")
    machine.package_manager("apt-get", {})
    done = machine.run(CHROMIUM)
    assert done.returncode == 0, done.stderr
    assert machine.calls() == []


def test_as_root_a_missing_program_is_installed_with_apt_get(tmp_path):
    machine = Machine(tmp_path, uid=0)
    machine.package_manager("apt-get", {"chromium": "chromium", "redis-server": "redis-server"})
    done = machine.run(CHROMIUM, REDIS)
    assert done.returncode == 0, done.stderr
    installs = [call for call in machine.calls() if "install" in call]
    assert installs == [
        "apt-get install -y -qq chromium",
        "apt-get install -y -qq redis-server",
    ]
    assert (machine.bin / "chromium").exists() and (machine.bin / "redis-server").exists()
    assert sum(call == "apt-get update -qq" for call in machine.calls()) == 1


def test_the_next_alternative_package_is_tried_when_one_is_missing(tmp_path):
    """Ubuntu has no `chromium` package but `chromium-browser`."""
    machine = Machine(tmp_path, uid=0)
    machine.package_manager("apt-get", {"chromium-browser": "chromium"})
    done = machine.run(CHROMIUM)
    assert done.returncode == 0, done.stderr
    assert [c for c in machine.calls() if "install" in c] == [
        "apt-get install -y -qq chromium",
        "apt-get install -y -qq chromium-browser",
    ]


def test_without_root_sudo_that_asks_no_password_is_used(machine):
    machine.package_manager("apt-get", {"redis-server": "redis-server"})
    machine.sudo_without_password()
    done = machine.run(REDIS)
    assert done.returncode == 0, done.stderr
    assert (
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server"
        in machine.calls()
    )


def test_without_rights_to_install_it_stops_with_one_line_naming_the_package(machine):
    machine.package_manager("apt-get", {"chromium": "chromium"})
    done = machine.run(CHROMIUM, REDIS)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "make: chromium is needed; install it as root with: apt-get install chromium"
    ]
    assert not any(call.startswith("apt-get") for call in machine.calls())


def test_a_package_apt_get_cannot_install_stops_with_one_line(tmp_path):
    machine = Machine(tmp_path, uid=0)
    machine.package_manager("apt-get", {})
    done = machine.run(REDIS)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "make: redis-server is needed and apt-get could not install it; "
        "install one of: redis-server"
    ]


def test_on_macos_homebrew_installs_and_a_dash_means_not_from_homebrew(tmp_path):
    machine = Machine(tmp_path, system="Darwin")
    machine.package_manager("brew", {"redis": "redis-server"})
    done = machine.run(CHROMIUM, REDIS)
    assert done.returncode == 0, done.stderr
    assert machine.calls() == ["brew install redis"]


def test_on_macos_without_homebrew_it_stops_with_one_line(tmp_path):
    machine = Machine(tmp_path, system="Darwin")
    done = machine.run(REDIS)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "make: redis-server is needed; install Homebrew, then: brew install redis"
    ]


def test_with_no_package_manager_it_stops_with_one_line(machine):
    done = machine.run(REDIS)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [NO_PACKAGE_MANAGER]


def test_make_test_stops_before_installing_or_testing_when_a_program_is_missing(machine, tmp_path):
    """The Makefile wiring: the system check runs first, and its one line ends `make test`."""
    venv = tmp_path / "venv"
    done = subprocess.run(
        [
            shutil.which("make"),
            "-s",
            "-C",
            str(ROOT),
            "test",
            f"VENV={venv}",
            f"TEST_PROGRAMS={REDIS}",
        ],
        env={"PATH": str(machine.bin)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.splitlines()[0] == (NO_PACKAGE_MANAGER)
    assert not venv.exists(), "make test went on to create the venv"
