// The observer's web console: plain JavaScript, no build step (docs/console.md).
// Pages by URL fragment: #/ flows, #/flow/NAME[/VERSION], #/instance/FLOW/KEY[?via=ALIAS],
// #/alerts[?flow=&kind=&step=]. Every number comes from /console/api/ (JSON, the bearer token
// of the API) and is refreshed every REFRESH_MS without reloading the page.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "observer-token";
let page = null; // {refresh: async () => void}
let timer = null;
let flowsKnown = [];

// -- plumbing ------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  const res = await fetch(path, opts);
  if (res.status === 401) {
    askToken();
    throw new Error("this observer needs its token");
  }
  return res;
}

async function getJson(path) {
  const res = await api(path);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function askToken() {
  const dialog = document.getElementById("login");
  if (!dialog.open) dialog.showModal();
}

function enc(s) {
  return encodeURIComponent(s);
}

function pills(counts, cls) {
  const entries = Object.entries(counts || {});
  if (!entries.length) return el("span", { class: "muted" }, "none");
  return entries.map(([k, n]) => el("span", { class: "pill " + (cls(k) || "") }, `${k} ${n}`));
}

function outcomeClass(k) {
  return k === "completed" ? "ok" : "bad";
}

function pct(x) {
  return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %";
}

function sloCell(slo) {
  if (!slo) return el("span", { class: "muted" }, "no slo");
  const left = slo.budget_left;
  const cls = left < 0 ? "bad" : left < 0.25 ? "warn" : "ok";
  const burn = slo.burn_rate_1h === null ? "–" : slo.burn_rate_1h + "×";
  return el(
    "span",
    { class: "slo", title: `${slo.objective} within ${slo.within} over ${slo.window}` },
    el("span", { class: "pill " + cls, "data-field": "budget-left" }, "budget left " + pct(left)),
    el("span", { class: "pill", "data-field": "burn-rate" }, "burn 1h " + burn),
  );
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.classList.toggle("stale", !ok);
  live.title = text;
}

function put(box, ...nodes) {
  box.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}

function show(...nodes) {
  put(document.getElementById("main"), ...nodes);
}

function fail(err) {
  return el("p", { class: "error refresh-error" }, String(err.message || err));
}

// -- flows ---------------------------------------------------------------------------------------

function flowRow(f) {
  const guard = f.guardrails || {};
  const open = (guard.incidents || []).length;
  const incidents = !guard.available ? el("span", { class: "muted" }, "guardrails not available")
    : !open ? el("span", { class: "muted" }, "none")
    : guard.incidents.map((i) => el("span", { class: "pill bad" }, `${i.deviation} ${i.step || ""} ×${i.count}`));
  return el(
    "tr",
    { "data-flow": f.flow },
    el("td", {}, el("a", { href: `#/flow/${enc(f.flow)}` }, f.flow)),
    el("td", {}, f.versions.map((v) => el("span", { class: "pill" }, `v${v.version}: ${v.open} open`))),
    el("td", { class: "num", "data-field": "open" }, f.open),
    el("td", { class: "num" }, f.hour.started),
    el("td", {}, pills(f.hour.outcomes, outcomeClass)),
    el("td", {}, pills(f.hour.deviations, () => "warn")),
    el("td", {}, incidents, guard.paused ? el("span", { class: "pill bad" }, "paused") : null),
    el("td", { class: "num" }, f.held),
    el("td", {}, sloCell(f.slo)),
  );
}

function flowsPage() {
  const body = el("tbody");
  show(
    el("h1", {}, "Flows"),
    el(
      "table",
      { id: "flows" },
      el("thead", {}, el("tr", {}, ...["flow", "versions", "open", "started 1h", "outcomes 1h",
        "deviations 1h", "incidents", "held", "SLO"].map((h) => el("th", {}, h)))),
      body,
    ),
  );
  return {
    async refresh() {
      const data = await getJson("/console/api/overview");
      body.replaceChildren(...data.flows.map(flowRow));
    },
  };
}

// -- one flow ------------------------------------------------------------------------------------

function card(label, field) {
  return el("div", { class: "card" }, el("div", { class: "muted" }, label), el("div", { class: "big", "data-card": field }, "–"));
}

function flowPage(flow, version) {
  const drawing = el("div", { class: "drawing", id: "drawing" });
  const list = el("div", { class: "panel", id: "waiting" }, el("p", { class: "muted" }, "Click a step to list the instances waiting there."));
  const versionSelect = el("select", { id: "version", onchange: (e) => { location.hash = `#/flow/${enc(flow)}/${e.target.value}`; } });
  const sloBox = el("span", { id: "slo" });
  const held = el("div", { id: "held-groups" });
  show(
    el("h1", {}, `Flow ${flow} `, versionSelect, " ", sloBox),
    el("div", { class: "cards" }, card("open", "open"), card("started 1h", "started"), card("outcomes 1h", "outcomes"),
      card("deviations 1h", "deviations"), card("incidents", "incidents"), card("held actions", "held")),
    drawing,
    el("p", { class: "muted", id: "counted" }),
    held,
    list,
  );
  let drawn = null;
  let selected = null;

  async function draw(v) {
    const res = await api(`/console/api/flows/${enc(flow)}/graph.svg` + (v ? `?version=${v}` : ""));
    if (!res.ok) throw new Error((await res.json()).error);
    drawing.innerHTML = await res.text(); // our own server's SVG: names are escaped there
    for (const node of drawing.querySelectorAll("g.node.step")) {
      node.addEventListener("click", () => openStep(node.dataset.step));
      node.addEventListener("keydown", (e) => { if (e.key === "Enter") openStep(node.dataset.step); });
    }
  }

  async function openStep(step) {
    selected = step;
    for (const n of drawing.querySelectorAll("g.node.step")) n.classList.toggle("selected", n.dataset.step === step);
    const data = await getJson(`/console/api/flows/${enc(flow)}/steps/${enc(step)}?version=${drawn}`);
    const rows = data.instances.map((i) => el("tr", { class: i.overdue ? "overdue" : "" },
      el("td", {}, el("a", { href: `#/instance/${enc(flow)}/${enc(i.key)}` }, i.key)),
      el("td", {}, i.deadline || "no window"),
      el("td", {}, i.overdue ? el("span", { class: "pill bad" }, "overdue") : "")));
    list.replaceChildren(
      el("h2", {}, `Waiting at ${step}: ${data.waiting} (${data.overdue} overdue)`),
      el("p", { class: "muted" }, `counted ${data.counted_at}; the ${data.instances.length} with the earliest deadlines`),
      el("table", { id: "waiting-list" }, el("thead", {}, el("tr", {}, el("th", {}, "key"), el("th", {}, "deadline"), el("th", {}, ""))), el("tbody", {}, rows)),
    );
  }

  function fill(data) {
    for (const [step, row] of Object.entries(data.steps)) {
      const node = drawing.querySelector(`g.node.step[data-step="${CSS.escape(step)}"]`);
      if (!node) continue;
      for (const span of node.querySelectorAll("tspan.num")) {
        const v = row[span.dataset.field];
        span.textContent = v === null || v === undefined ? "–" : String(v);
      }
      node.classList.toggle("overdue", row.overdue > 0);
    }
    const set = (name, value) => { drawing.parentNode.querySelector(`[data-card="${name}"]`).replaceChildren(...[value].flat()); };
    set("open", String(data.open));
    set("started", String(data.hour.started));
    set("outcomes", pills(data.hour.outcomes, outcomeClass));
    set("deviations", pills(data.hour.deviations, () => "warn"));
    const guard = data.guardrails;
    set("incidents", guard.available ? String(guard.incidents.length) : "guardrails not available");
    set("held", guard.available ? String(Object.values(guard.held).reduce((a, b) => a + b, 0)) : "–");
    sloBox.replaceChildren(sloCell(data.slo));
    put(held, heldGroups(flow, data));
    document.getElementById("counted").textContent =
      `waiting counted ${data.counted_at}${data.partial ? " (partial: more instances than the count limit)" : ""}; the last hour from the group's per-minute counts`;
  }

  return {
    async refresh() {
      const data = await getJson(`/console/api/flows/${enc(flow)}/live` + (version ? `?version=${version}` : ""));
      if (drawn !== data.version) {
        versionSelect.replaceChildren(...data.versions.map((v) => el("option", { value: v, selected: v === data.version }, `version ${v}`)));
        await draw(data.version);
        drawn = data.version;
      }
      fill(data);
      if (selected) await openStep(selected);
    },
  };
}

// -- one instance --------------------------------------------------------------------------------

function describe(e) {
  const skip = new Set(["at", "what"]);
  return Object.entries(e).filter(([k]) => !skip.has(k)).map(([k, v]) => {
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    return el("span", { class: k === "observer_id" ? "mono" : "" }, `${k}: ${text}  `);
  });
}

async function takeHeld(flow, mode, ids) {
  const res = await api(`/actions/${enc(flow)}/${mode}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ids }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  if (page) await page.refresh();
}

function heldGroups(flow, data) {
  const groups = data.held_groups || [];
  if (!groups.length) return null;
  return el("div", { class: "panel" }, el("h2", {}, "Held actions"),
    el("table", {}, el("thead", {}, el("tr", {}, ...["held by", "count", "actions", "since", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, groups.map((g) => el("tr", {},
        el("td", {}, g.incident ? `incident ${g.incident}` : g.reason),
        el("td", { class: "num" }, g.count),
        el("td", {}, pills(g.actions, () => "")),
        el("td", {}, g.since || ""),
        el("td", {}, data.controls
          ? ["release", "drop"].map((mode) => el("button", { class: "small",
              onclick: () => takeSelection(flow, mode, g.incident ? { incident: g.incident } : { ids: g.ids }) }, `${mode} all`))
          : el("span", { class: "muted" }, "release/drop need OBSERVER_HTTP_TOKEN")))))));
}

async function takeIncident(flow, mode, incident) {
  await takeSelection(flow, mode, { incident });
}

async function takeSelection(flow, mode, selection) {
  const what = selection.incident ? `incident ${selection.incident}` : `${selection.ids.length} held actions`;
  if (!confirm(`${mode} every action held by ${what} of ${flow}?`)) return;
  const res = await api(`/actions/${enc(flow)}/${mode}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(selection),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  if (page) await page.refresh();
}

function heldTable(view) {
  const held = view.held_actions || [];
  if (!held.length) return el("p", { class: "muted" }, "No held actions.");
  return el("table", { id: "held" },
    el("thead", {}, el("tr", {}, ...["observer-id", "action", "reason", "incident", "held at", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, held.map((h) => el("tr", {},
      el("td", { class: "mono" }, h.observer_id), el("td", {}, h.action), el("td", {}, h.reason),
      el("td", {}, h.incident || ""), el("td", {}, h.held_at),
      el("td", {}, view.controls
        ? [el("button", { class: "small", onclick: () => takeHeld(view.flow, "release", [h.observer_id]) }, "release"),
           el("button", { class: "small", onclick: () => takeHeld(view.flow, "drop", [h.observer_id]) }, "drop")]
        : el("span", { class: "muted" }, "release/drop need OBSERVER_HTTP_TOKEN"))))));
}

function whereNow(v) {
  // "where is my order?" in one line: the steps it waits at, their deadlines, overdue or not
  const waits = (v.steps || []).filter((s) => s.status === "waiting");
  if (v.state !== "open" || !waits.length) return null;
  const now = Date.now();
  return el("p", { id: "where-now" }, "Waiting at ", waits.map((s, i) => [
    i ? ", " : "",
    el("strong", {}, s.step),
    s.deadline ? ` (deadline ${s.deadline}` + (Date.parse(s.deadline) < now ? ", overdue)" : ")") : "",
  ]));
}

function instancePage(flow, key, via) {
  const box = el("div", { id: "instance" });
  show(box);
  return {
    async refresh() {
      const path = `/console/api/instances/${enc(flow)}/${enc(key)}` + (via ? `?via=${enc(via)}` : "");
      const res = await api(path);
      const v = await res.json();
      if (!res.ok) {
        box.replaceChildren(el("h1", {}, `${flow} ${key}`), el("p", { class: "error", id: "not-found" }, v.error));
        return;
      }
      const head = `${v.flow} ${v.key}: ${v.state}` + (v.version ? ` (version ${v.version}, path ${v.path})` : "") + (v.outcome ? `, outcome ${v.outcome}` : "");
      put(box,
        el("h1", { id: "instance-head" }, head),
        v.via ? el("p", { class: "muted" }, `found via ${v.via.alias} ${v.via.value}`) : null,
        v.problem ? el("p", { class: "error" }, v.problem) : null,
        whereNow(v),
        el("h2", {}, "Timeline"),
        el("ul", { class: "timeline panel", id: "timeline" }, v.timeline.map((e) => el("li", { class: e.what },
          el("span", { class: "at" }, e.at || "–"), el("span", { class: "what" }, e.what), el("span", {}, describe(e))))),
        el("h2", {}, "Held actions"),
        heldTable(v),
        el("h2", {}, "Steps"),
        el("table", { id: "steps" },
          el("thead", {}, el("tr", {}, ...["step", "path", "status", "event time", "deadline", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, v.steps.map((s) => el("tr", {},
            el("td", {}, s.step), el("td", {}, s.path), el("td", {}, s.status), el("td", {}, s.observed_at || ""),
            el("td", {}, s.deadline || ""),
            el("td", {}, ["late", "missing", "warned", "out_of_order"].filter((m) => s[m]).map((m) => el("span", { class: "pill bad" }, m))))))),
      );
    },
  };
}

// -- alerts and incidents ------------------------------------------------------------------------

function alertsPage(params) {
  const inputs = {};
  const filters = el("form", { class: "filters", id: "alert-filters" },
    ...["flow", "kind", "step"].map((name) => (inputs[name] = el("input", { name, placeholder: name, value: params.get(name) || "" }))),
    el("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, input] of Object.entries(inputs)) if (input.value) q.set(k, input.value);
    location.hash = "#/alerts?" + q.toString();
  });
  const incidents = el("div", { id: "incidents" });
  const alerts = el("tbody");
  show(el("h1", {}, "Alerts and incidents"), filters, el("h2", {}, "Open incidents"), incidents,
    el("h2", {}, "Recent alerts"),
    el("table", { id: "alerts" }, el("thead", {}, el("tr", {}, ...["detected", "flow", "kind", "step", "key", "severity", "summary"].map((h) => el("th", {}, h)))), alerts));
  return {
    async refresh() {
      const q = new URLSearchParams();
      for (const k of ["flow", "kind", "step"]) if (params.get(k)) q.set(k, params.get(k));
      const data = await getJson("/console/api/alerts?" + q.toString());
      incidents.replaceChildren(!data.guardrails_available ? el("p", { class: "muted" }, "guardrails not available")
        : !data.incidents.length ? el("p", { class: "muted" }, "None open.")
        : el("table", {}, el("tbody", {}, data.incidents.map((i) => el("tr", {}, el("td", {}, i.flow), el("td", { class: "mono" }, i.id),
          el("td", {}, `${i.deviation} ${i.step || ""}`), el("td", {}, `×${i.count}`), el("td", {}, `since ${i.opened_at}`),
          el("td", {}, data.controls
            ? [el("button", { class: "small", onclick: () => takeIncident(i.flow, "release", i.id) }, "release its held actions"),
               el("button", { class: "small", onclick: () => takeIncident(i.flow, "drop", i.id) }, "drop them")]
            : el("span", { class: "muted" }, "release/drop need OBSERVER_HTTP_TOKEN")))))));
      alerts.replaceChildren(...data.alerts.map((a) => el("tr", { class: a.severity },
        el("td", {}, a.detected_at || ""), el("td", {}, a.flow || ""), el("td", {}, a.kind || ""), el("td", {}, a.step || ""),
        el("td", {}, a.key ? el("a", { href: `#/instance/${enc(a.flow)}/${enc(a.key)}` }, a.key) : ""),
        el("td", {}, el("span", { class: "pill " + (a.severity === "critical" ? "bad" : "warn") }, a.severity || "")),
        el("td", {}, a.summary || ""))));
    },
  };
}

// -- routing, search, refresh --------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("header nav a")) a.classList.remove("active");
  if (parts[0] === "flow" && parts[1]) page = flowPage(parts[1], parts[2] ? Number(parts[2]) : null);
  else if (parts[0] === "instance" && parts[2]) page = instancePage(parts[1], parts.slice(2).join("/"), params.get("via"));
  else if (parts[0] === "alerts") { page = alertsPage(params); document.getElementById("nav-alerts").classList.add("active"); }
  else { page = flowsPage(); document.getElementById("nav-flows").classList.add("active"); }
  refresh();
}

async function refresh() {
  clearTimeout(timer);
  const mine = page;
  const shown = () => document.querySelector("#main > .refresh-error");
  try {
    await mine.refresh();
    setLive(true, "updated " + new Date().toLocaleTimeString());
    if (mine === page && shown()) shown().remove();
  } catch (err) {
    setLive(false, String(err.message || err));
    if (mine === page) {
      if (shown()) shown().remove();
      document.getElementById("main").prepend(fail(err));
    }
  }
  if (mine === page) timer = setTimeout(refresh, REFRESH_MS);
}

async function loadSearch() {
  try {
    const data = await getJson("/console/api/overview");
    flowsKnown = data.flows;
    const select = document.getElementById("search-flow");
    select.replaceChildren(...flowsKnown.map((f) => el("option", { value: f.flow }, f.flow)));
    fillVia();
  } catch (err) {
    setLive(false, String(err.message || err));
  }
}

function fillVia() {
  const flow = flowsKnown.find((f) => f.flow === document.getElementById("search-flow").value);
  const via = document.getElementById("search-via");
  via.replaceChildren(el("option", { value: "" }, "by key"), ...((flow && flow.aliases) || []).map((a) => el("option", { value: a }, "by " + a)));
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const flow = document.getElementById("search-flow").value;
    const key = document.getElementById("search-key").value.trim();
    const via = document.getElementById("search-via").value;
    if (flow && key) location.hash = `#/instance/${enc(flow)}/${enc(key)}` + (via ? `?via=${enc(via)}` : "");
  });
  document.getElementById("search-flow").addEventListener("change", fillVia);
  document.getElementById("login-form").addEventListener("submit", () => {
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("login-token").value.trim());
    loadSearch();
    route();
  });
  window.addEventListener("hashchange", route);
  loadSearch();
  route();
});
