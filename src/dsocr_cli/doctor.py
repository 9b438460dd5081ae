"""`dsocr doctor`: what this machine has, and whether each engine can run on it, before a long job.

It reports the OS, Python, torch and the CUDA it was built for, each GPU (and whether this torch
build really runs a bf16 matmul on it: a wheel without kernels for the card's architecture fails
only then, with "no kernel image is available"), transformers against each engine's need, the
remote code's extra packages, the Hugging Face cache and the DeepSeek-OCR checkpoints in it, and
free disk. Facts are gathered into one dict (`gather`), judged by a pure function (`judge`) and
printed as text lines or one JSON object.

Exit code: 0 when at least one engine is ready on a CUDA GPU (the native engine, or the remote-code
engine in an environment set up for it); 4 (the setup code) otherwise. A CPU-only machine gets
exit 4 with its own verdict, "no CUDA: runs on CPU only (slow)": the native engine does run there,
but a batch job at CPU speed (minutes per page for the real model) is not one to start unwarned.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TextIO

from dsocr_cli import __version__
from dsocr_cli.engines.infer import NATIVE_FIX, REMOTE_FIX, native_stack_ok, remote_stack_ok
from dsocr_cli.errors import ExitCode

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "huggingface_hub",
    "safetensors",
    "pymupdf",
    "pillow",
    "torchvision",
    "einops",
    "addict",
    "easydict",
)
REMOTE_PACKAGES = ("einops", "addict", "easydict", "torchvision")  # what the official remote code imports
CPU_ONLY = "no CUDA: runs on CPU only (slow)"
GIB = 2**30


def run_doctor(data: TextIO, as_json: bool) -> int:
    """Gather, judge and print the report on `data`; return the exit code (see the module doc)."""
    report = gather()
    report.update(judge(report))
    if as_json:
        data.write(json.dumps(report, ensure_ascii=False) + "\n")
    else:
        data.writelines(line + "\n" for line in render(report))
    data.flush()
    return report["exit_code"]


# --- facts ---------------------------------------------------------------------------------------


def gather() -> dict:
    """The machine's facts, unjudged (see `judge`); torch or the Hub cache failing to load is recorded, not raised."""
    return {
        "dsocr": __version__,
        "platform": _platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch": _torch(),
        "nvidia_smi": _nvidia_smi(),
        "cache": _cache(),
        "disk": _disk(),
    }


def _platform() -> dict:
    return {
        "os": platform.system(),
        "release": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch() -> dict:
    try:
        import torch
    except Exception as exc:  # absent, or a broken install (missing shared libraries)
        return {"version": None, "error": _first_line(exc), "cuda_build": None, "cuda_available": False, "gpus": []}
    info = {
        "version": torch.__version__,
        "error": None,
        "cuda_build": torch.version.cuda,
        "arch_list": _safe(torch.cuda.get_arch_list, []),
        "cuda_available": bool(_safe(torch.cuda.is_available, False)),
        "gpus": [],
    }
    if info["cuda_available"]:
        info["gpus"] = [_gpu(torch, index, info["arch_list"]) for index in range(torch.cuda.device_count())]
    return info


def _gpu(torch, index: int, arch_list: list[str]) -> dict:
    props = torch.cuda.get_device_properties(index)
    sm = f"sm_{props.major}{props.minor}"
    gpu = {
        "index": index,
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / GIB, 1),
        "in_arch_list": sm in arch_list,
    }
    gpu.update(_bf16_matmul(torch, index))
    return gpu


def _bf16_matmul(torch, index: int) -> dict:
    """Run a tiny bf16 matmul: the only sure test that this build has kernels for this card."""
    try:
        a = torch.ones((16, 16), device=f"cuda:{index}", dtype=torch.bfloat16)
        value = float((a @ a).sum().item())
    except Exception as exc:  # "CUDA error: no kernel image is available for execution on the device"
        return {"bf16_matmul": False, "bf16_error": _first_line(exc)}
    ok = value == 16.0**3
    return {"bf16_matmul": ok, "bf16_error": None if ok else f"wrong result {value}"}


def _nvidia_smi() -> list[str] | None:
    """GPUs the driver sees, whatever torch was built for: tells a CPU-only wheel from no GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        result = subprocess.run(
            [exe, "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else None


def _cache() -> dict:
    try:
        from huggingface_hub import constants, scan_cache_dir
    except Exception as exc:
        return {"path": None, "exists": False, "offline": None, "checkpoints": [], "error": _first_line(exc)}
    path = str(constants.HF_HUB_CACHE)
    info = {"path": path, "exists": os.path.isdir(path), "offline": bool(constants.HF_HUB_OFFLINE)}
    info.update(checkpoints=[], error=None)
    if not info["exists"]:
        return info
    try:
        repos = scan_cache_dir(path).repos
    except Exception as exc:  # a corrupted or foreign folder
        info["error"] = _first_line(exc)
        return info
    for repo in sorted(repos, key=lambda r: r.repo_id):
        if repo.repo_type == "model" and "deepseek-ocr" in repo.repo_id.lower():
            info["checkpoints"].append(_checkpoint(repo))
    return info


def _checkpoint(repo) -> dict:
    revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
    kind = "unknown"
    for revision in revisions:
        config = Path(revision.snapshot_path) / "config.json"
        if config.is_file():
            kind = _checkpoint_kind(config)
            break
    return {
        "repo_id": repo.repo_id,
        "kind": kind,
        "revisions": [r.commit_hash[:12] for r in revisions],
        "refs": sorted(ref for r in revisions for ref in r.refs),
        "size_gib": round(repo.size_on_disk / GIB, 2),
    }


def _checkpoint_kind(config: Path) -> str:
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    if data.get("auto_map"):
        return "remote code (--engine infer)"
    return "native (--engine hf)" if data.get("model_type") == "deepseek_ocr2" else "unknown"


def _disk() -> dict:
    places = {"cwd": os.getcwd()}
    try:
        from huggingface_hub import constants

        places["cache"] = str(constants.HF_HUB_CACHE)
    except Exception:
        pass
    return {name: _free(path) for name, path in places.items()}


def _free(path: str) -> dict:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:  # the cache may not exist yet: its parent's disk
        probe = probe.parent
    try:
        return {"path": path, "free_gib": round(shutil.disk_usage(probe).free / GIB, 1)}
    except OSError as exc:
        return {"path": path, "free_gib": None, "error": _first_line(exc)}


# --- verdicts ------------------------------------------------------------------------------------


def judge(facts: dict) -> dict:
    """Per-engine verdicts, the overall verdict and the exit code, from the facts alone."""
    gpu = _usable_gpu(facts)
    engines = {"hf": _judge_native(facts, gpu), "infer": _judge_remote(facts, gpu)}
    ready = [name for name, e in engines.items() if e["status"] == "ready"]
    # The engine this environment is set up for: the remote profile pins transformers 4.46.x.
    main = "infer" if remote_stack_ok(facts["packages"].get("transformers")) else "hf"
    if "hf" in ready:
        verdict = f"ready: the native engine runs on {gpu['name']}"
    elif ready:
        verdict = f"ready: --engine infer --trust-remote-code runs on {gpu['name']}"
    elif engines[main]["status"] == "cpu-only":
        verdict = engines[main]["verdict"]
    else:
        verdict = f"cannot run --engine {main}: {engines[main]['verdict']}"
    code = ExitCode.OK if ready else ExitCode.SETUP
    return {"engines": engines, "verdict": verdict, "exit_code": int(code)}


def _usable_gpu(facts: dict) -> dict | None:
    return next((g for g in facts["torch"].get("gpus", []) if g.get("bf16_matmul")), None)


def _cuda_problem(facts: dict) -> str:
    """Why there is no usable CUDA GPU, in one line."""
    torch = facts["torch"]
    broken = [g for g in torch.get("gpus", []) if not g.get("bf16_matmul")]
    if broken:
        g = broken[0]
        sm = "sm_" + g["capability"].replace(".", "")
        return f"torch {torch['version']} cannot run on {g['name']} ({sm}): {g['bf16_error']}"
    smi = facts.get("nvidia_smi")
    if smi and not torch.get("cuda_build"):
        return f"{CPU_ONLY}; the driver sees {smi[0]} but torch {torch['version']} is a CPU-only build"
    if torch.get("cuda_build"):
        return f"{CPU_ONLY}; torch {torch['version']} (CUDA {torch['cuda_build']}) sees no GPU"
    return CPU_ONLY


def _judge_native(facts: dict, gpu: dict | None) -> dict:
    torch, version = facts["torch"], facts["packages"].get("transformers")
    problems, fixes = [], []
    if torch.get("version") is None:
        problems.append(f"torch does not import ({torch.get('error')})")
        fixes.append("scripts/install.sh")
    if not native_stack_ok(version):
        problems.append(f"needs transformers >= 5.10.1, found {_found(version)}")
        fixes.append(NATIVE_FIX)
    if problems:
        return _verdict("blocked", None, problems, fixes)
    if gpu is not None:
        return _verdict("ready", "cuda", [f"ready on {gpu['name']} (CUDA, bf16)"], [])
    if torch.get("gpus"):  # a GPU that torch sees but cannot use: --device auto would pick it and fail
        fix = "reinstall torch for this GPU (scripts/install.sh), or run with --device cpu (slow)"
        return _verdict("blocked", None, [_cuda_problem(facts)], [fix])
    fix = "scripts/install.sh installs a CUDA build" if facts.get("nvidia_smi") else "use an NVIDIA GPU for speed"
    return _verdict("cpu-only", "cpu", [_cuda_problem(facts)], [fix])


def _judge_remote(facts: dict, gpu: dict | None) -> dict:
    version, packages = facts["packages"].get("transformers"), facts["packages"]
    problems, fixes = [], []
    if facts["torch"].get("version") is None:
        problems.append("torch does not import")
    if not remote_stack_ok(version):
        problems.append(f"the official remote code needs transformers 4.46.x, found {_found(version)}")
    missing = [name for name in REMOTE_PACKAGES if packages.get(name) is None]
    if missing:
        problems.append(f"it imports {', '.join(missing)}, not installed")
    if problems:
        fixes.append(REMOTE_FIX)
    if gpu is None:
        problems.append("no CUDA GPU: the official remote code hard-codes .cuda()")
        fixes.append("run it on a machine with an NVIDIA GPU")
    if problems:
        return _verdict("blocked", None, problems, fixes)
    return _verdict("ready", "cuda", [f"ready on {gpu['name']} (with --trust-remote-code)"], [])


def _verdict(status: str, device: str | None, problems: list[str], fixes: list[str]) -> dict:
    return {"status": status, "device": device, "verdict": "; ".join(problems), "fix": "; ".join(fixes) or None}


def _found(version: str | None) -> str:
    return f"transformers {version}" if version else "no transformers"


# --- text ----------------------------------------------------------------------------------------


def render(report: dict) -> list[str]:
    """The report as aligned text lines; `--json` prints the same dict instead."""
    p, t, packages = report["platform"], report["torch"], report["packages"]
    lines = [
        f"dsocr        {report['dsocr']}",
        f"os           {p['os']} {p['release']} {p['arch']}",
        f"python       {p['python']} ({p['implementation']}) {p['executable']}",
        _torch_line(t),
    ]
    lines += _gpu_lines(t, report.get("nvidia_smi"))
    lines.append("packages     " + ", ".join(f"{k} {v or '-'}" for k, v in packages.items()))
    transformers = packages.get("transformers") or "not installed"
    lines.append(
        f"transformers {transformers}: native engine needs >= 5.10.1 "
        f"({'ok' if native_stack_ok(packages.get('transformers')) else 'no'}), official remote code needs 4.46.x "
        f"({'ok' if remote_stack_ok(packages.get('transformers')) else 'no'})"
    )
    lines += _cache_lines(report["cache"])
    lines.append("disk free    " + ", ".join(_disk_text(name, d) for name, d in report["disk"].items()))
    for name, engine in report["engines"].items():
        fix = f" -> {engine['fix']}" if engine["fix"] else ""
        lines.append(f"engine {name:<5} {engine['status']}: {engine['verdict']}{fix}")
    lines.append(f"verdict      {report['verdict']} (exit {report['exit_code']})")
    return lines


def _torch_line(t: dict) -> str:
    if t.get("version") is None:
        return f"torch        not importable: {t.get('error')}"
    build = f"CUDA {t['cuda_build']}" if t.get("cuda_build") else "CPU-only build"
    arches = " ".join(t.get("arch_list") or []) or "none"
    return f"torch        {t['version']} ({build}; kernels for: {arches})"


def _gpu_lines(t: dict, smi: list[str] | None) -> list[str]:
    if not t.get("gpus"):
        seen = f"; nvidia-smi sees: {'; '.join(smi)}" if smi else ""
        return [f"gpu          none visible to torch{seen}"]
    lines = []
    for g in t["gpus"]:
        bf16 = "bf16 matmul ok" if g["bf16_matmul"] else f"bf16 matmul FAILED: {g['bf16_error']}"
        lines.append(
            f"gpu {g['index']:<8} {g['name']}, compute {g['capability']}, {g['memory_gib']} GiB, "
            f"{'in' if g['in_arch_list'] else 'not in'} torch's arch list, {bf16}"
        )
    return lines


def _cache_lines(cache: dict) -> list[str]:
    if cache.get("path") is None:
        return [f"hf cache     unknown: {cache.get('error')}"]
    state = "" if cache["exists"] else " (not created yet)"
    offline = " (HF_HUB_OFFLINE: no downloads)" if cache.get("offline") else ""
    lines = [f"hf cache     {cache['path']}{state}{offline}"]
    if cache.get("error"):
        lines.append(f"  unreadable: {cache['error']}")
    for c in cache["checkpoints"]:
        lines.append(
            f"  cached     {c['repo_id']} [{c['kind']}] {c['size_gib']} GiB, revisions {', '.join(c['revisions'])}"
        )
    if not cache["checkpoints"]:
        lines.append("  cached     no DeepSeek-OCR checkpoint (the first run downloads about 6.7 GB)")
    return lines


def _disk_text(name: str, disk: dict) -> str:
    free = f"{disk['free_gib']} GiB" if disk.get("free_gib") is not None else "unknown"
    return f"{name} {free} ({disk['path']})"


def _safe(call, default):
    try:
        return call()
    except Exception:
        return default


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
