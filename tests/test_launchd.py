import os
import plistlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_install_sh_is_a_thin_wrapper_over_the_service_command(tmp_path):
    """launchd/install.sh --print shows what `iceburgd service install` would write for the repository's config."""
    if not (REPO / ".venv" / "bin" / "iceburgd").exists():  # CI installs into .venv; the wrapper needs it
        raise AssertionError("run `make install-dev` first: launchd/install.sh runs .venv/bin/iceburgd")
    out = subprocess.run(["bash", str(REPO / "launchd" / "install.sh"), "--print"], capture_output=True, check=True,
                         timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    plist = plistlib.loads(out.stdout.split(b"\n", 1)[1].split(b"$ launchctl")[0])
    assert plist["Label"] == "com.iceburg.iceburgd"
    assert plist["ProgramArguments"][1:] == ["-m", "iceburg_daemon", "--config", str(REPO / "config.toml"), "run"]
    assert Path(plist["ProgramArguments"][0]).name.startswith("python")
    from iceburg_daemon.config import load_config

    grace = load_config(REPO / "config.toml", env={}).training.stop_grace_seconds
    assert plist["ExitTimeOut"] == int(grace) + 30 > grace  # launchd's ExitTimeOut covers the children's grace
    assert not (tmp_path / "Library").exists()  # --print changes nothing
