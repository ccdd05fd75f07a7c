import plistlib
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_launchd_plist_renders_to_a_valid_foreground_agent():
    out = subprocess.run(["bash", str(REPO / "launchd" / "install.sh"), "--print"], capture_output=True,
                         check=True, timeout=30)
    plist = plistlib.loads(out.stdout)
    assert plist["Label"] == "com.iceburg.iceburgd"
    assert plist["ProgramArguments"] == [f"{REPO}/.venv/bin/iceburgd", "--config", f"{REPO}/config.toml", "run"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    # launchd's ExitTimeOut covers the children's stop grace (it was 30 s against a 60 s grace)
    from iceburg_daemon.config import load_config

    grace = load_config(REPO / "config.toml", env={}).training.stop_grace_seconds
    assert plist["ExitTimeOut"] == int(grace) + 30 > grace
    assert "__" not in out.stdout.decode()
