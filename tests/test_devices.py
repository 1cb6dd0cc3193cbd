"""``--devices``: the devices (or CPU cores) one worker's trials use, so several workers share a
machine without sharing devices (pure logic; tests/test_many_workers_e2e.py runs two workers
on one core each)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path

import optuna
import pytest

from autotune import Machine
from autotune._errors import UserError
from autotune._machine import parse_devices, with_devices
from autotune._records import STUDY_WORKERS
from autotune.runner import launch_command
from autotune.study._sharing import Worker, join, report_in, sharing_devices

GPUS = Machine(accelerator="cuda", devices=8, cores=64, fp16=True, bf16=True, device_name="H100")


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0", (0,)), ("0,1", (0, 1)), ("4-7", (4, 5, 6, 7)), ("3, 0-1", (3, 0, 1))],
)
def test_devices_are_indices_and_ranges(text: str, ids: tuple[int, ...]) -> None:
    assert parse_devices(text) == ids


@pytest.mark.parametrize(
    ("text", "phrase"), [("a", "such as 0,1"), ("3-1", "backwards"), ("1,0-2", "twice")]
)
def test_bad_devices_say_why(text: str, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        parse_devices(text)


def test_accelerator_devices_become_the_ranks_devices() -> None:
    machine = with_devices(GPUS, (4, 5, 6, 7))
    assert machine.devices == 4 and machine.device_ids == (4, 5, 6, 7)
    assert machine.local_device_ids(2) == [4, 5]
    assert GPUS.local_device_ids(2) == [0, 1]
    with pytest.raises(UserError, match="has 8 cuda devices \\(0-7\\), not 8,9"):
        with_devices(GPUS, (7, 8, 9))


def test_cpu_devices_bind_this_process_and_its_ranks_to_those_cores() -> None:
    allowed = os.sched_getaffinity(0)
    cpu = Machine(
        accelerator="cpu", devices=len(allowed), cores=len(allowed), fp16=False, bf16=True
    )
    first = min(allowed)
    try:
        machine = with_devices(cpu, (first,))
        assert os.sched_getaffinity(0) == {first}
        assert (machine.cores, machine.devices, machine.device_ids) == (1, 1, (first,))
    finally:
        os.sched_setaffinity(0, allowed)
    with pytest.raises(UserError, match="this process may use cores"):
        with_devices(cpu, (max(allowed) + 1,))


def test_the_launcher_is_given_the_devices() -> None:
    command = launch_command(2, 29500, ["--plan", "p.json"], {"localhost": [4, 5]})
    world = next(arg for arg in command if arg.startswith("--world_info="))
    assert json.loads(base64.urlsafe_b64decode(world.split("=", 1)[1])) == {"localhost": [4, 5]}


def test_workers_on_one_host_are_told_when_their_devices_overlap(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", study_name="s")
    me = join(study, (0, 1))
    entries = dict(study.user_attrs[STUDY_WORKERS])
    here = entries[str(me.number)]
    # Three more workers of this host (this process's pid keeps them "live"): disjoint devices,
    # overlapping ones, and one without --devices (all of them).
    for number, devices in ((1, [2, 3]), (2, [1, 2]), (3, None)):
        entries[str(number)] = {**here, "devices": devices}
    study.set_user_attr(STUDY_WORKERS, entries)
    assert sharing_devices(study, me) == [2, 3]
    assert sharing_devices(study, dataclasses.replace(me, number=1)) == [2, 3]
    report_in(study, me)  # keeps the devices in the register
    assert study.user_attrs[STUDY_WORKERS][str(me.number)]["devices"] == [0, 1]
    assert isinstance(me, Worker)
