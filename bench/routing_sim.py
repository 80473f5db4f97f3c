"""GPU-free replay of the KV-cache routing workloads: the real strategies against simulated servers.

    python bench/routing_sim.py [--seed 1] [--routers 1,8] [--only groups,chat] [--cost]

Servers: 8 backends, each with `SLOTS` request slots (FIFO queue beyond them) and a
vLLM-style prefix cache: 16-token blocks (4 characters a token), each block id chained
over every block before it, LRU-evicted past `CACHE_BLOCKS`. A request's prefill costs
`PREFILL_MS` per uncached token and `HIT_MS` per cached one; each output token
`DECODE_MS`. TTFT = queueing + prefill. The server caches the prompt's blocks when its
prefill starts and the answer's when it finishes (the next turn's prompt holds them).

Strategies: round_robin, least_busy, prefix_affinity (app/routing/balance.py),
cache_aware (app/routing/cache_aware.py), and `sglang`, a reference written from
/work/shared/reference/kv-routing.md (per-backend approximate tree of the joined message
texts, here at 32-character granularity; imbalance (max - min > 32 and max > 1.1 x min)
-> least loaded; else the longest match if over half the text; else the smallest tree).

Routers: 1, or N independent ones (each Gunicorn worker of each replica): each has its own
strategy state and its own Backend objects, so its own in-flight view; requests go to a
router at random, as a load balancer would send them.

Workloads (the reference routers' published shapes, scaled to run in seconds):
  groups   64 groups x 16 prompts, 2,048-token group system prompt, 128-token question, 256 out; Poisson
  chat     100 users x 6 rounds, one 1,000-token system prompt for all, 150-token questions,
           200-token answers; closed loop (each user waits for the answer, thinks ~1 s)
  docs     30 documents x 5 users, 6,000-token document, 1,200-token question, 200 out; Poisson
  skew     80% of requests on one 2,048-token system prompt, 20% on 40 others; 1,000 requests; Poisson
  failure  chat, with backend 3 failing (connection refused, cache lost) half way through
  gunicorn the real-Gunicorn test's shape (tests/integration/test_cache_routing.py): 3 backends with
           small caches, 12 groups x 6 prompts (1,000-token system prompt), 4 closed-loop clients
           each on a keep-alive connection that one router (worker) holds, answers in ~2 ms (so
           in-flight counts say nothing about load); run over many seeds with 2 routers
           (`--gunicorn-seeds`): the worst max:mean is what a CI run can meet

Deterministic for a seed. Prints one table per router count.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.exchange import Exchange  # noqa: E402
from app.routing.backends import Backend  # noqa: E402
from app.routing.balance import STRATEGIES  # noqa: E402
from app.routing.cache_aware import STATE, CacheAware  # noqa: E402
from app.upstream import Target  # noqa: E402

N_BACKENDS = 8
SLOTS = 4
CACHE_BLOCKS = 4096  # 65,536 tokens of prefix cache per server
BLOCK_CHARS = 64  # 16 tokens x 4 characters
PREFILL_MS = 0.1
HIT_MS = 0.005
DECODE_MS = 4.0
ALPHABET = "abcdefghijklmnopqrstuvwxyz     "


# -- text ------------------------------------------------------------------------------------


class Text:
    """Seeded random text, `tokens` x 4 characters."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pool = "".join(rng.choice(ALPHABET) for _ in range(1 << 16))

    def __call__(self, tokens: int) -> str:
        n = tokens * 4
        out = []
        while n > 0:
            start = self.rng.randrange(len(self.pool) - 1024)
            take = min(n, 1024)
            out.append(self.pool[start : start + take])
            n -= take
        return "".join(out)


# -- servers ---------------------------------------------------------------------------------


class Server:
    def __init__(self, index: int, cache_blocks: int = CACHE_BLOCKS) -> None:
        self.index = index
        self.cache_blocks = cache_blocks
        self.cache: OrderedDict[int, None] = OrderedDict()
        self.busy = 0
        self.queue: list[Job] = []
        self.up = True
        self.served = 0

    @staticmethod
    def ids(text: str) -> list[int]:
        out, value = [], 0
        data = text.encode()
        for k in range(BLOCK_CHARS, len(data) + 1, BLOCK_CHARS):
            value = zlib.crc32(data[k - BLOCK_CHARS : k], value)
            out.append(value | k << 32)
        return out

    def hit_blocks(self, ids: list[int]) -> int:
        n = 0
        for block in ids:
            if block not in self.cache:
                break
            n += 1
        return n

    def store(self, ids: list[int]) -> None:
        c = self.cache
        for block in ids:
            c.pop(block, None)
            c[block] = None
        while len(c) > self.cache_blocks:
            c.popitem(last=False)

    def fail(self) -> None:
        self.up = False
        self.cache.clear()


@dataclass
class Request:
    body: dict[str, Any]
    prompt: str
    out_tokens: int
    answer: str = ""
    user: int | None = None
    round: int = 0
    client: int | None = None


@dataclass
class Job:
    request: Request
    router: int
    backend: int
    arrived: float
    order: list[Backend] = field(default_factory=list)
    decision: Any = None
    attempt: int = 0


# -- strategies ------------------------------------------------------------------------------


class SGLangReference:
    """The SGLang router's cache-aware policy as kv-routing.md describes it."""

    GRAIN = 32

    def __init__(self, threshold: float = 0.5, abs_imbalance: int = 32, rel_imbalance: float = 1.1) -> None:
        self.threshold, self.abs, self.rel = threshold, abs_imbalance, rel_imbalance
        self.trees: dict[int, set[int]] = {}

    def _ids(self, text: str) -> list[int]:
        out, value = [], 0
        data = text.encode()
        for k in range(self.GRAIN, len(data) + 1, self.GRAIN):
            value = zlib.crc32(data[k - self.GRAIN : k], value)
            out.append(value | k << 32)
        return out

    def __call__(self, backends: list[Backend], ex: Exchange, counter: Any, prefix: int) -> list[Backend]:
        healthy = [b for b in backends if b.healthy()] or backends
        body = ex.body
        text = "".join(m["content"] for m in body["messages"])
        ids = self._ids(text)
        loads = [b.in_flight for b in healthy]
        if max(loads) - min(loads) > self.abs and max(loads) > self.rel * min(loads):
            chosen = min(healthy, key=lambda b: b.in_flight)
        else:
            best, best_len = None, -1
            for b in healthy:
                tree = self.trees.setdefault(id(b), set())
                n = 0
                for block in ids:
                    if block not in tree:
                        break
                    n += 1
                if n > best_len:
                    best, best_len = b, n
            if ids and best_len / len(ids) > self.threshold:
                chosen = best
            else:
                chosen = min(healthy, key=lambda b: len(self.trees.setdefault(id(b), set())))
        self.trees.setdefault(id(chosen), set()).update(ids)
        return [chosen, *(b for b in healthy if b is not chosen)]


def make_strategy(name: str) -> Callable[..., list[Backend]]:
    if name == "cache_aware":
        return CacheAware()
    if name == "sglang":
        return SGLangReference()
    return STRATEGIES[name]


STRATEGY_NAMES = ("round_robin", "least_busy", "prefix_affinity", "sglang", "cache_aware")


# -- workloads -------------------------------------------------------------------------------


def chat_body(messages: list[tuple[str, str]]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages]}


def render(messages: list[tuple[str, str]]) -> str:
    return "".join(f"<|{r}|>{c}\n" for r, c in messages)


def single(messages: list[tuple[str, str]], out: int) -> Request:
    return Request(chat_body(messages), render(messages), out)


@dataclass
class Workload:
    name: str
    open_loop: list[tuple[float, Request]] = field(default_factory=list)
    users: int = 0
    rounds: int = 0
    system: str = ""
    questions: list[list[str]] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)
    fail_at: int | None = None
    """Fail backend 3 after this many requests have been sent."""
    backends: int = N_BACKENDS
    cache_blocks: int = CACHE_BLOCKS
    clients: int = 0
    """Closed loop over `open_loop`'s requests (times ignored): this many clients, each on one router."""
    time_scale: float = 1.0
    """Multiplies every prefill and decode time."""


def poisson(rng: random.Random, requests: list[Request], rate: float) -> list[tuple[float, Request]]:
    t, out = 0.0, []
    for r in requests:
        t += rng.expovariate(rate)
        out.append((t, r))
    return out


def groups(rng: random.Random, text: Text) -> Workload:
    systems = [text(2048) for _ in range(64)]
    reqs = [single([("system", systems[g]), ("user", text(128))], 256) for g in range(64) for _ in range(16)]
    rng.shuffle(reqs)
    return Workload("groups", poisson(rng, reqs, 24.0))


def docs(rng: random.Random, text: Text) -> Workload:
    documents = [text(6000) for _ in range(30)]
    reqs = [single([("user", documents[d] + "\n" + text(1200))], 200) for d in range(30) for _ in range(5)]
    rng.shuffle(reqs)
    return Workload("docs", poisson(rng, reqs, 8.0))


def skew(rng: random.Random, text: Text) -> Workload:
    popular = text(2048)
    others = [text(2048) for _ in range(40)]
    reqs = [
        single([("system", popular if rng.random() < 0.8 else rng.choice(others)), ("user", text(128))], 256)
        for _ in range(1000)
    ]
    return Workload("skew", poisson(rng, reqs, 24.0))


def chat(rng: random.Random, text: Text, name: str = "chat") -> Workload:
    users, rounds = 100, 6
    return Workload(
        name,
        users=users,
        rounds=rounds,
        system=text(1000),
        questions=[[text(150) for _ in range(rounds)] for _ in range(users)],
        answers=[[text(200) for _ in range(rounds)] for _ in range(users)],
    )


def failure(rng: random.Random, text: Text) -> Workload:
    w = chat(rng, text, "failure")
    w.fail_at = w.users * w.rounds // 2
    return w


def gunicorn(rng: random.Random, text: Text) -> Workload:
    systems = [text(1000) for _ in range(12)]
    reqs = [single([("system", systems[g]), ("user", text(75))], 1) for g in range(12) for _ in range(6)]
    rng.shuffle(reqs)
    return Workload("gunicorn", [(0.0, r) for r in reqs], backends=3, cache_blocks=400, clients=4, time_scale=0.01)


WORKLOADS: dict[str, Callable[[random.Random, Text], Workload]] = {
    "groups": groups,
    "chat": chat,
    "docs": docs,
    "skew": skew,
    "failure": failure,
}
EXTRA: dict[str, Callable[[random.Random, Text], Workload]] = {"gunicorn": gunicorn}


# -- the simulation --------------------------------------------------------------------------


@dataclass
class Result:
    hit_rate: float
    ttft_p90_ms: float
    max_mean: float
    requests: int
    after_ejection: int = 0
    recovery: int | None = None
    pre_hit: float = 0.0


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else 0.0


def simulate(work: Workload, strategy: str, n_routers: int, seed: int) -> Result:
    rng = random.Random(seed)
    servers = [Server(i, work.cache_blocks) for i in range(work.backends)]
    targets = [Target(base_url=f"http://backend-{i}.internal:8000/v1/") for i in range(work.backends)]
    views = [[Backend(target=t, failure_threshold=3, cooldown_seconds=1e9) for t in targets] for _ in range(n_routers)]
    strategies = [make_strategy(strategy) for _ in range(n_routers)]
    counters = [itertools.count() for _ in range(n_routers)]
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    ttfts: list[float] = []
    hits: list[tuple[int, int]] = []  # (cached, prompt) tokens per answered request, in send order
    sent = 0
    failed_at: float | None = None
    after_ejection = 0
    fail_index: int | None = None
    history: dict[int, list[tuple[str, str]]] = {}
    # Closed-loop clients: each on one keep-alive connection, which one router (worker) accepted.
    backlog = [r for _, r in reversed(work.open_loop)] if work.clients else []
    client_router = [rng.randrange(n_routers) for _ in range(work.clients)]

    def push(t: float, kind: str, payload: Any) -> None:
        heapq.heappush(events, (t, next(seq), kind, payload))

    def arrive(now: float, req: Request) -> None:
        nonlocal sent, failed_at, fail_index
        r = rng.randrange(n_routers) if req.client is None else client_router[req.client]
        ex = Exchange(request_id=str(sent), family="chat", method="POST", path="chat/completions", body=req.body)
        ranked = strategies[r](views[r], ex, counters[r], 1024)
        order = [b for b in ranked if b.healthy()] + [b for b in ranked if not b.healthy()]
        sent += 1
        if work.fail_at is not None and failed_at is None and sent > work.fail_at:
            servers[3].fail()
            failed_at, fail_index = now, len(hits)
        dispatch(now, Job(req, r, -1, now, order[:2], decision=ex.state.get(STATE)))

    def dispatch(now: float, job: Job) -> None:
        nonlocal after_ejection
        backend = job.order[job.attempt]
        i = targets.index(backend.target)
        job.backend = i
        server = servers[i]
        if not server.up:
            if not backend.healthy():
                after_ejection += 1
            backend.record(False)
            if job.attempt + 1 < len(job.order):
                job.attempt += 1
                dispatch(now, job)
            return
        backend.begin()
        if server.busy < SLOTS:
            start(now, server, job)
        else:
            server.queue.append(job)

    def start(now: float, server: Server, job: Job) -> None:
        server.busy += 1
        server.served += 1
        ids = Server.ids(job.request.prompt)
        cached_blocks = server.hit_blocks(ids)
        server.store(ids)
        tokens = len(job.request.prompt) // 4
        cached = min(tokens, cached_blocks * 16)
        prefill = ((tokens - cached) * PREFILL_MS + cached * HIT_MS) / 1000 * work.time_scale
        ttfts.append(now - job.arrived + prefill)
        hits.append((cached, tokens))
        done = now + prefill + job.request.out_tokens * DECODE_MS / 1000 * work.time_scale
        push(done, "done", (job, cached, tokens))

    def finish(now: float, job: Job, cached: int, tokens: int) -> None:
        server = servers[job.backend]
        server.busy -= 1
        req = job.request
        if req.answer:
            server.store(Server.ids(req.prompt + f"<|assistant|>{req.answer}\n"))
        backend = views[job.router][job.backend]
        backend.record(True)
        backend.end()
        strat = strategies[job.router]
        if isinstance(strat, CacheAware):
            if job.decision is not None:
                strat.feedback(
                    job.decision, backend, {"prompt_tokens": tokens, "prompt_tokens_details": {"cached_tokens": cached}}
                )
        if server.queue and server.up:
            start(now, server, server.queue.pop(0))
        if req.user is not None and req.round + 1 < work.rounds:
            push(now + rng.expovariate(1.0), "turn", (req.user, req.round + 1))
        if req.client is not None and backlog:
            next_client(now + 0.0005, req.client)

    def next_client(now: float, client: int) -> None:
        req = backlog.pop()
        req.client = client
        push(now, "arrive", req)

    def turn(now: float, user: int, rnd: int) -> None:
        msgs = history.setdefault(user, [("system", work.system)])
        if rnd:
            msgs.append(("assistant", work.answers[user][rnd - 1]))
        msgs.append(("user", work.questions[user][rnd]))
        req = Request(chat_body(list(msgs)), render(msgs), 200, work.answers[user][rnd], user, rnd)
        arrive(now, req)

    if work.clients:
        for c in range(min(work.clients, len(backlog))):
            next_client(0.0, c)
    else:
        for t, req in work.open_loop:
            push(t, "arrive", req)
    for u in range(work.users):
        push(rng.uniform(0, 10.0), "turn", (u, 0))

    limit = 10 * (len(work.open_loop) + work.users * max(1, work.rounds)) + 100
    for _ in range(limit):
        if not events:
            break
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            arrive(now, payload)
        elif kind == "done":
            finish(now, *payload)
        else:
            turn(now, *payload)

    total_cached = sum(c for c, _ in hits)
    total = sum(t for _, t in hits) or 1
    served = [s.served for s in servers if s.up or work.fail_at is None]
    mean = sum(served) / len(served)
    res = Result(total_cached / total, percentile(ttfts, 0.9) * 1000, max(served) / mean, len(hits), after_ejection)
    if fail_index is not None:
        pre = hits[max(0, fail_index - 200) : fail_index]
        res.pre_hit = sum(c for c, _ in pre) / max(1, sum(t for _, t in pre))
        window = 20
        for k in range(fail_index, len(hits) - window + 1):
            seg = hits[k : k + window]
            rate = sum(c for c, _ in seg) / max(1, sum(t for _, t in seg))
            if rate >= 0.9 * res.pre_hit:
                res.recovery = k - fail_index + window
                break
    return res


# -- decision cost ---------------------------------------------------------------------------


def decision_cost(seed: int, prefixes: int = 10_000) -> tuple[float, int]:
    """Microseconds per cache_aware decision (hashing included) with `prefixes` cached prompts."""
    rng = random.Random(seed)
    text = Text(rng)
    backends = [Backend(target=Target(base_url=f"http://backend-{i}.internal:8000/v1/")) for i in range(8)]
    strat = CacheAware()
    system = text(1000)
    bodies = [chat_body([("system", system), ("user", text(rng.randrange(100, 600)))]) for _ in range(prefixes)]
    for body in bodies:
        strat(backends, Exchange("r", "chat", "POST", "chat/completions", body=body))
    probe = [bodies[rng.randrange(prefixes)] for _ in range(2000)]
    best = math.inf
    for _ in range(3):  # CPU time, the best of 3: on a shared box wall time measures the neighbours
        exs = [Exchange("r", "chat", "POST", "chat/completions", body=b) for b in probe]
        t = time.process_time()
        for ex in exs:
            strat(backends, ex)
        best = min(best, (time.process_time() - t) / len(exs) * 1e6)
    return best, len(strat.index)


def gunicorn_shape(strategy: str, seeds: range, routers: int = 2) -> list[Result]:
    """The real-Gunicorn test's shape over many seeds (each seed: other texts, order, worker per connection)."""
    out = []
    for seed in seeds:
        rng = random.Random(seed)
        out.append(simulate(gunicorn(rng, Text(rng)), strategy, routers, seed))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--routers", default="1,8")
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--strategies", default=",".join(STRATEGY_NAMES))
    ap.add_argument("--cost", action="store_true", help="also time cache_aware's decision at 10,000 prefixes")
    ap.add_argument("--gunicorn-seeds", type=int, default=30, help="seeds of the real-Gunicorn test's shape (0: skip)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    names = [s for s in args.strategies.split(",") if s]
    for n in (int(x) for x in args.routers.split(",")):
        print(f"\n## {n} router{'s' if n > 1 else ''} ({N_BACKENDS} backends, {SLOTS} slots, seed {args.seed})")
        print(f"{'workload':<9} {'strategy':<16} {'hit %':>6} {'TTFT p90 ms':>12} {'max/mean':>9}  notes")
        for wname in args.only.split(","):
            for sname in names:
                rng = random.Random(args.seed)
                work = WORKLOADS[wname](rng, Text(rng))
                r = simulate(work, sname, n, args.seed)
                notes = ""
                if work.fail_at is not None:
                    rec = "never" if r.recovery is None else f"{r.recovery} req"
                    notes = f"sent after ejection {r.after_ejection}; pre-failure {r.pre_hit:.1%}; back to 90% in {rec}"
                print(
                    f"{wname:<9} {sname:<16} {r.hit_rate * 100:6.1f} {r.ttft_p90_ms:12.0f} {r.max_mean:9.2f}  {notes}"
                )
    if args.gunicorn_seeds:
        n = args.gunicorn_seeds
        print(f"\n## the real-Gunicorn test's shape (3 backends, 2 routers, 12 groups x 6, 4 clients; seeds 1-{n})")
        print(
            f"{'strategy':<16} {'hit % median':>12} {'hit % worst':>12} {'max/mean median':>16} {'max/mean worst':>15}"
        )
        for sname in names:
            rs = gunicorn_shape(sname, range(1, n + 1))
            hit = sorted(r.hit_rate * 100 for r in rs)
            mm = sorted(r.max_mean for r in rs)
            print(f"{sname:<16} {hit[len(hit) // 2]:12.1f} {hit[0]:12.1f} {mm[len(mm) // 2]:16.2f} {mm[-1]:15.2f}")
    if args.cost:
        us, entries = decision_cost(args.seed)
        print(f"\ncache_aware decision: {us:.1f} us per request at 10,000 cached prefixes ({entries} index entries)")
    print(f"\n({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
