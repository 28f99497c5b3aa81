"""The krylov estimator (the default): the directions that carry the tokens' Fisher
mass, found by block Krylov iteration from Jacobian-vector and vector-Jacobian
products and run exactly, plus random-sign probes of the rest (Hutch++), with a
standard error and a ``tol`` option; and the machinery of its passes."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from captum_jscopes.core.forward import ScopeForward
from captum_jscopes.fisher.algebra import HEAD_MASS, path_cost, tail_probes
from captum_jscopes.fisher.estimators.base import FisherEstimator, check_positive
from captum_jscopes.fisher.estimators.factor import fisher_factor
from captum_jscopes.fisher.estimators.probe_statistics import pairwise_square_mean, probe_standard_error, student_t

__all__ = ["KrylovEstimator"]


@dataclass(frozen=True)
class KrylovEstimator(FisherEstimator):
    """Deflates what the tokens see, then samples the rest. The score of token t is
    ``||V J_t||_F^2`` (``V`` the factor rows ``sqrt(l_i) u_i^T`` of F, ``J_t`` the
    Jacobian of the final hidden state w.r.t. token t's embedding), so the
    directions that matter are the top eigen-directions of ``T = V J J^T V^T``, the
    tokens' Fisher mass, not of F alone. They are found by block Krylov iteration on
    T, whose products cost one JVP and one VJP each:

    1. ``sketch`` JVPs ``J xi`` with Gaussian tangents over every token (forward
       differences, :meth:`~captum_jscopes.core.forward.ScopeForward.jvp`) give
       ``V J xi``, whose leading ``block`` left singular vectors start the basis;
    2. each block's directions ``V^T q`` are run exactly (one VJP each: their
       squared norms are the exact part of every token's score), and, but for the
       last of ``rounds`` blocks, a JVP of each VJP gives ``T q``: the next block is
       its leading part orthogonal to the basis;
    3. ``n_probes`` random-sign probes of what is left (``V^T (I - Q Q^T) z``, plus
       the sampled tail of the vocabulary on the split path) are averaged, as in
       Hutch++. Which directions were deflated does not depend on the probes, so
       the estimate is unbiased however rough the JVPs.

    The standard error is ``sqrt(2 S / m)`` with ``S`` the unbiased pairwise estimate
    ``mean_{j != k} (y_j . y_k)^2`` of ``||R_t||_F^2`` (``y_j`` the probes' VJPs of
    token t, ``R_t`` its remainder): the variance of a random-sign probe is at most
    ``2 ||R_t||_F^2``, and the pairwise estimate uses every probe's whole vector, so it
    is steadier than the spread of m scalars. It is widened by the Student t factor
    ``t_{m-1, 0.975} / 1.96`` for the m probes, so that ``+-1.96`` standard errors is a
    95% interval. With layer states (layer maps) the error is the probes' spread.

    ``tol`` (in :meth:`scores`) adds probes until the estimated relative L2 error of
    each map, ``sqrt(sum_t se_t^2) / ||scores||``, is below it.

    Passes per explained token: ``sketch + (2 rounds - 1) block + n_probes`` (48 by
    default); no probes when the basis reaches F's rank (then it is exact).

    Args:
        sketch: Gaussian JVPs that start the basis. Default None: a sixth of
            ``budget`` (8 of 48).
        block: directions per round. Default None: a sixth of ``budget`` (8 of
            48), so that with two rounds a third of the budget is left to the
            probes whatever the budget.
        rounds: blocks of the Krylov basis. Default 2.
        n_probes: random-sign probes of the remainder, >= 2. Default None:
            ``budget`` minus the other passes (16).
        budget: passes in all when ``n_probes`` is not given. Default 48.
        head_mass: the share of tr F the split path's head holds, as for ``"hutchinson"``.
        max_head: at most this many head tokens on the split path. Default None:
            as many as ``head_mass`` needs (past d tokens the head's F is formed,
            d x d, in ``N d^2``), so that the Krylov basis deflates all but the
            tail's ``1 - head_mass`` of tr F.
    """

    name: ClassVar[str] = "krylov"
    summary: ClassVar[str] = ("the tokens' Fisher mass deflated by block Krylov iteration + random-sign probes; "
                              "unbiased, with a standard error, tol=; 48 passes")
    randomised: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    paths: ClassVar[tuple[str, ...]] = ("formed", "split")

    sketch: Optional[int] = field(default=None, metadata={
        "help": "Gaussian JVPs that start the Krylov basis (a sixth of the budget)"})
    block: Optional[int] = field(default=None, metadata={
        "help": "directions per round of the Krylov basis (a sixth of the budget)"})
    rounds: int = field(default=2, metadata={"help": "blocks of the Krylov basis (2)"})
    n_probes: Optional[int] = field(default=None, metadata={
        "help": "random-sign probes of the remainder (the budget minus the other passes)"})
    budget: int = field(default=48, metadata={"help": "passes in all (48)"})
    head_mass: float = field(default=HEAD_MASS, metadata={
        "help": f"share of tr F the split path's head holds ({HEAD_MASS})"})
    max_head: Optional[int] = field(default=None, metadata={
        "help": "at most this many head tokens on the split path (as many as head_mass needs)"})

    def __post_init__(self) -> None:
        for option in ("sketch", "block", "rounds"):
            if getattr(self, option) is not None:
                check_positive(option, getattr(self, option))
        check_positive("budget", self.budget)
        if self.n_probes is not None:
            n = self.n_probes
            if not isinstance(n, int) or isinstance(n, bool) or n < 2:
                raise ValueError(f"n_probes must be an int >= 2 (their spread gives the error estimate), got {n!r}")
        elif self.budget - self._deflation_passes(None) < 2:
            raise ValueError(f"budget {self.budget!r} leaves fewer than 2 probes after the "
                             f"{self._deflation_passes(None)} passes of the deflation (sketch + (2 rounds - 1) block)")

    @property
    def sketch_size(self) -> int:
        """``sketch``, or a sixth of the budget when not given."""
        return self.sketch if self.sketch is not None else max(1, self.budget // 6)

    @property
    def block_size(self) -> int:
        """``block``, or a sixth of the budget when not given."""
        return self.block if self.block is not None else max(1, self.budget // 6)

    def _deflation_passes(self, rank: Optional[int]) -> int:
        """JVPs and VJPs of steps 1-2 for F of rank ``rank`` (None: unbounded)."""
        blocks = _block_sizes(self.block_size, self.rounds, rank)
        return min(self.sketch_size, rank or self.sketch_size) + sum(blocks) + sum(blocks[:-1])

    def probe_count(self) -> int:
        """The random-sign probes before any ``tol`` adds more."""
        return self.n_probes if self.n_probes is not None else self.budget - self._deflation_passes(None)

    def backward_passes(self, hidden_size: int, path: str = "auto") -> int:
        blocks = _block_sizes(self.block_size, self.rounds, hidden_size)
        if path != "split" and sum(blocks) == hidden_size:
            return self._deflation_passes(hidden_size)
        return self._deflation_passes(hidden_size) + self.probe_count()

    def path_cost(self, path: str, vocab: int, hidden_size: int) -> float:
        # the split path: the probes, and a head of up to d tokens (max_head None: as many as head_mass needs)
        return path_cost(path, vocab, hidden_size, n_probes=self.probe_count(), head=self.max_head or vocab)

    def scores(self, forward, *, seed=0, path="auto", vocab_chunk=8192, chunk_size=32, progress=False, tol=None,
               max_passes=None):
        self.check_tol(tol, max_passes)
        path = self.choose_path(forward, path)
        started = time.perf_counter()
        m = self.probe_count()
        # the head holds head_mass of tr F however many tokens that takes: a tail left to the probes
        # (up to a quarter of tr F on uncertain LAMBADA positions with d tokens) is never deflated
        max_head = self.max_head or forward.weight.shape[0]
        _, factor, _, tail, info = fisher_factor(forward, None, path, m, self.head_mass, max_head, vocab_chunk)
        info.update(sketch=self.sketch_size, block=self.block_size, rounds=self.rounds, f_seconds=time.perf_counter() - started)
        rank = factor.shape[-2]
        counter = _PassCounter(self.backward_passes(rank, info["path"]), progress)
        try:
            basis, exact = self._deflate(forward, factor, seed, chunk_size, counter)
            info["k"] = basis.shape[-1]
            if basis.shape[-1] == rank and tail is None:  # every direction deflated: exact
                info.update(n_probes=0, passes=counter.passes)
                return exact, None, info
            probes = _RemainderProbes(forward, factor, basis, tail, seed, vocab_chunk, chunk_size, counter)
            probes.draw(m)
            if tol is not None:
                limit = max_passes if max_passes is not None else forward.weight.shape[1]
                while probes.relative_error(exact) > tol:
                    left = limit - counter.passes
                    if left <= 0:
                        warnings.warn(f"Fisher krylov: estimated relative error {probes.relative_error(exact):.3g} "
                                      f"> tol={tol} after max_passes={limit} passes; raise max_passes, or use "
                                      "estimator='exact'", RuntimeWarning, stacklevel=2)
                        break
                    ratio = (probes.relative_error(exact) / tol) ** 2
                    probes.draw(min(left, max(4, math.ceil(probes.count * (ratio - 1) * 1.1))))
            scores, error = probes.estimate(exact)
            info.update(n_probes=probes.count, passes=counter.passes, rel_error=probes.relative_error(exact))
            if tol is not None:
                info["tol"] = tol
            return scores, error, info
        finally:
            counter.close()

    def _deflate(self, forward: ScopeForward, factor: Tensor, seed: int, chunk_size: int,
                 counter: "_PassCounter") -> tuple[Tensor, Tensor]:
        """Steps 1-2: the basis (B, P, r, K) and the exact part of the scores."""
        batch, n_pos, rank, _ = factor.shape
        generator = torch.Generator().manual_seed(seed)
        embeddings = forward.embeddings
        width = min(self.sketch_size, rank)
        # in the token vectors' space: (n, e) tangents, or with reduce="input" one coefficient of
        # each token's own embedding, so that the sketch sees the Jacobian the scores reduce
        width_e = 1 if forward.reduce == "input" else embeddings.shape[-1]
        tangents = torch.randn(width, *embeddings.shape[:-1], width_e, generator=generator, dtype=torch.float64)
        tangents = tangents * forward.attention_mask.cpu()[None, :, :, None]  # no tangent on padding
        sketched = torch.einsum("bprd,sbpd->bprs", factor, forward.jvp(tangents, chunk_size).to(factor))
        counter.add(width)
        basis = factor.new_zeros(batch, n_pos, rank, 0)
        new = _leading(sketched, basis, min(self.block_size, rank))
        exact: Any = 0
        for step, size in enumerate(_block_sizes(self.block_size, self.rounds, rank)):
            new = new[..., :size]
            directions = torch.einsum("bprk,bprd->kbpd", new, factor)
            last = step == self.rounds - 1 or basis.shape[-1] + size >= rank
            norms, vectors = _run(forward, directions, chunk_size, counter, keep=not last)
            exact = exact + norms.sum(0)
            basis = torch.cat([basis, new], -1)
            if last:
                break
            # T q = V J (J^T V^T q): a JVP of each VJP just run gives the next block
            image = torch.einsum("bprd,kbpd->bprk", factor, _jvp_at_positions(forward, vectors, chunk_size).to(factor))
            counter.add(size)
            new = _leading(image, basis, min(self.block_size, rank - basis.shape[-1]))
        return basis, exact


def _block_sizes(block: int, rounds: int, rank: Optional[int]) -> list[int]:
    """The size of each round's block for F of rank ``rank`` (None: unbounded)."""
    sizes, left = [], rank if rank is not None else block * rounds
    for _ in range(rounds):
        if left <= 0:
            break
        sizes.append(min(block, left))
        left -= sizes[-1]
    return sizes


def _leading(image: Tensor, basis: Tensor, size: int) -> Tensor:
    """(B, P, r, size) orthonormal leading left singular vectors of ``image``
    (B, P, r, s) with the span of ``basis`` (B, P, r, K) removed."""
    if basis.shape[-1]:
        image = image - basis @ (basis.transpose(-1, -2) @ image)
    vectors = torch.linalg.svd(image, full_matrices=False)[0][..., :size]
    if basis.shape[-1]:  # once more: rounding leaves a little of the basis in
        vectors = vectors - basis @ (basis.transpose(-1, -2) @ vectors)
    if vectors.shape[-1] < size:  # a sketch narrower than the block (a tiny prompt): pad with random columns
        extra = torch.randn(*vectors.shape[:-1], size - vectors.shape[-1], generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(vectors)
        vectors = torch.cat([vectors, extra - basis @ (basis.transpose(-1, -2) @ extra)], -1)
    return torch.linalg.qr(vectors)[0]


def _run(forward: ScopeForward, directions: Tensor, chunk_size: int, counter: "_PassCounter",
         keep: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Squared norms (m, B, P, n) (or (m, B, P, L + 1, n) with layer states) of the
    directions (m, B, P, d), and with ``keep`` their token vectors (m, B, P, n, e), or
    (m, B, P, n, 1) with ``reduce="input"`` (:meth:`ScopeForward.token_vectors`)."""
    per_chunk = max(1, chunk_size // max(1, directions.shape[2]))
    norms, vectors = [], []
    for chunk in directions.split(per_chunk, dim=0):
        if forward.layer_states is None or keep:
            grads = forward.token_vectors(forward.vjp(chunk))
            if forward.layer_states is None:
                norms.append(grads.to(forward.compute_dtype).pow(2).sum(-1))
            if keep:
                vectors.append(grads)
        if forward.layer_states is not None:
            norms.append(forward.squared_norms(chunk, chunk_size))
        counter.add(chunk.shape[0])
    return torch.cat(norms), (torch.cat(vectors) if keep else None)


def _jvp_at_positions(forward: ScopeForward, vectors: Tensor, chunk_size: int) -> Tensor:
    """(k, B, P, d) ``J_p v`` for the tangent ``vectors[k, b, p]`` (n, e) of each
    explained position p, read at that position."""
    k, batch, n_pos = vectors.shape[:3]
    tangents = vectors.transpose(1, 2).reshape(k * n_pos, batch, *vectors.shape[-2:])
    moved = forward.jvp(tangents, chunk_size).view(k, n_pos, batch, n_pos, -1)
    return torch.diagonal(moved, dim1=1, dim2=3).permute(0, 1, 3, 2)


class _PassCounter:
    """Counts the passes run, with an optional tqdm bar."""

    def __init__(self, total: int, progress: bool) -> None:
        self.passes = 0
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="Fisher passes (krylov)", unit="pass")

    def add(self, count: int) -> None:
        self.passes += count
        if self.bar is not None:
            if self.passes > self.bar.total:
                self.bar.total = self.passes
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _RemainderProbes:
    """Step 3 of the krylov estimator: random-sign probes of what the basis leaves,
    drawn in batches (``tol`` adds batches), their mean and standard error."""

    def __init__(self, forward, factor, basis, tail, seed, vocab_chunk, chunk_size, counter) -> None:
        self.forward, self.factor, self.basis, self.tail = forward, factor, basis, tail
        self.vocab_chunk, self.chunk_size, self.counter = vocab_chunk, chunk_size, counter
        # seed + 1 and + 2: independent of the sketch's draws and of each other; one stream each, so
        # that added batches continue it
        self.head_draws = torch.Generator().manual_seed(seed + 1)
        self.tail_draws = torch.Generator().manual_seed(seed + 2)
        self.norms: list[Tensor] = []
        self.vectors: list[Tensor] = []

    @property
    def count(self) -> int:
        return sum(n.shape[0] for n in self.norms)

    def draw(self, m: int) -> None:
        rank = self.factor.shape[-2]
        signs_ = (torch.randint(0, 2, (m, rank), generator=self.head_draws, dtype=torch.int8).double() * 2 - 1)
        z = signs_.to(self.factor)  # the same draws at every position
        # projected off the basis: z - Q Q^T z at each position
        inside = torch.einsum("bprk,mr->mbpk", self.basis, z)
        z = z[:, None, None, :] - torch.einsum("bprk,mbpk->mbpr", self.basis, inside)
        directions = torch.einsum("mbpr,bprd->mbpd", z, self.factor)
        if self.tail is not None:
            mean, head_ids = self.tail
            tail_signs = torch.randint(0, 2, (m, self.forward.weight.shape[0]), generator=self.tail_draws,
                                       dtype=torch.int8).double() * 2 - 1
            directions = directions + tail_probes(self.forward, mean, head_ids, tail_signs, self.vocab_chunk)
        keep = self.forward.layer_states is None
        norms, vectors = _run(self.forward, directions, self.chunk_size, self.counter, keep=keep)
        self.norms.append(norms)
        if keep:
            self.vectors.append(vectors)

    def estimate(self, exact: Any, skew: bool = True) -> tuple[Tensor, Tensor]:
        """The scores and their standard errors, widened so that +-1.96 of them is a 95%
        interval: by Student's t for few probes and, with ``skew``, where a token's remainder
        lies in few directions (:func:`_skewed_half_width`). ``tol`` bounds the errors
        without ``skew``: that widening is for a low estimate's interval, not its spread."""
        norms = torch.cat(self.norms)
        m = norms.shape[0]
        mean = norms.mean(0)
        widen = student_t(m - 1) / 1.959963984540054
        if not self.vectors:
            return exact + mean, (norms.var(0, correction=1) / m).clamp(min=0).sqrt() * widen
        pairwise = pairwise_square_mean(torch.cat(self.vectors), self.forward.compute_dtype)
        return exact + mean, probe_standard_error(mean, pairwise, m, skew)

    def relative_error(self, exact: Any) -> float:
        """The largest estimated relative L2 error of a map (over prompts and positions)."""
        scores, error = self.estimate(exact, skew=False)
        if scores.dim() == 4:  # layer maps: the input embeddings' row
            scores, error = scores[..., 0, :], error[..., 0, :]
        return float((error.norm(dim=-1) / scores.norm(dim=-1).clamp_min(1e-300)).max())
