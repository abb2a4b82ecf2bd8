"""Experiment and campaign files: the shipped ones load; bad input names file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chaos.faults.network_partition import NetworkPartitionSpec
from chaos.faults.storage import StorageLostSpec
from chaos.spec import load_campaign, load_experiment
from core.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
PODS = sorted((ROOT / "experiments" / "pods").glob("*.yaml"))


def test_every_pod_experiment_loads() -> None:
    specs = {p.stem: load_experiment(p) for p in PODS}
    assert {s.rto.fault.type for s in specs.values()} == {
        "process-crash",
        "node-drain",
        "node-power-off",
        "network-partition",
        "storage-lost",
        "network-flap",
    }
    assert isinstance(specs["storage-eio"].rto.fault, StorageLostSpec)
    assert specs["storage-eio"].rto.fault.mode == "eio"
    part = specs["network-partition-workload"].rto.fault
    assert isinstance(part, NetworkPartitionSpec) and part.scope == "workload"


def test_campaigns_load_with_overrides() -> None:
    campaign, exps = load_campaign(ROOT / "experiments/campaigns/standard-pods.yaml")
    assert len(exps) == len(campaign.experiments)
    baselines = [e for e in exps if e.rto.healers == ["watchdog"]]
    assert {e.rto.profile for e in baselines} == {"kubernetes-defaults", "fast"}
    slow = [e for e in baselines if e.rto.profile == "kubernetes-defaults"]
    assert len(slow) == 1 and getattr(slow[0].rto.fault, "duration_s", 0) > 350
    _, smoke = load_campaign(ROOT / "experiments/campaigns/smoke.yaml")
    assert all(e.rto.profile == "fast" for e in smoke)


def _write(tmp_path: Path, mutate: object) -> Path:
    doc = yaml.safe_load((ROOT / "experiments/pods/node-power-off.yaml").read_text())
    assert callable(mutate)
    mutate(doc)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["extensions"][0]["fault"].update(type="meteor"),
            r"fault: unknown fault type 'meteor'; allowed: process-crash",
        ),
        (
            lambda d: d["extensions"][0]["fault"].update(duration_s=-3),
            r"extensions\[0\]\.fault\.duration_s",
        ),
        (
            lambda d: d["extensions"][0]["fault"].update(duraton_s=3),
            r"fault\.duraton_s: unknown field",
        ),
        (lambda d: d["extensions"][0]["target"].update(kind="vm"), r"target\.kind: got 'vm'"),
        (
            lambda d: d["extensions"][0].update(healers=["medic"]),
            r"healers: unknown healer\(s\) medic; allowed: eviction",
        ),
        (lambda d: d["extensions"][0].update(profile="slow"), r"profile: unknown profile 'slow'"),
        (
            lambda d: d["extensions"][0]["recovery"].update(deadline_s=10),
            r"shorter than recovery\.deadline_s",
        ),
        (lambda d: d.pop("method"), r"method: required"),
        (lambda d: d.pop("title"), r"title: required"),
        (
            lambda d: d["method"][0]["provider"].update(func="inject_faults"),
            r"method\[0\]\.provider\.func: chaos\.ctk has no function 'inject_faults'",
        ),
        (lambda d: d.update(extensions=[]), r"exactly one entry with name: rto"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path: Path, mutate: object, expected: str) -> None:
    path = _write(tmp_path, mutate)
    with pytest.raises(SpecError, match=expected) as info:
        load_experiment(path)
    assert str(info.value).startswith(str(path))


def test_campaign_errors_name_the_entry(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: c\nexperiments:\n  - {path: missing.yaml}\n")
    with pytest.raises(SpecError, match=r"experiments\[0\]\.path: missing\.yaml does not exist"):
        load_campaign(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("name: d\nrepetitions: 0\nexperiments: []\n")
    with pytest.raises(SpecError, match="repetitions") as info:
        load_campaign(tmp_path / "d.yaml")
    assert "experiments" in str(info.value)
    pod = ROOT / "experiments/pods/process-crash.yaml"
    (tmp_path / "e.yaml").write_text(f"name: e\nexperiments:\n  - {{path: {pod}, duration_s: 5}}\n")
    with pytest.raises(SpecError, match="has no duration"):
        load_campaign(tmp_path / "e.yaml")


def test_not_yaml(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("title: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_experiment(tmp_path / "x.yaml")
