"""Difficulty-solver benchmark: the authors' per-image sklearn path vs a dense batched torch solver vs
the fused kernel, on real Facades photos through Wide-ResNet-50-2 (random init) and EfficientNet-Lite0.

Same inputs for all (224x224 -> stages 56/28/14/7, skimage-compatible upsampling, 70% fit pixels,
ridge 1e-6 relative; sklearn is OLS as the authors ran it). Each method runs in its own subprocess:
images/s (best of the repeats after a warm-up; also CPU time, which others sharing the cores inflate
less) and peak RSS above the loaded inputs (VmHWM after /proc/self/clear_refs). `fused_torch` is the
fused kernel with its numba steps replaced by their torch formulation (what CUDA runs). Also the
float32 GEMM rate and the fraction of it the fused kernel achieves on the FLOPs it performs (counted).
Prints Markdown, writes bench/results/kernel.json (kernel_quick / _threads{N} variants for --quick and
--threads); `--quick` (EfficientNet-Lite0 only, a few images) takes about 20 s on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage.transform import resize as sk_resize  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

import memscore.kernels.difficulty as difficulty  # noqa: E402
from memscore.devices import use_threads  # noqa: E402
from bench.common import aligned_photo_batch, gemm_rate, markdown_table, memory_mib, reset_peak_memory, timed, write_results  # noqa: E402
from memscore.kernels.interp import upsample  # noqa: E402

RESIZE = "skimage"  # the authors' operator, so all three methods solve the same problem
RIDGE = 1e-6
FIT_FRACTION = 0.7
BACKBONES = (("wide_resnet50_2", False), ("efficientnet_lite0", True))
METHODS = ("sklearn", "dense", "fused_torch", "fused")  # fused_torch: numba steps replaced by torch
FACADES = ROOT.parent / "shared" / "datasets" / "facades"
DEFAULT_THREADS = torch.get_num_threads()


# --- the three solvers --------------------------------------------------------------------------


def sklearn_authors(stages: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The authors' path per image: skimage resize (order 1) to float64 3840-wide features, LinearRegression."""
    batch, _, height, width = target.shape
    errors = []
    for image in range(batch):
        columns = [sk_resize(s[image].numpy().astype(np.float64).transpose(1, 2, 0), (height, width), order=1,
                             mode="reflect", anti_aliasing=False).reshape(height * width, -1) for s in stages]
        features = np.concatenate(columns, 1)
        pixels = target[image].numpy().astype(np.float64).reshape(3, -1).T
        fit = mask[image].numpy()
        model = LinearRegression().fit(features[fit], pixels[fit])
        errors.append(np.abs(model.predict(features[~fit]) - pixels[~fit]).mean())
    return np.array(errors)


def dense_torch(stages: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype = torch.float64,
                chunk: int = 4) -> tuple[np.ndarray, int]:
    """Batched torch on the full-width upsampled features: ridge via Cholesky in primal or dual form,
    whichever is smaller (dual for WRN's 3840 > 2195 fit rows). Same lower-triangle Gram and triangular
    solves as the fused kernel. Returns (Ldiff, number of images whose Cholesky failed)."""
    batch, _, height, width = target.shape
    full_width = sum(s.shape[1] for s in stages)
    fit_index = torch.nonzero(mask)[:, 1].reshape(batch, -1)
    held_index = torch.nonzero(~mask)[:, 1].reshape(batch, -1)
    errors, failed = [], 0
    for start in range(0, batch, chunk):
        part = slice(start, start + chunk)
        features = torch.cat([upsample(s[part].to(dtype), (height, width), RESIZE).flatten(2) for s in stages], 1).mT
        pixels = target[part].to(dtype).flatten(2).mT
        fit, held = (torch.gather(features, 1, i[part, :, None].expand(-1, -1, full_width)) for i in (fit_index, held_index))
        fit_y = torch.gather(pixels, 1, fit_index[part, :, None].expand(-1, -1, 3))
        held_y = torch.gather(pixels, 1, held_index[part, :, None].expand(-1, -1, 3))
        mean, y_mean = fit.mean(1, keepdim=True), fit_y.mean(1, keepdim=True)
        fit, held, fit_y = fit - mean, held - mean, fit_y - y_mean
        lam = RIDGE * fit.square().sum((1, 2)) / full_width
        primal = full_width <= fit.shape[1]
        system = difficulty.lower_gram(fit if primal else fit.mT)
        system.diagonal(dim1=1, dim2=2).add_(lam[:, None])
        factor, info = torch.linalg.cholesky_ex(system)
        failed += int((info != 0).sum())
        if primal:
            beta = difficulty.cholesky_solve(factor, fit.mT @ fit_y).to(dtype)
        else:
            beta = fit.mT @ difficulty.cholesky_solve(factor, fit_y).to(dtype)
        errors.append((y_mean + held @ beta - held_y).abs().mean((1, 2)).double())
    return torch.cat(errors).numpy(), failed


def fused(stages: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    return difficulty.predictability_error(stages, target, mask, resize=RESIZE, ridge=RIDGE).double().numpy()


# --- FLOP counts --------------------------------------------------------------------------------


def fused_flops(stages: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> tuple[float, dict]:
    """FLOPs the fused kernel performs on this batch (one counted run: refinement steps and fallbacks as
    they happen), and how many image-passes each step took."""
    n_fit = int(mask[0].sum())
    n_held = mask.shape[1] - n_fit
    height, width = target.shape[-2:]
    plan = [difficulty.StagePlan.build(s.shape[1], tuple(s.shape[-2:]), (height, width), RESIZE) for s in stages]
    d = sum(p.width for p in plan)
    per_image = 0.0
    for s, p in zip(stages, plan):
        positions = s.shape[2] * s.shape[3]
        if p.width < s.shape[1] and p.width:  # Householder projection + thin QR of C x (h*w - 1)
            per_image += 8.0 * s.shape[1] * positions + 2.0 * s.shape[1] * p.width ** 2 - 2.0 / 3.0 * p.width ** 3
        per_image += 2.0 * positions * p.width + 2.0 * p.taps.shape[1] * (n_fit + n_held) * p.width  # mean, gather
    gram = sum(2.0 * n_fit * (min(a + difficulty.GRAM_PANEL, d) - a) * min(a + difficulty.GRAM_PANEL, d)
               for a in range(0, d, difficulty.GRAM_PANEL))
    per_image += gram + d ** 3 / 3.0
    counts = {"rhs": 0, "residual": 0, "held_out": 0, "solve": 0, "fp64_refit": 0}
    originals = {name: getattr(difficulty, name) for name in ("residual", "held_out_error", "cholesky_solve", "fp64_solution")}

    def counting(name: str, key: str, images_arg: int | None):
        def wrapped(*args):
            counted = "rhs" if key == "residual" and args[2] is None else key  # F^T y: one pass, not two
            counts[counted] += len(args[images_arg]) if images_arg is not None else len(args[1])
            return originals[name](*args)
        return wrapped

    difficulty.residual = counting("residual", "residual", 3)
    difficulty.held_out_error = counting("held_out_error", "held_out", 7)
    difficulty.cholesky_solve = counting("cholesky_solve", "solve", None)
    difficulty.fp64_solution = counting("fp64_solution", "fp64_refit", None)
    try:
        fused(stages, target, mask)
    finally:
        for name, function in originals.items():
            setattr(difficulty, name, function)
    total = len(mask) * per_image + counts["rhs"] * 6.0 * n_fit * d + counts["residual"] * 12.0 * n_fit * d + counts["held_out"] * 12.0 * n_held * d
    total += counts["solve"] * 6.0 * d * d + counts["fp64_refit"] * (gram + 4.0 * n_fit * d * 3 + d ** 3 / 3.0)
    return total, {**counts, "gram_flops_per_image": gram, "width": d}


def dense_flops(stages: list[torch.Tensor], target: torch.Tensor, mask: torch.Tensor) -> float:
    """Per-image FLOPs of `dense_torch`: separable upsampling GEMMs, the Gram / kernel, Cholesky, solve."""
    n_fit = int(mask[0].sum())
    height, width = target.shape[-2:]
    d = sum(s.shape[1] for s in stages)
    up = sum(2.0 * s.shape[1] * (height * s.shape[2] * s.shape[3] + height * width * s.shape[3]) for s in stages)
    size = min(d, n_fit)
    panel = difficulty.GRAM_PANEL
    gram = sum(2.0 * max(d, n_fit) * (min(a + panel, size) - a) * min(a + panel, size) for a in range(0, size, panel))
    return up + gram + size ** 3 / 3.0 + 2.0 * n_fit * d * 3 * 2


# --- measurement --------------------------------------------------------------------------------


def busy_fraction(seconds: float = 0.5) -> float:
    """Share of all CPUs in use (by anything) over a short window: the machine is shared."""
    def snapshot() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(values), values[3] + values[4]
    total0, idle0 = snapshot()
    time.sleep(seconds)
    total1, idle1 = snapshot()
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def worker(method: str, inputs: Path, count: int, repeats: int) -> dict:
    """One method in a fresh process: warm up on one image, then time `count` images; peak RSS delta."""
    data = torch.load(inputs)
    stages, target, mask = [s[:count] for s in data["stages"]], data["target"][:count], data["mask"][:count]
    if method == "fused_torch":  # the formulation CUDA runs, to measure what numba buys on CPU
        difficulty.use_numba = lambda tensor: False
    run = {"sklearn": sklearn_authors, "dense": lambda *a: dense_torch(*a)[0], "fused_torch": fused, "fused": fused}[method]
    if method != "sklearn":  # warm up (numba's cached machine code, MKL) on one image; sklearn has nothing to warm
        run([s[:1] for s in stages], target[:1], mask[:1])
    baseline = memory_mib("VmRSS")
    reset_peak_memory()
    outputs = []
    times = [timed(lambda: outputs.append(run(stages, target, mask))) for _ in range(repeats)]
    result = {"seconds": min(t[0] for t in times), "cpu_seconds": min(t[1] for t in times), "images": count,
              "peak_rss_mib": memory_mib("VmHWM") - baseline, "ldiff": [float(e) for e in outputs[-1]]}
    if method.startswith("fused"):
        result["flops"], result["passes"] = fused_flops(stages, target, mask)
    if method == "dense":
        result["flops"] = count * dense_flops(stages, target, mask)
        fp32_errors, fp32_failed = dense_torch(stages, target, mask, dtype=torch.float32)
        result["fp32_cholesky_failed"] = fp32_failed
        result["fp32_ldiff"] = [float(e) for e in fp32_errors]
    return result


def facade_inputs(folder: Path, count: int, name: str, pretrained: bool) -> dict:
    from memscore.backbones import create_backbone

    images, target = aligned_photo_batch(folder / "train", count)
    torch.manual_seed(0)
    model = create_backbone(name, pretrained=pretrained)
    mean, std = torch.tensor(model.mean).view(1, 3, 1, 1), torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():  # channels-last, as memscore.scores runs the backbone
        model = model.to(memory_format=torch.channels_last)
        stages = model(((images - mean) / std).contiguous(memory_format=torch.channels_last))
    generator = torch.Generator().manual_seed(0)
    n_fit = round(FIT_FRACTION * 56 * 56)
    mask = torch.stack([torch.randperm(56 * 56, generator=generator) < n_fit for _ in range(count)])
    return {"stages": stages, "target": target, "mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="EfficientNet-Lite0 only, a few images per method")
    parser.add_argument("--facades", type=Path, default=FACADES)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help="torch and numba threads (default: torch's); 1 is steadier on a shared machine")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args.inputs, args.count, args.repeats)))
        return
    if not (args.facades / "train").is_dir():
        sys.exit(f"Facades not found at {args.facades}: pass --facades PATH (the pix2pix layout, train/*.jpg)")
    # Images per backbone and method (sklearn on WRN takes 10-30 s an image), timed repeats.
    counts = ({"efficientnet_lite0": {"sklearn": 1, "dense": 2, "fused_torch": 4, "fused": 4}} if args.quick else
              {"wide_resnet50_2": {"sklearn": 3, "dense": 6, "fused_torch": 32, "fused": 32},
               "efficientnet_lite0": {"sklearn": 8, "dense": 16, "fused_torch": 32, "fused": 32}})
    repeats = ({"sklearn": 1, "dense": 1, "fused_torch": 1, "fused": 1} if args.quick else
               {"sklearn": 1, "dense": 2, "fused_torch": 3, "fused": 3})
    rates = [gemm_rate()]
    results: dict = {"resize": RESIZE, "ridge": RIDGE, "fit_fraction": FIT_FRACTION, "threads": args.threads,
                     "backbones": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, pretrained in BACKBONES:
            if name not in counts:
                continue
            inputs = Path(scratch) / f"{name}.pt"
            torch.save(facade_inputs(args.facades, max(counts[name].values()), name, pretrained), inputs)
            per_method = {}
            for method in METHODS:
                if not counts[name][method]:
                    continue
                busy = busy_fraction()
                command = [sys.executable, __file__, "--worker", method, "--inputs", str(inputs),
                           "--count", str(counts[name][method]), "--repeats", str(repeats[method]),
                           "--threads", str(args.threads)]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                per_method[method] = {**json.loads(done.stdout.strip().splitlines()[-1]), "busy_before": busy}
            results["backbones"][name] = per_method
    rates.append(gemm_rate())
    results["gemm_fp32_gflops"] = {basis: max(r[basis] for r in rates) for basis in ("wall", "cpu")}
    results["gemm_fp32_gflops_runs"] = rates
    print(report(results))
    name = "kernel" + ("_quick" if args.quick else "") + ("" if args.threads == DEFAULT_THREADS else f"_threads{args.threads}")
    write_results(name, results)


def report(results: dict) -> str:
    rate = results["gemm_fp32_gflops"]
    rows, notes = [], []
    for name, methods in results["backbones"].items():
        reference = np.array(methods["dense"]["ldiff"])
        fused = methods["fused"]
        for method, r in methods.items():
            ours = np.array(r["ldiff"])[: len(reference)]
            difference = np.abs(ours / reference[: len(ours)] - 1).max()
            wall, cpu = r["seconds"] / r["images"], r["cpu_seconds"] / r["images"]
            rows.append([name, method, r["images"], 1 / wall, 1e3 * wall, 1e3 * cpu, r["peak_rss_mib"],
                         r.get("flops", float("nan")) / r["images"] / 1e9, f"{difference:.1e}",
                         wall / (fused["seconds"] / fused["images"]), cpu / (fused["cpu_seconds"] / fused["images"])])
        achieved = {"wall": fused["flops"] / fused["seconds"] / 1e9, "cpu": fused["flops"] / fused["cpu_seconds"] / 1e9}
        notes.append(f"- {name}: fused does {fused['flops'] / fused['images'] / 1e9:.3f} GFLOP/img (width "
                     f"{fused['passes']['width']}, Gram {fused['passes']['gram_flops_per_image'] / 1e9:.3f}; residual "
                     f"passes {fused['passes']['residual']}, fp64 refits {fused['passes']['fp64_refit']} of "
                     f"{fused['images']} images): {achieved['wall']:.0f} GFLOP/s = {achieved['wall'] / rate['wall']:.0%} "
                     f"of the GEMM rate per wall second, {achieved['cpu'] / rate['cpu']:.0%} per CPU second. "
                     f"Dense fp32 Cholesky failed on {methods['dense']['fp32_cholesky_failed']} of "
                     f"{methods['dense']['images']} images. Whole-machine CPU busy just before each run: "
                     + ", ".join(f"{m} {r['busy_before']:.0%}" for m, r in methods.items()))
    header = ["backbone", "method", "images", "img/s", "ms/img", "CPU ms/img", "peak RSS MiB", "GFLOP/img",
              "max rel diff vs dense fp64", "fused speedup (wall)", "fused speedup (CPU)"]
    runs = ", ".join(f"{r['wall']:.0f}/{r['cpu']:.0f}" for r in results["gemm_fp32_gflops_runs"])
    return "\n".join([markdown_table(header, rows), "",
                      f"{results['threads']} thread(s). float32 GEMM (2048^3 torch matmul): {rate['wall']:.0f} GFLOP/s "
                      f"per wall second, {rate['cpu']:.0f} per CPU second (runs wall/CPU: {runs})", *notes])


if __name__ == "__main__":
    main()
