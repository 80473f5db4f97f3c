"""`cache_aware` balancing: whole-prompt prefix matching weighed against load, agreed across routers.

The prompt as the server will see it (every message's role and text, in order, seeded
with the model name) is cut into blocks at fixed character offsets; each block's id is
a CRC chained over the whole text before it, so one id stands for a whole prefix, as
in vLLM's prefix cache. Offsets are 256 characters (~64 tokens) apart up to 4 KiB, then
1 KiB up to 16 KiB, then 4 KiB up to 64 KiB: at most `MAX_BLOCKS` ids per request, so the
cost of a decision does not grow with the prompt (past 64 KiB the rest is not matched).

State (per router, i.e. per Gunicorn worker): one LRU index block id -> bitmask of the
backends this router sent that prefix to, capped at `max_entries` ids (memory bound), and
per backend a decayed count of the requests this router sent there.

Decision, over the healthy backends:

    expected_i  = tokens of the request's prefix backend i holds: the index's longest
                  match, or a *prediction* where the index knows nothing (below)
    cost_i      = (prompt tokens - expected_i) + 0.2 x work_per_request x load_i
    bounded     = backends under both bounds below
    pick        = the cheapest bounded backend; ties go to the conversation's home

Two bounds, so that a popular prefix never piles onto one backend (past a bound it spills
to the next-cheapest backend, which then holds it too):

- in flight (`LOAD_FACTOR`, as in consistent hashing with bounded loads): this router's
  in-flight count under ceil(1.25 x (total + 1) / n) + `SLACK`; it protects time to
  first token while requests are long;
- the share cap: with this request, this router's recent requests to the backend stay
  under 1.15 x the mean + 3.5 (`SHARE_FACTOR`, `SHARE_SLACK`). It holds when in-flight
  counts say nothing (short answers) and whatever this router believes about the others:
  every router caps its own spread, so the sum over any number of routers is capped too
  (the fleet's max:mean is at most 1.15 + routers x 3.5 / mean requests per backend, and
  `SOLE_SLACK` more for conversations).

Agreement without talking: several workers and replicas each route on their own. The
*home* of a prefix is chosen by weighted rendezvous hashing of a block id, the same in
every process (CRC, not Python's salted hash). Predictions, for what a router's own
index does not know, are worth a confidence x the tokens:

- the first message's home is predicted to hold the first message (a long shared system
  prompt or document goes where the routers send it first). Where this router already sent
  the first message's first blocks, that stays its home. A new one goes to the rendezvous
  winner for its first `ANCHOR_BLOCKS` blocks that is under the share cap, or the runner-up
  when the winner was given 1 + 4 x `peers`^2 more new prefixes here (the surer this router
  is of peers, the more it sticks with what every router picks; a worker that gets most of
  the traffic, as Gunicorn's accept often makes one, balances its homes like a lone one). A router that routes
  *alone* homes it instead at the backend it homed fewest new prefixes at, under a tighter
  cap (1.1 x mean + 1): nobody else needs to agree. Never worth more than a match the index
  knows.
- for a conversation with history (3+ messages), the home of the conversation (the
  first two messages) is predicted to hold everything before the last message; the only
  backend holding most of it may go `SOLE_SLACK` over the share cap.

`peers` is learnt from the upstream: a prefix new to this router that its server already
held (`usage.prompt_tokens_details.cached_tokens`) was sent there by another router; a
miss counts only where every router would have sent it (the rendezvous winner). It starts
at 0.5 and moves 1/8 a step, so a router takes itself to be alone only after about a dozen
such misses in a row: at start-up every prefix is new to every router, and two workers
that both wrongly believe they are alone split each prefix between them.

Ties go to the conversation's home, and for a chat (2+ messages) the home's load counts
one request less (`HOME_BONUS`), so new conversations spread over the backends and a
conversation's turns land where every router expects them even when each router's own
in-flight view differs. The two confidences (first messages, histories) follow the
upstream's real hits (see `feedback`): when predictions come true they rise towards 0.95,
when they do not they fall towards 0.1. Real hits also weigh the index: each backend's
expected hits are scaled by the running share of them its server really had (a server
with a smaller cache than the index assumes is trusted less).

Ejected backends are not candidates: their prefixes re-home by rendezvous (only the
keys that lived there move) and their bits are cleared, as a restarted server is cold.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
BLOCK_CHARS = 256
MAX_BLOCKS = 40
DEFAULT_MAX_ENTRIES = 200_000
RANK_CACHE = 4096
"""Rendezvous rankings remembered (about 200 bytes each)."""
"""About 100 bytes an entry: ~20 MB per worker at the cap."""
LOAD_FACTOR = 1.25
ANCHOR_BLOCKS = 8
"""The first message's home: rendezvous on its first 8 blocks (2 KiB), the same in every process."""
SLACK = 4
"""Requests over the bound a backend may take (at low load the bound alone is all noise)."""
LOAD_WEIGHT = 0.2
HOME_BONUS = 1.0
"""In-flight requests the conversation's home may carry over the others at the same price."""
SHARE_FACTOR = 1.15
SHARE_SLACK = 3.5
SHARE_WINDOW = 2000
"""The share cap: a backend takes a request only while this router's recent requests to it
(decayed over ~SHARE_WINDOW decisions), this one included, stay under SHARE_FACTOR x the
mean + SHARE_SLACK. Each router caps its own spread, so the sum over any number of routers
is capped too."""
WARM_SLACK = 2.0
WARM_PER_BACKEND = 8
"""Extra share-cap slack at first, fading out over this router's first 8 requests per backend."""
HOME_FACTOR = 1.1
HOME_SLACK = 1.0
"""The tighter cap under which a lone router homes new prefixes."""
SPILL_MARGIN = 4.0
SPILL_POWER = 2
"""One of several routers gives a new prefix to the runner-up when the winner was given
1 + SPILL_MARGIN x `peers` ** SPILL_POWER more new prefixes (by this router)."""
SOLE_SLACK = 2.0
"""Further requests over the share cap the only backend holding most of a conversation may take."""
HISTORY_CONFIDENCE = 0.8
"""Where to start `history_confidence`: a conversation's turns mostly go where every router
sends them (its rendezvous home), so its history is there more often than not."""
PEERS_START = 0.5
PEER_THRESHOLD = 0.1
PEER_RATE = 8
"""`peers`: running share (1/PEER_RATE a step) of the new prefixes this router sent to their
rendezvous home that the server already held; under the threshold this router is *alone*."""


def _bounds() -> tuple[int, ...]:
    out = list(range(BLOCK_CHARS, 4096 + 1, BLOCK_CHARS))
    out += range(4096 + 1024, 16384 + 1, 1024)
    out += range(16384 + 4096, 65536 + 1, 4096)
    return tuple(out[:MAX_BLOCKS])


BOUNDS = _bounds()
_SPANS = tuple(
    ((k + 1) << 32, start, end) for k, (start, end) in enumerate(zip((0, *BOUNDS[:-1]), BOUNDS, strict=True))
)
"""Per block: the depth tag of its id (collisions only at one depth), where it starts and ends."""


@dataclass(slots=True)
class Prompt:
    """A request's prompt as blocks: chained ids, where each ends (chars), message boundaries."""

    ids: list[int]
    ends: Sequence[int]
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
    count = bisect.bisect_right(BOUNDS, n)
    ids: list[int] = []
    add = ids.append
    ends = BOUNDS[:count]
    view = memoryview(data)
    crc = zlib.crc32
    value = 0
    for tag, start, end in _SPANS[:count]:
        value = crc(view[start:end], value)
        add(value | tag)

    def last_block_before(pos: int) -> int:
        return bisect.bisect_right(ends, pos) - 1

    first = last_block_before(msg_ends[0]) if msg_ends else -1
    # The conversation: a CRC of the first two messages exactly (not cut at a block boundary),
    # carried on from the last block inside them (CRCs chain: the same value, half the work).
    conversation = 0
    if len(msg_ends) >= 2:
        k = last_block_before(msg_ends[1])
        base, start = (ids[k] & 0xFFFFFFFF, ends[k]) if k >= 0 else (0, 0)
        conversation = crc(view[start : msg_ends[1]], base) | 1 << 40
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


def _order(ranking: Sequence[int]) -> list[int]:
    """Rank of each index in `ranking` (its inverse permutation)."""
    out = [0] * len(ranking)
    for r, i in enumerate(ranking):
        out[i] = r
    return out


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

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        load_factor: float = LOAD_FACTOR,
        confidence: float = 0.5,
        slack: int = SLACK,
        load_weight: float = LOAD_WEIGHT,
        share_factor: float = SHARE_FACTOR,
        share_slack: float = SHARE_SLACK,
        peers: float = PEERS_START,
    ) -> None:
        self.index = PrefixIndex(max_entries)
        self.load_weight = load_weight
        self.home_bonus = HOME_BONUS
        self.share_factor = share_factor
        self.share_slack = share_slack
        self.home_factor = HOME_FACTOR
        self.spill_margin = SPILL_MARGIN
        self.home_slack = HOME_SLACK
        self.peers = peers
        """Running share of this router's new prefixes that their home already held (see `feedback`)."""
        self._trust: dict[int, float] = {}
        """Per backend: running share of the index's expected hit that the server really had."""
        self._homed: list[int] = []
        """New prefixes this router homed at each backend (a lone router homes the next at the fewest)."""
        self._sent: list[float] = []
        """Requests this router sent to each backend, decayed (the share cap)."""
        self._decay = 1.0 - 1.0 / SHARE_WINDOW
        self.load_factor = load_factor
        self.slack = slack
        self.confidence = confidence
        """How often a first message's predicted home really held it."""
        self.history_confidence = HISTORY_CONFIDENCE
        """How often a conversation's home really held its history."""
        self.work = 256.0
        """Running mean of the uncached tokens a routed request cost."""
        self._lock = threading.Lock()
        self._positions: dict[int, int] = {}
        self._lists: dict[tuple[int, ...], list[int]] = {}
        self._ranks: dict[tuple[int, int], list[int]] = {}
        """Positions of a list of backends (the provider passes the same list every time)."""
        self._seeds: list[int] = []
        self._down: set[int] = set()
        self.decisions = 0
        self._counter = itertools.count()

    @property
    def alone(self) -> bool:
        """No other router seems to send this one's prefixes (new ones were never already cached)."""
        return self.peers < PEER_THRESHOLD

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
            self._homed.append(0)
            self._sent.append(0.0)
        return pos

    def _rendezvous(self, key: int, candidates: int, seeds: list[int], weights: list[int]) -> list[int]:
        """`rendezvous`, remembered for the last few thousand keys (a shared system prompt's
        anchor or a conversation comes back often) while the healthy set stays the same."""
        cache = self._ranks
        ranking = cache.get((key, candidates))
        if ranking is None:
            if len(cache) >= RANK_CACHE:
                cache.clear()
            ranking = cache[(key, candidates)] = rendezvous(key, seeds, weights)
        return ranking

    def _split(self, backends: list[Any]) -> tuple[list[Any], list[Any], list[int], int]:
        """(healthy, down, the healthy ones' positions, their bit set); a backend that goes down
        loses its index entries (its cache is not to be trusted when it returns)."""
        healthy: list[Any] = []
        down: list[Any] = []
        pos: list[int] = []
        candidates = 0
        key = tuple(map(id, backends))
        positions = self._lists.get(key)
        if positions is None:
            if len(self._lists) >= 64:  # a bound: a provider passes the same list every time
                self._lists.clear()
            positions = self._lists[key] = [self._position(b) for b in backends]
        now = time.monotonic()
        for b, p in zip(backends, positions, strict=True):
            if b.healthy(now):
                healthy.append(b)
                pos.append(p)
                candidates |= 1 << p
                self._down.discard(p)
            else:
                down.append(b)
                if p not in self._down:
                    self._down.add(p)
                    self.index.clear(p)
        return healthy, down, pos, candidates

    def _new_home(
        self,
        homes: list[int],
        pos: list[int],
        after: list[float],
        room: list[bool],
        home_cap: float,
        weights: list[int],
    ) -> int:
        """Where a first message this router has not sent anywhere goes."""
        open_homes = [i for i in homes if after[i] <= home_cap] or [i for i in homes if room[i]] or homes
        homed = self._homed
        if self.alone:  # nobody else needs to agree: balance the new prefixes
            return min(open_homes, key=lambda i: homed[pos[i]] / weights[i])
        # The rendezvous winner under its cap (what every router picks), unless it was given
        # 1 + 4 x peers^2 more new prefixes here than the runner-up.
        first_home = open_homes[0]
        if len(open_homes) > 1:
            runner = open_homes[1]
            if (
                homed[pos[first_home]] / weights[first_home] - homed[pos[runner]] / weights[runner]
                >= 1 + self.spill_margin * self.peers**SPILL_POWER
            ):
                return runner
        return first_home

    def _decide(self, backends: list[Any], prompt: Prompt) -> tuple[list[Any], Decision | None]:
        self.decisions += 1
        healthy, down, pos, candidates = self._split(backends)
        if not healthy:
            return list(backends), None
        n = len(healthy)
        seeds = [self._seeds[p] for p in pos]
        weights = [b.weight for b in healthy]
        ends = prompt.ends
        matched = self.index.match(prompt.ids, candidates)
        trust = self._trust
        expected = [
            int(ends[matched[p] - 1] // CHARS_PER_TOKEN * trust.get(p, 1.0)) if p in matched else 0 for p in pos
        ]
        # The share cap (see SHARE_FACTOR): backends this router has not sent too much to lately.
        sent = self._sent
        # After: with this request, within the cap (so no router's count ever exceeds it).
        after = [(sent[p] + 1) / w for p, w in zip(pos, weights, strict=True)]
        sent_total = sum(sent[p] for p in pos)
        # While this router has sent only a few requests per backend its counts are mostly noise.
        warm = WARM_SLACK * max(0.0, 1.0 - sent_total / (WARM_PER_BACKEND * n))
        cap = self.share_factor * (sent_total + 1) / sum(weights) + self.share_slack + warm
        room = [a <= cap for a in after]
        alone = self.alone
        # Alone, new prefixes home under a tighter cap (nobody else needs to agree where they go).
        home_cap = self.home_factor * (sent_total + 1) / sum(weights) + self.home_slack if alone else cap
        predicted = [0.0] * n
        fresh = not matched
        winner = -1
        anchor = prompt.ids[min(prompt.first_message, ANCHOR_BLOCKS - 1)] if prompt.first_message >= 0 else 0
        home = self._rendezvous(prompt.conversation or anchor, candidates, seeds, weights)
        if prompt.first_message >= 0:
            homes = self._rendezvous(anchor, candidates, seeds, weights) if prompt.conversation else home
            depth = min(prompt.first_message, ANCHOR_BLOCKS - 1)
            # Where this router already sent the first message's start stays its home.
            held = [i for i in homes if matched.get(pos[i], 0) > depth] if matched else None
            first_home = held[0] if held else self._new_home(homes, pos, after, room, home_cap, weights)
            winner = homes[0]
            if matched.get(pos[first_home], 0) <= prompt.first_message:
                predicted[first_home] = ends[prompt.first_message] // CHARS_PER_TOKEN
                # Never worth more than where this router's index knows the prefix is.
                known = max(expected)
                if known and predicted[first_home] * self.confidence >= known:
                    predicted[first_home] = (known - 1) / self.confidence
        history = [0.0] * n
        if prompt.history >= 0:
            h = home[0]
            if matched.get(pos[h], 0) <= prompt.history:
                history[h] = ends[prompt.history] // CHARS_PER_TOKEN
        loads = [b.in_flight / b.weight for b in healthy]
        total = sum(b.in_flight for b in healthy)
        bound = math.ceil(self.load_factor * (total + 1) / n) + self.slack
        rank = _order(home)
        tokens = prompt.tokens
        conf, conf_history = self.confidence, self.history_confidence
        # Each prediction weighed by how often predictions of its kind came true.
        value = (
            [max(conf * f, conf_history * h) for f, h in zip(predicted, history, strict=True)]
            if prompt.history >= 0
            else [conf * f for f in predicted]
        )
        weight = self.work * self.load_weight
        bonus = self.home_bonus if prompt.conversation else 0.0

        def cost(i: int) -> tuple[float, int]:
            hit = max(float(expected[i]), value[i])
            return (tokens - hit) + weight * (loads[i] - (bonus if i == home[0] else 0)), rank[i]

        ordered = sorted(range(n), key=cost)
        # The only backend holding most of a conversation may go SOLE_SLACK over its share cap:
        # spilling a history costs all of it, and other routers would still send its next turn there.
        holders = [i for i in range(n) if max(expected[i], predicted[i], history[i]) * 2 >= tokens]
        if len(holders) == 1 and prompt.history >= 0 and not room[holders[0]]:
            room[holders[0]] = after[holders[0]] <= cap + SOLE_SLACK
        within = [i for i in ordered if room[i] and healthy[i].in_flight < bound * healthy[i].weight]
        chosen = within[0] if within else min(range(n), key=lambda i: (loads[i] + after[i] / cap, rank[i]))
        rest = [i for i in ordered if i != chosen]
        decay = self._decay
        for p in pos:
            sent[p] *= decay
        sent[pos[chosen]] += 1.0
        if fresh:  # a new prefix counts where it really went (load may overrule the prediction)
            self._homed[pos[chosen]] += 1
        # Record where the prompt goes (the first choice; failover is rare and the index heals).
        self.index.insert(prompt.ids, pos[chosen])
        hit_est = max(float(expected[chosen]), value[chosen])
        self.work += (max(0.0, tokens - hit_est) - self.work) / 64
        by_history = conf_history * history[chosen] > conf * predicted[chosen]
        decision = Decision(
            self,
            prompt,
            pos[chosen],
            expected[chosen],
            int(history[chosen] if by_history else predicted[chosen]),
            fresh,
            fresh and chosen == winner,
            by_history,
        )
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
                if decision.fresh and (came_true or decision.probe):
                    # A prefix new to this router that its server already held: another router
                    # sent it there. A miss counts only where every router would have sent it
                    # (elsewhere, a lone router's own choice proves nothing).
                    self.peers += ((1.0 if came_true else 0.0) - self.peers) / PEER_RATE
                target = 0.95 if came_true else 0.1
                if decision.history:
                    self.history_confidence += (target - self.history_confidence) / 16
                else:
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
    fresh: bool = False
    """Nothing of the prompt was known to this router."""
    probe: bool = False
    """...and it went to its rendezvous home (a miss there means no other router sent it)."""
    history: bool = False
    """`predicted` is the conversation home's history (else the first message's home)."""


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
