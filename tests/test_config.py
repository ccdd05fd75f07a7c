from pathlib import Path

import pytest

from iceburg_daemon.config import load_config, publish_name, to_dict
from iceburg_daemon.errors import ConfigError
from iceburg_daemon.testing import iceburgd

REPO = Path(__file__).resolve().parents[1]


def test_repo_config_is_valid_and_matches_defaults():
    cfg = load_config(REPO / "config.toml", env={})
    defaults = load_config(None, env={})
    # Every key in the shipped file shows the default value, so the two differ only in where paths resolve.
    a, b = to_dict(cfg), to_dict(defaults)
    for section in ("inbox", "sources", "quality", "daemon", "logs", "metrics", "training", "defer", "eval", "gate",
                    "registry", "publish", "surveyor", "general"):
        assert a[section] == b[section], section
    assert cfg.data_dir == REPO / "data"
    assert cfg.paths.models_dir == REPO / "models"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    p = tmp_path / "conf" / "c.toml"
    p.parent.mkdir()
    p.write_text('[paths]\ndata_dir = "state"\n[[sources.chroma]]\nname = "mem"\npath = "../ice/chroma"\n')
    cfg = load_config(p, env={})
    assert cfg.data_dir == tmp_path / "conf" / "state"
    assert cfg.sources.chroma[0].path == tmp_path / "ice" / "chroma"
    assert cfg.db_path == tmp_path / "conf" / "state" / "iceburgd.sqlite3"


def test_every_problem_is_reported_at_once(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        "[inbox]\nsettle_seconds = 'soon'\nafter_ingest = 'shred'\nbogus = 1\n"
        "[metrics]\nport = 70000\n[nonsense]\nx = 1\n[surveyor]\nenabled = 'yes'\n"
        "[[sources.chroma]]\nname = 'a'\n[quality]\nworkers = 9\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    text = "\n".join(err.value.problems)
    for expected in ("inbox.settle_seconds", "inbox.after_ingest", "inbox.bogus: unknown key", "metrics.port",
                     "unknown section [nonsense]", "surveyor.enabled", "missing required key(s): path",
                     "quality.workers"):
        assert expected in text
    assert len(err.value.problems) == 8


def test_env_overrides_win_and_parse_as_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[metrics]\nport = 9000\n")
    cfg = load_config(p, env={"ICEBURGD_METRICS_PORT": "9555", "ICEBURGD_INBOX_AFTER_INGEST": "delete",
                              "ICEBURGD_SURVEYOR_PUBLISH_NAME": "my-surveyor:v1", "HOME": "/x"})
    assert cfg.metrics.port == 9555
    assert cfg.inbox.after_ingest == "delete"
    assert publish_name(cfg, "surveyor") == "my-surveyor:v1"
    assert publish_name(cfg, "oracle") == "iceburg-oracle:latest"
    with pytest.raises(ConfigError) as err:
        load_config(p, env={"ICEBURGD_METRICS_PORT": "many", "ICEBURGD_NOPE_X": "1"})
    assert any("metrics.port" in e for e in err.value.problems)
    assert any("ICEBURGD_NOPE_X" in e for e in err.value.problems)


def test_cli_config_check_and_show(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[metrics]\nport = 9100\n")
    ok = iceburgd("config", "check", config=good)
    assert ok.returncode == 0, ok.stderr
    shown = iceburgd("config", "show", config=good)
    assert "port = 9100" in shown.stdout and "[surveyor]" in shown.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[metrics]\nport = 'x'\n[inbox]\nbatch_size = 0\n")
    res = iceburgd("config", "check", config=bad)
    assert res.returncode == 2
    assert "metrics.port" in res.stderr and "inbox.batch_size" in res.stderr
    assert "Traceback" not in res.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[metrics\n")
    res = iceburgd("config", "check", config=broken)
    assert res.returncode == 2 and "cannot parse" in res.stderr
    missing = iceburgd("config", "check", config=tmp_path / "nope.toml")
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_trigger_and_defer_problems_are_reported_at_once(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[surveyor.trigger]\nschedule = ['0 3 * * 0', '61 * * * *']\ntimezone = 'Mars/Olympus'\n"
                 "min_new_records = 0\nretry_base_minutes = 60.0\nretry_max_minutes = 10.0\n"
                 "[oracle.trigger]\nschedule = ['not cron']\n"
                 "[defer]\nquiet_hours = ['9-17', '22:00-06:00']\npause_running_on = ['battery', 'sunspots']\n"
                 "battery_min_percent = 120.0\n[training]\nmax_concurrent_runs = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    text = "\n".join(err.value.problems)
    for expected in ("unknown time zone 'Mars/Olympus'", "surveyor.trigger: min_new_records",
                     "surveyor.trigger: retry_max_minutes must be >= retry_base_minutes",
                     "oracle.trigger: schedule 'not cron'", "defer.quiet_hours: '9-17' is not HH:MM-HH:MM",
                     "defer.pause_running_on[1]: 'sunspots' is not one of", "defer.battery_min_percent",
                     "training.max_concurrent_runs"):
        assert expected in text
    assert len(err.value.problems) == 8
    ok = tmp_path / "ok.toml"
    ok.write_text("[oracle.trigger]\nschedule = ['0 3 * * 0', '*/30 1-5 * * *']\ntimezone = 'Europe/Berlin'\n")
    assert load_config(ok, env={}).oracle.trigger.schedule == ("0 3 * * 0", "*/30 1-5 * * *")


def test_release_problems_are_reported_at_once(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[gate]\nalpha = 1.5\nmax_template_echo_rise = 2.0\nprimary = 'vibes'\n"
                 "[registry]\nkeep_candidates = -1\n"
                 "[publish]\nollama_host = 'localhost:11434'\nquantize = 'q2'\n[eval]\nbatch_size = 0\n"
                 "[surveyor.train]\nmin_steps = -1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    text = "\n".join(err.value.problems)
    for expected in ("gate.alpha", "gate.max_template_echo_rise", "gate.primary", "registry.keep_candidates",
                     "publish.ollama_host: must start with http://", "publish.quantize", "eval: max_new_tokens",
                     "surveyor.train: min_steps and max_steps must be >= 0"):
        assert expected in text, expected


def test_the_configuration_reference_is_up_to_date_and_describes_every_key():
    """docs/configuration.md is generated from the config dataclasses: regenerate it when a key changes
    (`python -m iceburg_daemon.config_reference > docs/configuration.md`)."""
    from pathlib import Path

    from iceburg_daemon.config_reference import reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    assert docs.read_text(encoding="utf-8") == reference(), "out of date: regenerate docs/configuration.md"
    rows = [line for line in docs.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) > 140 and not [r for r in rows if r.endswith("|  |")]  # every key says what it does
