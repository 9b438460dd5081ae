"""`dsocr doctor` on this machine (a CPU one in CI), and its verdicts on GPU facts written out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from conftest import offline_env, run_dsocr
from dsocr_cli.doctor import CPU_ONLY, judge, run_doctor


def cli_has_doctor() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "dsocr_cli", "--help"], capture_output=True, text=True, env=offline_env()
    )
    return "doctor" in result.stdout


def facts(transformers="5.24.0", gpus=(), cuda_build="12.8", smi=None, remote_packages=True) -> dict:
    packages = {"transformers": transformers, "einops": "0.8", "addict": "2.4", "easydict": "1.1", "torchvision": "0.2"}
    if not remote_packages:
        packages.update(einops=None, torchvision=None)
    torch = {"version": "2.13.0", "cuda_build": cuda_build, "cuda_available": bool(gpus), "gpus": list(gpus)}
    return {"packages": packages, "torch": torch, "nvidia_smi": smi}


H100 = {"index": 0, "name": "NVIDIA H100", "capability": "9.0", "memory_gib": 79.1, "in_arch_list": True}
H100_OK = dict(H100, bf16_matmul=True, bf16_error=None)
NO_KERNEL = "CUDA error: no kernel image is available for execution on the device"
H100_NO_KERNEL = dict(H100, in_arch_list=False, bf16_matmul=False, bf16_error=NO_KERNEL)


def test_json_report_on_this_machine():
    import torch

    out = io.StringIO()
    code = run_doctor(out, as_json=True)
    text = out.getvalue()
    assert text.count("\n") == 1
    report = json.loads(text)
    assert report["exit_code"] == code
    assert report["platform"]["os"] and report["platform"]["arch"] and report["platform"]["python"]
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_build"] == torch.version.cuda
    assert isinstance(report["torch"]["arch_list"], list)
    assert report["packages"]["transformers"]
    assert report["cache"]["path"] and isinstance(report["cache"]["checkpoints"], list)
    assert report["disk"]["cwd"]["free_gib"] > 0
    assert set(report["engines"]) == {"hf", "infer"}
    for engine in report["engines"].values():
        assert engine["status"] in ("ready", "cpu-only", "blocked") and engine["verdict"]
    if not torch.cuda.is_available():
        assert code == 4
        assert report["torch"]["gpus"] == []
        assert "no CUDA" in report["verdict"]
        assert "no CUDA" in report["engines"]["infer"]["verdict"]
        if report["engines"]["hf"]["status"] == "cpu-only":  # the native profile
            assert report["engines"]["hf"]["verdict"].startswith(CPU_ONLY)
            assert report["verdict"].startswith(CPU_ONLY)


def test_text_report():
    out = io.StringIO()
    code = run_doctor(out, as_json=False)
    lines = out.getvalue().splitlines()
    labels = [line.split()[0] for line in lines if line and not line.startswith(" ")]
    for label in ("dsocr", "os", "python", "torch", "gpu", "transformers", "hf", "disk", "engine", "verdict"):
        assert label in labels
    assert lines[-1].startswith("verdict") and lines[-1].endswith(f"(exit {code})")


def test_cache_scan(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "absent"))
    report = json.loads(_json_report())
    assert report["cache"]["exists"] is False and report["cache"]["checkpoints"] == []
    assert report["disk"]["cache"]["free_gib"] > 0  # measured on the nearest existing parent

    repo = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-OCR"
    snapshot = repo / "snapshots" / ("a" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "blobs" / "b1").write_text(json.dumps({"model_type": "deepseek_vl_v2", "auto_map": {"AutoModel": "m.M"}}))
    os.symlink("../../blobs/b1", snapshot / "config.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (checkpoint,) = json.loads(_json_report())["cache"]["checkpoints"]
    assert checkpoint["repo_id"] == "deepseek-ai/DeepSeek-OCR"
    assert checkpoint["kind"].startswith("remote code") and checkpoint["refs"] == ["main"]
    assert checkpoint["revisions"] == ["a" * 12]


def _json_report() -> str:
    out = io.StringIO()
    run_doctor(out, as_json=True)
    return out.getvalue()


def test_verdicts_on_gpu_facts():
    ready = judge(facts(gpus=[H100_OK]))
    assert ready["exit_code"] == 0 and ready["engines"]["hf"]["status"] == "ready"
    assert ready["verdict"] == "ready: the native engine runs on NVIDIA H100"
    assert ready["engines"]["infer"]["status"] == "blocked"  # transformers 5.x: not the remote stack

    broken = judge(facts(gpus=[H100_NO_KERNEL]))
    assert broken["exit_code"] == 4 and broken["engines"]["hf"]["status"] == "blocked"
    assert NO_KERNEL in broken["engines"]["hf"]["verdict"] and "sm_90" in broken["verdict"]

    remote = judge(facts(transformers="4.46.3", gpus=[H100_OK]))
    assert remote["exit_code"] == 0 and remote["engines"]["infer"]["status"] == "ready"
    assert "pip install -U 'transformers>=5.10.1'" in remote["engines"]["hf"]["fix"]

    missing = judge(facts(transformers="4.46.3", gpus=[H100_OK], remote_packages=False))
    assert missing["exit_code"] == 4 and "einops, torchvision" in missing["verdict"]
    assert "scripts/install.sh --profile remote" in missing["engines"]["infer"]["fix"]


def test_verdicts_without_cuda():
    plain = judge(facts(cuda_build=None))
    assert plain["exit_code"] == 4 and plain["verdict"] == CPU_ONLY
    assert plain["engines"]["hf"] == dict(plain["engines"]["hf"], status="cpu-only", device="cpu")
    cpu_wheel = judge(facts(cuda_build=None, smi=["NVIDIA H100 80GB HBM3, 9.0, 81559 MiB"]))
    assert "CPU-only build" in cpu_wheel["verdict"] and "install.sh" in cpu_wheel["engines"]["hf"]["fix"]
    unseen = judge(facts(cuda_build="12.8"))
    assert "(CUDA 12.8) sees no GPU" in unseen["verdict"]
    old = judge(facts(transformers="4.57.0"))
    assert old["verdict"].startswith("cannot run --engine hf: needs transformers >= 5.10.1")


@pytest.mark.skipif(not cli_has_doctor(), reason="the CLI has no doctor command yet")
def test_cli_doctor_json():
    result = run_dsocr("doctor", "--json", timeout=120)
    assert result.returncode in (0, 4), result.stderr
    report = json.loads(result.stdout)
    assert report["exit_code"] == result.returncode
    assert set(report["engines"]) == {"hf", "infer"}
