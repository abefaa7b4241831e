"""Benchmark commands of the voxel-sequence transformers: ``probe``, ``mlm-ablation``, ``voxel-speed`` and ``voxel-generation``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from showerformer.commands.benchmark import _f, benchmark_app

__all__ = ["ablation_table", "generation_tables", "probe_table", "speed_tables"]


def _mlm_run_config(path: Path) -> Any:
    """The checked run config of a TransformerMLM (:func:`load_run_config`), or a one-line
    error naming the file."""
    from showerformer.errors import InputError
    from showerformer.training.config import load_run_config

    run = load_run_config(path)
    if run.family != "transformer-mlm":
        raise InputError(f"family '{run.family}'", path=path, key="model.family",
                         expected="a transformer-mlm run config")
    return run


def _pct(value: Any, err: Any = None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * float(value):.1f}"
    return text + (f" ± {100 * float(err):.1f}" if err is not None else "")


def _signed_pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * float(value):+.1f} %"


def probe_table(summary: dict[str, Any]) -> Any:
    """Accuracy (%) of the energy and angle classifiers per input, with the paper's numbers."""
    from showerformer.commands.tables import ResultTable

    s = summary["settings"]
    t = ResultTable(
        f"representation probe (Table 1 of seed 001): {summary['n_train']:,} training / "
        f"{summary['n_test']:,} held-out showers, 3-layer MLP ({s['hidden']} wide, "
        f"{s['epochs']} epochs); accuracy %",
        ["input", "features", "energy", "angle", "energy (train)", "angle (train)"],
        left=frozenset({"input"}))
    for r in summary["rows"]:
        t.add_row(r["input"], f"{r['features']:,}",
                  _pct(r["energy"]["accuracy"], r["energy"]["accuracy_err"]),
                  _pct(r["angle"]["accuracy"], r["angle"]["accuracy_err"]),
                  _pct(r["energy"]["train_accuracy"]), _pct(r["angle"]["train_accuracy"]))
    for p in summary.get("paper", []):
        t.add_row(f"paper: {p['input']}", "", _pct(p["energy"]), _pct(p["angle"]), dim=True)
    t.notes.append("energy classes: " + ", ".join(summary["energy_classes"])
                   + "; angle classes: " + ", ".join(summary["angle_classes"]))
    return t


@benchmark_app.command("probe")
def probe(
    data: Annotated[Path, typer.Option("--data", help="Voxel showers the classifiers (and the "
                                                      "MLP-VAE) train on.")],
    test: Annotated[Path, typer.Option("--test", help="Held-out voxel showers.")],
    mlm: Annotated[list[Path] | None, typer.Option(
        "--mlm", help="TransformerMLM (or VQ-VAE) checkpoint or run folder; repeatable.")
    ] = None,
    n_train: Annotated[int | None, typer.Option(help="Training showers read (default 10,000).")
                       ] = 10_000,
    n_test: Annotated[int | None, typer.Option(help="Held-out showers read.")] = 2_000,
    epochs: Annotated[int, typer.Option(help="Classifier epochs.")] = 30,
    vae_epochs: Annotated[int, typer.Option(help="MLP-VAE epochs.")] = 10,
    theta_bins: Annotated[int, typer.Option(help="Angle classes (equal bins).")] = 5,
    no_raw: Annotated[bool, typer.Option("--no-raw", help="Skip the raw-shower row.")] = False,
    no_vae: Annotated[bool, typer.Option("--no-vae", help="Skip the MLP-VAE row.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every classifier and the VAE.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the summary to this JSON file.")
                   ] = None,
) -> None:
    """The representation probe of seed 001 (its Table 1): a 3-layer MLP predicts the incident
    energy and angle from the shower, an MLP-VAE's latent and each model's representation."""
    import json

    from rich.console import Console

    from showerformer._atomic import atomic_path
    from showerformer._paths import check_output_file
    from showerformer.benchmark.probe import ProbeSettings, run_probe
    from showerformer.commands.tables import show_table

    settings = ProbeSettings(epochs=epochs, vae_epochs=vae_epochs, theta_bins=theta_bins,
                             seed=seed)
    if out is not None:
        out = check_output_file(out, option="--out")
    paths = list(mlm or [])
    models = {}
    for p in paths:
        label = p.name if p.name not in models else str(p)
        models[label] = p
    console = Console(stderr=True)
    summary = run_probe(data, test, models, n_train=n_train, n_test=n_test, settings=settings,
                        raw=not no_raw, vae=not no_vae,
                        progress=lambda line: console.print(line, highlight=False,
                                                            markup=False))
    show_table(probe_table(summary))
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")


def ablation_table(summary: dict[str, Any]) -> Any:
    """Validation loss per ablation variant."""
    from showerformer.commands.tables import ResultTable

    t = ResultTable(f"TransformerMLM ablations: {summary['steps']:,} steps each on "
                    f"{summary['max_showers'] or 'all'} showers; validation BCE of every cell "
                    "(75 % of the patches masked, fixed masks)",
                    ["variant", "tokens", "cells/patch", "parameters", "val loss x1e3",
                     "train loss x1e3", "seconds"], left=frozenset({"variant"}))
    for r in summary["rows"]:
        val, tr = r.get("val_loss"), r.get("train_loss")
        t.add_row(r["variant"], r.get("tokens") or "-", r.get("patch_dim") or "-",
                  f"{r['parameters']:,}" if r.get("parameters") else "-",
                  "n/a" if val is None else f"{1e3 * val:.3f}",
                  "n/a" if tr is None else f"{1e3 * tr:.3f}", f"{r['seconds']:.0f}")
    return t


@benchmark_app.command("mlm-ablation")
def mlm_ablation(
    data: Annotated[Path, typer.Option("--data", help="Voxel showers (e.g. par04).")],
    config: Annotated[Path, typer.Option(
        "--config", help="Base TransformerMLM run config.")
    ] = Path("configs/transformer_mlm_par04.yaml"),
    out: Annotated[Path, typer.Option(help="Output folder (one run per variant, "
                                           "ablation.json).")] = Path("benchmark_mlm_ablation"),
    steps: Annotated[int, typer.Option(help="Training steps per variant.")] = 300,
    max_showers: Annotated[int | None, typer.Option(help="Showers read from --data.")] = 5_000,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", help="Run only these variants (labels of the default list); repeatable.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """The seed's ablations: patch sizes and positional encodings against the TransformerMLM
    reconstruction loss, every variant with the same data, steps and seed."""
    from rich.console import Console

    from showerformer.benchmark.voxel_transformers import ABLATIONS, run_mlm_ablation
    from showerformer.commands.tables import show_table
    from showerformer.errors import InputError
    from showerformer.training.config import check_device

    check_device(device)
    run = _mlm_run_config(config)
    base = {"model": {"family": run.family, **run.model}, "train": run.train.to_dict(),
            "data": dict(run.data)}
    chosen = dict(ABLATIONS)
    if variant:
        unknown = [v for v in variant if v not in ABLATIONS]
        if unknown:
            raise InputError(f"variant {unknown[0]!r}", key="--variant",
                             expected="one of: " + "; ".join(ABLATIONS))
        chosen = {v: ABLATIONS[v] for v in variant}
    console = Console(stderr=True)
    summary = run_mlm_ablation(data, out, config=base, variants=chosen, steps=steps,
                               max_showers=max_showers, device=device,
                               say=lambda line: console.print(line, highlight=False,
                                                              markup=False))
    show_table(ablation_table(summary))


def speed_tables(summary: dict[str, Any]) -> list[Any]:
    """Prior sampling speed with and without the KV cache, and training throughputs."""
    from showerformer.commands.tables import ResultTable

    where = f"{summary['device']}, {summary['threads']} thread(s)"
    s = ResultTable(f"vq-prior sampling ({where}): tokens, then the VQ-VAE decoder",
                    ["batch", "KV cache", "tokens ms/shower", "decode ms/shower",
                     "cache speed-up", "same tokens"])
    for r in summary["sampling"]:
        s.add_row(f"{r['batch']:,}", "yes" if r["kv_cache"] else "no",
                  _f(r["tokens_ms_per_shower"]), _f(r["decode_ms_per_shower"]),
                  "-" if r["speedup"] is None else f"{r['speedup']:.1f}x",
                  f"{100 * r['same_tokens']:.2f} %")
    t = ResultTable(f"training throughput ({where}): loss, backward and AdamW step",
                    ["family", "batch", "ms/step", "showers/s", "trainable parameters"],
                    left=frozenset({"family"}))
    for r in summary["training"]:
        t.add_row(r["family"], f"{r['batch']:,}", _f(r["ms_per_step"], 1),
                  _f(r["showers_per_s"], 1), f"{r['parameters']:,}")
    return [s, t]


@benchmark_app.command("voxel-speed")
def voxel_speed(
    prior: Annotated[Path, typer.Argument(help="A vq-prior checkpoint or run folder.")],
    mlm_config: Annotated[Path, typer.Option(
        "--mlm-config", help="TransformerMLM run config whose model is timed.")
    ] = Path("configs/transformer_mlm_par04.yaml"),
    batches: Annotated[str, typer.Option(help="Sampling batch sizes, comma-separated.")
                       ] = "1,100",
    train_batch: Annotated[int, typer.Option(help="Batch of the throughput steps.")] = 64,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's).")
                       ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="Also write the rows to this JSON file.")
                   ] = None,
) -> None:
    """Prior sampling ms/shower with and without the key-value cache (same tokens checked), and
    the training throughput of TransformerMLM, the VQ-VAE and the prior."""
    import json

    import torch

    from showerformer._atomic import atomic_path
    from showerformer._paths import check_output_file
    from showerformer.benchmark.voxel_transformers import (
        prior_sampling_speed,
        training_throughput,
    )
    from showerformer.commands.tables import show_table
    from showerformer.errors import InputError
    from showerformer.generation import load_generator
    from showerformer.models import get_model_class
    from showerformer.training.config import check_device
    from showerformer.training.distributed import resolve_device

    check_device(device)
    mlm_cfg = _mlm_run_config(mlm_config).model
    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise InputError(f"{batches!r}", key="--batches",
                         expected="comma-separated positive integers") from None
    if not sizes or min(sizes) < 1 or train_batch < 1:
        raise InputError(f"{batches!r} / {train_batch}", key="--batches",
                         expected="positive batch sizes")
    if threads is not None:
        if threads < 1:
            raise InputError(f"{threads}", key="--threads", expected="at least 1 thread")
        torch.set_num_threads(threads)
    if out is not None:
        out = check_output_file(out, option="--out")
    model, _ = load_generator(prior, device=device)
    if getattr(model, "family", None) != "vq-prior":
        raise InputError(f"a '{model.family}' checkpoint", path=prior, key="family",
                         expected="a vq-prior checkpoint")
    dev = resolve_device(device)
    sampling = prior_sampling_speed(model, sizes)
    grid = tuple(model.tokenizer.config.grid)
    g = torch.Generator().manual_seed(0)
    batch = {"voxels": (torch.rand((train_batch, *grid), generator=g) ** 8 * 500).to(dev),
             "energy": torch.full((train_batch,), 128e3, device=dev),
             "theta": torch.full((train_batch,), 1.4, device=dev)}
    mlm_cls = get_model_class("transformer-mlm")
    mlm = mlm_cls(mlm_cls.config_class.from_dict(
        {**mlm_cfg, "grid": list(grid)}))
    mlm.load_data_state(model.tokenizer.data_state(), {})
    training = []
    for name, m in (("transformer-mlm", mlm.to(dev)), ("vq-vae", model.tokenizer),
                    ("vq-prior", model)):
        if m is model.tokenizer:  # time the tokenizer as it trains (not frozen)
            m = _trainable_copy(m)
        r = training_throughput(m, batch)
        r.update(family=name, parameters=sum(p.numel() for p in m.parameters()
                                             if p.requires_grad))
        training.append(r)
    summary = {"device": str(dev), "threads": torch.get_num_threads(), "sampling": sampling,
               "training": training}
    for t in speed_tables(summary):
        show_table(t)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(summary, indent=1) + "\n")


def _trainable_copy(module: Any) -> Any:
    """A trainable copy of a frozen sub-model (for timing its training step)."""
    import copy

    m = copy.deepcopy(module)
    m.requires_grad_(True)
    return m.train()


def generation_tables(summaries: list[dict[str, Any]]) -> list[Any]:
    """Reconstruction vs generation for one or more priors (e.g. linear vs log scaling)."""
    from showerformer.commands.tables import ResultTable

    q = ResultTable("VQ-VAE reconstruction vs prior generation against held-out showers",
                    ["prior (scaling): showers", "showers", "AUC low", "AUC high", "FPD x1e3", "KPD x1e3",
                     "mean sep. power", "cell-energy sep. power", "cells ref / gen",
                     "ms/shower"], left=frozenset({"prior (scaling): showers"}))
    p = ResultTable("profile tails: energy beyond 90 % of the reference profile, generated / "
                    "reference - 1 (largest single-bin mismatch in brackets)",
                    ["prior (scaling): showers", "energy", "longitudinal", "lateral"],
                    left=frozenset({"prior (scaling): showers", "energy"}))

    def pm(ev: dict[str, Any], key: str) -> str:
        v, e = ev.get(key), ev.get(f"{key}_err")
        return _f(v) if v is None or e is None else f"{_f(v)} ± {_f(e)}"

    for s in summaries:
        for r in s["rows"]:
            label = f"{Path(s['checkpoint']).name} ({s['scaling']}): {r['name']}"
            ev, cells = r["evaluation"], r["cells"]
            q.add_row(label, f"{s['n']:,}", pm(ev, "auc_low"), pm(ev, "auc_high"),
                      pm(ev, "fpd_x1e3"), pm(ev, "kpd_x1e3"), _f(ev.get("separation_mean")),
                      _f(cells.get("separation")),
                      f"{cells['cells_ref']:.0f} / {cells['cells_gen']:.0f}",
                      _f(r["ms_per_shower"]))
            for row in r["profiles"]:
                lo, la = row["longitudinal"], row["lateral"]
                p.add_row(label, row["energy"],
                          f"{_signed_pct(lo['tail_rel_diff'])} ({_pct(lo['max_bin_rel_diff'])} %)",
                          f"{_signed_pct(la['tail_rel_diff'])} ({_pct(la['max_bin_rel_diff'])} %)")
    return [q, p]


@benchmark_app.command("voxel-generation")
def voxel_generation(
    prior: Annotated[list[Path], typer.Argument(help="vq-prior checkpoints or run folders "
                                                     "(e.g. linear and log scaling).")],
    test: Annotated[Path, typer.Option("--test", help="Held-out voxel showers.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("benchmark_voxel_generation"),
    n: Annotated[int | None, typer.Option("--n", help="Held-out showers used.")] = 2_000,
    classifier: Annotated[str, typer.Option(help="cpu, full or none.")] = "cpu",
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k filter.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus filter.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the token draws.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write the evaluation plots.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """The seed's comparison: VQ-VAE reconstruction against prior generation through the
    evaluation suite, profile tails (lateral and longitudinal) and the cell-energy spectrum."""
    from rich.console import Console

    from showerformer.benchmark.voxel_transformers import run_generation_benchmark
    from showerformer.commands.tables import show_table
    from showerformer.training.config import check_device

    check_device(device)
    console = Console(stderr=True)
    summaries = []
    for i, p in enumerate(prior):
        summaries.append(run_generation_benchmark(
            p, test, out / f"prior_{i}", n=n, classifier=classifier, seed=seed,
            temperature=temperature, top_k=top_k, top_p=top_p, plots=plots, device=device,
            say=lambda line: console.print(line, highlight=False, markup=False)))
    for t in generation_tables(summaries):
        show_table(t)
