"""Deferral probes on output captured from the platforms (pmset, ioreg, /sys/class/power_supply), missing
commands and garbage; and the deferral rules over them."""

from datetime import datetime
from pathlib import Path

import pytest

from iceburg_daemon.config_trigger import DeferConfig
from iceburg_daemon.trigger.defer import holds, in_quiet_hours, pausing
from iceburg_daemon.trigger.probes import (Conditions, Power, Probes, parse_ioreg_idle, parse_pmset_batt,
                                           parse_pmset_therm, parse_power_supplies)

# `pmset -g batt` on a MacBook: on battery, charging on AC, full, optimised charging holding at 80 %, a Mac mini
BATT_DISCHARGING = ("Now drawing from 'Battery Power'\n"
                    " -InternalBattery-0 (id=4653155)\t41%; discharging; 3:12 remaining present: true\n")
BATT_CHARGING = ("Now drawing from 'AC Power'\n"
                 " -InternalBattery-0 (id=4653155)\t87%; charging; 0:35 remaining present: true\n")
BATT_CHARGED = ("Now drawing from 'AC Power'\n"
                " -InternalBattery-0 (id=4653155)\t100%; charged; 0:00 remaining present: true\n")
BATT_HELD = ("Now drawing from 'AC Power'\n"
             " -InternalBattery-0 (id=4653155)\t80%; AC attached; not charging present: true\n")
BATT_NONE = "Now drawing from 'AC Power'\n"
BATT_UPS = "Now drawing from 'UPS Power'\n -CP1500PFCLCD (id=1234)\t93%; discharging; (no estimate) present: true\n"
IOREG = """+-o IOHIDSystem  <class IOHIDSystem, id 0x100000543, registered, matched, active, busy 0 (0 ms), retain 28>
    {
      "IOClass" = "IOHIDSystem"
      "HIDIdleTime" = 734000000000
      "HIDParameters" = {"HIDClickSpace"=(5,5)}
    }
"""
THERM_OK = ("Note: No thermal warning level has been recorded\n"
            "Note: No performance warning level has been recorded\n"
            "Note: No CPU power status has been recorded\n")
THERM_LIMITED = ("Note: No thermal warning level has been recorded\n"
                 "Note: No performance warning level has been recorded\n"
                 "CPU Power notify\n\tCPU_Scheduler_Limit \t= 100\n\tCPU_Available_CPUs \t= 8\n"
                 "\tCPU_Speed_Limit \t= 70\n")


@pytest.mark.parametrize("text,expected", [
    (BATT_DISCHARGING, Power(True, 41.0)), (BATT_CHARGING, Power(False, 87.0)), (BATT_CHARGED, Power(False, 100.0)),
    (BATT_HELD, Power(False, 80.0)), (BATT_NONE, Power(False, None)), (BATT_UPS, Power(True, 93.0))])
def test_pmset_batt(text, expected):
    assert parse_pmset_batt(text) == expected


def test_pmset_garbage_is_an_error_the_probe_turns_into_unknown():
    with pytest.raises(ValueError):
        parse_pmset_batt("pmset: command failed\n")


def _sys(tmp_path: Path, supplies: dict) -> Path:
    for name, files in supplies.items():
        (tmp_path / name).mkdir(parents=True)
        for key, value in files.items():
            (tmp_path / name / key).write_text(value + "\n")
    return tmp_path


@pytest.mark.parametrize("supplies,expected", [
    ({"AC": {"type": "Mains", "online": "1"}, "BAT0": {"type": "Battery", "status": "Charging", "capacity": "55"}},
     Power(False, 55.0)),
    ({"AC": {"type": "Mains", "online": "0"}, "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "23"}},
     Power(True, 23.0)),
    ({"ADP1": {"type": "Mains", "online": "1"}, "BAT1": {"type": "Battery", "status": "Full", "capacity": "100"}},
     Power(False, 100.0)),
    ({"ucsi-source-psy-USBC000:001": {"type": "USB", "online": "1"},
      "BAT0": {"type": "Battery", "status": "Not charging", "capacity": "80"}}, Power(False, 80.0)),
    ({"hidpp_battery_0": {"type": "Battery", "status": "Discharging", "capacity": "60", "scope": "Device"}},
     Power(None, None)),  # a wireless mouse's battery says nothing about the machine's power
    ({}, Power(None, None)),  # a desktop or a VM: unknown, treated as AC
])
def test_linux_power_supply(tmp_path, supplies, expected):
    probes = Probes([tmp_path], platform="linux", sys_root=_sys(tmp_path / "ps", supplies))
    assert probes.power() == expected
    assert parse_power_supplies({k: v for k, v in supplies.items()}) == expected


def test_ioreg_idle_and_pmset_therm():
    assert parse_ioreg_idle(IOREG) == pytest.approx(734.0)
    assert parse_pmset_therm(THERM_OK) is None
    assert parse_pmset_therm(THERM_LIMITED) == 70.0
    with pytest.raises(ValueError):
        parse_ioreg_idle("garbage")


def test_a_mac_is_probed_through_its_commands_and_a_missing_command_reads_as_unknown(tmp_path):
    outputs = {"batt": BATT_DISCHARGING, "IOHIDSystem": IOREG, "therm": THERM_LIMITED}
    calls = []

    def mac(argv):
        calls.append(argv)
        return outputs[argv[-1]]

    cond = Probes([tmp_path], platform="darwin", run=mac).read()
    assert cond.power == Power(True, 41.0) and cond.idle_seconds == pytest.approx(734.0)
    assert cond.cpu_speed_limit == 70.0 and cond.free_disk_gb > 0
    assert sorted(c[-1] for c in calls) == ["IOHIDSystem", "batt", "therm"]

    def missing(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    probes = Probes([tmp_path], platform="darwin", run=missing)
    cond = probes.read()
    assert cond.power == Power(None) and cond.idle_seconds is None and cond.cpu_speed_limit is None
    assert probes.failed == {"power", "idle", "thermal"}  # each logged once, then quiet
    assert holds(cond, DeferConfig(min_free_disk_gb=0), datetime(2026, 11, 2, 12, 0)) == []


def test_garbage_output_reads_as_unknown(tmp_path):
    probes = Probes([tmp_path], platform="darwin", run=lambda argv: "\x00garbage\n")
    cond = probes.read()
    assert cond.power == Power(None) and cond.idle_seconds is None and cond.cpu_speed_limit is None


def test_the_test_power_file(tmp_path):
    f = tmp_path / "power"
    probes = Probes([tmp_path], power_file=str(f))
    assert probes.power() == Power(None)  # no file yet: unknown
    f.write_text("battery 41\n")
    assert probes.power() == Power(True, 41.0)
    f.write_text("ac")
    assert probes.power() == Power(False)


NOON = datetime(2026, 11, 2, 12, 0)


@pytest.mark.parametrize("cond,cfg,code", [
    (Conditions(power=Power(True, 41.0)), DeferConfig(), "on_battery"),
    (Conditions(free_disk_gb=2.0), DeferConfig(min_free_disk_gb=5), "low_disk"),
    (Conditions(), DeferConfig(quiet_hours=("09:00-18:00",)), "quiet_hours"),
    (Conditions(load=6.5), DeferConfig(max_load=4), "busy_load"),
    (Conditions(idle_seconds=30.0), DeferConfig(min_idle_minutes=10), "user_active"),
    (Conditions(cpu_speed_limit=70.0), DeferConfig(min_cpu_speed_limit=80), "thermal"),
])
def test_each_condition_defers_and_clears(cond, cfg, code):
    assert [h.code for h in holds(cond, cfg, NOON)] == [code]
    cleared = Conditions(power=Power(False, 41.0), free_disk_gb=50.0, load=0.5, idle_seconds=3600.0,
                         cpu_speed_limit=100.0)
    late = datetime(2026, 11, 2, 19, 0)
    assert holds(cleared, cfg, late) == []


def test_battery_allowed_above_a_charge_level():
    cfg = DeferConfig(battery_min_percent=60)
    assert holds(Conditions(power=Power(True, 75.0)), cfg, NOON) == []
    (hold,) = holds(Conditions(power=Power(True, 41.0)), cfg, NOON)
    assert hold.text == "on battery (41 %)"


def test_quiet_hours_wrap_midnight():
    ranges = ("22:30-06:00",)
    assert in_quiet_hours(ranges, datetime(2026, 1, 1, 23, 0)) == "22:30-06:00"
    assert in_quiet_hours(ranges, datetime(2026, 1, 1, 5, 59)) == "22:30-06:00"
    assert in_quiet_hours(ranges, datetime(2026, 1, 1, 6, 0)) is None
    assert in_quiet_hours(ranges, datetime(2026, 1, 1, 12, 0)) is None


def test_only_configured_causes_pause_a_running_run():
    cfg = DeferConfig(max_load=1, pause_running_on=("battery", "user_active"))
    busy = holds(Conditions(load=3.0), cfg, NOON)
    assert [h.code for h in busy] == ["busy_load"] and pausing(busy, cfg) is None  # training makes the load
    unplugged = holds(Conditions(power=Power(True, 90.0), load=3.0), cfg, NOON)
    assert pausing(unplugged, cfg).code == "on_battery"
