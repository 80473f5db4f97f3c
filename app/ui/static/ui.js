/* cot-proxy console: each page reads its JSON endpoint under /ui/api/ and draws it.
   Text always goes in as textContent (never HTML): model names and key names come from clients. */
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const PAGE = document.body.dataset.page;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function say(text) { document.getElementById("status").textContent = text; }

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (opts.method && opts.method !== "GET") {
    opts.headers["X-CSRF-Token"] = CSRF;
    opts.headers["Content-Type"] = "application/json";
  }
  const r = await fetch("/ui/api/" + path, opts);
  if (r.status === 401) { window.location = "/ui/login?next=" + encodeURIComponent(location.pathname); throw new Error("login"); }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || ("HTTP " + r.status));
  return data;
}

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return v.toLocaleString("en", { maximumFractionDigits: digits ?? 1 });
  return String(v);
}

function every(ms, fn) {
  let busy = false;
  const run = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } catch (e) { if (e.message !== "login") say("Refresh failed: " + e.message); } finally { busy = false; }
  };
  run();
  return setInterval(run, ms);
}

/* -- Overview ------------------------------------------------------------------------------ */

const CHARTS = [
  { title: "Requests per second", series: [["rps", "req/s", "#1d4ed8"]] },
  { title: "Error rate (%)", series: [["error_rate", "errors %", "#b91c1c"]], scale: 100 },
  { title: "Latency (ms)", series: [["p50_ms", "p50", "#1d4ed8"], ["p99_ms", "p99", "#92400e"]] },
  { title: "Time to first chunk (ms)", series: [["ttfc_p50_ms", "p50", "#166534"], ["ttfc_p99_ms", "p99", "#92400e"]] },
  { title: "Tokens per step", series: [["tokens_in", "in", "#1d4ed8"], ["tokens_out", "out", "#166534"]] },
];
let plots = [];

function overview() {
  const box = document.getElementById("charts");
  const tiles = document.getElementById("tiles");
  let span = "hour";
  document.querySelectorAll('input[name="span"]').forEach((r) => r.addEventListener("change", () => { span = r.value; draw(); }));

  function tile(label, value, id) { return el("div", {}, el("dt", { text: label }), el("dd", { text: value, id })); }

  async function draw() {
    const d = await api("overview?span=" + span);
    const pts = d.points;
    // "Now" is the last closed step (the open one may hold a second of traffic), else the open one.
    const closed = pts.filter((p) => !p.partial);
    const last = closed.length ? closed[closed.length - 1] : (pts.length ? pts[pts.length - 1] : {});
    tiles.replaceChildren(
      tile("Requests in flight", fmt(d.requests_active), "tile-active"),
      tile("Streams open", fmt(d.streams_active), "tile-streams"),
      tile("Requests/s (last step)", fmt(last.rps, 2), "tile-rps"),
      tile("Error rate", last.error_rate === undefined ? "–" : fmt(last.error_rate * 100, 1) + " %", "tile-errors"),
      tile("p50 / p99 latency", fmt(last.p50_ms, 0) + " / " + fmt(last.p99_ms, 0) + " ms", "tile-latency"),
      tile("TTFC p50", fmt(last.ttfc_p50_ms, 0) + " ms", "tile-ttfc"),
      tile("Requests (total)", fmt(d.totals.requests), "tile-total"),
      tile("Tokens in / out (total)", fmt(d.totals.tokens_in) + " / " + fmt(d.totals.tokens_out), "tile-tokens"),
    );
    document.getElementById("scope").textContent = d.scope === "fleet"
      ? "Every instance sharing this Redis, added up (the open step: this instance only)."
      : "This instance (all its workers); with REDIS_URL, every instance.";
    const xs = pts.map((p) => p.t);
    plots.forEach((p) => p.destroy());
    plots = [];
    box.replaceChildren();
    for (const c of CHARTS) {
      const fig = el("figure", { class: "chart", role: "group", "aria-label": c.title });
      fig.append(el("h3", { text: c.title }));
      box.append(fig);
      const ys = c.series.map(([key]) => pts.map((p) => (p[key] === null || p[key] === undefined ? null : p[key] * (c.scale || 1))));
      const summary = c.series.map(([key, label], i) => label + " now " + fmt(ys[i][ys[i].length - 1], 2)).join(", ");
      fig.append(el("p", { class: "sr", text: c.title + ": " + pts.length + " points; " + summary }));
      if (typeof uPlot === "undefined") continue;
      plots.push(new uPlot({
        width: Math.max(380, fig.clientWidth - 16), height: 200,
        series: [{}, ...c.series.map(([, label, color]) => ({ label, stroke: color, width: 2, spanGaps: false }))],
        axes: [{ stroke: "#111827" }, { stroke: "#111827", size: 60 }],
        scales: { x: { time: true } },
      }, [xs, ...ys], fig));
    }
    if (!pts.length) box.prepend(el("p", { class: "hint", text: "No sample yet: the first point appears 10 s after this worker started." }));
  }
  every(10000, draw);
}

/* -- Backends ------------------------------------------------------------------------------ */

function backends() {
  const box = document.getElementById("providers");
  every(5000, async () => {
    const d = await api("backends");
    document.getElementById("backends-summary").textContent = d.echo_mode
      ? "Echo mode: no provider is configured (TARGET_BASE_URL, BACKEND_URL or a config file); requests are answered locally."
      : d.providers.length + " provider(s), as seen by " + d.workers + " worker(s).";
    box.replaceChildren(...d.providers.map((p) => {
      const rows = p.backends.map((b) => {
        const why = b.recent_failures.map((f) => f.reason).slice(0, 3).join(", ");
        const state = b.healthy ? "up" : ("ejected" + (b.ejected_for_s ? " for " + fmt(b.ejected_for_s, 0) + " s" : "") +
          " (" + b.workers_ejected + " of " + b.workers + " workers)");
        return el("tr", {},
          el("td", { text: b.url }),
          el("td", { class: b.healthy ? "ok" : "error", text: state }),
          el("td", { text: b.probe }),
          el("td", { class: "num", text: fmt(b.in_flight) }),
          el("td", { class: "num", text: fmt(b.consecutive_failures) }),
          el("td", { text: why || "–" }),
          el("td", { class: "num", text: fmt(b.latency_p50_ms, 0) + " / " + fmt(b.latency_p99_ms, 0) }),
          el("td", { class: "num", text: b.cache_hit_rate === null ? "–" : fmt(b.cache_hit_rate * 100, 1) + " %" }));
      });
      const errors = Object.entries(p.upstream_errors).map(([k, v]) => k + ": " + v).join(", ") || "none";
      return el("section", { class: "provider", "aria-label": "Provider " + p.name },
        el("h2", { text: p.name + " (" + p.kind + ", " + (p.balance || "–") + ")" }),
        el("p", { class: "hint", text: "Requests " + fmt(p.requests) + " · latency p50/p99 " + fmt(p.latency_p50_ms, 0) + " / " +
          fmt(p.latency_p99_ms, 0) + " ms · TTFC p50 " + fmt(p.ttfc_p50_ms, 0) + " ms · upstream errors " + errors }),
        el("table", {},
          el("caption", { class: "sr", text: "Backends of " + p.name }),
          el("thead", {}, el("tr", {}, ...["Backend", "Health", "Probe", "In flight", "Failures in a row", "Recent failures",
            "Latency p50 / p99 (ms)", "Cache hits"].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, ...rows)));
    }));
  });
}

/* -- Keys ------------------------------------------------------------------------------------ */

function numbersFrom(form, names) {
  const out = {};
  for (const n of names) { const v = form.elements[n].value.trim(); out[n] = v === "" ? null : v; }
  return out;
}

function keys() {
  const tbody = document.querySelector("#keys-table tbody");
  const utbody = document.querySelector("#usage-table tbody");
  const dialog = document.getElementById("edit-dialog");
  const limits = ["rpm", "tpm", "max_concurrent", "budget"];

  async function load() {
    const d = await api("keys");
    document.getElementById("keys-note").textContent = d.virtual_keys
      ? "Virtual keys are on: a key created here works at once; a revoked one is refused within a second."
      : "VIRTUAL_KEYS is off: keys created here are stored but the proxy does not accept them until it is on.";
    tbody.replaceChildren(...d.keys.map((k) => el("tr", { "data-key-id": k.id },
      el("td", { class: "num", text: k.id }), el("td", { text: k.name }), el("td", { text: k.key }),
      el("td", { class: k.status === "active" ? "ok" : "error", text: k.status }),
      el("td", { text: k.models ? k.models.join(", ") : "any" }),
      ...limits.map((n) => el("td", { class: "num", text: fmt(k[n]) })),
      el("td", { class: "num", text: fmt(k.spent_tokens) }),
      el("td", {},
        el("button", { type: "button", class: "secondary", "aria-label": "Edit limits of key " + k.name,
          onclick: () => edit(k) }, "Edit"), " ",
        k.status === "active" ? el("button", { type: "button", class: "danger", "aria-label": "Revoke key " + k.name,
          "data-revoke": k.id, onclick: () => revoke(k) }, "Revoke") : ""))));
    const max = Math.max(1, ...d.usage.map((u) => u.total_tokens));
    document.getElementById("usage-chart").replaceChildren(...d.usage.slice(0, 20).map((u) => el("div", { class: "bar" },
      el("span", { class: "label", text: (u.key || "–") + " · " + (u.model || "–") }),
      el("span", { class: "fill", style: "width:" + Math.max(0.5, 100 * u.total_tokens / max) + "%", "aria-hidden": "true" }),
      el("span", { class: "num", text: fmt(u.total_tokens) + " tok" }))));
    utbody.replaceChildren(...d.usage.map((u) => el("tr", {},
      el("td", { text: u.key || "–" }), el("td", { text: u.model || "–" }),
      ...["requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors", "avg_latency_ms"]
        .map((n) => el("td", { class: "num", text: fmt(u[n]) })))));
  }

  async function revoke(k) {
    if (!window.confirm("Revoke key " + k.name + " (" + k.key + ")? Requests with it are refused at once.")) return;
    await api("keys/" + k.id + "/revoke", { method: "POST", body: "{}" });
    say("Key " + k.name + " revoked.");
    await load();
  }

  function edit(k) {
    const f = document.getElementById("edit-form");
    f.elements.id.value = k.id;
    for (const n of limits) f.elements[n].value = k[n] ?? "";
    dialog.showModal();
  }

  document.getElementById("edit-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("edit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    try {
      await api("keys/" + f.elements.id.value + "/limits", { method: "POST", body: JSON.stringify(numbersFrom(f, limits)) });
      dialog.close();
      say("Limits saved.");
      await load();
    } catch (e) { say("Not saved: " + e.message); }
  });

  document.getElementById("create-key").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const body = Object.assign({ name: f.elements.name.value, models: f.elements.models.value }, numbersFrom(f, limits));
    try {
      const d = await api("keys", { method: "POST", body: JSON.stringify(body) });
      const box = document.getElementById("new-key");
      box.hidden = false;
      const out = document.getElementById("new-key-value");
      out.value = d.key;
      out.focus();
      out.select();
      f.reset();
      say("Key created: copy it now, it is shown once.");
      await load();
    } catch (e) { say("Not created: " + e.message); }
  });
  load().catch((e) => say(e.message));
}

/* -- Live ------------------------------------------------------------------------------------ */

function live() {
  const tbody = document.querySelector("#live-table tbody");
  async function cancel(r, button) {
    button.disabled = true;
    try {
      await api("live/" + encodeURIComponent(r.id) + "/cancel", { method: "POST", body: "{}" });
      say("Cancelling " + r.request_id + ".");
    } catch (e) { say("Not cancelled: " + e.message); button.disabled = false; }
  }
  every(1000, async () => {
    const d = await api("live");
    document.getElementById("live-summary").textContent = d.requests.length + " open request(s) on " + d.workers + " worker(s).";
    const focused = document.activeElement && document.activeElement.dataset.cancel;
    tbody.replaceChildren(...d.requests.map((r) => {
      const button = el("button", { type: "button", class: "danger", "data-cancel": r.id, disabled: r.cancelled,
        "aria-label": "Cancel request " + r.request_id });
      button.textContent = r.cancelled ? "Cancelling" : "Cancel";
      button.addEventListener("click", () => cancel(r, button));
      return el("tr", { "data-request-id": r.request_id },
        el("td", { text: r.request_id }), el("td", { text: r.key_name ? r.key_name + " " + (r.key || "") : (r.key || "–") }),
        el("td", { text: r.model || "–" }), el("td", { text: r.api + (r.streaming ? " (stream)" : "") }),
        el("td", { text: r.backend || (r.provider ? r.provider : "echo") }),
        el("td", { class: "num", text: fmt(r.age_s) }), el("td", { class: "num", text: fmt(r.bytes_out) }),
        el("td", { class: "num", text: r.pid }), el("td", {}, button));
    }));
    if (focused) { const b = tbody.querySelector('[data-cancel="' + CSS.escape(focused) + '"]'); if (b) b.focus(); }
  });
}

/* -- Config ---------------------------------------------------------------------------------- */

async function config() {
  const d = await api("config");
  document.getElementById("config").textContent = JSON.stringify(d.config, null, 2);
  document.getElementById("routing").textContent = JSON.stringify(d.routing, null, 2);
}

const VIEWS = { overview, backends, keys, live, config };
if (VIEWS[PAGE]) Promise.resolve(VIEWS[PAGE]()).catch((e) => { if (e.message !== "login") say(e.message); });
