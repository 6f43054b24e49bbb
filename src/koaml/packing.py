"""Whether to pack training rows, decided from the estimated compute of an epoch packed and unpacked.

Packing (TRL's best-fit-decreasing strategy) puts several rows into one sequence of up to
``model_max_length`` tokens, with ``position_ids`` restarting at each row so that no row attends to another
(see ``koaml.packed_rows.sft_trainer``). It saves the compute wasted on padding, but with sdpa or eager attention a
packed row of length L costs attention over all L x L token pairs (masked ones too), where the same rows
unpacked cost only their own, short squares. Short rows packed into long sequences can therefore be several
times slower than no packing (the guide's ``model_max_length: 8192`` packs 3,000 short rows into rows of 8,192
tokens). With flash-attention's varlen kernels attention costs each sequence's own square and there is no
padding, so packing never costs more.

``estimate`` counts the floating-point operations of one epoch both ways from the rows' token lengths, the
batch size and the model's shape: every position of a batch's padded rows costs ~2 FLOPs per parameter, every
attended (query, key) pair 4 per layer and attention channel, weighted by what attention costs per FLOP on the
device compared with matrix products (``ATTENTION_WEIGHT``). ``auto`` packs when that predicts a clear gain
(``MIN_SPEEDUP``); ``bench/packing_throughput.py`` checks the prediction against measured throughput.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
# FLOPs do not say exactly what attention costs next to the matrix products. Weight of one attended pair
# relative to its FLOP count, by device. CPU: bench/packing_real_model.py (SmolLM2-135M, sdpa) fitted 1.1 on a
# quiet machine (0.2 on a loaded one); with 0.5 the decision is the one it measured at every length (packing
# faster at 512 and 2,048, slower at 8,192), as with any weight from 0.5 to 1.2. CUDA: not yet measured; 2.0
# leans towards not packing.
ATTENTION_WEIGHT = {"cpu": 0.5, "cuda": 2.0}
MIN_SPEEDUP = 1.1  # auto packs only when the estimate predicts at least this gain (the model ignores per-step costs)
SAMPLE_ROWS = 20_000  # rows simulated (a random sample of larger datasets: the ratio is what matters)


@dataclass(frozen=True)
class PackingCost:
    """Estimated FLOPs of one training epoch, packed and unpacked."""

    packed_flops: float
    unpacked_flops: float
    packed_rows: int
    rows: int

    @property
    def speedup(self) -> float:
        """Predicted packed over unpacked throughput (above 1: packing is faster)."""
        return self.unpacked_flops / self.packed_flops

    def describe(self) -> str:
        return f"estimated {self.speedup:.2f}x the unpacked throughput ({self.rows} rows -> {self.packed_rows} packed rows)"


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[int]:
    """Total lengths of the bins that best-fit-decreasing packs ``lengths`` into (each at most ``capacity``)."""
    free: list[int] = []  # free space of each open bin, sorted
    for length in sorted(lengths, reverse=True):
        i = bisect.bisect_left(free, length)  # the fullest bin that still fits it
        space = free.pop(i) if i < len(free) else capacity
        bisect.insort(free, space - length)
    return [capacity - space for space in free]


def _epoch_flops(rows: list[int], batch_size: int, per_token: float, per_pair: float, varlen: bool) -> float:
    """FLOPs of one pass over ``rows`` (token lengths, in training order) in batches of ``batch_size``.

    A batch is padded to its longest row; attention covers each row's causal square with varlen kernels and
    the whole padded square otherwise (sdpa/eager compute masked pairs too).
    """
    total = 0.0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        longest = max(batch)
        total += len(batch) * longest * per_token
        total += per_pair * (sum(n * n / 2 for n in batch) if varlen else len(batch) * longest * longest)
    return total


def estimate(
    lengths: list[int],
    max_length: int,
    batch_size: int,
    n_params: int,
    n_layers: int,
    attention_width: int,
    attn_implementation: str,
    device: str = "cpu",
    seed: int = 0,
) -> PackingCost:
    """Weighted FLOPs of an epoch over rows of ``lengths`` tokens (cut to ``max_length``), packed and unpacked.

    ``attention_width`` is heads x head dimension; attended pairs weigh ``ATTENTION_WEIGHT[device]``. Rows are
    shuffled, as the trainer's sampler does; with varlen attention a packed batch is one padding-free row.
    """
    rng = random.Random(seed)
    rows = [min(n, max_length) for n in lengths if n > 0]
    if len(rows) > SAMPLE_ROWS:
        rows = rng.sample(rows, SAMPLE_ROWS)
    varlen = attn_implementation in VARLEN_ATTENTION
    per_token, per_pair = 2.0 * n_params, 4.0 * n_layers * attention_width * ATTENTION_WEIGHT[device]
    unpacked = rows[:]
    rng.shuffle(unpacked)
    packed = best_fit_decreasing(rows, max_length)
    rng.shuffle(packed)
    if varlen:  # padding-free: every batch is its sequences, unpadded
        packed_flops = sum(rows) * per_token + per_pair * sum(n * n / 2 for n in rows)
    else:
        packed_flops = _epoch_flops(packed, batch_size, per_token, per_pair, varlen=False)
    unpacked_flops = _epoch_flops(unpacked, batch_size, per_token, per_pair, varlen)
    return PackingCost(packed_flops, unpacked_flops, len(packed), len(rows))


def decide(
    setting: bool | str, attn_implementation: str, trust_remote_code: bool, cost: PackingCost
) -> tuple[bool, str]:
    """Whether to pack (``training.packing``: auto, true or false), and why, for the train log.

    ``auto`` packs when ``cost`` predicts at least ``MIN_SPEEDUP``, except for remote-code models with
    sdpa/eager: their own modeling code may ignore the ``position_ids`` when masking, letting packed rows attend
    to each other; ``true`` forces packing there.
    """
    varlen = attn_implementation in VARLEN_ATTENTION
    if setting == "auto":
        if trust_remote_code and not varlen:
            return False, (
                f"off (auto: with {attn_implementation}, a remote-code model's attention mask may ignore the "
                "position_ids that keep packed sequences apart; check it and set training.packing: true, or use "
                "flash_attention_2)"
            )
        on = cost.speedup >= MIN_SPEEDUP
        return (
            on,
            f"{'on' if on else 'off'} (auto: {attn_implementation}, {cost.describe()}; packs from {MIN_SPEEDUP}x)",
        )
    if not setting:
        return False, f"off (training.packing: false; {cost.describe()})"
    caveat = ""
    if trust_remote_code and not varlen:
        caveat = (
            f"; with {attn_implementation} on a remote-code model packed sequences are kept apart only if its "
            "attention mask honours position_ids: check, or use flash_attention_2"
        )
    return True, f"on (training.packing: true; {cost.describe()}){caveat}"
