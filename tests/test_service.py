"""`iceburgd service`: the launchd agent's plist (built with plistlib) and the exact launchctl command lines,
with `launchctl` replaced by a recording stub on PATH. The config lives in a folder whose name has a space, `&`
and non-ASCII letters: the old sed template broke on such paths."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from iceburg_daemon.config import load_config
from iceburg_daemon.service import LABEL, parse_print, render
from iceburg_daemon.testing import write_config

STUB = """#!/bin/sh
printf '%s\\n' "$*" >> "$LAUNCHCTL_LOG"
if [ "$1" = "print" ]; then
  [ -n "$LAUNCHCTL_NOT_LOADED" ] && { echo "Could not find service" >&2; exit 113; }
  cat "$LAUNCHCTL_PRINT"
fi
[ "$1" = "bootout" ] && [ -n "$LAUNCHCTL_NOT_LOADED" ] && { echo "No such process" >&2; exit 3; }
exit 0
"""

PRINT = """gui/501/com.iceburg.iceburgd = {
\tactive count = 1
\tpath = /Users/u/Library/LaunchAgents/com.iceburg.iceburgd.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /Users/u/iceburg_daemon/.venv/bin/python
\targuments = {
\t\t/Users/u/iceburg_daemon/.venv/bin/python
\t\t-m
\t\ticeburg_daemon
\t}

\truns = 3
\tpid = 4242
\tlast exit code = 0
\tendpoints = {
\t\tstate = whatever
\t}
}
"""


@pytest.fixture
def odd_home(tmp_path):
    folder = tmp_path / "my data & ünïcode"
    cfg_path = write_config(folder, "[training]\nstop_grace_seconds = 45.0\n")
    return cfg_path, tmp_path / "home dir"


def _service(cfg_path: Path, home: Path, *args: str, path: str | None = None, **env: str):
    full = {**os.environ, "HOME": str(home), **env}
    if path is not None:
        full["PATH"] = path
    return subprocess.run([sys.executable, "-m", "iceburg_daemon", "--config", str(cfg_path), "service", *args],
                          capture_output=True, text=True, env=full, timeout=60, stdin=subprocess.DEVNULL)


def _stub(tmp_path: Path) -> tuple[str, Path]:
    bin_dir = tmp_path / "stub bin"
    bin_dir.mkdir()
    (bin_dir / "launchctl").write_text(STUB)
    (bin_dir / "launchctl").chmod(0o755)
    (tmp_path / "print.txt").write_text(PRINT)
    return f"{bin_dir}:{os.environ['PATH']}", tmp_path / "launchctl.log"


def test_the_plist_round_trips_and_holds_every_key_with_absolute_paths(odd_home):
    cfg_path, home = odd_home
    cfg = load_config(cfg_path, env={})
    plist = render(cfg, python=sys.executable, home=home, env={"PATH": "/usr/bin:/bin", "OLLAMA_HOST": "10.0.0.2"})
    for data in (plistlib.dumps(plist), plistlib.dumps(plist, fmt=plistlib.FMT_BINARY)):
        assert plistlib.loads(data) == plist
    types = {"Label": str, "ProgramArguments": list, "WorkingDirectory": str, "EnvironmentVariables": dict,
             "RunAtLoad": bool, "KeepAlive": dict, "ThrottleInterval": int, "ExitTimeOut": int, "ProcessType": str,
             "LowPriorityIO": bool, "Nice": int, "StandardOutPath": str, "StandardErrorPath": str}
    assert {k: type(v) for k, v in plist.items()} == types
    assert plist["ProgramArguments"] == [str(Path(sys.executable).absolute()), "-m", "iceburg_daemon", "--config",
                                         str(cfg_path.resolve()), "run"]
    assert "my data & ünïcode" in plist["ProgramArguments"][4]
    assert all(Path(p).is_absolute() for p in (plist["ProgramArguments"][0], plist["ProgramArguments"][4],
                                                plist["WorkingDirectory"], plist["StandardOutPath"],
                                                plist["StandardErrorPath"]))
    assert plist["EnvironmentVariables"] == {"PATH": "/usr/bin:/bin", "OLLAMA_HOST": "10.0.0.2"}
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["ExitTimeOut"] == 45 + 30 == cfg.shutdown_seconds  # the config's own grace plus margin
    assert plist["ProcessType"] == "Background" and plist["StandardOutPath"] == str(
        home / "Library" / "Logs" / "iceburgd" / "iceburgd.out.log")
    assert "OLLAMA_HOST" not in render(cfg, python=sys.executable, home=home, env={"PATH": "/bin"})[
        "EnvironmentVariables"]


def test_install_status_restart_uninstall_run_the_exact_launchctl_commands(odd_home, tmp_path):
    cfg_path, home = odd_home
    path, log = _stub(tmp_path)
    env = {"LAUNCHCTL_LOG": str(log), "LAUNCHCTL_PRINT": str(tmp_path / "print.txt")}
    uid, agent = os.getuid(), home / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    done = _service(cfg_path, home, "install", path=path, **env)
    assert done.returncode == 0, done.stderr
    assert plistlib.loads(agent.read_bytes())["ProgramArguments"][4] == str(cfg_path.resolve())
    assert (home / "Library" / "Logs" / "iceburgd").is_dir()
    status = _service(cfg_path, home, "status", "--json", path=path, **env)
    assert json.loads(status.stdout)["loaded"] is True and json.loads(status.stdout)["pid"] == 4242
    assert _service(cfg_path, home, "restart", path=path, **env).returncode == 0
    assert _service(cfg_path, home, "uninstall", path=path, **env).returncode == 0
    assert not agent.exists()
    assert log.read_text().splitlines() == [
        f"bootout gui/{uid}/{LABEL}", f"bootstrap gui/{uid} {agent}",
        f"print gui/{uid}/{LABEL}", f"kickstart -k gui/{uid}/{LABEL}", f"bootout gui/{uid}/{LABEL}"]

    not_loaded = _service(cfg_path, home, "status", path=path, LAUNCHCTL_NOT_LOADED="1", **env)
    assert not_loaded.returncode == 0 and "not loaded" in not_loaded.stdout
    failed = _service(cfg_path, home, "uninstall", path=path, LAUNCHCTL_NOT_LOADED="1", **env)
    assert failed.returncode == 1 and "No such process" in failed.stderr


def test_an_invalid_config_is_refused_before_anything_is_installed(tmp_path):
    cfg_path = write_config(tmp_path / "cfg", "[inbox]\nsettle_seconds = -1.0\n")
    path, log = _stub(tmp_path)
    done = _service(cfg_path, tmp_path / "home", "install", path=path, LAUNCHCTL_LOG=str(log))
    assert done.returncode == 2 and "settle_seconds" in done.stderr
    assert not log.exists() and not (tmp_path / "home" / "Library").exists()


def test_without_launchctl_it_says_so_and_dry_run_prints_everything(odd_home, tmp_path):
    cfg_path, home = odd_home
    bare = tmp_path / "bare"
    bare.mkdir()
    done = _service(cfg_path, home, "install", path=str(bare))
    assert done.returncode == 4 and "launchctl not found" in done.stderr
    assert not (home / "Library").exists()
    dry = _service(cfg_path, home, "install", "--dry-run", path=str(bare))
    assert dry.returncode == 0 and f"$ launchctl bootstrap gui/{os.getuid()} " in dry.stdout
    plist_text = dry.stdout.split("\n", 1)[1].split("$ launchctl")[0]
    assert plistlib.loads(plist_text.encode())["Label"] == LABEL
    as_json = json.loads(_service(cfg_path, home, "restart", "--dry-run", "--json", path=str(bare)).stdout)
    assert as_json["commands"] == [f"launchctl kickstart -k gui/{os.getuid()}/{LABEL}"] and as_json["dry_run"]


def test_launchctl_print_is_parsed_from_its_top_level_keys():
    assert parse_print(PRINT) == {"plist": "/Users/u/Library/LaunchAgents/com.iceburg.iceburgd.plist",
                                  "state": "running", "program": "/Users/u/iceburg_daemon/.venv/bin/python",
                                  "runs": 3, "pid": 4242, "last_exit_code": 0}


def test_start_up_errors_exit_non_zero_with_one_line_on_stderr(tmp_path):
    """launchd's KeepAlive restarts a failing daemon every ThrottleInterval: its error log must say why."""
    bad = write_config(tmp_path / "bad", "[inbox]\nsettle_seconds = -1.0\nbatch_size = 0\n")
    done = subprocess.run([sys.executable, "-m", "iceburg_daemon", "--config", str(bad), "run"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "settle_seconds" in done.stderr and "batch_size" in done.stderr
    (tmp_path / "data" / "logs").parent.mkdir()
    (tmp_path / "data" / "logs").write_text("a file where the logs folder goes")  # root ignores permissions
    unusable = write_config(tmp_path / "unusable", f"[paths]\ndata_dir = '{tmp_path / 'data'}'\n")
    done = subprocess.run([sys.executable, "-m", "iceburg_daemon", "--config", str(unusable), "run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("iceburgd: cannot use ") and "Traceback" not in done.stderr


@pytest.mark.parametrize("arch,version,ok", [("arm64", "14.4", True), ("arm64", "15.1", True),
                                             ("x86_64", "14.4", False), ("arm64", "13.6", False)])
def test_make_stops_on_a_mac_torch_has_no_wheels_for(tmp_path, arch, version, ok):
    """`make run` / `make install` on an Intel Mac or macOS < 14 says why instead of a pip resolver error."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "uname").write_text(f'#!/bin/sh\n[ "$1" = "-s" ] && echo Darwin || echo {arch}\n')
    (stubs / "sw_vers").write_text(f"#!/bin/sh\necho {version}\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["make", "-s", "platform"], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})
    assert (done.returncode == 0) is ok, done.stderr
    if not ok:
        assert "torch 2.13 ships macOS wheels only for arm64 on macOS 14+" in done.stderr
        assert f"(this Mac: {arch}, macOS {version})" in done.stderr
