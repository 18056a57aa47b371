"""The engine of the vLLM simulator: continuous batching over a paged KV cache.

Modelled on vLLM's V1 engine (``vllm/v1/core/sched/scheduler.py``, ``block_pool.py``,
``kv_cache_utils.py``); bench/README.md lists the constants and where they come from.

- The KV cache is ``num_blocks`` blocks of ``BLOCK_SIZE`` tokens. A request holds the blocks
  of its prompt and output so far.
- Prefix caching: a full block is named by a hash chained over the tokens before it and in
  it; a new request reuses the cached blocks of its longest cached prefix. Freed blocks keep
  their hash in a free queue and are evicted least recently freed first (a request's blocks
  are freed tail first, so a prefix outlives its tail).
- Each engine step serves every running request: one token each for decoding requests, and
  chunks of prompt for prefilling ones, within a token budget; then waiting requests are
  admitted (first come, first served) while the budget, the sequence limit and the free
  blocks allow.
- When a running request needs a block and none is free, the most recently admitted running
  request is pre-empted: its blocks are freed and it goes back to the head of the queue, to
  be recomputed (its cached blocks may still be hit, if nobody evicted them meanwhile).
- A step's duration follows the cost model (``CostModel``); the driver (``vllm_sim.py``)
  maps simulated seconds to wall time by the time scale.

Runs of identical decode steps (no prefill, nobody waiting who could be admitted) are taken
together as one "macro step" of ``k`` steps, with their blocks allocated ahead when they are
free; that keeps the simulator's CPU per simulated second low. An arrival or an abort cuts a
macro step short after the step in progress (``commit(step, k)`` with a smaller ``k``).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

BLOCK_SIZE = 16
CHARS_PER_BLOCK = BLOCK_SIZE * 4  # the simulator's tokens are 4 characters

# vLLM's buckets for vllm:time_to_first_token_seconds.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip

RequestState = Literal[
    "waiting",  # queued, or pre-empted and queued again
    "running",  # holds blocks and is scheduled every step
    "finished",  # generated all its tokens; blocks freed
    "aborted",  # the client left; blocks freed
]


def block_hashes(text: str) -> list[int]:
    """The chained hash of every full block of ``text`` (tokens of 4 characters)."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(text) - CHARS_PER_BLOCK + 1, CHARS_PER_BLOCK):
        parent = hash((parent, text[start : start + CHARS_PER_BLOCK]))
        hashes.append(parent)
    return hashes


@dataclass
class CostModel:
    """Seconds of one engine step on the simulated GPU (see bench/README.md).

    Calibrated to Qwen3-30B-A3B in BF16 on one H100: a decode step takes about 6 ms at batch
    1 and 20 ms at batch 32. It grows with the batch because more of the 128 experts are
    read (each token picks 8); prefill costs compute per token plus attention over the
    context; decoding reads every context token's KV.
    """

    fixed_ms: float = 4.976  # weights outside the experts, kernel launches
    experts_ms: float = 15.74  # reading every expert's weights once
    experts: int = 128
    experts_per_token: int = 8
    token_us: float = 40.0  # compute per token in the step (prefill ~25k tokens/s)
    kv_read_ns: float = 41.8  # per context token read by a decoding request
    attention_flops_per_position: float = 786_432.0  # 4 * 48 layers * 32 heads * 128
    attention_flops: float = 4e14  # sustained attention FLOP/s
    speed: float = 1.0  # >1 faster GPU, <1 slower

    def step_seconds(self, tokens: int, decode_context: int, prefill_square: float) -> float:
        """``tokens`` processed, ``decode_context`` KV tokens read by decodes, and the sum
        over prefill chunks of (end^2 - start^2) / 2 (positions attended)."""
        if tokens <= 0:
            return 0.0
        idle = 1.0 - self.experts_per_token / self.experts
        touched = 1.0 - idle**tokens
        ms = self.fixed_ms + self.experts_ms * touched + self.token_us * tokens / 1000
        seconds = ms / 1000 + self.kv_read_ns * decode_context / 1e9
        seconds += self.attention_flops_per_position * prefill_square / self.attention_flops
        return seconds / self.speed


@dataclass
class EngineConfig:
    kv_tokens: int = 120_000
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 120_000
    # A macro step lasts at most this long (simulated seconds).
    max_macro_seconds: float = 2.0
    cost: CostModel = field(default_factory=CostModel)

    @property
    def num_blocks(self) -> int:
        return self.kv_tokens // BLOCK_SIZE


@dataclass(eq=False)
class Request:
    rid: str
    prompt_tokens: int
    output_tokens: int  # what it will generate (its reply after stop and max_tokens)
    hashes: list[int]  # block hashes of prompt + reply
    arrival: float | None = None  # simulated time; the engine's clock when None
    computed: int = 0  # tokens whose KV is in the cache
    hashed: int = 0  # leading blocks known to be in the prefix cache
    generated: int = 0
    blocks: list[int] = field(default_factory=list)
    state: RequestState = "waiting"
    first_token_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0
    # Called at the first token, at the end and on abort (streamers poll in between).
    notify: Callable[[], None] = lambda: None

    @property
    def known(self) -> int:
        """Tokens whose KV must exist before the next token can be sampled."""
        return self.prompt_tokens + self.generated

    @property
    def done(self) -> bool:
        return self.state in ("finished", "aborted")


class BlockPool:
    """Blocks, their reference counts, the hash map and the LRU free queue."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        # Insertion order is eviction order: the first block is evicted first.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.refs = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}

    @property
    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: blocks not in the free queue, as a fraction."""
        return 1.0 - len(self.free) / self.num_blocks

    def lookup(self, hashes: Sequence[int], limit: int) -> list[int]:
        hits: list[int] = []
        for h in hashes[:limit]:
            block = self.cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def touch(self, blocks: Sequence[int]) -> None:
        for block in blocks:
            if self.refs[block] == 0:
                del self.free[block]
            self.refs[block] += 1

    def allocate(self, count: int) -> list[int]:
        assert count <= len(self.free)
        out: list[int] = []
        for _ in range(count):
            block, _ = self.free.popitem(last=False)
            old = self.hash_of[block]
            if old is not None:  # evicted from the prefix cache
                if self.cached.get(old) == block:
                    del self.cached[old]
                self.hash_of[block] = None
            self.refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free[block] = None

    def register(self, block: int, h: int) -> None:
        if self.hash_of[block] is None and h not in self.cached:
            self.cached[h] = block
            self.hash_of[block] = h


@dataclass
class Step:
    """One scheduled step (or ``k`` identical decode steps)."""

    start: float
    seconds: float  # of one step
    k: int
    work: list[tuple[Request, int]]  # each request and the tokens it computes per step


@dataclass
class Totals:
    """Counters and time-weighted sums since the last reset (simulated seconds)."""

    preemptions: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    aborted: int = 0
    busy_seconds: float = 0.0
    usage_seconds: float = 0.0  # integral of KV usage over time
    running_seconds: float = 0.0
    waiting_seconds: float = 0.0
    max_usage: float = 0.0
    max_waiting: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))
    ttft_count: int = 0
    ttft_sum: float = 0.0

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_count += 1
        self.ttft_sum += seconds
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_buckets[i] += 1


class Engine:
    """The scheduler and KV cache; time is passed in (simulated seconds)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pool = BlockPool(config.num_blocks)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.totals = Totals()
        self.now = 0.0

    # ------------------------------------------------------------------ requests

    def add(self, request: Request) -> None:
        if request.arrival is None:
            request.arrival = self.now
        self.waiting.append(request)
        self.totals.max_waiting = max(self.totals.max_waiting, len(self.waiting))

    def abort(self, request: Request) -> None:
        """Free the request's blocks at once (the client left)."""
        if request.done:
            return
        if request.state == "running":
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.pool.release(request.blocks)
        request.blocks = []
        request.state = "aborted"
        self.totals.aborted += 1
        request.notify()

    def reset(self) -> None:
        for request in [*self.running, *self.waiting]:
            self.abort(request)
        self.pool = BlockPool(self.config.num_blocks)
        self.totals = Totals()

    @property
    def idle(self) -> bool:
        return not self.running and not self.waiting

    # ------------------------------------------------------------------ scheduling

    def _grow(self, request: Request, tokens: int) -> bool:
        """Blocks for ``tokens`` tokens in all; False (nothing taken) when not enough are free."""
        need = math.ceil(tokens / BLOCK_SIZE) - len(request.blocks)
        if need <= 0:
            return True
        if need > len(self.pool.free):
            return False
        request.blocks.extend(self.pool.allocate(need))
        return True

    def _preempt(self, request: Request) -> None:
        self.pool.release(request.blocks)
        request.blocks = []
        request.computed = 0
        request.hashed = 0
        request.state = "waiting"
        request.preemptions += 1
        self.waiting.appendleft(request)
        self.totals.preemptions += 1

    def schedule(self) -> Step | None:
        """The next step, blocks allocated; None when there is nothing to do."""
        budget = self.config.max_num_batched_tokens
        work: list[tuple[Request, int]] = []
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            tokens = min(request.known - request.computed, budget)
            scheduled = True
            while not self._grow(request, request.computed + tokens):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    scheduled = False
                    break
            if not scheduled:
                break
            work.append((request, tokens))
            budget -= tokens
            index += 1
        if not preempted:
            budget = self._admit(work, budget)
        if not work:
            return None
        return self._step(work, preempted)

    def _admit(self, work: list[tuple[Request, int]], budget: int) -> int:
        while self.waiting and len(self.running) < self.config.max_num_seqs and budget > 0:
            request = self.waiting[0]
            known = request.known
            hits = self.pool.lookup(request.hashes, (known - 1) // BLOCK_SIZE)
            cached = len(hits) * BLOCK_SIZE
            tokens = min(known - cached, budget)
            evictable = sum(1 for block in hits if self.pool.refs[block] == 0)
            need = math.ceil((cached + tokens) / BLOCK_SIZE) - len(hits)
            if need + evictable > len(self.pool.free):
                break
            self.pool.touch(hits)
            request.blocks = hits + self.pool.allocate(need)
            request.computed = cached
            request.hashed = len(hits)
            request.state = "running"
            self.totals.prefix_queries += known
            self.totals.prefix_hits += cached
            self.waiting.popleft()
            self.running.append(request)
            work.append((request, tokens))
            budget -= tokens
        return budget

    def _step(self, work: list[tuple[Request, int]], preempted: bool) -> Step:
        cost = self.config.cost
        tokens = sum(n for _, n in work)
        decode_context = 0
        square = 0.0
        decoding = True
        for request, n in work:
            if request.known - request.computed == 1 and n == 1:
                decode_context += request.computed
            else:
                decoding = False
                end = request.computed + n
                square += (end * end - request.computed * request.computed) / 2
        seconds = cost.step_seconds(tokens, decode_context, square)
        # Repeating a decode step changes nothing a waiting request could use: admission
        # already failed this step, and no blocks come free before somebody finishes.
        k = self._macro_length(work, seconds) if decoding and not preempted else 1
        return Step(self.now, seconds, k, work)

    def _macro_length(self, work: list[tuple[Request, int]], seconds: float) -> int:
        # Identical steps until someone finishes, for at most max_macro_seconds.
        k = min(r.output_tokens - r.generated for r, _ in work)
        k = max(1, min(k, int(self.config.max_macro_seconds / max(seconds, 1e-9))))
        if k == 1:
            return 1
        need = sum(
            max(0, math.ceil((r.computed + k) / BLOCK_SIZE) - len(r.blocks)) for r, _ in work
        )
        if need > len(self.pool.free):
            return 1
        for request, _ in work:
            self._grow(request, request.computed + k)
        return k

    # ------------------------------------------------------------------ committing

    def commit(self, step: Step, k: int | None = None) -> float:
        """Apply the first ``k`` steps of ``step`` (all by default); the time they ended."""
        k = step.k if k is None else max(1, min(k, step.k))
        seconds = step.seconds * k
        if step.k > 1:  # later steps read a little more KV each
            seconds += (
                self.config.cost.kv_read_ns * len(step.work) * k * (k - 1) / 2 / 1e9
            ) / self.config.cost.speed
        end = step.start + seconds
        totals = self.totals
        usage = self.pool.usage
        totals.busy_seconds += seconds
        totals.usage_seconds += usage * seconds
        totals.max_usage = max(totals.max_usage, usage)
        totals.running_seconds += len(self.running) * seconds
        totals.waiting_seconds += len(self.waiting) * seconds
        for request, n in step.work:
            if request.state != "running":
                continue  # aborted or pre-empted meanwhile
            advance = n * k
            prefilling = request.known - request.computed > 1 or request.generated == 0
            request.computed += advance
            if prefilling:
                totals.prompt_tokens += advance
            full = min(request.computed // BLOCK_SIZE, len(request.hashes), len(request.blocks))
            for index in range(request.hashed, full):
                self.pool.register(request.blocks[index], request.hashes[index])
            request.hashed = max(request.hashed, full)
            if request.computed >= request.known:
                produced = k if not prefilling else 1
                request.generated += produced
                totals.generation_tokens += produced
                if request.first_token_at is None:
                    request.first_token_at = end
                    totals.observe_ttft(end - (request.arrival or 0.0))
                    request.notify()
                if request.generated >= request.output_tokens:
                    self._finish(request, end)
                    request.notify()
        self.now = end
        return end

    def _finish(self, request: Request, at: float) -> None:
        self.running.remove(request)
        self.pool.release(request.blocks)
        request.blocks = []
        request.state = "finished"
        request.finished_at = at
        self.totals.finished += 1

    def run_until_idle(self, max_steps: int = 1_000_000) -> float:
        """Run every request to the end with no wall clock (tests); the time it took."""
        began = self.now
        for _ in range(max_steps):
            step = self.schedule()
            if step is None:
                break
            self.commit(step)
        return self.now - began
