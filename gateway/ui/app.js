// The gateway's dashboard: a client of its public HTTP API, like any SDK.
// The key is kept in sessionStorage (this tab only) and sent in the Authorization header of
// fetch calls; it is never put in a URL and never logged. Files download through fetch + Blob
// for the same reason. No library (the charts are hand-written SVG), no network access beyond
// the gateway.
"use strict";

(() => {
  const KEY = "gateway.key";
  const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
  // While batches run the page refreshes every few seconds, otherwise twice a minute.
  const runningMs = () => Number(sessionStorage.getItem("gateway.refreshMs")) || 3000;
  const IDLE_MS = 30000;
  // The gateway's root, from /ui/ (works behind a path prefix too).
  const ROOT = new URL("../", document.baseURI);

  const state = {
    key: null, master: false, alias: null, timer: null,
    aliases: new Map(), // key token -> alias (the master key's list, or the key's own)
    teams: new Map(), // team_id -> alias (master key)
    costs: new Map(), // batch id -> its /spend/logs entry (written once, when it finished)
    costTried: new Map(), // batch id -> when the spend log last did not have it
  };
  const $ = (id) => document.getElementById(id);

  // -- small helpers ---------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(el.dataset, value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    return el;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    el.append(...children);
    return el;
  }

  function when(ts) {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || seconds < 0) return "–";
    seconds = Math.round(seconds);
    const hh = Math.floor(seconds / 3600), mm = Math.floor(seconds / 60) % 60, ss = seconds % 60;
    return hh ? `${hh}h ${mm}m ${ss}s` : mm ? `${mm}m ${ss}s` : `${ss}s`;
  }

  function number(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "kB", "MB", "GB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
    return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
  }

  const endedAt = (b) => b.completed_at || b.failed_at || b.expired_at || b.cancelled_at || null;

  // -- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, raw = false, key = state.key) {
    const resp = await fetch(new URL(path, ROOT), {
      headers: { Authorization: `Bearer ${key}` },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!resp.ok) {
      let message = `HTTP ${resp.status}`;
      try {
        const body = await resp.json();
        if (body && body.error && body.error.message) message = body.error.message;
      } catch (_) { /* not JSON */ }
      throw new ApiError(resp.status, message);
    }
    return raw ? resp : resp.json();
  }

  const fileUrl = (id) => `v1/files/${encodeURIComponent(id)}/content`;

  async function download(fileId, name) {
    const blob = await (await api(fileUrl(fileId), true)).blob();
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  const VIEW_LIMIT = 256 * 1024;

  async function view(fileId, title) {
    const text = await (await api(fileUrl(fileId), true)).text();
    $("viewer-title").textContent = title;
    $("viewer-body").textContent = text.length > VIEW_LIMIT
      ? text.slice(0, VIEW_LIMIT) + `\n… (${bytes(text.length)} in all: download it)` : text;
    $("viewer").hidden = false;
    $("viewer").scrollIntoView({ block: "nearest" });
  }

  function guarded(action) {
    return (event) => {
      if (event) event.preventDefault();
      action().catch(showError);
    };
  }

  function fileButtons(fileId, name, title) {
    if (!fileId) return "–";
    return h("span", { class: "file", dataset: { file: fileId } },
      h("button", { type: "button", class: "link view", title: fileId,
                    onclick: guarded(() => view(fileId, title)) }, "view"),
      h("button", { type: "button", class: "link download", title: `download ${fileId}`,
                    onclick: guarded(() => download(fileId, name)) }, "⇩"));
  }

  // -- signing in and out ----------------------------------------------------------------------

  async function identify(key) {
    // The master key may list keys and teams (and so name them in the charts); a virtual key
    // reads its own info.
    try {
      const list = await api("key/list?return_full_object=true&size=1000", false, key);
      const aliases = new Map(list.keys.map((k) => [k.token, k.key_alias || k.token]));
      const teams = new Map((await api("team/list", false, key).catch(() => []))
        .map((t) => [t.team_id, t.team_alias || t.team_id]));
      return { master: true, alias: "master key", aliases, teams };
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 403) throw e;
    }
    const info = (await api("key/info", false, key)).info;
    const alias = info.key_alias || info.token;
    return { master: false, alias, aliases: new Map([[info.token, alias]]), teams: new Map() };
  }

  async function signIn(key) {
    Object.assign(state, await identify(key), { key });
    sessionStorage.setItem(KEY, key);
    $("login").hidden = true;
    $("app").hidden = false;
    $("nav").hidden = $("logout").hidden = $("refresh").hidden = false;
    $("who").textContent = `Signed in: ${state.alias}`;
    const notice = $("notice");
    notice.hidden = !state.master;
    notice.textContent = state.master
      ? "Master key: Batches and Files list every key's (all=true) and a batch shows where " +
        "it runs; Usage & spend covers every key, user and team."
      : "";
    await render();
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    clearTimeout(state.timer);
    Object.assign(state, { key: null, master: false, alias: null, aliases: new Map(),
                           teams: new Map(), costs: new Map(), costTried: new Map() });
    for (const id of ["batches", "files", "usage", "charts", "batch-detail", "batch-errors"]) {
      $(id).replaceChildren();
    }
    $("app").hidden = $("nav").hidden = $("logout").hidden = $("refresh").hidden = true;
    $("viewer").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    $("key").value = "";
    $("key").focus();
  }

  function showError(e) {
    if (e instanceof ApiError && e.status === 401) {
      signOut();
      $("login-error").textContent = e.message;
      return;
    }
    const el = $("error");
    el.textContent = e instanceof ApiError ? e.message : `Error: ${e.message || e}`;
    el.hidden = false;
  }

  // -- views -----------------------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, "");
    if (hash.startsWith("batch/")) return { view: "batch", id: decodeURIComponent(hash.slice(6)) };
    return { view: ["files", "usage"].includes(hash) ? hash : "batches" };
  }

  async function render() {
    clearTimeout(state.timer);
    if (!state.key) return;
    const r = route();
    for (const el of document.querySelectorAll(".view")) el.hidden = el.id !== `view-${r.view}`;
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.view === r.view ||
        (r.view === "batch" && a.dataset.view === "batches"));
    }
    let running = false;
    try {
      if (r.view === "batches") running = await renderBatches();
      else if (r.view === "batch") running = await renderBatch(r.id);
      else if (r.view === "files") await renderFiles();
      else await renderUsage();
      $("error").hidden = true;
      $("updated").textContent = `Updated ${when(Date.now() / 1000)}` +
        (running ? ` · refreshing every ${runningMs() / 1000}s while batches run` : "");
    } catch (e) {
      showError(e);
    }
    if (state.key) state.timer = setTimeout(render, running ? runningMs() : IDLE_MS);
  }

  function progress(b) {
    const c = b.request_counts || { total: 0, completed: 0, failed: 0 };
    const total = c.total || 0, done = (c.completed || 0) + (c.failed || 0);
    const ok = h("span", { class: "ok" }), bad = h("span", { class: "failed" });
    if (total) {
      ok.style.width = `${(100 * (c.completed || 0)) / total}%`;
      bad.style.width = `${(100 * (c.failed || 0)) / total}%`;
    }
    return h("div", { class: "progress", dataset: { completed: c.completed || 0,
                                                     failed: c.failed || 0, total } },
      h("div", { class: "bar", role: "progressbar", "aria-valuemin": 0,
                 "aria-valuemax": total, "aria-valuenow": done }, ok, bad),
      h("span", { class: "progress-text" },
        `${done} / ${total}` + (c.failed ? ` (${c.failed} failed)` : "")));
  }

  function took(b) {
    const end = endedAt(b);
    return duration((end || Date.now() / 1000) - b.created_at) + (end ? "" : " so far");
  }

  function money(v) {
    if (v === null || v === undefined) return "unpriced";
    const a = Math.abs(v);
    return `$${v.toFixed(a === 0 || a >= 1 ? 2 : a >= 0.01 ? 4 : 6)}`;
  }

  // -- cost: each finished batch's /spend/logs entry (written once, when it finished) ---------

  const isoSecond = (ts) => new Date(Math.floor(ts) * 1000).toISOString()
    .replace(".000Z", "Z");

  async function spendLogs(query, maxPages = 10) {
    const out = [];
    for (let page = 1; page <= maxPages; page += 1) {
      const rows = await api(`spend/logs?page_size=1000&page=${page}${query}`);
      out.push(...rows);
      if (rows.length < 1000) break;
    }
    return out;
  }

  async function loadCosts(batches) {
    const now = Date.now();
    const missing = batches.filter((b) => TERMINAL.has(b.status) && !state.costs.has(b.id) &&
      now - (state.costTried.get(b.id) || 0) > 30000);
    if (!missing.length) return;
    const since = Math.min(...missing.map((b) => b.created_at));
    for (const e of await spendLogs(`&start_date=${encodeURIComponent(isoSecond(since))}`, 5)) {
      state.costs.set(e.request_id, e);
    }
    for (const b of missing) if (!state.costs.has(b.id)) state.costTried.set(b.id, now);
  }

  function cost(b) {
    const e = state.costs.get(b.id);
    if (!e) return "–";
    return h("span", { class: "cost", dataset: { spend: e.spend ?? "" },
                       title: e.spend === null ? "no price known for its deployment" : null },
      money(e.spend));
  }

  function tokens(b) {
    const u = b.usage;
    if (!u) return "–";
    return h("span", { title: `${number(u.input_tokens)} in, ${number(u.output_tokens)} out` },
      number(u.total_tokens));
  }

  const statusBadge = (status) => h("span", { class: `status ${status}` }, status);

  async function renderBatches() {
    const page = await api(`v1/batches?limit=100${state.master ? "&all=true" : ""}`);
    // A list is answered from the gateway's database (as fresh as its background refresh);
    // the batches still running are retrieved, which asks their provider.
    page.data = await Promise.all(page.data.map((b) => TERMINAL.has(b.status) ? b
      : api(`v1/batches/${encodeURIComponent(b.id)}`).catch(() => b)));
    await loadCosts(page.data);
    const rows = page.data.map((b) => h("tr", { dataset: { id: b.id, status: b.status } },
      h("td", {}, h("a", { href: `#batch/${encodeURIComponent(b.id)}`, class: "id" }, b.id)),
      h("td", { class: "status-cell" }, statusBadge(b.status)),
      h("td", {}, progress(b)),
      h("td", {}, b.model || "–"),
      h("td", { class: "when" }, when(b.created_at)),
      h("td", { class: "when" }, when(endedAt(b))),
      h("td", {}, took(b)),
      h("td", { class: "num" }, tokens(b)),
      h("td", { class: "num cost-cell" }, cost(b)),
      h("td", { class: "files" },
        h("span", {}, "in ", fileButtons(b.input_file_id, `${b.id}_input.jsonl`,
                                         `Input of ${b.id}`)),
        h("span", { class: "out" }, "out ", fileButtons(b.output_file_id,
                                          `${b.id}_output.jsonl`, `Output of ${b.id}`)),
        h("span", { class: "err" }, "err ", fileButtons(b.error_file_id,
                                          `${b.id}_errors.jsonl`, `Errors of ${b.id}`)))));
    $("batches").replaceChildren(...rows);
    $("batches-empty").hidden = rows.length > 0;
    return page.data.some((b) => !TERMINAL.has(b.status));
  }

  function field(label, ...value) {
    return [h("dt", {}, label), h("dd", {}, ...value)];
  }

  function fileField(fileId, name, title) {
    return fileId ? [h("span", { class: "id" }, fileId), " ", fileButtons(fileId, name, title)]
      : ["–"];
  }

  // The master key's /usage has the deployment that ran each finished batch.
  async function usageRow(id) {
    if (!state.master) return null;
    return (await api("usage?limit=10000")).data.find((r) => r.batch_id === id) || null;
  }

  async function placement(b) {
    // For the master key: where a batch ran (once finished), and its input's copies.
    const out = [];
    const u = TERMINAL.has(b.status) ? await usageRow(b.id) : null;
    out.push(...field("Ran on", u ? h("span", { class: "id", id: "ran-on" },
      `${u.model_group} · deployment ${u.deployment_id}`)
      : h("span", { class: "hint" }, "known once it has finished (GET /usage)")));
    const file = await api(`v1/files/${encodeURIComponent(b.input_file_id)}`).catch(() => null);
    if (file && file.placements) {
      out.push(...field("Input copies", h("span", { id: "input-copies" },
        file.placements.map((p) => h("span", { class: "copy id" },
          `${p.model_group} · ${p.deployment_id} (${p.state})`)))));
    }
    return out;
  }

  async function renderBatch(id) {
    $("batch-title").textContent = id;
    let b;
    try {
      b = await api(`v1/batches/${encodeURIComponent(id)}`);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      $("batch-detail").replaceChildren(h("p", { class: "error", id: "batch-missing" },
                                          e.message));
      $("batch-errors").replaceChildren();
      return false;
    }
    await loadCosts([b]);
    const u = b.usage || {};
    const meta = b.metadata && Object.keys(b.metadata).length
      ? Object.entries(b.metadata).map(([k, v]) => `${k}=${v}`).join(", ") : "–";
    $("batch-detail").replaceChildren(h("dl", { class: "detail", dataset: { status: b.status } },
      field("Status", statusBadge(b.status)),
      field("Progress", progress(b)),
      field("Model group", b.model || "–"),
      field("Endpoint", b.endpoint || "–"),
      field("Created", when(b.created_at)),
      field("In progress", when(b.in_progress_at)),
      field("Ended", when(endedAt(b))),
      field("Duration", took(b)),
      field("Tokens", b.usage
        ? `${number(u.total_tokens)} (${number(u.input_tokens)} in, ${number(u.output_tokens)} out)`
        : "–"),
      field("Cost", cost(b)),
      field("Metadata", meta),
      ...(state.master ? await placement(b) : []),
      field("Input file", ...fileField(b.input_file_id, `${b.id}_input.jsonl`,
                                       `Input of ${b.id}`)),
      field("Output file", ...fileField(b.output_file_id, `${b.id}_output.jsonl`,
                                        `Output of ${b.id}`)),
      field("Error file", ...fileField(b.error_file_id, `${b.id}_errors.jsonl`,
                                       `Errors of ${b.id}`))));
    await renderErrors(b);
    return !TERMINAL.has(b.status);
  }

  const ERROR_ROWS = 200;

  async function renderErrors(b) {
    const parts = [];
    const batchErrors = (b.errors && b.errors.data) || [];
    if (batchErrors.length) {
      parts.push(h("table", { class: "list", id: "batch-level-errors" },
        h("thead", {}, h("tr", {}, h("th", {}, "Code"), h("th", {}, "Line"),
                           h("th", {}, "Message"))),
        h("tbody", {}, batchErrors.map((e) => h("tr", {},
          h("td", {}, e.code || "–"), h("td", { class: "num" }, e.line ?? "–"),
          h("td", {}, e.message || ""))))));
    }
    if (b.error_file_id) {
      const text = await (await api(fileUrl(b.error_file_id), true)).text();
      const lines = text.split("\n").filter((l) => l.trim());
      const rows = lines.slice(0, ERROR_ROWS).map((line) => {
        let r = {};
        try { r = JSON.parse(line); } catch (_) { r = { custom_id: "?", error: { message: line } }; }
        const resp = r.response || {};
        const err = r.error || (resp.body && resp.body.error) || {};
        return h("tr", {}, h("td", {}, r.custom_id || "–"),
          h("td", { class: "num" }, resp.status_code ?? "–"),
          h("td", {}, err.code || "–"), h("td", {}, err.message || ""));
      });
      parts.push(h("table", { class: "list", id: "request-errors" },
        h("thead", {}, h("tr", {}, h("th", {}, "custom_id"), h("th", {}, "Status"),
                           h("th", {}, "Code"), h("th", {}, "Message"))),
        h("tbody", {}, rows)));
      if (lines.length > ERROR_ROWS) {
        parts.push(h("p", { class: "hint" },
          `First ${ERROR_ROWS} of ${lines.length} failed requests; download the error file.`));
      }
    }
    if (!parts.length) parts.push(h("p", { class: "empty" }, "No errors."));
    $("batch-errors").replaceChildren(...parts);
  }

  async function renderFiles() {
    const page = await api(`v1/files?limit=1000${state.master ? "&all=true" : ""}`);
    const rows = page.data.map((f) => h("tr", { dataset: { id: f.id } },
      h("td", { class: "id" }, f.id),
      h("td", {}, f.filename || "–"),
      h("td", {}, f.purpose),
      h("td", { class: "num" }, bytes(f.bytes)),
      h("td", {}, when(f.created_at)),
      h("td", { class: "files" }, fileButtons(f.id, f.filename || `${f.id}.jsonl`, f.id))));
    $("files").replaceChildren(...rows);
    $("files-empty").hidden = rows.length > 0;
  }

  // -- usage and spend: /spend/logs (one entry per finished batch: key, user, team, model
  // group, tokens, cost) joined with /usage (requests; the deployment, for the master key) ---

  const keyName = (token) => token ? state.aliases.get(token) || token : "(no key)";
  const teamName = (id) => state.teams.get(id) || id;
  const DIMENSIONS = {
    key: ["key", (e) => keyName(e.api_key)],
    user: ["user", (e) => e.user || "(no user)"],
    team: ["team", (e) => e.team_id ? teamName(e.team_id) : "(no team)"],
    group: ["model group", (e) => e.model_group],
  };
  const PERIODS = { "24h": [24, "hour"], "7d": [7, "day"], "30d": [30, "day"], "90d": [90, "day"] };

  // The starts (ms) of the period's local hours or days, oldest first, up to now.
  function bucketStarts(period, firstMs) {
    const now = new Date();
    const start = new Date(period === "all" ? Math.min(firstMs || now, now) : now);
    let step;
    if (period === "all") {
      start.setHours(0, 0, 0, 0);
      step = (now - start) / 86400000 > 120 ? "week" : "day";
    } else {
      const [n, unit] = PERIODS[period];
      step = unit;
      if (unit === "hour") {
        start.setMinutes(0, 0, 0);
        start.setHours(start.getHours() - (n - 1));
      } else {
        start.setHours(0, 0, 0, 0);
        start.setDate(start.getDate() - (n - 1));
      }
    }
    const starts = [];
    for (const d = new Date(start); d <= now;) {
      starts.push(d.getTime());
      if (step === "hour") d.setHours(d.getHours() + 1);
      else d.setDate(d.getDate() + (step === "week" ? 7 : 1));
    }
    return { starts, step };
  }

  function aggregate(entries, label) {
    const out = new Map();
    for (const e of entries) {
      const name = label(e);
      const a = out.get(name) || { spend: 0, tokens: 0, completed: 0, failed: 0 };
      a.spend += e.spend || 0;
      a.tokens += e.total_tokens || 0;
      a.completed += e.requests_completed || 0;
      a.failed += e.requests_failed || 0;
      out.set(name, a);
    }
    return [...out.entries()].sort((x, y) => y[1].spend - x[1].spend ||
      y[1].tokens - x[1].tokens || x[0].localeCompare(y[0]));
  }

  // Horizontal bars: one row per name; `parts` are the stacked segments [value, class].
  function chart(id, title, entries, parts, fmt = number) {
    const rowH = 26, labelW = 160, barW = 320, valueW = 150, top = 6;
    const width = labelW + barW + valueW;
    const height = top * 2 + rowH * Math.max(entries.length, 1);
    const max = Math.max(Number.MIN_VALUE,
                         ...entries.map(([, a]) => parts(a).reduce((t, [v]) => t + v, 0)));
    const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                           "aria-label": title, class: "chart", "data-chart": id });
    entries.forEach(([name, a], i) => {
      const y = top + i * rowH;
      const segs = parts(a);
      const total = segs.reduce((t, [v]) => t + v, 0);
      const g = s("g", { "data-label": name, "data-value": total });
      const label = name.length > 22 ? `${name.slice(0, 21)}…` : name;
      g.append(s("text", { x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end",
                           class: "label" }, label));
      let x = labelW;
      for (const [value, cls] of segs) {
        const w = (barW * value) / max;
        if (w > 0) g.append(s("rect", { x, y: y + 4, width: w, height: rowH - 8, class: cls }));
        x += w;
      }
      g.append(s("text", { x: x + 6, y: y + rowH / 2 + 4, class: "value" },
                 segs.map(([v]) => fmt(v)).join(" + ")));
      g.append(s("title", {}, `${name}: ${segs.map(([v, c]) => `${fmt(v)} ${c}`).join(", ")}`));
      svg.append(g);
    });
    if (!entries.length) {
      svg.append(s("text", { x: labelW, y: top + rowH / 2 + 4, class: "value" }, "no data"));
    }
    return h("figure", {}, h("figcaption", {}, title), svg);
  }

  // The smallest 1, 2 or 5 x 10^n at or above `v`: round figures on the axis.
  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v * (1 - 1e-9));
  }

  const PALETTE = ["#2f5bd3", "#2e9e5b", "#c98a12", "#d64545", "#7a4cc2", "#1b9aaa"];
  const OTHER = "#98a2b3";

  function bucketLabel(ms, step) {
    const d = new Date(ms), pad = (n) => String(n).padStart(2, "0");
    return step === "hour" ? `${pad(d.getHours())}:00`
      : `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }

  // Stacked columns over time: one column per bucket, one colour per series (the largest six,
  // then "other"), a legend with each series' total.
  function timeChart(id, title, starts, step, entries, label, value, fmt) {
    const at = (t) => {
      let i = starts.length - 1;
      while (i > 0 && starts[i] > t) i -= 1;
      return i;
    };
    const bySeries = new Map();
    for (const e of entries) {
      const v = value(e) || 0, name = label(e);
      const series = bySeries.get(name) || { name, total: 0, values: starts.map(() => 0) };
      series.total += v;
      series.values[at(Date.parse(e.startTime))] += v;
      bySeries.set(name, series);
    }
    let series = [...bySeries.values()].filter((x) => x.total > 0)
      .sort((x, y) => y.total - x.total || x.name.localeCompare(y.name));
    if (series.length > PALETTE.length) {
      const rest = series.slice(PALETTE.length);
      series = series.slice(0, PALETTE.length);
      series.push({ name: `other (${rest.length})`, other: true,
                    total: rest.reduce((t, x) => t + x.total, 0),
                    values: starts.map((_, i) => rest.reduce((t, x) => t + x.values[i], 0)) });
    }
    const W = 640, left = 70, right = 10, top = 10, plotH = 160, axisH = 22, rowH = 18, cols = 3;
    const rows = Math.ceil(series.length / cols);
    const H = top + plotH + axisH + Math.max(rows, 1) * rowH + 4;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
                           "aria-label": title, class: "chart time", "data-chart": id });
    const stacks = starts.map((_, i) => series.reduce((t, x) => t + x.values[i], 0));
    const max = niceCeiling(Math.max(...stacks, 0));
    const y = (v) => top + plotH - (plotH * v) / max;
    for (const v of [0, max / 2, max]) {
      svg.append(s("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "value" },
                   fmt(v)));
    }
    const bw = (W - left - right) / starts.length, gap = bw > 6 ? 1.5 : 0;
    const every = Math.ceil(starts.length / 8);
    starts.forEach((ms, i) => {
      if (i % every) return;
      svg.append(s("text", { x: left + (i + 0.5) * bw, y: top + plotH + 15, "text-anchor": "middle",
                             class: "value" }, bucketLabel(ms, step)));
    });
    const base = starts.map(() => 0);
    series.forEach((x, k) => {
      const colour = x.other ? OTHER : PALETTE[k];
      const g = s("g", { "data-series": x.name, "data-total": x.total, fill: colour });
      x.values.forEach((v, i) => {
        if (v <= 0) return;
        const r = s("rect", { x: left + i * bw + gap, y: y(base[i] + v),
                              width: Math.max(bw - 2 * gap, 1),
                              height: y(base[i]) - y(base[i] + v) });
        r.append(s("title", {}, `${x.name}, ${bucketLabel(starts[i], step)}: ${fmt(v)}`));
        g.append(r);
        base[i] += v;
      });
      const lx = left + (k % cols) * ((W - left) / cols);
      const ly = top + plotH + axisH + Math.floor(k / cols) * rowH;
      const name = x.name.length > 20 ? `${x.name.slice(0, 19)}…` : x.name;
      g.append(s("rect", { x: lx, y: ly + 3, width: 10, height: 10 }));
      g.append(s("text", { x: lx + 14, y: ly + 12, class: "label" }, `${name} ${fmt(x.total)}`));
      svg.append(g);
    });
    if (!series.length) {
      svg.append(s("text", { x: left + 8, y: top + plotH / 2, class: "value" }, "no data"));
    }
    return h("figure", {}, h("figcaption", {}, title), svg);
  }

  async function renderUsage() {
    const period = $("period").value, [dimName, label] = DIMENSIONS[$("dimension").value];
    const dim = $("dimension").value;
    let { starts, step } = bucketStarts(period);
    const since = period === "all" ? ""
      : `&start_date=${encodeURIComponent(isoSecond(starts[0] / 1000))}`;
    const [logged, usage] = await Promise.all([spendLogs(since), api("usage?limit=10000")]);
    const byBatch = new Map(usage.data.map((u) => [u.batch_id, u]));
    const entries = logged.map((e) => ({ ...byBatch.get(e.request_id), ...e }));
    for (const e of entries) state.costs.set(e.request_id, e);
    if (period === "all") {
      const first = Math.min(...entries.map((e) => Date.parse(e.startTime)));
      ({ starts, step } = bucketStarts("all", first));
    }
    const per = aggregate(entries, label);
    const tokensFmt = (v) => number(Math.round(v));
    $("charts").replaceChildren(
      timeChart("spend-over-time", `Spend over time per ${dimName} (USD)`, starts, step, entries,
                label, (e) => e.spend, money),
      timeChart("tokens-over-time", `Tokens over time per ${dimName}`, starts, step, entries,
                label, (e) => e.total_tokens, tokensFmt),
      chart(`spend-by-${dim}`, `Spend per ${dimName}`, per, (a) => [[a.spend, "spend"]], money),
      chart(`tokens-by-${dim}`, `Tokens per ${dimName}`, per, (a) => [[a.tokens, "tokens"]]),
      chart(`requests-by-${dim}`, `Requests per ${dimName} (completed + failed)`, per,
            (a) => [[a.completed, "completed"], [a.failed, "failed"]]));
    const heads = ["Batch", "Key", "User", "Team", "Model group",
                   ...(state.master ? ["Deployment"] : []), "Status", "Requests", "Tokens", "Cost",
                   "Created"];
    $("usage-head").replaceChildren(...heads.map((t) => h("th", {}, t)));
    $("usage").replaceChildren(...entries.map((e) => h("tr", { dataset: { id: e.request_id } },
      h("td", {}, h("a", { href: `#batch/${encodeURIComponent(e.request_id)}`, class: "id" },
                    e.request_id)),
      h("td", {}, keyName(e.api_key)), h("td", {}, e.user || "–"),
      h("td", {}, e.team_id ? teamName(e.team_id) : "–"), h("td", {}, e.model_group),
      state.master ? h("td", { class: "id deployment" }, e.deployment_id || "–") : null,
      h("td", {}, statusBadge(e.status)),
      h("td", { class: "num" }, e.requests_completed === undefined ? "–"
        : number(e.requests_completed) +
          (e.requests_failed ? ` + ${e.requests_failed} failed` : "")),
      h("td", { class: "num" }, number(e.total_tokens)),
      h("td", { class: "num" }, money(e.spend)),
      h("td", {}, when(Date.parse(e.startTime) / 1000)))));
    $("usage-empty").hidden = entries.length > 0;
  }

  // -- wiring ----------------------------------------------------------------------------------

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    $("login-error").textContent = "";
    if (!key) return;
    signIn(key).catch((e) => {
      signOut();
      $("login-error").textContent = e instanceof ApiError ? e.message : String(e.message || e);
    });
  });
  $("logout").addEventListener("click", signOut);
  $("refresh").addEventListener("click", () => { render(); });
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
  for (const id of ["period", "dimension"]) $(id).addEventListener("change", () => { render(); });
  $("usage-controls").addEventListener("submit", (event) => event.preventDefault());
  window.addEventListener("hashchange", () => { $("viewer").hidden = true; render(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) render(); });

  const saved = sessionStorage.getItem(KEY);
  if (saved) {
    signIn(saved).catch(() => { signOut(); });
  } else {
    signOut();
  }
})();
