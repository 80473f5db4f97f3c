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
    a = ca.blocks(ex(("system", system), ("user", "one question " * 20)).body)
    b = ca.blocks(ex(("system", system), ("user", "another one " * 20)).body)
    shared = len(system) // 128
    assert a.ids[:shared - 1] == b.ids[:shared - 1]
    assert a.ids[shared + 1:] != b.ids[shared + 1:]
    # A change early on changes every later id (each id stands for the whole prefix).
    c = ca.blocks(ex(("system", "X" + system[1:]), ("user", "one question " * 20)).body)
    assert not set(c.ids) & set(a.ids)
    # Another model: other ids (its server caches nothing of this one's).
    assert ca.blocks(ex(("system", system), model="other").body).ids[0] != a.ids[0]
    assert len(ca.blocks(ex(("user", "x" * 1_000_000)).body).ids) == ca.MAX_BLOCKS


def test_a_shared_prefix_sticks_to_its_backend_and_groups_spread():
    rng = random.Random(2)
    backends = pool(4)
    strategy = ca.CacheAware()
    systems = [text(rng, 4000) for _ in range(8)]
    homes: dict[int, set[int]] = {g: set() for g in range(8)}
    for _ in range(6):
        for g, system in enumerate(systems):
            first = strategy(backends, ex(("system", system), ("user", text(rng, 200))))[0]
            homes[g].add(backends.index(first))
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len({next(iter(h)) for h in homes.values()}) >= 3, "groups spread over the backends"


def test_a_popular_prefix_spills_when_its_backend_is_loaded():
    rng = random.Random(3)
    backends = pool(4)
    strategy = ca.CacheAware()
    system = text(rng, 4000)
    home = strategy(backends, ex(("system", system), ("user", "q")))[0]
    home.in_flight = 20  # far over the bound: ceil(1.25 x 21 / 4) + slack
    other = strategy(backends, ex(("system", system), ("user", "q2")))[0]
    assert other is not home
    home.in_flight = 0
    assert strategy(backends, ex(("system", system), ("user", "q3")))[0] in (home, other)


def test_independent_routers_agree_on_a_new_prefix_and_a_conversation():
    rng = random.Random(4)
    names = [f"http://b{i}.test/v1/" for i in range(8)]
    routers = [(ca.CacheAware(choices=1), [Backend(Target(base_url=u)) for u in names]) for _ in range(3)]
    for _ in range(10):
        system = text(rng, 3000)
        picks = {r(bs, ex(("system", system), ("user", text(rng, 100))))[0].target.base_url for r, bs in routers}
        assert len(picks) == 1
        history = (("system", "short"), ("user", text(rng, 600)), ("assistant", text(rng, 600)), ("user", "next"))
        picks = {r(bs, ex(*history))[0].target.base_url for r, bs in routers}
        assert len(picks) == 1


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

    spec = ProviderSpec("p", backends=(BackendSpec("http://h0.test/v1/"), BackendSpec("http://h1.test/v1/")),
                        balance="cache_aware")
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
    strategy.feedback(last.state[ca.STATE], backend, {"prompt_tokens": 1000,
                                                       "prompt_tokens_details": {"cached_tokens": 0}})
    assert strategy._trust[last.state[ca.STATE].position] < 1.0


def test_cached_tokens_parsing():
    assert ca.cached_tokens({"prompt_tokens_details": {"cached_tokens": 12}}) == 12
    for bad in (None, {}, {"prompt_tokens_details": None}, {"prompt_tokens_details": {"cached_tokens": True}},
                {"prompt_tokens_details": {"cached_tokens": -1}}, {"prompt_tokens_details": {"cached_tokens": "3"}}):
        assert ca.cached_tokens(bad) is None


def _settings(tmp_path: Path, body: str):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    return load({"COT_PROXY_CONFIG": str(path)}, target_base_url=None, upstream_api_key=None,
                connect_timeout=1, read_timeout=1)


def test_cache_aware_is_the_default_for_several_backends(tmp_path):
    s = _settings(tmp_path, "providers:\n  a: {backends: [{base_url: 'http://x/v1'}, {base_url: 'http://y/v1'}]}\n"
                            "  b: {base_url: 'http://z/v1'}\n"
                            "  c: {backends: [{base_url: 'http://x/v1'}, {base_url: 'http://y/v1'}],"
                            " balance: prefix_affinity}\n")
    assert (s.providers["a"].balance, s.providers["b"].balance, s.providers["c"].balance) == (
        "cache_aware", "round_robin", "prefix_affinity")
    with pytest.raises(RoutingConfigError, match="cache_aware"):
        _settings(tmp_path, "providers:\n  a: {base_url: 'http://x/v1', balance: nope}\n")


def test_the_simulator_runs_and_cache_aware_beats_round_robin():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import routing_sim as sim
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = {}
    for name in ("round_robin", "cache_aware"):
        rng = random.Random(1)
        results[name] = sim.simulate(sim.groups(rng, sim.Text(rng)), name, 2, seed=1)
    assert results["cache_aware"].hit_rate > results["round_robin"].hit_rate + 0.3
    assert results["cache_aware"].max_mean <= 1.3
