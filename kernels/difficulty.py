"""Fused, batched predictability error (Ldiff): per image, a ridge regression from upsampled CNN stage
maps to the image's own pixels, fitted on one pixel subset and scored (mean |error|) on the rest.

Structure exploited (docs/ALGORITHM.md, "Closed form"): predictions depend on the features only through
F F^T, and centring removes anything constant over pixels. So a stage with h*w <= C positions is
replaced by an (h*w - 1)-column factor of its Gram with the constant projected out (`_native_factor`),
and every stage is interpolated straight into the gathered fit / held-out rows (1, 2 or 4 taps a row),
never materialising the D_full-wide map. Reduced and dense agree up to rounding for any ridge, since
lam = ridge * trace(centred Gram) / D_full keeps the original width. The same structure makes the
Gram cheaper: a coarse stage's rows of it are its native factor times the fit rows scattered back onto
its few native positions (`_fit_gram`), a GEMM with inner size h*w instead of the fit-row count.

Precision (Facades; tests/test_difficulty.py, bench/kernel.py):
- fp32: native factors (QR), interpolation, centring, the Gram and its Cholesky factor, most of the
  FLOPs; on this CPU fp64 GEMM runs at half the fp32 rate, fp64 Cholesky too. bf16 matrix units do
  not pay here: torch's CPU matmul has no bf16-in/fp32-out form, and the three-term bf16 split
  (through oneDNN's bf16 fp32-math mode) measured 42 ms per WRN Gram against 27 in fp32, 1 thread.
- fp64: the right-hand side, every residual F^T (y - F beta) - lam beta and the held-out predictions,
  accumulated in fp64 from the fp32 features. The fp32 solution alone is off by up to 6e-5 relative
  in Ldiff on pretrained EfficientNet-Lite0 (1e-2 on random-init Wide-ResNet-50-2), so it is refined
  with fp64 residuals, the fp32 factor as preconditioner, until the change still expected (from the
  last step and its shrink ratio) is <= REFINE_TOL of Ldiff. Lite0 takes 2 steps; random WRN 2-8.
  Versus a dense float64 reference: Lite0 2e-8 median / 5e-8 worst, random WRN 2e-7 worst: the
  rounding of the fp32 features themselves.
- Per image, where the fp32 Cholesky fails or refinement stalls (a step shrinks by less than
  REFINE_STALL): the Gram again in fp64 from the same features; where that Cholesky fails too, or
  ridge == 0 (OLS), the min-norm solution from an eigendecomposition. Never extra jitter: it would
  change the defined ridge.

numba vs torch on CPU: numba for the interpolate-gather-centre step, the fit-row means, the fp64
residuals and the held-out predictions; torch (MKL) for the Gram, QR, Cholesky and triangular solves,
where numba cannot approach MKL. Measured, WRN geometry (D = 1011, 2195 fit rows), ms per image:
gather of the 28x28, 512-channel stage 1.0 (numba, 4 taps a row) vs 12.2 (two interpolation GEMMs
then a gather); fp64-accumulated residual from fp32 features 5.3 (one numba pass) vs 20.9 (cast,
two bmm). End to end (bench/kernel.py, 1 thread): 145 vs 569 ms per WRN image, 23 vs 86 per Lite0
image with those steps in torch. The torch formulation runs for CUDA tensors and is tested on CPU.

Threads: on a CPU that other busy processes share, OpenMP threads (torch's and numba's) stall at
every barrier of the many small parallel regions; one thread per process (or OMP_WAIT_POLICY=passive)
is then several times faster: measured 10 vs 120 ms per Lite0 image, 1 vs 2 threads, both cores busy.

The steps (`StagePlan`, `lower_gram`, `cholesky_solve`, `residual`, `held_out_error`, `fp64_solution`,
`scatter_rows`, `use_numba`) are public: bench/kernel.py times and counts them, the tests check each alone.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .interp import cached_matrix, interpolation_matrix

MAX_CHUNK_BYTES = 256 << 20  # working memory per chunk of images (features, Grams, factors)
GRAM_PANEL = 256  # row-panel width of the lower-triangle Gram
REFINE_STEPS = 10
REFINE_TOL = 1e-5  # refinement ends once the estimated remaining change of held-out predictions <= this * Ldiff
REFINE_STALL = 0.8  # an image whose step is not below this times the previous one goes to the fp64 refit
SCATTER_COST = 16  # GEMM multiply-adds as costly as one multiply-add of the row scatter (measured rates, CPU)
_BLOCKS = 8  # fixed row blocks per image in numba reductions: summation order never depends on the batch


def reduced_width(channels: list[int], sizes: list[tuple[int, int]]) -> int:
    """Columns the fused kernel solves with: per stage C_l, or h_l * w_l - 1 when h_l * w_l <= C_l
    (that stage spans the constant, which centring removes: see `_native_factor`)."""
    return sum(_stage_width(c, h * w) for c, (h, w) in zip(channels, sizes))


def _stage_width(channels: int, positions: int) -> int:
    return positions - 1 if positions <= channels else channels


def predictability_error(stages: list[torch.Tensor], target: torch.Tensor, fit_mask: torch.Tensor, *,
                         resize: str = "bilinear", ridge: float = 1e-6) -> torch.Tensor:
    """Ldiff per image, float32 `[B]` on the input device.

    stages: `[B, C_l, h_l, w_l]` maps; target: `[B, 3, H, W]`; fit_mask: bool `[B, H*W]` (True = fit
    pixel, row-major). Ridge relative to the mean diagonal of the centred full-width Gram.
    """
    _validate(stages, target, fit_mask, ridge)
    batch, _, height, width = target.shape
    fit_rows, n_fit = _row_lists(fit_mask.to(target.device))
    held_rows, n_held = _row_lists(~fit_mask.to(target.device))
    pixels = target.detach().to(torch.float64).reshape(batch, 3, height * width).transpose(1, 2)
    plan = [StagePlan.build(s.shape[1], (s.shape[2], s.shape[3]), (height, width), resize) for s in stages]
    lam_per_trace = ridge / sum(stage.shape[1] for stage in stages)
    most = max(1, MAX_CHUNK_BYTES // _bytes_per_image(plan, fit_rows.shape[1], held_rows.shape[1], height * width))
    step = -(-batch // -(-batch // most))  # equal chunks: a small last chunk costs more per image
    work = _Workspace.for_device(target.device)
    errors = []
    for start in range(0, batch, step):
        part = slice(start, start + step)
        errors.append(_chunk_errors([s[part] for s in stages], pixels[part], fit_rows[part], n_fit[part],
                                    held_rows[part], n_held[part], plan, lam_per_trace, work))
    return torch.cat(errors).to(torch.float32)


def _validate(stages: list[torch.Tensor], target: torch.Tensor, fit_mask: torch.Tensor, ridge: float) -> None:
    if not stages:
        raise ValueError("predictability_error needs at least one stage map")
    if target.ndim != 4 or target.shape[1] != 3:
        raise ValueError(f"target must be [B, 3, H, W], got {tuple(target.shape)}")
    batch, _, height, width = target.shape
    for index, stage in enumerate(stages):
        if stage.ndim != 4 or stage.shape[0] != batch:
            raise ValueError(f"stage {index} must be [{batch}, C, h, w], got {tuple(stage.shape)}")
        if stage.device != target.device:
            raise ValueError(f"stage {index} is on {stage.device}, target on {target.device}: move both to one device")
        if not bool(torch.isfinite(stage.sum(dtype=torch.float32))):  # one pass; NaN or inf anywhere shows
            raise ValueError(f"stage {index} has non-finite values: check the backbone input and precision")
    if fit_mask.shape != (batch, height * width) or fit_mask.dtype != torch.bool:
        raise ValueError(f"fit_mask must be bool [{batch}, {height * width}], got {fit_mask.dtype} {tuple(fit_mask.shape)}")
    counts = fit_mask.sum(1)
    if bool(((counts < 2) | (counts > height * width - 1)).any()):
        raise ValueError("every image needs at least 2 fit pixels and 1 held-out pixel")
    if not bool(torch.isfinite(target.sum(dtype=torch.float32))):
        raise ValueError("target has non-finite values")
    if not ridge >= 0.0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")


def _row_lists(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected pixel indices per image, ascending, right-padded with -1: (`[B, n_max]` int64, counts `[B]`)."""
    counts = mask.sum(1)
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, : int(counts.max())]
    slots = torch.arange(order.shape[1], device=mask.device)
    return torch.where(slots < counts[:, None], order, -1), counts


@dataclass(frozen=True)
class StagePlan:
    """How one stage reaches the output grid: its reduced width and its interpolation taps per pixel."""

    size: tuple[int, int]
    grid: tuple[int, int]
    mode: str
    width: int
    taps: torch.Tensor  # int64 [H*W, T], T in {1, 2, 4}: native position (i * w + j) of each tap
    weights: torch.Tensor  # float32 [H*W, T]

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def build(channels: int, size: tuple[int, int], grid: tuple[int, int], mode: str) -> StagePlan:
        rows_idx, rows_w = _row_taps(size[0], grid[0], mode)
        cols_idx, cols_w = _row_taps(size[1], grid[1], mode)
        taps = rows_idx[:, None, :, None] * size[1] + cols_idx[None, :, None, :]
        weights = (rows_w[:, None, :, None] * cols_w[None, :, None, :]).astype(np.float32)
        count = rows_idx.shape[1] * cols_idx.shape[1]
        return StagePlan(size, grid, mode, _stage_width(channels, size[0] * size[1]),
                          torch.from_numpy(taps.reshape(-1, count)), torch.from_numpy(weights.reshape(-1, count)))


def _row_taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Non-zeros of each row of the 1-D operator, `[out, t]` index and weight (t = 1 when it is the identity)."""
    matrix = interpolation_matrix(in_size, out_size, mode).numpy()
    if in_size == out_size and np.array_equal(matrix, np.eye(in_size)):
        return np.arange(out_size)[:, None], np.ones((out_size, 1))
    index = np.zeros((out_size, 2), dtype=np.int64)
    weight = np.zeros((out_size, 2))
    for row in range(out_size):
        nonzero = np.flatnonzero(matrix[row])
        index[row] = nonzero[0]  # a single tap repeats with weight 0
        index[row, : len(nonzero)] = nonzero
        weight[row, : len(nonzero)] = matrix[row, nonzero]
    return index, weight


def _bytes_per_image(plan: list[StagePlan], fit_rows: int, held_rows: int, pixels: int) -> int:
    width = sum(stage.width for stage in plan)
    native = sum(stage.size[0] * stage.size[1] * stage.width for stage in plan)
    upsampled = max(pixels * stage.width for stage in plan)  # the torch path's per-stage temporary
    ends = np.cumsum([stage.width for stage in plan])
    scattered = max(stage.size[0] * stage.size[1] * (end + stage.width) for stage, end in zip(plan, ends))
    return 4 * ((fit_rows + held_rows) * width + native + upsampled + scattered + 2 * width * width) + 8 * width * width


class _Workspace:
    """The big buffers of a chunk (features, Gram, factor, channel-last stage copies: 28 MB per WRN
    image), reused chunk after chunk. On CPU they also outlive the call (one set per thread, at most
    about MAX_CHUNK_BYTES): on this VM a fresh 4 KiB page costs ~4 us to fault in, 29 ms of system
    time per WRN image and 3 ms per EfficientNet-Lite0 image when every chunk allocates anew.
    CUDA's caching allocator already recycles memory: there a workspace lives for one call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    @staticmethod
    def for_device(device: torch.device) -> _Workspace:
        if device.type != "cpu":
            return _Workspace(device)
        if not hasattr(_CPU_WORKSPACE, "work"):
            _CPU_WORKSPACE.work = _Workspace(device)
        return _CPU_WORKSPACE.work

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        size = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype:
            self.buffers.pop(name, None)  # release the old one before allocating the new
            buffer = self.buffers[name] = torch.empty(size, dtype=dtype, device=self.device)
        return buffer[:size].view(shape)


_CPU_WORKSPACE = threading.local()


def _chunk_errors(stages: list[torch.Tensor], pixels: torch.Tensor, fit_rows: torch.Tensor, n_fit: torch.Tensor,
                  held_rows: torch.Tensor, n_held: torch.Tensor, plan: list[StagePlan], lam_per_trace: float,
                  work: _Workspace) -> torch.Tensor:
    """Ldiff (fp64) for one chunk of images."""
    factors = [_native_factor(stage, work, f"stage{index}") for index, stage in enumerate(stages)]
    means = [_fit_mean(x, stage, fit_rows, n_fit) for x, stage in zip(factors, plan)]
    width = sum(stage.width for stage in plan)
    fit = _design_rows(factors, means, plan, fit_rows, work.take("fit", (*fit_rows.shape, width)))
    held = _design_rows(factors, means, plan, held_rows, work.take("held", (*held_rows.shape, width)))
    fit_y = _take_rows(pixels, fit_rows)
    y_mean = fit_y.sum(1) / n_fit[:, None]
    fit_y = torch.where(fit_rows[..., None] >= 0, fit_y - y_mean[:, None], 0.0)
    held_y = _take_rows(pixels, held_rows)
    everyone = torch.arange(len(fit), device=fit.device)

    system = _fit_gram(fit, factors, means, plan, fit_rows, work)
    lam = lam_per_trace * system.diagonal(dim1=1, dim2=2).to(torch.float64).sum(1)
    system.diagonal(dim1=1, dim2=2).add_(lam[:, None].to(system.dtype))
    factor = work.take("factor", (len(fit), width, width)).mT  # column-major: LAPACK writes it in place
    info = torch.empty(len(fit), dtype=torch.int32, device=fit.device)
    torch.linalg.cholesky_ex(system, out=(factor, info))
    beta = cholesky_solve(factor, residual(fit, fit_y, None, everyone))

    # Refinement with fp64 residuals on the images still in `todo`; each leaves it converged
    # (error recorded) or stalled (error left NaN: refitted in fp64 below). lam == 0 means OLS:
    # always the min-norm fp64 path.
    error = torch.full((len(fit),), math.nan, dtype=torch.float64, device=fit.device)
    todo = torch.nonzero((info == 0) & (lam > 0)).flatten()
    if len(todo) < len(fit):
        factor, beta = factor[todo], beta[todo]
    previous = torch.full((len(todo),), math.inf, dtype=torch.float64, device=fit.device)
    for _ in range(REFINE_STEPS):
        if not len(todo):
            break
        delta = cholesky_solve(factor, residual(fit, fit_y, beta, todo) - lam[todo, None, None] * beta)
        beta = beta + delta
        step_error, moved = held_out_error(held, held_y, held_rows, n_held, y_mean, beta, delta, todo)
        # Steps shrink geometrically by ratio q, so what is left after this one is ~ moved * q / (1 - q);
        # the first step has no q yet: it must itself be below the tolerance.
        ratio = moved / previous
        left = torch.where(torch.isfinite(previous) & (ratio < 1.0), moved * ratio / (1.0 - ratio), moved)
        converged = left <= REFINE_TOL * step_error
        error[todo[converged]] = step_error[converged]
        keep = ~converged & (ratio < REFINE_STALL)
        if not bool(keep.all()):  # compact once per shrink, not per step
            factor, beta, todo, moved = factor[keep], beta[keep], todo[keep], moved[keep]
        previous = moved

    redo = torch.nonzero(torch.isnan(error)).flatten()
    if len(redo):
        beta_redo = fp64_solution(fit[redo], fit_y[redo], lam[redo])
        error[redo] = held_out_error(held, held_y, held_rows, n_held, y_mean, beta_redo,
                                      torch.zeros_like(beta_redo), redo)[0]
    if not bool(torch.isfinite(error).all()):
        raise RuntimeError("predictability_error produced a non-finite value despite the fp64 fallback; "
                           "please report the inputs")
    return error


def _native_factor(stage: torch.Tensor, work: _Workspace, name: str) -> torch.Tensor:
    """`[b, h*w, k]` fp32, position-major: X with X X^T = Pi G G^T Pi, Pi the projection off the constant.

    Dropping the constant changes nothing after centring (interpolation rows sum to 1, so a constant
    over positions stays constant over pixels). It matters when h*w <= C: then the stage spans every
    interpolated position, hence the constant, and centring would leave an exact null direction in
    the reduced Gram (docs/ALGORITHM.md's "rank exactly 224" of 225). With a Householder reflector H that
    sends the unit constant to the last position, the rows of H G but the last are Q1^T G (Q1 an
    orthonormal basis orthogonal to the constant), and X = H [R^T; 0] with R from the thin QR of
    (Q1^T G)^T: width h*w - 1. Stages with more positions than channels keep G (width C).
    """
    batch, channels, height, width = stage.shape
    positions = height * width
    if positions > channels:  # one strided copy; a plain memcpy for channels-last maps
        out = work.take(name, (batch, positions, channels))
        out.view(batch, height, width, channels).copy_(stage.detach().permute(0, 2, 3, 1))
        return out
    maps = stage.detach().to(torch.float32).reshape(batch, channels, positions)  # G^T
    if positions == 1:
        return maps.new_zeros(batch, 1, 0)
    normal = torch.full((positions,), positions ** -0.5, dtype=torch.float64)
    normal[-1] -= 1.0
    normal = (normal / normal.norm()).to(maps)
    core = (maps - 2.0 * (maps @ normal)[..., None] * normal)[..., :-1]
    padded = torch.cat([torch.linalg.qr(core, mode="r").R.transpose(1, 2), maps.new_zeros(batch, 1, positions - 1)], 1)
    return padded - 2.0 * normal[:, None] * (normal @ padded)[:, None, :]


def use_numba(tensor: torch.Tensor) -> bool:
    """CPU tensors take the numba kernels; tests patch this to exercise the torch (CUDA) formulation."""
    return tensor.device.type == "cpu"


def _fit_mean(factor: torch.Tensor, stage: StagePlan, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean over the fit rows of the interpolated stage, `[b, k]` fp64: c^T X / n with c = U^T 1_S."""
    if use_numba(factor):
        out = np.zeros((factor.shape[0], factor.shape[2]))
        _fit_mean_kernel(factor.numpy(), stage.taps.numpy(), stage.weights.numpy(), rows.numpy(), counts.numpy(), out)
        return torch.from_numpy(out)
    taps, weights = stage.taps.to(rows.device), stage.weights.to(rows.device, torch.float64)
    index = taps[rows.clamp(min=0)].flatten(1)
    mass = torch.where((rows >= 0)[..., None], weights[rows.clamp(min=0)], 0.0).flatten(1)
    coeff = torch.zeros(len(rows), factor.shape[1], dtype=torch.float64, device=rows.device).scatter_add_(1, index, mass)
    return torch.bmm((coeff / counts[:, None])[:, None, :], factor.to(torch.float64))[:, 0]


def _design_rows(factors: list[torch.Tensor], means: list[torch.Tensor], plan: list[StagePlan],
                 rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Centred reduced features of the given pixels into `out` `[b, n, D]` fp32; padded rows are zero."""
    offset = 0
    for factor, mean, stage in zip(factors, means, plan):
        if use_numba(factor):
            _gather_kernel(factor.numpy(), stage.taps.numpy(), stage.weights.numpy(), rows.numpy(),
                           mean.to(torch.float32).numpy(), out.numpy(), offset)
        elif stage.width:
            up = _interpolate_positions(factor, stage)
            picked = torch.gather(up, 1, rows.clamp(min=0)[..., None].expand(-1, -1, stage.width))
            out[:, :, offset: offset + stage.width] = torch.where(rows[..., None] >= 0, picked - mean[:, None].float(), 0.0)
        offset += stage.width
    return out


def _interpolate_positions(factor: torch.Tensor, stage: StagePlan) -> torch.Tensor:
    """`[b, h*w, k]` -> `[b, H*W, k]` with the separable operators, channels last throughout."""
    (h, w), (big_h, big_w), k, batch = stage.size, stage.grid, stage.width, factor.shape[0]
    rows = cached_matrix(h, big_h, stage.mode, factor.dtype, factor.device)
    cols = cached_matrix(w, big_w, stage.mode, factor.dtype, factor.device)
    up = torch.matmul(rows, factor.reshape(batch, h, w * k)).reshape(batch * big_h, w, k)
    return torch.matmul(cols, up).reshape(batch, big_h * big_w, k)


def _take_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    picked = torch.gather(values, 1, rows.clamp(min=0)[..., None].expand(-1, -1, values.shape[2]))
    return torch.where(rows[..., None] >= 0, picked, 0.0)


def _fit_gram(fit: torch.Tensor, factors: list[torch.Tensor], means: list[torch.Tensor], plan: list[StagePlan],
              rows: torch.Tensor, work: _Workspace) -> torch.Tensor:
    """The lower triangle of F^T F for the centred fit rows F `[b, n, D]`, by stage: stage i's rows are
    F_i^T F[:, :, :end_i]. A stage with fewer native positions P_i than fit rows has F_i = A_i X_i, with
    A_i the interpolate-and-gather operator (<= 4 taps a row, rows summing to 1) and X_i its factor
    centred by the fit mean, so F_i^T F = X_i^T (A_i^T F): F's rows scattered onto P_i positions, then a
    GEMM with inner size P_i instead of n, where that saves more than the scatter costs (SCATTER_COST).
    Wide-ResNet-50-2 (the 28x28 and 14x14 stages, P = 784 and 196 against n = 2195): 43% of the lower
    triangle's multiply-adds. Other stages: row panels of F^T F, as `lower_gram`."""
    batch, count, width = fit.shape
    out = work.take("gram", (batch, width, width))
    offset = 0
    for factor, mean, stage in zip(factors, means, plan):
        end = offset + stage.width
        positions = factor.shape[1]
        taps = stage.taps.shape[1]
        if stage.width * (count - positions) > SCATTER_COST * taps * count:
            scattered = scatter_rows(fit, stage, rows, end, work.take("scattered", (batch, positions, end)))
            centred = torch.sub(factor, mean[:, None].to(factor.dtype), out=work.take("centred", factor.shape))
            torch.matmul(centred.mT, scattered, out=out[:, offset:end, :end])
        else:
            for start in range(offset, end, GRAM_PANEL):
                stop = min(start + GRAM_PANEL, end)
                torch.matmul(fit[:, :, start:stop].mT, fit[:, :, :stop], out=out[:, start:stop, :stop])
                out[:, start:stop, stop:end] = 0.0
        out[:, offset:end, end:] = 0.0
        offset = end
    return out


def scatter_rows(features: torch.Tensor, stage: StagePlan, rows: torch.Tensor, end: int, out: torch.Tensor
                  ) -> torch.Tensor:
    """A^T F[:, :, :end] into `out` `[b, P, end]`: each valid row of F added, times its tap weights, to
    the native positions it was interpolated from (A: the stage's interpolate-and-gather operator)."""
    if use_numba(features):
        _scatter_kernel(features.numpy(), stage.taps.numpy(), stage.weights.numpy(), rows.numpy(), end, out.numpy())
        return out
    taps, weights = stage.taps.to(rows.device), stage.weights.to(rows.device, features.dtype)
    index = taps[rows.clamp(min=0)]
    mass = torch.where((rows >= 0)[..., None], weights[rows.clamp(min=0)], 0.0)
    out.zero_()
    for tap in range(index.shape[2]):
        out.scatter_add_(1, index[..., tap, None].expand(-1, -1, end), mass[..., tap, None] * features[..., :end])
    return out


def lower_gram(features: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """F^T F, `[b, D, D]` in F's dtype (into `out` if given); only the lower triangle (all Cholesky and
    eigh read) is computed: row panel i times columns [0, end of panel i), ~60% of the full FLOPs."""
    batch, _, width = features.shape
    out = features.new_empty(batch, width, width) if out is None else out
    for start in range(0, width, GRAM_PANEL):
        stop = min(start + GRAM_PANEL, width)
        torch.matmul(features[:, :, start:stop].transpose(1, 2), features[:, :, :stop], out=out[:, start:stop, :stop])
        out[:, start:stop, stop:] = 0.0
    return out


def cholesky_solve(factor: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(L L^T)^-1 rhs in the factor's precision, returned in fp64. Two triangular solves: measured 3-4x
    faster than torch.cholesky_solve on this CPU build (D = 1011: 3.6 vs 12-15 ms per image)."""
    half = torch.linalg.solve_triangular(factor, rhs.to(factor.dtype), upper=False)
    return torch.linalg.solve_triangular(factor.mT, half, upper=True).to(torch.float64)


def residual(features: torch.Tensor, targets: torch.Tensor, beta: torch.Tensor | None, images: torch.Tensor
              ) -> torch.Tensor:
    """F^T (y - F beta) for the listed images, `[m, D, 3]` fp64, accumulated in fp64 from fp32 F;
    beta None means zero (F^T y: one pass over F instead of two)."""
    if use_numba(features):
        partial = np.zeros((len(images), _BLOCKS, 3, features.shape[2]))
        coefficients = np.zeros((len(images), 3, 0)) if beta is None else beta.transpose(1, 2).contiguous().numpy()
        _residual_kernel(features.numpy(), targets.numpy(), coefficients, images.numpy(), partial)
        return torch.from_numpy(partial.sum(1)).transpose(1, 2)
    wide = features[images].to(torch.float64)
    return wide.transpose(1, 2) @ (targets[images] if beta is None else targets[images] - wide @ beta)


def held_out_error(features: torch.Tensor, pixels: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor,
                    y_mean: torch.Tensor, beta: torch.Tensor, delta: torch.Tensor, images: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """For the listed images: (mean |y_mean + F beta - y|, mean |F delta|) over held-out rows and 3
    channels, fp64 `[m]` each; beta and delta are `[m, D, 3]`."""
    if use_numba(features):
        partial = np.zeros((len(images), _BLOCKS, 2))
        _held_out_kernel(features.numpy(), pixels.numpy(), rows.numpy(), y_mean.numpy(),
                         beta.transpose(1, 2).contiguous().numpy(), delta.transpose(1, 2).contiguous().numpy(),
                         images.numpy(), partial)
        sums = torch.from_numpy(partial.sum(1))
    else:
        wide = features[images].to(torch.float64)
        valid = (rows[images] >= 0)[..., None]
        miss = torch.where(valid, (y_mean[images, None] + wide @ beta - pixels[images]).abs(), 0.0).sum((1, 2))
        moved = torch.where(valid, (wide @ delta).abs(), 0.0).sum((1, 2))
        sums = torch.stack([miss, moved], 1)
    scale = 3.0 * counts[images].to(torch.float64)[:, None]
    miss, moved = (sums.to(scale.device) / scale).unbind(1)
    return miss, moved


def fp64_solution(features: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Ridge coefficients from an fp64 Gram by Cholesky; where lam == 0 or Cholesky fails, the min-norm
    solution from an eigendecomposition. The features were stored in fp32, so eigenvalues below
    D * eps32^2 * lambda_max (singular values below sqrt(D) * eps32 * sigma_max) are rounding, dropped."""
    wide = features.to(torch.float64)
    system = lower_gram(wide)
    system.diagonal(dim1=1, dim2=2).add_(lam[:, None])
    rhs = wide.transpose(1, 2) @ targets
    factor, info = torch.linalg.cholesky_ex(system)
    beta = cholesky_solve(factor, rhs)
    cutoff = system.shape[1] * torch.finfo(torch.float32).eps ** 2
    for image in torch.nonzero((info != 0) | (lam <= 0)).flatten().tolist():
        values, vectors = torch.linalg.eigh(system[image])
        keep = values > values[-1] * cutoff
        inverse = torch.where(keep, 1.0 / torch.where(keep, values, 1.0), 0.0)
        beta[image] = vectors @ (inverse[:, None] * (vectors.T @ rhs[image]))
    return beta


# --- numba kernels (CPU). Every per-image sum runs in a fixed order: results never depend on the batch.


@numba.njit(parallel=True, cache=True)
def _fit_mean_kernel(factor, taps, weights, rows, counts, out):  # pragma: no cover - compiled
    """out[i] = sum over valid rows r, taps t of weights[p, t] * factor[i, taps[p, t]] / counts[i], p = rows[i, r]."""
    batch, count = rows.shape
    for image in numba.prange(batch):
        coeff = np.zeros(factor.shape[1])
        for row in range(count):
            pixel = rows[image, row]
            if pixel >= 0:
                for t in range(taps.shape[1]):
                    coeff[taps[pixel, t]] += weights[pixel, t]
        acc = out[image]
        for position in range(factor.shape[1]):
            if coeff[position] != 0.0:
                x = factor[image, position]
                for c in range(factor.shape[2]):
                    acc[c] += coeff[position] * x[c]
        acc /= counts[image]


@numba.njit(parallel=True, cache=True)
def _gather_kernel(factor, taps, weights, rows, mean, out, offset):  # pragma: no cover - compiled
    """out[i, r, offset:offset+k] = sum_t weights[p, t] * factor[i, taps[p, t]] - mean[i], p = rows[i, r]."""
    batch, count = rows.shape
    width = factor.shape[2]
    for job in numba.prange(batch * count):
        image = job // count
        row = job - image * count
        pixel = rows[image, row]
        dest = out[image, row, offset: offset + width]
        if pixel < 0:
            dest[:] = 0.0
            continue
        m = mean[image]
        for c in range(width):
            dest[c] = -m[c]
        for t in range(taps.shape[1]):
            weight = weights[pixel, t]
            x = factor[image, taps[pixel, t]]
            for c in range(width):
                dest[c] += weight * x[c]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _scatter_kernel(features, taps, weights, rows, end, out):  # pragma: no cover - compiled
    """out[i, q, :] = sum over valid rows r, taps t with taps[p, t] == q of weights[p, t] * features[i, r, :end],
    p = rows[i, r]; one image a job, rows in order (column blocks as jobs measured 4x slower: not vectorised)."""
    batch, count = rows.shape
    for image in numba.prange(batch):
        acc = out[image]
        acc[:] = 0.0
        f = features[image]
        for row in range(count):
            pixel = rows[image, row]
            if pixel < 0:
                continue
            for t in range(taps.shape[1]):
                weight = weights[pixel, t]
                q = taps[pixel, t]
                for c in range(end):
                    acc[q, c] += weight * f[row, c]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _residual_kernel(features, targets, beta, images, partial):  # pragma: no cover - compiled
    """partial[m, blk, c, :] = sum over rows of block blk of F[r] * (y[r, c] - F[r] . beta[m, c]), fp64;
    image = images[m]; an empty beta (width 0) stands for zero. Rows go four at a time, so beta and the
    accumulators (24 KB each at D = 1011) stream through the cache once per four rows, not per row
    (measured 1.5x faster); a block's last group repeats its last row with a zero weight."""
    count, width = features.shape[1], features.shape[2]
    predict = beta.shape[2] > 0
    for job in numba.prange(len(images) * _BLOCKS):
        slot = job // _BLOCKS
        block = job - slot * _BLOCKS
        image = images[slot]
        acc = partial[slot, block]
        first, last = block * count // _BLOCKS, (block + 1) * count // _BLOCKS
        left = np.empty((4, 3))
        for start in range(first, last, 4):
            r0, r1, r2, r3 = start, min(start + 1, last - 1), min(start + 2, last - 1), min(start + 3, last - 1)
            f0, f1, f2, f3 = features[image, r0], features[image, r1], features[image, r2], features[image, r3]
            for k, row in enumerate((r0, r1, r2, r3)):
                for c in range(3):
                    left[k, c] = targets[image, row, c] if start + k < last else 0.0
            for c in range(3 if predict else 0):
                b = beta[slot, c]
                s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
                for j in range(width):
                    s0 += np.float64(f0[j]) * b[j]
                    s1 += np.float64(f1[j]) * b[j]
                    s2 += np.float64(f2[j]) * b[j]
                    s3 += np.float64(f3[j]) * b[j]
                left[0, c] -= s0
                left[1, c] -= s1 if start + 1 < last else 0.0
                left[2, c] -= s2 if start + 2 < last else 0.0
                left[3, c] -= s3 if start + 3 < last else 0.0
            for c in range(3):
                a = acc[c]
                t0, t1, t2, t3 = left[0, c], left[1, c], left[2, c], left[3, c]
                for j in range(width):
                    a[j] += np.float64(f0[j]) * t0 + np.float64(f1[j]) * t1 + np.float64(f2[j]) * t2 + np.float64(f3[j]) * t3


@numba.njit(parallel=True, fastmath=True, cache=True)
def _held_out_kernel(features, pixels, rows, y_mean, beta, delta, images, partial):  # pragma: no cover - compiled
    """partial[m, blk] = (sum |y_mean + F beta[m] - y|, sum |F delta[m]|) over the valid rows of block blk;
    four rows at a time, as `_residual_kernel` (padded rows and a group's repeats count zero)."""
    count, width = features.shape[1], features.shape[2]
    for job in numba.prange(len(images) * _BLOCKS):
        slot = job // _BLOCKS
        block = job - slot * _BLOCKS
        image = images[slot]
        first, last = block * count // _BLOCKS, (block + 1) * count // _BLOCKS
        miss = 0.0
        moved = 0.0
        for start in range(first, last, 4):
            r0, r1, r2, r3 = start, min(start + 1, last - 1), min(start + 2, last - 1), min(start + 3, last - 1)
            f0, f1, f2, f3 = features[image, r0], features[image, r1], features[image, r2], features[image, r3]
            for c in range(3):
                b, d = beta[slot, c], delta[slot, c]
                p0, p1, p2, p3 = 0.0, 0.0, 0.0, 0.0
                q0, q1, q2, q3 = 0.0, 0.0, 0.0, 0.0
                for j in range(width):
                    x0, x1, x2, x3 = np.float64(f0[j]), np.float64(f1[j]), np.float64(f2[j]), np.float64(f3[j])
                    p0 += x0 * b[j]
                    p1 += x1 * b[j]
                    p2 += x2 * b[j]
                    p3 += x3 * b[j]
                    q0 += x0 * d[j]
                    q1 += x1 * d[j]
                    q2 += x2 * d[j]
                    q3 += x3 * d[j]
                for k, (row, p, q) in enumerate(((r0, p0, q0), (r1, p1, q1), (r2, p2, q2), (r3, p3, q3))):
                    if start + k < last and rows[image, row] >= 0:
                        miss += abs(y_mean[image, c] + p - pixels[image, row, c])
                        moved += abs(q)
        partial[slot, block, 0] = miss
        partial[slot, block, 1] = moved
