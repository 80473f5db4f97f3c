"""`cache_aware` balancing: block ids, affinity weighed against load, agreement, ejection, feedback, bounds."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

from app.exchange import Exchange
from app.routing import cache_aware as ca
from app.routing.backends import Backend
from app.routing.providers import Provider
from app.routing.settings import BackendSpec, ProviderSpec, RoutingConfigError, load
from app.upstream import Target

ROOT = Path(__file__).resolve().parents[2]


def pool(n: int = 4) -> list[Backend]:
    return [Backend(Target(base_url=f"http://b{i}.test/v1/")) for i in range(n)]


def ex(*messages: tuple[str, str], model: str = "m") -> Exchange:
    body = {"model": model, "messages": [{"role": r, "content": c} for r, c in messages]}
    return Exchange(request_id="r", family="chat", method="POST", path="chat/completions", body=body)


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("abcdefgh ") for _ in range(n))


def test_block_ids_are_chained_over_the_whole_prompt():
    rng = random.Random(1)
    system = text(rng, 3000)
    a = ca.blocks(ex(("system", system), ("user", "one question " * 80)).body)
    b = ca.blocks(ex(("system", system), ("user", "another one " * 80)).body)
    shared = len(system) // ca.BLOCK_CHARS
    assert a.ids[: shared - 1] == b.ids[: shared - 1]
    assert a.ids[shared + 1 :] != b.ids[shared + 1 :]
    # A change early on changes every later id (each id stands for the whole prefix).
    c = ca.blocks(ex(("system", "X" + system[1:]), ("user", "one question " * 80)).body)
    assert not set(c.ids) & set(a.ids)
    # Another model: other ids (its server caches nothing of this one's).
    assert ca.blocks(ex(("system", system), model="other").body).ids[0] != a.ids[0]
    assert len(ca.blocks(ex(("user", "x" * 1_000_000)).body).ids) == ca.MAX_BLOCKS


def test_a_shared_prefix_sticks_to_its_backend_and_groups_spread():
    rng = random.Random(2)
    backends = pool(4)
    strategy = ca.CacheAware()
    systems = [text(rng, 4000) for _ in range(8)]
    homes: dict[int, list[int]] = {g: [] for g in range(8)}
    for _ in range(6):
        for g, system in enumerate(systems):
            first = strategy(backends, ex(("system", system), ("user", text(rng, 200))))[0]
            homes[g].append(backends.index(first))
    # Rendezvous alone would put 4 of these 8 groups on one backend: the share cap moves a
    # few requests of the crowded ones, but each group stays on its home or one more.
    assert all(len(set(h)) <= 2 for h in homes.values()), homes
    assert sum(len(set(h)) == 1 for h in homes.values()) >= 5, homes
    assert len({h[0] for h in homes.values()}) >= 3, "groups spread over the backends"
    counts = [sum(h.count(b) for h in homes.values()) for b in range(4)]
    assert max(counts) <= ca.SHARE_FACTOR * 12 + ca.SHARE_SLACK + 1, counts


def test_a_popular_prefix_spills_when_its_backend_is_loaded():
    rng = random.Random(3)
    backends = pool(4)
    strategy = ca.CacheAware()
    system = text(rng, 4000)
    home = strategy(backends, ex(("system", system), ("user", "q")))[0]
    home.in_flight = 20  # far over the bound: ceil(1.25 x 21 / 4) + slack = 11
    other = strategy(backends, ex(("system", system), ("user", "q2")))[0]
    assert other is not home
    home.in_flight = 0
    assert strategy(backends, ex(("system", system), ("user", "q3")))[0] in (home, other)


def test_independent_routers_agree_on_a_new_prefix_and_a_conversation():
    rng = random.Random(4)
    names = [f"http://b{i}.test/v1/" for i in range(8)]
    routers = [(ca.CacheAware(), [Backend(Target(base_url=u)) for u in names]) for _ in range(3)]
    for _ in range(10):
        system = text(rng, 3000)
        picks = {r(bs, ex(("system", system), ("user", text(rng, 100))))[0].target.base_url for r, bs in routers}
        assert len(picks) == 1
        history = (("system", "short"), ("user", text(rng, 600)), ("assistant", text(rng, 600)), ("user", "next"))
        picks = {r(bs, ex(*history))[0].target.base_url for r, bs in routers}
        assert len(picks) == 1


def _feed(strategy: ca.CacheAware, e: Exchange, backend: Backend, cached: int) -> None:
    strategy.feedback(
        e.state[ca.STATE], backend, {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": cached}}
    )


def test_the_share_cap_bounds_each_router_and_so_the_fleet():
    """Two workers, instant answers (in-flight always 0), a hot prefix: what put 40 of 72
    requests on one backend (be49549). Each router caps its own spread, so the sum is capped."""
    rng = random.Random(21)
    names = [f"http://b{i}.test/v1/" for i in range(3)]
    routers = [(ca.CacheAware(), [Backend(Target(base_url=u)) for u in names]) for _ in range(2)]
    hot, others = text(rng, 4000), [text(rng, 4000) for _ in range(5)]
    sent = {u: 0 for u in names}
    for _ in range(300):
        r, bs = routers[rng.randrange(2)]
        system = hot if rng.random() < 0.6 else rng.choice(others)
        sent[r(bs, ex(("system", system), ("user", text(rng, 300))))[0].target.base_url] += 1
    # Per router: (count + 1) <= 1.15 x (its total + 1) / 3 + 3.5 (+ warm-up slack, gone by now).
    bound = sum(ca.SHARE_FACTOR * (r.decisions + 1) / 3 + ca.SHARE_SLACK for r, _ in routers)
    assert max(sent.values()) <= bound, (sent, bound)
    assert max(sent.values()) / (300 / 3) <= 1.3, sent


def test_a_router_learns_whether_it_routes_alone():
    rng = random.Random(22)
    backends = pool(4)
    lone, shared = ca.CacheAware(), ca.CacheAware()
    assert not lone.alone and not shared.alone  # one of several until shown otherwise
    for _ in range(30):
        for strategy, cached in ((lone, 0), (shared, 1000)):
            e = ex(("user", text(rng, 3000)))
            first = strategy(backends, e)[0]
            # The server had none of a new prefix (nobody else routes here), or had it all.
            _feed(strategy, e, first, cached if e.state[ca.STATE].probe else 0)
    assert lone.alone and not shared.alone
    # Misses where this router chose by itself prove nothing; a hit on a new prefix does.
    for _ in range(20):
        e = ex(("user", text(rng, 3000)))
        _feed(lone, e, lone(backends, e)[0], 1000)
    assert not lone.alone


def test_a_lone_router_balances_new_prefixes_and_keeps_each_where_it_went():
    rng = random.Random(23)
    backends = pool(8)
    strategy = ca.CacheAware(peers=0.0)
    docs = [text(rng, 6000) for _ in range(16)]
    homes = []
    for d in docs:
        e = ex(("user", d + "\n" + text(rng, 400)))
        homes.append(strategy(backends, e)[0])
        _feed(strategy, e, homes[-1], 0)
    assert sorted(homes.count(b) for b in backends) == [2] * 8
    for d, h in zip(docs, homes, strict=True):
        assert strategy(backends, ex(("user", d + "\n" + text(rng, 400))))[0] is h


def test_a_conversation_goes_home_even_where_this_router_knows_only_the_system_prompt():
    """A turn routed by another worker: its history is at the conversation's rendezvous home,
    which beats a backend where this router once sent the (shared) system prompt."""
    rng = random.Random(24)
    names = [f"http://b{i}.test/v1/" for i in range(8)]
    system = text(rng, 4000)
    other, here = ca.CacheAware(), ca.CacheAware()
    theirs, ours = [Backend(Target(base_url=u)) for u in names], [Backend(Target(base_url=u)) for u in names]
    here(ours, ex(("system", system), ("user", text(rng, 300))))  # the system prompt is known somewhere
    for _ in range(60):  # the other worker has sent the system prompt everywhere by now
        other(theirs, ex(("system", system), ("user", text(rng, 300))))
    agreed = 0
    for _ in range(20):
        turn = [("system", system), ("user", text(rng, 600)), ("assistant", text(rng, 800))]
        first = other(theirs, ex(*turn[:2]))[0].target.base_url
        agreed += here(ours, ex(*turn, ("user", "next")))[0].target.base_url == first
    # (3 of 20 when a history was trusted no more than a first message, at 0.5; the rest are
    # first turns the other worker's share cap sent elsewhere.)
    assert agreed >= 13, agreed


def test_the_simulator_catches_two_workers_piling_onto_one_backend():
    """The real-Gunicorn test's shape (3 backends, 2 workers, 12 groups x 6, instant answers)
    over ten seeds: the reverted tuning (be49549) reached max:mean 1.71 on two of them."""
    sim = _simulator()
    results = sim.gunicorn_shape("cache_aware", range(1, 11))
    assert max(r.max_mean for r in results) <= 1.5, [round(r.max_mean, 2) for r in results]
    assert min(r.hit_rate for r in results) >= 0.5, [round(r.hit_rate, 3) for r in results]


def _simulator():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import routing_sim as sim
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return sim


def test_ejected_backends_get_nothing_and_only_their_prefixes_move():
    rng = random.Random(5)
    backends = pool(4)
    strategy = ca.CacheAware()
    systems = [text(rng, 3000) for _ in range(24)]
    before = [strategy(backends, ex(("system", s), ("user", "q")))[0] for s in systems]
    down = before[0]
    down.down_until = time.monotonic() + 60
    after = [strategy(backends, ex(("system", s), ("user", "q")))[0] for s in systems]
    assert down not in after
    assert all(a is b for a, b in zip(before, after, strict=True) if a is not down)
    order = strategy(backends, ex(("system", systems[0]), ("user", "q")))
    assert order[-1] is down, "an ejected backend is only the last resort"


def test_the_index_is_bounded():
    strategy = ca.CacheAware(max_entries=500)
    backends = pool(2)
    rng = random.Random(6)
    for _ in range(200):
        strategy(backends, ex(("user", text(rng, 2000))))
    assert len(strategy.index) <= 500


def test_short_prompts_are_spread_round_robin():
    backends = pool(3)
    strategy = ca.CacheAware()
    picks = [strategy(backends, ex(("user", "hi")))[0] for _ in range(6)]
    assert picks == backends * 2


def test_decision_cost_is_small():
    rng = random.Random(7)
    backends = pool(8)
    strategy = ca.CacheAware()
    system = text(rng, 4000)
    exs = [ex(("system", system), ("user", text(rng, 800))) for _ in range(3000)]
    for e in exs:
        strategy(backends, e)
    started = time.perf_counter()
    for e in exs[:1000]:
        strategy(backends, e)
    per = (time.perf_counter() - started) / 1000
    assert per < 1e-3, per  # ~50 us on a quiet machine; a loose bound for a shared CI box


def test_feedback_counts_hits_per_backend_and_weighs_the_index():
    from app.observability import metrics

    spec = ProviderSpec(
        "p", backends=(BackendSpec("http://h0.test/v1/"), BackendSpec("http://h1.test/v1/")), balance="cache_aware"
    )
    provider = Provider(spec, connect_timeout=1, read_timeout=1)
    rng = random.Random(8)
    request = ex(("system", text(rng, 4000)), ("user", "q"))
    backend = provider.order(request)[0]

    def sample(kind: str) -> float:
        labels = {"provider": "p", "backend": backend.target.origin, "type": kind}
        return metrics.REGISTRY.get_sample_value("cot_proxy_prefix_cache_tokens_total", labels) or 0

    before = sample("cached"), sample("prompt")
    request.target = backend.target
    request.usage = {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 0}}
    backend.begin()
    request.outcome.finished_at = time.monotonic()
    backend.end()
    assert (sample("cached"), sample("prompt")) == (before[0], before[1] + 1000)
    again = ex(*((m["role"], m["content"]) for m in request.body["messages"]))
    assert provider.order(again)[0] is backend
    again.target, again.usage = backend.target, {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 990}}
    backend.begin()
    again.outcome.finished_at = time.monotonic()
    backend.end()
    assert sample("cached") == before[0] + 990
    assert not provider._pending
    # A server that had nothing of what the index promised is trusted less from then on.
    strategy = provider._strategy
    order = strategy(provider.backends, ex(*((m["role"], m["content"]) for m in request.body["messages"])))
    assert order[0] is backend
    last = ex(*((m["role"], m["content"]) for m in request.body["messages"]))
    strategy(provider.backends, last)
    strategy.feedback(
        last.state[ca.STATE], backend, {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 0}}
    )
    assert strategy._trust[last.state[ca.STATE].position] < 1.0


def test_cached_tokens_parsing():
    assert ca.cached_tokens({"prompt_tokens_details": {"cached_tokens": 12}}) == 12
    for bad in (
        None,
        {},
        {"prompt_tokens_details": None},
        {"prompt_tokens_details": {"cached_tokens": True}},
        {"prompt_tokens_details": {"cached_tokens": -1}},
        {"prompt_tokens_details": {"cached_tokens": "3"}},
    ):
        assert ca.cached_tokens(bad) is None


def _settings(tmp_path: Path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return load(
        {"COT_PROXY_CONFIG": str(path)}, target_base_url=None, upstream_api_key=None, connect_timeout=1, read_timeout=1
    )


def test_cache_aware_is_the_default_for_several_backends(tmp_path):
    s = _settings(
        tmp_path,
        "providers:\n  a: {backends: [{base_url: 'http://x/v1'}, {base_url: 'http://y/v1'}]}\n"
        "  b: {base_url: 'http://z/v1'}\n"
        "  c: {backends: [{base_url: 'http://x/v1'}, {base_url: 'http://y/v1'}],"
        " balance: prefix_affinity}\n",
    )
    assert (s.providers["a"].balance, s.providers["b"].balance, s.providers["c"].balance) == (
        "cache_aware",
        "round_robin",
        "prefix_affinity",
    )
    with pytest.raises(RoutingConfigError, match="cache_aware"):
        _settings(tmp_path, "providers:\n  a: {base_url: 'http://x/v1', balance: nope}\n")


def test_the_simulator_runs_and_cache_aware_beats_round_robin():
    sim = _simulator()
    results = {}
    for name in ("round_robin", "cache_aware"):
        rng = random.Random(1)
        results[name] = sim.simulate(sim.groups(rng, sim.Text(rng)), name, 2, seed=1)
    assert results["cache_aware"].hit_rate > results["round_robin"].hit_rate + 0.3
    assert results["cache_aware"].max_mean <= 1.3
