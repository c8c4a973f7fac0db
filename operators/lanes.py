"""Lanes: which Kafka partitions a gate subtask takes as one batch, and the key each lane goes by.

A batch costs a fixed price in its gate subtask whatever its size (the Python entry, the Redis
round trips, a provider round trip), and a subtask works its batches one after another. Batched
per Kafka partition, four partitions on one subtask made four batches per window, and at a few
hundred critical notifications/s those fixed prices alone filled the subtask (seconds of
queueing; `bench/results/isolation.md`). So the window collects per lane, `partition mod lanes`
with one lane per gate subtask: one batch per subtask per window. Users stay in one partition,
so one lane, and their order is the partition's offset order within the batch.

Flink puts a key on a subtask by a murmur hash of the key's hash code, so lanes keyed by their
index may share a subtask (keys 0–3 at parallelism 4 fall on subtasks 1, 1, 3, 3). Each lane is
keyed instead by the smallest integer whose key group falls in its own subtask's range, computed
here the way Flink does it for a PyFlink `Types.INT()` key (a one-field `Row`). Plain Python:
no Flink needed to test it (tests/unit/test_lanes.py checks it against values from Flink).

There are more lanes than subtasks when a job leaves room to grow (`gate_lanes`, 2 by default:
docs/decisions/021-gate-lanes.md). The lanes are then spread: at a parallelism P dividing the
lanes, a lane's subtask depends on `lane mod P` only (lanes 0, 2, 4, 6 on one subtask of two),
so a partition's subtask is `partition mod P` as if lanes were P, and 4 partitions under 8 lanes
still fill 2 or 4 subtasks. In order (lanes 0–3 on the first subtask of two) they would all be on
one subtask. Spread and in order are the same for 1, 2 or any prime number of lanes.
"""
from __future__ import annotations

from herald.errors import TooFewLanes

MASK = 0xFFFFFFFF


def _int32(value: int) -> int:
    value &= MASK
    return value - (1 << 32) if value >= 1 << 31 else value


def _rotl(value: int, bits: int) -> int:
    value &= MASK
    return ((value << bits) | (value >> (32 - bits))) & MASK


def murmur_hash(code: int) -> int:
    """Flink's `MathUtils.murmurHash(int)`: a non-negative int."""
    code = (code * 0xCC9E2D51) & MASK
    code = _rotl(code, 15)
    code = (code * 0x1B873593) & MASK
    code = _rotl(code, 13)
    code = (code * 5 + 0xE6546B64) & MASK
    code ^= 4
    code ^= code >> 16                      # bitMix (unsigned shifts on the 32-bit pattern)
    code = (code * 0x85EBCA6B) & MASK
    code ^= code >> 13
    code = (code * 0xC2B2AE35) & MASK
    code ^= code >> 16
    signed = _int32(code)
    if signed >= 0:
        return signed
    return -signed if signed != -(1 << 31) else 0


def key_group(key: int, max_parallelism: int) -> int:
    """The key group of a PyFlink INT key: the key travels as a one-field `Row`, whose hash code
    is `key + 62` in Flink 2.2 (read from Flink itself: tests/unit/test_lanes.py)."""
    return murmur_hash(_int32(key + 62)) % max_parallelism


def subtask_of(key: int, max_parallelism: int, parallelism: int) -> int:
    """Flink's `computeOperatorIndexForKeyGroup`."""
    return key_group(key, max_parallelism) * parallelism // max_parallelism


def spread_order(lanes: int) -> list[int]:
    """Each lane's place among `lanes` subtasks: `lane` written in the mixed radix of the lanes'
    prime factors (smallest first, least significant first), digits reversed. At a parallelism
    P that is a product of the smallest factors (any divisor, for a power of two) the place's
    subtask, `place * P // lanes`, is a function of `lane mod P` alone, one to one."""
    factors, rest, f = [], lanes, 2
    while rest > 1:
        while rest % f == 0:
            factors.append(f)
            rest //= f
        f += 1
    places = []
    for lane in range(lanes):
        place, scale = 0, lanes
        for radix in factors:
            scale //= radix
            place += (lane % radix) * scale
            lane //= radix
        places.append(place)
    return places


def lane_keys(lanes: int, max_parallelism: int, spread: bool = True) -> list[int]:
    """For each lane, the smallest non-negative key that lands on subtask `spread_order(lanes)
    [lane]` (`lane` when not ``spread``, Herald's placement before decision 021) when the operator
    runs with `lanes` subtasks: one lane per subtask, none sharing."""
    if not 1 <= lanes <= max_parallelism:
        raise ValueError(f"lanes must be within 1..{max_parallelism}, not {lanes}")
    places = spread_order(lanes) if spread else list(range(lanes))
    by_place: list[int | None] = [None] * lanes
    candidate, left = 0, lanes
    while left:
        place = subtask_of(candidate, max_parallelism, lanes)
        if by_place[place] is None:
            by_place[place] = candidate
            left -= 1
        candidate += 1
    return [by_place[place] for place in places]  # type: ignore[misc]


def job_lanes(gate_lanes: int, parallelism: int) -> int:
    """The job's lanes (`gate_lanes`, 0: its parallelism), refused when the parallelism exceeds
    them: the subtasks beyond the lanes would idle, and lanes change only with a fresh start."""
    lanes = gate_lanes or parallelism
    if parallelism > lanes:
        raise TooFewLanes(
            f"parallelism {parallelism} is above gate_lanes={lanes}: a gate subtask per lane at"
            f" most. Run at a parallelism of at most {lanes} (ideally dividing it), or start"
            f" afresh (no savepoint) with HERALD_GATE_LANES at least {parallelism}"
            f" (docs/OPERATIONS.md, rescaling)")
    return lanes


def log_order(record: dict) -> tuple[int, int]:
    """A batch record's place in the log: a user's records share a partition, so sorting a lane's
    batch by (partition, offset) puts each user's records in their log order."""
    return record["p"], record["o"]
