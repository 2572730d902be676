"""Model speed on CPU: inference latency per subject, training throughput, SSM vs Transformer.

Usage::

    python benchmarks/model_speed.py [--config brainfm/data/configs/brainfm.yaml] [--model DIR]
        [--lengths 64 128 256 512 1024] [--repeats 3] [--threads 1] [--batch 32]
        [--scaling-batch 8] [--attention default|math] [--device cpu] [--json PATH]
        [--markdown PATH]

Three measurements, each next to a reference measured in the same run:

1. **Inference latency per subject.** A synthetic session of realistic size (200 ROIs, 180
   volumes at TR 2 s by default) goes through
   :func:`brainfm.models.predict.predict_subject` (sliding windows, batched forward passes,
   averaging and the uncertainty). The model is built from the training options of ``--config``
   (random weights: the speed does not depend on them), or loaded from ``--model DIR``
   (``default`` is the packaged model). The baseline is the subject's whole-run Fisher-z
   connectivity (:func:`brainfm.models.timeseries.fisher_z_connectivity`, the classical feature of
   connectome-based prediction); the session preparation (:func:`session_from_arrays`:
   standardising, connectivity, resampling) is timed as well.
2. **Training throughput.** One optimisation step (forward, backward, gradient clipping and
   AdamW) on a batch of windows (batch, N, window), as in ``brainfm-train``: the fine-tuning
   objective (Gaussian NLL plus the routers' auxiliary loss) and the LMAE pretraining
   objective. An epoch draws one window per subject, so subjects/s = windows/s. Data loading is
   not included (drawing a window is a numpy slice).
3. **Temporal predictor scaling.** Forward plus backward of brainfm's SSM
   (:class:`brainfm.models.ssm.SSMEncoder` with the configuration's width, layers, state size,
   convolution width and expansion) next to a Transformer encoder of the same width and depth
   (4 heads, feed-forward ``2 * d_model``, no dropout), on the same input (batch, L, d_model)
   for every sequence length ``L``. Every (model, L) runs in a fresh child process (this script
   with the hidden ``--child`` option) that reports the median wall time and the growth of the
   peak memory during one forward plus backward over the memory right before it: on CPU the
   peak resident set size (``VmHWM``, as ``ru_maxrss`` but without the parent's memory, reset
   through ``/proc/self/clear_refs`` where Linux allows it), on CUDA
   ``torch.cuda.max_memory_allocated``. The growth factors relative to the first length show
   linear against quadratic growth. torch's default attention on CPU and GPU is a fused kernel
   that keeps no L x L matrix (memory grows linearly, time quadratically); ``--attention math``
   forces the plain implementation that materialises it.

Timings vary with the machine's load: compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from provenance import cpu_name, git_commit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: brainfm.models.options.RECOMMENDED_CONFIG (not imported here: brainfm loads after sys.path)
DEFAULT_CONFIG = ROOT / "brainfm" / "data" / "configs" / "brainfm.yaml"
DEFAULT_TARGETS = ["age", "fluid_intelligence"]
TRANSFORMER_HEADS = 4


# --------------------------------------------------------------------------------------------
# Timing and memory helpers
# --------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], repeats: int, device: str = "cpu", number: int = 1,
              warmup: bool = True) -> float:
    """Median wall time of a call in ms.

    Parameters
    ----------
    fn : callable
        The call to time (no arguments).
    repeats : int
        Number of timed samples; the median is returned.
    device : str
        ``cuda...`` synchronises the GPU around each sample.
    number : int
        Calls per sample (for calls too short to time one at a time); the time is per call.
    warmup : bool
        Make one untimed call first.

    Returns
    -------
    float
        Median milliseconds per call.
    """
    if warmup:
        fn()
        _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3 / number)
    return statistics.median(times)


def calls_per_sample(fn: Callable[[], object], target_ms: float = 20.0) -> int:
    """How many calls of a short function fill about ``target_ms`` (after one warm-up call).

    Parameters
    ----------
    fn : callable
        The call.
    target_ms : float
        Wanted duration of one timing sample.

    Returns
    -------
    int
        At least 1.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = (time.perf_counter() - t0) * 1e3
    return max(1, min(10_000, int(target_ms / max(once, 1e-6))))


def current_rss_kb() -> int:
    """Resident set size of this process now, in kB (``/proc/self/statm``).

    Returns
    -------
    int
        kB; the peak RSS (``ru_maxrss``) where ``/proc`` is not available.
    """
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kb() -> int:
    """Peak resident set size of this process's memory, in kB.

    ``VmHWM`` of ``/proc/self/status`` where available: unlike ``ru_maxrss`` it is not raised by
    the parent's memory (on Linux ``getrusage`` also counts the address space that
    ``fork``/``vfork`` + ``exec`` replaced, i.e. the parent's RSS at the time of the spawn).

    Returns
    -------
    int
        kB; ``ru_maxrss`` where ``/proc`` is not available.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` value 5).

    Returns
    -------
    bool
        True when the kernel accepted the reset (then :func:`peak_rss_kb` counts from now).
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``), after a GC."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------
# Machine description
# --------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    """Describe the machine, the software and the run settings.

    Parameters
    ----------
    device : str
        Device of the model measurements.

    Returns
    -------
    dict
        ``cpu`` (model name), ``cores`` (logical CPUs), ``cores_usable`` (affinity),
        ``load_average``, ``platform``, ``python``, ``torch``, ``threads`` (torch intra-op),
        ``blas_threads`` (numpy's BLAS, None when unknown), ``device``, ``gpu`` (name or None),
        ``git_commit``, ``date``.
    """
    cpu = cpu_name()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    blas = None
    try:
        from threadpoolctl import threadpool_info

        blas = max((int(i["num_threads"]) for i in threadpool_info()
                    if i.get("user_api") == "blas"), default=None)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "load_average": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "blas_threads": blas,
        "device": device,
        "gpu": gpu,
        "git_commit": git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# 1. Inference latency
# --------------------------------------------------------------------------------------------


def build_model(config: Path, model_name: str | None, n_rois: int,
                device: str) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    """The model, its card and the training options.

    Parameters
    ----------
    config : Path
        Training options (YAML or TOML, the keys of ``brainfm-train --config``).
    model_name : str or None
        Checkpoint folder (``default``: the packaged model); None builds a model with random
        weights from the options.
    n_rois : int
        ROIs of the built model (ignored for a checkpoint, whose card decides).
    device : str
        Where the model goes.

    Returns
    -------
    model : BrainFM
        The model.
    card : dict
        Its model card (a minimal prediction card for a built model: unit target scaling).
    opts : TrainOptions
        The options of ``config``.
    """
    import numpy as np

    from brainfm.models.checkpoint import load_checkpoint, resolve_model_dir
    from brainfm.models.cli import load_options
    from brainfm.models.loop import make_config
    from brainfm.models.model import BrainFM
    from brainfm.models.targets import TargetScaler, TargetSpec
    from brainfm.models.train import prediction_card

    opts = load_options(config)
    if model_name:
        model, card = load_checkpoint(resolve_model_dir(model_name), map_location=device)
        if not card.get("roi_names"):
            card = {**card, "roi_names": [f"ROI{k + 1}" for k in range(model.config.n_rois)]}
        return model, card, opts
    torch.manual_seed(int(opts.seed))
    cfg = make_config(n_rois, DEFAULT_TARGETS, opts)
    model = BrainFM(cfg).to(device)
    k = len(cfg.targets)
    scaler = TargetScaler(mean=np.zeros(k), std=np.ones(k))
    specs = [TargetSpec(name=t, column=t) for t in cfg.targets]
    card = prediction_card(scaler, specs, cfg, opts)
    card["roi_names"] = [f"ROI{k + 1}" for k in range(cfg.n_rois)]
    card["config"] = cfg.to_dict()
    return model, card, opts


def measure_latency(model: torch.nn.Module, card: dict[str, Any], volumes: int, tr: float,
                    repeats: int, device: str, seed: int = 0) -> dict[str, Any]:
    """Time one subject's prediction against its whole-run connectivity.

    Parameters
    ----------
    model : BrainFM
        The model.
    card : dict
        Its model card (``roi_names``, ``window``, ``sampling_rate_hz``, ``targets``).
    volumes : int
        Volumes of the synthetic run.
    tr : float
        Its repetition time in seconds.
    repeats : int
        Timed samples (median).
    device : str
        Device of the model.
    seed : int
        Seed of the synthetic data.

    Returns
    -------
    dict
        ``predict_ms``, ``fisher_z_ms`` (baseline), ``prepare_ms`` (``session_from_arrays``),
        ``ratio`` (predict / Fisher-z), ``n_windows``, ``n_rois``, ``volumes``, ``tr``.
    """
    import numpy as np

    from brainfm.models.predict import predict_subject
    from brainfm.models.sessions import session_from_arrays
    from brainfm.models.timeseries import fisher_z_connectivity, standardise

    names = list(card["roi_names"])
    rate = float(card.get("sampling_rate_hz", 0.5))
    rng = np.random.default_rng(seed)
    # AR(1) noise: smooth like BOLD; the values do not change the cost
    noise = rng.standard_normal((volumes, len(names)))
    data = np.empty_like(noise)
    data[0] = noise[0]
    for t in range(1, volumes):
        data[t] = 0.6 * data[t - 1] + noise[t]
    mask = np.ones(len(names), dtype=bool)
    z = standardise(data, mask)

    def prepare() -> object:
        return session_from_arrays([(data, tr)], names, rate, participant_id="bench")

    session = prepare()

    def predict() -> dict[str, Any]:
        return predict_subject(model, card, session, device=device)

    def baseline() -> object:
        return fisher_z_connectivity(z, mask)

    result = predict()
    predict_ms = time_call(predict, repeats, device)
    prepare_ms = time_call(prepare, repeats, number=calls_per_sample(prepare))
    fisher_ms = time_call(baseline, repeats, number=calls_per_sample(baseline))
    return {
        "predict_ms": predict_ms,
        "fisher_z_ms": fisher_ms,
        "prepare_ms": prepare_ms,
        "ratio": predict_ms / fisher_ms,
        "n_windows": int(result["n_windows"]),
        "n_rois": len(names),
        "volumes": volumes,
        "tr": tr,
        "window": int(card["window"]),
        "stride": int((card.get("prediction") or {}).get("stride") or int(card["window"]) // 2),
    }


# --------------------------------------------------------------------------------------------
# 2. Training throughput
# --------------------------------------------------------------------------------------------


def measure_training(model: torch.nn.Module, opts: Any, batch: int, repeats: int,
                     device: str) -> dict[str, Any]:
    """Time optimisation steps of the fine-tuning and the pretraining objective.

    Parameters
    ----------
    model : BrainFM
        The model (its weights change).
    opts : TrainOptions
        Learning rate, weight decay and gradient clipping.
    batch : int
        Windows per step.
    repeats : int
        Timed steps (median), after one warm-up step.
    device : str
        Device of the model.

    Returns
    -------
    dict
        ``finetune_ms`` and ``pretrain_ms`` (per step), ``finetune_subjects_per_s`` and
        ``pretrain_subjects_per_s``, ``batch``.
    """
    from brainfm.models.model import fisher_z_connectivity, gaussian_nll

    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.n_rois, cfg.window, generator=gen).to(device)
    mask = torch.ones(batch, cfg.n_rois, dtype=torch.bool, device=device)
    conn = fisher_z_connectivity(x, mask).detach()
    targets = torch.randn(batch, len(cfg.targets), generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    mask_gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    def step(loss_fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            loss = loss_fn()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip and opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optimiser.step()
            return loss
        return run

    def finetune_loss() -> torch.Tensor:
        out = model(x, mask, conn)
        loss = gaussian_nll(out.mean, out.logvar, targets)
        return loss + out.aux_loss if out.aux_loss is not None else loss

    def pretrain_loss() -> torch.Tensor:
        return model.pretrain_loss(x, mask, conn, generator=mask_gen)[0]

    finetune_ms = time_call(step(finetune_loss), repeats, device)
    pretrain_ms = time_call(step(pretrain_loss), repeats, device)
    model.eval()
    return {
        "batch": batch,
        "finetune_ms": finetune_ms,
        "pretrain_ms": pretrain_ms,
        "finetune_subjects_per_s": batch * 1e3 / finetune_ms,
        "pretrain_subjects_per_s": batch * 1e3 / pretrain_ms,
    }


# --------------------------------------------------------------------------------------------
# 3. SSM vs Transformer scaling (one child process per model and length)
# --------------------------------------------------------------------------------------------


def temporal_model(kind: str, spec: dict[str, Any]) -> torch.nn.Module:
    """brainfm's temporal SSM or the same-size Transformer encoder.

    Parameters
    ----------
    kind : {"ssm", "transformer"}
        Which predictor.
    spec : dict
        ``d_model``, ``n_layers``, ``d_state``, ``d_conv``, ``expand``.

    Returns
    -------
    torch.nn.Module
        Maps (batch, L, d_model) to (batch, L, d_model).
    """
    d = int(spec["d_model"])
    if kind == "ssm":
        from brainfm.models.ssm import SSMEncoder

        return SSMEncoder(d, int(spec["n_layers"]), d_state=int(spec["d_state"]),
                          d_conv=int(spec["d_conv"]), expand=int(spec["expand"]))
    if kind == "transformer":
        layer = torch.nn.TransformerEncoderLayer(d, nhead=TRANSFORMER_HEADS,
                                                 dim_feedforward=2 * d, dropout=0.0,
                                                 batch_first=True)
        return torch.nn.TransformerEncoder(layer, int(spec["n_layers"]),
                                           enable_nested_tensor=False)
    raise ValueError(f"unknown temporal model {kind!r}")


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Choose the scaled-dot-product attention implementation of the Transformer.

    Parameters
    ----------
    name : {"default", "math"}
        ``default`` lets torch choose (a fused, memory-efficient kernel where one applies: no
        L x L matrix is kept); ``math`` forces the plain implementation that materialises the
        attention matrix (quadratic memory).

    Yields
    ------
    None
        Inside the choice.
    """
    if name == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def child_measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and measure the memory of one temporal model at one length (in this process).

    A warm-up pass at a short length first initialises the libraries and allocates the
    gradients; after a garbage collection and ``malloc_trim`` the peak memory is reset, one
    forward plus backward at the wanted length runs, and its peak growth is recorded; then the
    timed passes follow.

    Parameters
    ----------
    spec : dict
        ``kind``, ``length``, ``batch``, ``repeats``, ``threads``, ``device``, ``attention``
        (see :func:`attention_backend`) and the model sizes of :func:`temporal_model`.

    Returns
    -------
    dict
        ``ms`` (median forward plus backward), ``peak_mb`` (growth of the peak memory),
        ``memory`` (``rss`` or ``cuda``), ``peak_reset`` (whether the CPU peak could be reset;
        when False ``peak_mb`` is an upper bound), ``params``.
    """
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    device = str(spec["device"])
    cuda = device.startswith("cuda")
    model = temporal_model(str(spec["kind"]), spec).to(device)
    model.train()
    b, d, length = int(spec["batch"]), int(spec["d_model"]), int(spec["length"])
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(b, length, d, generator=gen).to(device)
    small = torch.randn(b, min(8, length), d, generator=gen).to(device)

    def fwd_bwd(inp: torch.Tensor) -> object:
        model.zero_grad(set_to_none=False)
        with attention_backend(str(spec.get("attention", "default"))):
            out = model(inp)
            out.float().pow(2).mean().backward()
        return None

    fwd_bwd(small)  # library set-up and gradient buffers, outside the measurement
    _sync(device)
    trim_heap()
    peak_reset = True
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fwd_bwd(x)
        _sync(device)
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before_kb = current_rss_kb()
        peak_reset = reset_peak_rss()
        fwd_bwd(x)
        peak_kb = peak_rss_kb()
        peak_mb = max(0.0, (peak_kb - before_kb) / 1024)
    ms = time_call(lambda: fwd_bwd(x), int(spec["repeats"]), device, warmup=False)
    return {"ms": ms, "peak_mb": peak_mb, "memory": "cuda" if cuda else "rss",
            "peak_reset": peak_reset,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child_measure` in a fresh Python process (this script with ``--child``).

    Parameters
    ----------
    spec : dict
        Passed to :func:`child_measure`.

    Returns
    -------
    dict
        Its result.

    Raises
    ------
    RuntimeError
        The child failed or printed no result.
    """
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           json.dumps(spec)], capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"measurement {spec['kind']} L={spec['length']} failed:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 and math.isfinite(a / b) else None


def measure_scaling(cfg: Any, lengths: list[int], batch: int, repeats: int, threads: int,
                    device: str, attention: str = "default") -> dict[str, Any]:
    """SSM and Transformer forward plus backward at every length, each in a fresh process.

    Parameters
    ----------
    cfg : BrainFMConfig
        Width (``d_model``), depth (``ssm_layers``) and SSM sizes.
    lengths : list of int
        Sequence lengths.
    batch : int
        Sequences per pass.
    repeats : int
        Timed passes (median).
    threads : int
        torch threads of the children.
    device : str
        ``cpu`` or ``cuda...``.
    attention : {"default", "math"}
        Attention implementation of the Transformer (:func:`attention_backend`).

    Returns
    -------
    dict
        ``spec`` (model sizes), ``params`` per model, ``rows``: one dict per length with
        ``length``, ``ssm`` and ``transformer`` (each ``ms``, ``peak_mb``, ``ms_growth``,
        ``mb_growth`` relative to the first length), ``time_ratio`` and ``memory_ratio``
        (Transformer / SSM; None when undefined).
    """
    spec = {"d_model": cfg.d_model, "n_layers": max(1, cfg.ssm_layers), "d_state": cfg.d_state,
            "d_conv": cfg.d_conv, "expand": cfg.ssm_expand, "batch": batch, "repeats": repeats,
            "threads": threads, "device": device, "attention": attention}
    rows: list[dict[str, Any]] = []
    params: dict[str, int] = {}
    for length in lengths:
        row: dict[str, Any] = {"length": length}
        for kind in ("ssm", "transformer"):
            res = run_child({**spec, "kind": kind, "length": length})
            params[kind] = int(res.pop("params"))
            row[kind] = res
        row["time_ratio"] = _ratio(row["transformer"]["ms"], row["ssm"]["ms"])
        row["memory_ratio"] = _ratio(row["transformer"]["peak_mb"], row["ssm"]["peak_mb"])
        rows.append(row)
        print(f"  L={length}: SSM {row['ssm']['ms']:.1f} ms, Transformer "
              f"{row['transformer']['ms']:.1f} ms", file=sys.stderr, flush=True)
    for kind in ("ssm", "transformer"):
        first = rows[0][kind] if rows else {}
        for row in rows:
            row[kind]["ms_growth"] = _ratio(row[kind]["ms"], first["ms"])
            row[kind]["mb_growth"] = _ratio(row[kind]["peak_mb"], first["peak_mb"])
    return {"spec": spec, "params": params, "rows": rows}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report_lines(info: dict[str, Any], model_desc: str, latency: dict[str, Any],
                 training: dict[str, Any], scaling: dict[str, Any], repeats: int) -> list[str]:
    """The printed tables.

    Parameters
    ----------
    info : dict
        :func:`machine_info`.
    model_desc : str
        One line about the model.
    latency, training, scaling : dict
        Results of :func:`measure_latency`, :func:`measure_training`, :func:`measure_scaling`.
    repeats : int
        Timed samples per measurement.

    Returns
    -------
    list of str
        Lines of text.
    """
    lines = [
        f"machine: {info['cpu']}, {info['cores']} CPUs ({info['cores_usable']} usable), load "
        f"average {' '.join(str(v) for v in info['load_average'])}; {info['platform']}",
        f"Python {info['python']}, torch {info['torch']}, {info['threads']} torch thread(s) "
        f"({info['blas_threads'] or '?'} BLAS), "
        f"device {info['device']}" + (f" ({info['gpu']})" if info["gpu"] else "")
        + f"; commit {info['git_commit']}; median of {repeats}",
        f"model: {model_desc}",
        "",
        f"1. Inference latency per subject: {latency['n_rois']} ROIs, {latency['volumes']} "
        f"volumes at TR {latency['tr']:g} s -> {latency['n_windows']} window(s) of "
        f"{latency['window']} (stride {latency['stride']})",
        f"{'step':<52}{'ms':>10}{'ratio':>9}",
        f"{'whole-run Fisher-z connectivity (baseline)':<52}{latency['fisher_z_ms']:>10.3f}"
        f"{1.0:>9.1f}",
        f"{'session_from_arrays (standardise, conn, resample)':<52}"
        f"{latency['prepare_ms']:>10.3f}{latency['prepare_ms'] / latency['fisher_z_ms']:>9.1f}",
        f"{'predict_subject (windows, forward, averaging)':<52}{latency['predict_ms']:>10.3f}"
        f"{latency['ratio']:>9.1f}",
        "",
        f"2. Training throughput: batch {training['batch']} windows; forward + backward + "
        "gradient clipping + AdamW step",
        f"{'objective':<34}{'ms/step':>10}{'subjects/s':>12}",
        f"{'fine-tune (Gaussian NLL + aux)':<34}{training['finetune_ms']:>10.1f}"
        f"{training['finetune_subjects_per_s']:>12.1f}",
        f"{'pretrain (LMAE masked recon.)':<34}{training['pretrain_ms']:>10.1f}"
        f"{training['pretrain_subjects_per_s']:>12.1f}",
        "",
    ]
    s = scaling["spec"]
    mem = "peak CUDA memory allocated" if info["device"].startswith("cuda") else "peak RSS"
    lines += [
        f"3. Temporal predictor, forward + backward on (batch {s['batch']}, L, {s['d_model']}), "
        f"growth of {mem} in MB; xL0 = relative to L={scaling['rows'][0]['length']}"
        if scaling["rows"] else "3. Temporal predictor: no lengths",
        f"   SSM: SSMEncoder({s['d_model']}, {s['n_layers']} layers, d_state={s['d_state']}, "
        f"d_conv={s['d_conv']}, expand={s['expand']}), {scaling['params'].get('ssm', 0):,} "
        "parameters",
        f"   Transformer: {s['n_layers']} x TransformerEncoderLayer({s['d_model']}, "
        f"nhead={TRANSFORMER_HEADS}, dim_feedforward={2 * s['d_model']}, dropout=0), "
        f"{s['attention']} attention, "
        f"{scaling['params'].get('transformer', 0):,} parameters",
        f"{'L':>6}{'SSM ms':>10}{'Trf ms':>10}{'Trf/SSM':>9}{'SSM MB':>9}{'Trf MB':>9}"
        f"{'mem T/S':>9}{'L xL0':>7}{'SSM t':>8}{'Trf t':>8}{'SSM mem':>9}{'Trf mem':>9}",
    ]
    first = scaling["rows"][0]["length"] if scaling["rows"] else 1
    for row in scaling["rows"]:
        ssm, trf = row["ssm"], row["transformer"]
        lines.append(
            f"{row['length']:>6}{ssm['ms']:>10.2f}{trf['ms']:>10.2f}"
            f"{_fmt(row['time_ratio']):>9}{ssm['peak_mb']:>9.1f}{trf['peak_mb']:>9.1f}"
            f"{_fmt(row['memory_ratio']):>9}{row['length'] / first:>7.0f}"
            f"{_fmt(ssm['ms_growth'], '.1f'):>8}{_fmt(trf['ms_growth'], '.1f'):>8}"
            f"{_fmt(ssm['mb_growth'], '.1f'):>9}{_fmt(trf['mb_growth'], '.1f'):>9}")
    if any(not row[k].get("peak_reset", True) for row in scaling["rows"]
           for k in ("ssm", "transformer")):
        lines.append("note: the kernel refused to reset the peak RSS; MB values are upper "
                     "bounds")
    return lines


def write_markdown(path: Path, command: str, info: dict[str, Any], lines: list[str]) -> None:
    """Write a results page: command, date, machine, commit and the tables.

    Parameters
    ----------
    path : Path
        The Markdown file.
    command : str
        The command line that produced the numbers.
    info : dict
        :func:`machine_info`.
    lines : list of str
        The printed tables.
    """
    date = info["date"][:10]
    text = "\n".join([
        f"# model_speed — measured {date}, commit {info['git_commit']}",
        "",
        f"Command: `{command}` on {info['cpu']} ({info['cores']} CPUs, load average "
        f"{' '.join(str(v) for v in info['load_average'])} at the start), torch "
        f"{info['torch']}, {info['threads']} thread(s), device {info['device']}.",
        "",
        "```",
        *lines,
        "```",
        "",
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextlib.contextmanager
def limit_blas_threads(threads: int) -> Iterator[None]:
    """Limit numpy's BLAS (and OpenMP) thread pools like torch's, where threadpoolctl imports.

    Parameters
    ----------
    threads : int
        Threads per pool.

    Yields
    ------
    None
        Inside the limit.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=max(1, threads)):
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print the tables.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status 0.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="training options (YAML/TOML): model sizes, batch size, optimiser")
    p.add_argument("--model", help="checkpoint folder to load instead (default: the packaged "
                                   "model); the config still gives the training options")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024],
                   help="sequence lengths of the SSM vs Transformer comparison")
    p.add_argument("--repeats", type=int, default=3, help="timed samples (median)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (numpy's BLAS gets as many)")
    p.add_argument("--batch", type=int, help="training batch (default: the config's batch-size)")
    p.add_argument("--scaling-batch", type=int, default=8,
                   help="sequences per pass in the SSM vs Transformer comparison")
    p.add_argument("--rois", type=int, default=200, help="ROIs of a model built from --config")
    p.add_argument("--volumes", type=int, default=180, help="volumes of the synthetic run")
    p.add_argument("--tr", type=float, default=2.0, help="repetition time of the run (s)")
    p.add_argument("--attention", choices=["default", "math"], default="default",
                   help="Transformer attention: torch's choice (fused, no L x L matrix kept) or "
                        "the plain implementation (materialises the L x L matrix)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--markdown", type=Path, help="write a results page to this Markdown file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        with limit_blas_threads(int(spec["threads"])):
            print(json.dumps(child_measure(spec)), flush=True)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    torch.set_num_threads(max(1, args.threads))
    with limit_blas_threads(args.threads):
        return run(args, argv)


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Measure, print, and write the JSON and Markdown files.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed options of :func:`main`.
    argv : list of str, optional
        The arguments, for the command line quoted in the outputs (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status 0.
    """
    info = machine_info(args.device)

    from brainfm.errors import BrainfmError
    from brainfm.models.model import count_parameters

    try:
        model, card, opts = build_model(args.config, args.model, args.rois, args.device)
    except BrainfmError as exc:
        raise SystemExit(f"model_speed: error: {exc}") from exc
    cfg = model.config
    source = f"checkpoint {args.model}" if args.model else f"{args.config} (random weights)"
    model_desc = (f"{source}; {count_parameters(model):,} parameters; window {cfg.window}, "
                  f"patch_len {cfg.patch_len}, d_model {cfg.d_model}, enc_dim {cfg.enc_dim}, "
                  f"enc_layers {cfg.enc_layers}, ssm_layers {cfg.ssm_layers}, "
                  f"n_experts {cfg.n_experts}, {len(cfg.targets)} targets")
    print(f"model speed: {model_desc}", file=sys.stderr, flush=True)
    latency = measure_latency(model, card, args.volumes, args.tr, args.repeats, args.device)
    batch = args.batch or int(opts.batch_size)
    training = measure_training(model, opts, batch, args.repeats, args.device)
    scaling = measure_scaling(cfg, list(args.lengths), args.scaling_batch, args.repeats,
                              args.threads, args.device, args.attention)
    lines = report_lines(info, model_desc, latency, training, scaling, args.repeats)
    print("\n".join(lines))
    command = "python benchmarks/model_speed.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_ready({
            "command": command.strip(), "machine": info, "model": model_desc,
            "repeats": args.repeats, "latency": latency, "training": training,
            "scaling": scaling}), indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        write_markdown(args.markdown, command.strip(), info, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
