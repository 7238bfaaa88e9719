// The gateway's dashboard: a client of its public HTTP API, like any SDK.
// The key is kept in sessionStorage (this tab only) and sent in the Authorization header of
// fetch calls; it is never put in a URL and never logged. Files download through fetch + Blob
// for the same reason. No library, no network access beyond the gateway.
"use strict";

(() => {
  const KEY = "gateway.key";
  const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
  // While batches run the page refreshes every few seconds, otherwise twice a minute.
  const runningMs = () => Number(sessionStorage.getItem("gateway.refreshMs")) || 3000;
  const IDLE_MS = 30000;
  // The gateway's root, from /ui/ (works behind a path prefix too).
  const ROOT = new URL("../", document.baseURI);

  const state = { key: null, master: false, alias: null, aliases: new Map(), timer: null };
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
    // The master key may list keys (and so name them in the usage charts); a virtual key
    // reads its own info.
    try {
      const list = await api("key/list?return_full_object=true&size=1000", false, key);
      const aliases = new Map(list.keys.map((k) => [k.token, k.key_alias || k.token]));
      return { master: true, alias: "master key", aliases };
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 403) throw e;
    }
    const info = (await api("key/info", false, key)).info;
    const alias = info.key_alias || info.token;
    return { master: false, alias, aliases: new Map([[info.token, alias]]) };
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
      ? "Master key: the usage charts cover every key. Batches and files are the master " +
        "key's own: the API has no cross-tenant listing yet (GET /v1/batches answers each key " +
        "with its own batches), so other keys' batches are not listed here."
      : "";
    await render();
  }

  function signOut() {
    sessionStorage.removeItem(KEY);
    clearTimeout(state.timer);
    Object.assign(state, { key: null, master: false, alias: null, aliases: new Map() });
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

  function tokens(b) {
    const u = b.usage;
    if (!u) return "–";
    return h("span", { title: `${number(u.input_tokens)} in, ${number(u.output_tokens)} out` },
      number(u.total_tokens));
  }

  const statusBadge = (status) => h("span", { class: `status ${status}` }, status);

  async function renderBatches() {
    const page = await api("v1/batches?limit=100");
    // A list is answered from the gateway's database (as fresh as its background refresh);
    // the batches still running are retrieved, which asks their provider.
    page.data = await Promise.all(page.data.map((b) => TERMINAL.has(b.status) ? b
      : api(`v1/batches/${encodeURIComponent(b.id)}`).catch(() => b)));
    const rows = page.data.map((b) => h("tr", { dataset: { id: b.id, status: b.status } },
      h("td", {}, h("a", { href: `#batch/${encodeURIComponent(b.id)}`, class: "id" }, b.id)),
      h("td", { class: "status-cell" }, statusBadge(b.status)),
      h("td", {}, progress(b)),
      h("td", {}, b.model || "–"),
      h("td", {}, when(b.created_at)),
      h("td", {}, when(endedAt(b))),
      h("td", {}, took(b)),
      h("td", { class: "num" }, tokens(b)),
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
      field("Metadata", meta),
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
    const page = await api("v1/files?limit=1000");
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

  // -- usage: aggregated per key and per model group, drawn as SVG bars ------------------------

  function aggregate(rows, by) {
    const out = new Map();
    for (const r of rows) {
      const name = by(r);
      const a = out.get(name) || { completed: 0, failed: 0, tokens: 0 };
      a.completed += r.requests_completed || 0;
      a.failed += r.requests_failed || 0;
      a.tokens += r.total_tokens || 0;
      out.set(name, a);
    }
    return [...out.entries()].sort((x, y) => y[1].tokens - x[1].tokens ||
                                             x[0].localeCompare(y[0]));
  }

  // Horizontal bars: one row per name; `parts` are the stacked segments [value, class].
  function chart(id, title, entries, parts) {
    const rowH = 26, labelW = 160, barW = 320, valueW = 150, top = 6;
    const width = labelW + barW + valueW;
    const height = top * 2 + rowH * Math.max(entries.length, 1);
    const max = Math.max(1, ...entries.map(([, a]) => parts(a).reduce((t, [v]) => t + v, 0)));
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
                 segs.map(([v]) => number(v)).join(" + ")));
      g.append(s("title", {}, `${name}: ${segs.map(([v, c]) => `${number(v)} ${c}`).join(", ")}`));
      svg.append(g);
    });
    if (!entries.length) {
      svg.append(s("text", { x: labelW, y: top + rowH / 2 + 4, class: "value" }, "no data"));
    }
    return h("figure", {}, h("figcaption", {}, title), svg);
  }

  async function renderUsage() {
    const rows = (await api("usage?limit=10000")).data;
    const keyName = (r) => state.aliases.get(r.owner) || r.owner;
    const byKey = aggregate(rows, keyName);
    const byGroup = aggregate(rows, (r) => r.model_group);
    const tokens = (a) => [[a.tokens, "tokens"]];
    const requests = (a) => [[a.completed, "completed"], [a.failed, "failed"]];
    $("charts").replaceChildren(
      chart("tokens-by-key", "Tokens per key", byKey, tokens),
      chart("requests-by-key", "Requests per key (completed + failed)", byKey, requests),
      chart("tokens-by-group", "Tokens per model group", byGroup, tokens),
      chart("requests-by-group", "Requests per model group (completed + failed)", byGroup,
            requests));
    $("usage").replaceChildren(...rows.map((r) => h("tr", {},
      h("td", { class: "id" }, r.batch_id), h("td", {}, keyName(r)), h("td", {}, r.model_group),
      h("td", {}, statusBadge(r.status)), h("td", { class: "num" }, number(r.requests_completed)),
      h("td", { class: "num" }, number(r.requests_failed)),
      h("td", { class: "num" }, number(r.total_tokens)), h("td", {}, when(r.recorded_at)))));
    $("usage-empty").hidden = rows.length > 0;
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
  window.addEventListener("hashchange", () => { $("viewer").hidden = true; render(); });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) render(); });

  const saved = sessionStorage.getItem(KEY);
  if (saved) {
    signIn(saved).catch(() => { signOut(); });
  } else {
    signOut();
  }
})();
