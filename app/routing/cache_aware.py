"""`cache_aware` balancing: whole-prompt prefix matching weighed against load, agreed across routers.

The prompt as the server will see it (every message's role and text, in order, seeded
with the model name) is cut into blocks at fixed character offsets; each block's id is
a CRC chained over the whole text before it, so one id stands for a whole prefix, as
in vLLM's prefix cache. Offsets are 128 characters (~32 tokens) apart up to 4 KiB, then
512 up to 16 KiB, then 2 KiB up to 64 KiB: at most `MAX_BLOCKS` ids per request, so the
cost of a decision does not grow with the prompt (past 64 KiB the rest is not matched).

State (per router, i.e. per Gunicorn worker): one LRU index block id -> bitmask of the
backends this router sent that prefix to, capped at `max_entries` ids (memory bound).

Decision, over the healthy backends:

    expected_i  = tokens of the request's prefix backend i holds: the index's longest
                  match, or a *prediction* where the index knows nothing (below)
    cost_i      = (prompt tokens - expected_i) + 0.2 x work_per_request x load_i
    bounded     = backends whose in-flight count is under ceil(c * (total + 1) / n) + 2
    pick        = the cheapest bounded backend; ties go to the conversation's home

`load_i` is this router's in-flight count per unit of weight; `work_per_request` is a
running mean of the uncached tokens each routed request cost (so a queued request is
priced at what requests really cost here). The bound (c = 1.25, as in consistent
hashing with bounded loads) means a popular prefix never piles onto one backend: past
the bound it spills to the next-cheapest backend, which then holds it too.

Agreement without talking: several workers and replicas each route on their own. The
*home* of a prefix is chosen by weighted rendezvous hashing of a block id, the same in
every process (CRC, not Python's salted hash). Predictions, for what a router's own
index does not know, are worth `confidence` x the tokens (and never more than a match
the index does know):

- the first message's home (of the top 2 rendezvous candidates for its first 1 KiB, the
  one this router homed fewer new prefixes at: two choices balance far better than one)
  is predicted to hold the first message (a long shared system prompt or document goes
  where the routers send it first);
- for a conversation with history (3+ messages), the home of the conversation (the
  first two messages) is predicted to hold everything before the last message.

Ties go to the conversation's home, and for a chat (2+ messages) the home's load counts
one request less (`HOME_BONUS`), so new conversations spread over the backends and a
conversation's turns land where every router expects them even when each router's own
in-flight view differs. `confidence` starts at 0.5 and follows the upstream's real hits
(`usage.prompt_tokens_details.cached_tokens`, see `feedback`): when predictions come true
it rises towards 0.95, when they do not it falls towards 0.1. Real hits also weigh the
index: each backend's expected hits are scaled by the running share of them its server
really had (a server with a smaller cache than the index assumes is trusted less).

Ejected backends are not candidates: their prefixes re-home by rendezvous (only the
keys that lived there move) and their bits are cleared, as a restarted server is cold.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
MAX_BLOCKS = 80
DEFAULT_MAX_ENTRIES = 200_000
"""About 100 bytes an entry: ~20 MB per worker at the cap."""
LOAD_FACTOR = 1.25
ANCHOR_BLOCKS = 8
"""The first message's home: rendezvous on its first 8 blocks (1 KiB), the same in every process."""
SLACK = 2
LOAD_WEIGHT = 0.2
CHOICES = 2
HOME_BONUS = 1.0
"""In-flight requests the conversation's home may carry over the others at the same price."""
"""Requests over the bound a backend may take (at low load the bound alone is all noise)."""


def _bounds() -> tuple[int, ...]:
    out = list(range(128, 4096 + 1, 128))
    out += range(4096 + 512, 16384 + 1, 512)
    out += range(16384 + 2048, 65536 + 1, 2048)
    return tuple(out[:MAX_BLOCKS])


BOUNDS = _bounds()


@dataclass(slots=True)
class Prompt:
    """A request's prompt as blocks: chained ids, where each ends (chars), message boundaries."""

    ids: list[int]
    ends: list[int]
    chars: int
    first_message: int
    """Index of the last block inside the first message (-1: none)."""
    conversation: int
    """Block id at the end of the first two messages (0: none)."""
    history: int
    """Index of the last block before the last message (-1: no history)."""

    @property
    def tokens(self) -> int:
        return max(1, self.chars // CHARS_PER_TOKEN)


def render(body: Any) -> tuple[bytes, list[int]]:
    """The prompt text as the server sees it, approximately, and where each message ends."""
    if not isinstance(body, dict):
        return b"", []
    model = body.get("model")
    parts = [model if isinstance(model, str) else "", "\n"]
    ends: list[int] = []
    length = len(parts[0]) + 1
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict):
                continue
            piece = f"<|{m.get('role')}|>{_text(m.get('content'))}\n"
            parts.append(piece)
            length += len(piece)
            ends.append(length)
    elif isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
        length += len(body["prompt"])
        ends.append(length)
    text = "".join(parts)
    data = text.encode("utf-8", "surrogatepass")
    if len(data) != len(text):  # keep message boundaries in bytes
        scale = len(data) / max(1, len(text))
        ends = [int(e * scale) for e in ends]
    return data, ends


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def blocks(body: Any) -> Prompt:
    data, msg_ends = render(body)
    n = len(data)
    ids: list[int] = []
    ends: list[int] = []
    view = memoryview(data)
    crc = zlib.crc32
    value, start = 0, 0
    for k, end in enumerate(BOUNDS):
        if end > n:
            break
        value = crc(view[start:end], value)
        ids.append(value | (k + 1) << 32)  # the depth in the id: collisions only at one depth
        ends.append(end)
        start = end

    def last_block_before(pos: int) -> int:
        return bisect.bisect_right(ends, pos) - 1

    first = last_block_before(msg_ends[0]) if msg_ends else -1
    # The conversation: a CRC of the first two messages exactly (not cut at a block boundary).
    conversation = zlib.crc32(view[:msg_ends[1]]) | 1 << 40 if len(msg_ends) >= 2 else 0
    history = last_block_before(msg_ends[-2]) if len(msg_ends) >= 3 else -1
    return Prompt(ids, ends, n, first, conversation, history)


def rendezvous(key: int, seeds: Sequence[int], weights: Sequence[int]) -> list[int]:
    """Indices of the backends (`seeds`: CRCs of their base URLs) by weighted rendezvous score
    for `key`, best first; the same in every process."""
    kb = key.to_bytes(8, "big")
    crc = zlib.crc32
    hs = [crc(kb, seed) * 2654435761 % 2**32 for seed in seeds]
    if all(w == weights[0] for w in weights):
        return sorted(range(len(hs)), key=hs.__getitem__, reverse=True)
    scores = [-w / math.log((h + 1) / (2**32 + 1)) for h, w in zip(hs, weights, strict=True)]
    return sorted(range(len(hs)), key=scores.__getitem__, reverse=True)


class PrefixIndex:
    """Block id -> bitmask of backends (by position), LRU-capped."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max(1, max_entries)
        self._map: OrderedDict[int, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def match(self, ids: Sequence[int], candidates: int) -> dict[int, int]:
        """Backend position -> number of leading blocks it holds (only those with >= 1)."""
        out: dict[int, int] = {}
        if not ids:
            return out
        alive = candidates
        get = self._map.get
        for depth, block in enumerate(ids):
            mask = get(block, 0) & alive
            if mask != alive:
                dropped = alive & ~mask
                while dropped:
                    low = dropped & -dropped
                    if depth:
                        out[low.bit_length() - 1] = depth
                    dropped ^= low
                alive = mask
                if not alive:
                    return out
        while alive:
            low = alive & -alive
            out[low.bit_length() - 1] = len(ids)
            alive ^= low
        return out

    def insert(self, ids: Sequence[int], position: int) -> None:
        bit = 1 << position
        m = self._map
        move = m.move_to_end
        for block in ids:
            mask = m.get(block)
            if mask is None:
                m[block] = bit
                continue
            if not mask & bit:
                m[block] = mask | bit
            move(block)
        while len(m) > self.max_entries:
            m.popitem(last=False)

    def clear(self, position: int) -> None:
        keep = ~(1 << position)
        m = self._map
        for block in list(m):
            m[block] &= keep


class CacheAware:
    """The strategy object of one provider in one process (see the module docstring)."""

    name = "cache_aware"

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, load_factor: float = LOAD_FACTOR,
                 confidence: float = 0.5, slack: int = SLACK, load_weight: float = LOAD_WEIGHT,
                 choices: int = CHOICES) -> None:
        self.index = PrefixIndex(max_entries)
        self.load_weight = load_weight
        self.choices = max(1, choices)
        self.home_bonus = HOME_BONUS
        self._trust: dict[int, float] = {}
        """Per backend: running share of the index's expected hit that the server really had."""
        self._homed: dict[int, int] = {}
        """New prefixes this router homed at each backend (the smaller wins among `choices` candidates)."""
        self.load_factor = load_factor
        self.slack = slack
        self.confidence = confidence
        self.work = 256.0
        """Running mean of the uncached tokens a routed request cost."""
        self._lock = threading.Lock()
        self._positions: dict[int, int] = {}
        self._seeds: list[int] = []
        self._down: set[int] = set()
        self.decisions = 0
        self._counter = itertools.count()

    # -- the strategy call ---------------------------------------------------------

    def __call__(self, backends: list[Any], ex: Any, counter: Any = None, prefix: int = 0) -> list[Any]:
        prompt = blocks(getattr(ex, "body", None))
        if not prompt.ids:  # under one block: nothing worth caching, so just spread the load
            from .balance import round_robin

            ranked = round_robin(backends, ex, counter if counter is not None else self._counter, prefix)
            return [b for b in ranked if b.healthy()] + [b for b in ranked if not b.healthy()]
        with self._lock:
            order, decision = self._decide(backends, prompt)
        if ex is not None and decision is not None:
            ex.state[STATE] = decision
        return order

    def _position(self, backend: Any) -> int:
        pos = self._positions.get(id(backend))
        if pos is None:
            pos = len(self._seeds)
            self._positions[id(backend)] = pos
            self._seeds.append(zlib.crc32(backend.target.base_url.encode()))
        return pos

    def _decide(self, backends: list[Any], prompt: Prompt) -> tuple[list[Any], Decision | None]:
        self.decisions += 1
        healthy: list[Any] = []
        down: list[Any] = []
        pos: list[int] = []
        candidates = 0
        for b in backends:
            p = self._position(b)
            if b.healthy():
                healthy.append(b)
                pos.append(p)
                candidates |= 1 << p
                self._down.discard(p)
            else:
                down.append(b)
                if p not in self._down:
                    self._down.add(p)
                    self.index.clear(p)  # its cache is not to be trusted when it returns
        if not healthy:
            return list(backends), None
        seeds = [self._seeds[p] for p in pos]
        weights = [b.weight for b in healthy]
        ends = prompt.ends
        matched = self.index.match(prompt.ids, candidates)
        trust = self._trust
        expected = [int(ends[matched[p] - 1] // CHARS_PER_TOKEN * trust.get(p, 1.0)) if p in matched else 0
                    for p in pos]
        predicted = [0.0] * len(healthy)
        anchor = prompt.ids[min(prompt.first_message, ANCHOR_BLOCKS - 1)] if prompt.first_message >= 0 else 0
        home = rendezvous(prompt.conversation or anchor, seeds, weights)
        if prompt.first_message >= 0:
            homes = rendezvous(anchor, seeds, weights)[:self.choices] if prompt.conversation else home[:self.choices]
            first_home = min(homes, key=lambda i: self._homed.get(pos[i], 0) / weights[i])
            if matched.get(pos[first_home], 0) == 0 and not matched:
                self._homed[pos[first_home]] = self._homed.get(pos[first_home], 0) + 1
            if matched.get(pos[first_home], 0) <= prompt.first_message:
                predicted[first_home] = ends[prompt.first_message] // CHARS_PER_TOKEN
                # Never worth more than where this router's index knows the prefix is.
                known = max(expected)
                if known and predicted[first_home] * self.confidence >= known:
                    predicted[first_home] = (known - 1) / self.confidence
        if prompt.history >= 0:
            h = home[0]
            if matched.get(pos[h], 0) <= prompt.history:
                predicted[h] = max(predicted[h], ends[prompt.history] // CHARS_PER_TOKEN)
        loads = [b.in_flight / b.weight for b in healthy]
        total = sum(b.in_flight for b in healthy)
        bound = math.ceil(self.load_factor * (total + 1) / len(healthy)) + self.slack
        rank = {i: r for r, i in enumerate(home)}
        tokens = prompt.tokens
        conf = self.confidence
        weight = self.work * self.load_weight
        bonus = self.home_bonus if prompt.conversation else 0.0

        def cost(i: int) -> tuple[float, int]:
            hit = max(float(expected[i]), conf * predicted[i])
            return (tokens - hit) + weight * (loads[i] - (bonus if i == home[0] else 0)), rank[i]

        ordered = sorted(range(len(healthy)), key=cost)
        within = [i for i in ordered if healthy[i].in_flight < bound * healthy[i].weight]
        chosen = within[0] if within else min(range(len(healthy)), key=lambda i: (loads[i], rank[i]))
        rest = [i for i in ordered if i != chosen]
        # Record where the prompt goes (the first choice; failover is rare and the index heals).
        self.index.insert(prompt.ids, pos[chosen])
        hit_est = max(float(expected[chosen]), conf * predicted[chosen])
        self.work += (max(0.0, tokens - hit_est) - self.work) / 64
        decision = Decision(self, prompt, pos[chosen], expected[chosen], predicted[chosen])
        out = [healthy[chosen], *(healthy[i] for i in rest)]
        return out + down, decision

    # -- feedback ----------------------------------------------------------------------

    def feedback(self, decision: Decision, backend: Any, usage: Any) -> int | None:
        """The answer's usage: real cached tokens, if reported. Returns them (None: not reported)."""
        cached = cached_tokens(usage)
        if cached is None:
            return None
        pos = self._positions.get(id(backend))
        if pos is None or pos != decision.position:
            return cached  # failover: it went elsewhere than planned
        with self._lock:
            if decision.expected:
                # What share of what the index promised the server really had: a server that
                # evicts sooner than the index does (a smaller cache) is trusted less.
                share = min(1.0, cached / decision.expected)
                trust = self._trust.get(pos, 1.0)
                self._trust[pos] = trust + (share - trust) / 16
            if decision.predicted > decision.expected:
                came_true = cached >= 0.5 * decision.predicted
                target = 0.95 if came_true else 0.1
                self.confidence += (target - self.confidence) / 16
        return cached


STATE = "routing.cache_aware"


@dataclass(slots=True)
class Decision:
    strategy: CacheAware
    prompt: Prompt
    position: int
    expected: int
    predicted: int


def cached_tokens(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict):
        return None
    value = details.get("cached_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def prompt_tokens(usage: Any) -> int | None:
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
