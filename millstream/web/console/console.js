// The millstream operator console: plain DOM over the admin API, no framework.
// The token lives in sessionStorage (this tab only) and goes in an
// Authorization header; it is never put in a URL or a cookie. Everything a
// message or an error says is shown as text (textContent), never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "millstream.console.token";
  const REFRESH_MS = 5000;
  const CHART_MINUTES = 10;

  const $ = (id) => document.getElementById(id);
  const state = {
    timer: null,
    quiet: null,
    history: null, // {bucket, at: [], consumers: {name: {consumed, acked, retried, dead}}}
    rendered: false,
    letters: { consumer: null, reason: null, reasons: [], shown: [], selected: new Set(), open: null },
  };

  class Unauthorized extends Error {}

  // -- Calls -----------------------------------------------------------------

  async function detailOf(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (typeof body.detail === "string") return body.detail;
      if (Array.isArray(body.detail)) {
        return body.detail.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
      }
    } catch (_) {
      // not JSON: the text itself says what is wrong
    }
    return text || response.statusText;
  }

  async function api(path, { method = "GET", body, accept = [] } = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized("Sign in with a bearer token.");
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    if (response.status === 401) {
      throw new Unauthorized(`The service refused the token: ${await detailOf(response)}`);
    }
    if (!response.ok && !accept.includes(response.status)) {
      throw new Error(`${method} /${path} answered ${response.status}: ${await detailOf(response)}`);
    }
    return response.json();
  }

  const enc = encodeURIComponent;
  const consumerPath = (name) => `admin/consumers/${enc(name)}`;

  // -- Small helpers ---------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "on") for (const [kind, fn] of Object.entries(value)) node.addEventListener(kind, fn);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function cell(label, content, cls) {
    const td = el("td", { "data-label": label, class: cls });
    if (content instanceof Node) td.append(content);
    else td.textContent = content === null || content === undefined ? "–" : String(content);
    return td;
  }

  const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "–");

  function ago(seconds) {
    const s = Math.max(0, Date.now() / 1000 - seconds);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return when(seconds);
  }

  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

  function say(text, kind = "info") {
    const status = $("status");
    status.textContent = text;
    status.dataset.kind = kind;
    clearTimeout(state.quiet);
    // Errors stay until the next message; the rest fade after a while.
    if (kind !== "error") state.quiet = setTimeout(() => { status.textContent = ""; }, 8000);
  }

  function badge(text) {
    return el("span", { class: `badge ${String(text).toLowerCase()}`, text });
  }

  async function run(action) {
    try {
      await action();
    } catch (error) {
      if (error instanceof Unauthorized) signOut(error.message);
      else say(error.message, "error");
    }
  }

  function confirmed(text, verb) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = verb;
    dialog.showModal();
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-ok").onclick = $("confirm-cancel").onclick = dialog.oncancel = null;
        dialog.close();
        resolve(answer);
      };
      $("confirm-ok").onclick = () => done(true);
      $("confirm-cancel").onclick = () => done(false);
      dialog.oncancel = () => done(false);
    });
  }

  // -- Sign in and out -------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(state.timer);
    state.timer = null;
    for (const view of document.querySelectorAll(".view")) view.hidden = true;
    $("nav").hidden = $("sign-out").hidden = true;
    $("token").value = "";
    $("login-message").textContent = message || "";
    $("login").hidden = false;
    say("");
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    await run(async () => {
      await api("admin/service"); // proves the token before showing anything
      $("token").value = "";
      start();
    });
  }

  function start() {
    $("login").hidden = true;
    $("nav").hidden = $("sign-out").hidden = false;
    show();
    clearInterval(state.timer);
    state.timer = setInterval(() => {
      if (!document.hidden) refresh(false);
    }, REFRESH_MS);
  }

  // -- Views -----------------------------------------------------------------

  const VIEWS = { consumers: loadConsumers, "dead-letters": loadDeadLetters, service: loadService };

  function current() {
    const name = location.hash.replace(/^#/, "");
    return name in VIEWS ? name : "consumers";
  }

  function show() {
    const name = current();
    for (const [view] of Object.entries(VIEWS)) $(`view-${view}`).hidden = view !== name;
    for (const link of document.querySelectorAll("#nav a")) {
      link.setAttribute("aria-current", link.dataset.view === name ? "page" : "false");
    }
    refresh(true);
  }

  function refresh(explicit) {
    const name = current();
    if (name === "dead-letters" && !explicit) return; // changes only when asked: selections stay
    run(VIEWS[name]);
  }

  // -- Consumers -------------------------------------------------------------

  async function loadConsumers() {
    const since = state.history && state.history.at.length ? state.history.at.at(-1) : null;
    const [consumers, history] = await Promise.all([
      api("admin/consumers"),
      api(`admin/consumers/history${since === null ? "" : `?since=${since}`}`),
    ]);
    mergeHistory(history);
    renderConsumers(consumers);
    $("consumers-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (!state.rendered) {
      state.rendered = true;
      performance.mark("millstream:consumers-rendered");
    }
  }

  function mergeHistory(update) {
    const keep = Math.round((CHART_MINUTES * 60) / update.bucket_seconds);
    const old = state.history || { at: [], consumers: {} };
    const merged = { bucket: update.bucket_seconds, at: old.at.concat(update.at).slice(-keep), consumers: {} };
    const missing = old.at.length;
    for (const [name, series] of Object.entries(update.consumers)) {
      const before = old.consumers[name];
      const joined = {};
      for (const kind of ["consumed", "acked", "retried", "dead"]) {
        const earlier = before ? before[kind] : new Array(missing).fill(0);
        joined[kind] = earlier.concat(series[kind]).slice(-keep);
      }
      merged.consumers[name] = joined;
    }
    state.history = merged;
    $("chart-window").textContent = `(per ${update.bucket_seconds} s, ${CHART_MINUTES} min)`;
  }

  function sparkline(series) {
    const NS = "http://www.w3.org/2000/svg";
    const width = 140;
    const height = 30;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("role", "img");
    const acked = series ? series.acked : [];
    const failed = series ? series.dead.map((d, i) => d + series.retried[i]) : [];
    const sum = (xs) => xs.reduce((a, b) => a + b, 0);
    const title = document.createElementNS(NS, "title");
    title.textContent = series
      ? `${sum(acked)} acked, ${sum(series.retried)} retried, ${sum(series.dead)} dead in the last ${acked.length} buckets`
      : "no samples yet";
    svg.append(title);
    const top = Math.max(1, ...acked, ...failed);
    const points = (values) => {
      const step = values.length > 1 ? width / (values.length - 1) : width;
      return values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`).join(" ");
    };
    for (const [values, cls] of [[acked, "ok"], [failed, "bad"]]) {
      if (values.length < 2 || (cls === "bad" && !values.some(Boolean))) continue;
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", points(values));
      line.setAttribute("class", cls);
      svg.append(line);
    }
    return svg;
  }

  function lastError(error) {
    if (!error) return "–";
    return el(
      "span",
      { class: "error", title: `${error.type}: ${error.message}` },
      el("strong", { text: error.type }),
      `: ${error.message} `,
      el("span", { class: "muted", text: `(${error.source}, ${ago(error.at)})` }),
    );
  }

  function concurrencyControl(consumer) {
    const input = el("input", {
      type: "number", min: 1, max: 4096, value: consumer.concurrency,
      "aria-label": `Concurrency of ${consumer.name}`, "data-concurrency": consumer.name,
    });
    const set = el("button", {
      type: "button", class: "quiet", text: "Set",
      on: { click: () => run(() => resize(consumer.name, input)) },
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") run(() => resize(consumer.name, input));
    });
    return el("span", { class: "inline" }, input, set);
  }

  async function resize(name, input) {
    const concurrency = Number(input.value);
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 4096) {
      throw new Error(`concurrency must be a whole number from 1 to 4096, not ${JSON.stringify(input.value)}`);
    }
    const view = await api(`${consumerPath(name)}/concurrency`, { method: "PUT", body: { concurrency } });
    say(`${name}: concurrency ${view.concurrency}.`);
    input.blur();
    await loadConsumers();
  }

  async function toggle(consumer) {
    const action = consumer.state === "PAUSED" ? "resume" : "pause";
    const view = await api(`${consumerPath(consumer.name)}/${action}`, { method: "POST" });
    say(`${consumer.name} is ${view.state}.`);
    await loadConsumers();
  }

  function renderConsumers(consumers) {
    const body = $("consumers-body");
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.concurrency : undefined;
    const rows = consumers.map((c) => {
      const series = state.history ? state.history.consumers[c.name] : null;
      const paused = c.state === "PAUSED";
      const toDeadLetters = el("a", { href: "#dead-letters", text: c.dead_letters ?? "?", on: { click: () => { state.letters.consumer = c.name; } } });
      const row = el(
        "tr",
        { "data-consumer": c.name, "data-state": c.state },
        cell("Consumer", el("span", {}, el("strong", { text: c.name }), el("br"), el("span", { class: "muted", text: `${c.topic} · ${c.group}` }))),
        cell("State", badge(c.state), "state"),
        cell("Lag", c.lag, "num"),
        cell("Throughput", sparkline(series), "chart"),
        cell("In flight", c.inflight, "num"),
        cell("Concurrency", concurrencyControl(c)),
        cell("Retries", c.retried, "num"),
        cell("Dead letters", el("span", {}, toDeadLetters, el("span", { class: "muted small", text: `${c.dead} since start` })), "num"),
        cell("Last error", lastError(c.last_error), "last-error"),
        cell("", el("button", {
          type: "button", "data-action": paused ? "resume" : "pause", text: paused ? "Resume" : "Pause",
          on: { click: () => run(() => toggle(c)) },
        })),
      );
      return row;
    });
    if (focused !== undefined) {
      // An operator typing a concurrency keeps the row they are typing in.
      const keep = body.querySelector(`tr[data-consumer="${CSS.escape(focused)}"]`);
      const index = consumers.findIndex((c) => c.name === focused);
      if (keep && index >= 0) rows[index] = keep;
    }
    body.replaceChildren(...rows);
  }

  // -- Dead letters ----------------------------------------------------------

  async function loadDeadLetters() {
    const consumers = await api("admin/consumers");
    const select = $("dl-consumer");
    const names = consumers.map((c) => c.name);
    const withLetters = consumers.find((c) => c.dead_letters);
    let chosen = state.letters.consumer;
    if (!names.includes(chosen)) chosen = withLetters ? withLetters.name : names[0];
    select.replaceChildren(
      ...consumers.map((c) => el("option", { value: c.name, selected: c.name === chosen, text: `${c.name} (${c.dead_letters ?? "?"})` })),
    );
    if (chosen === undefined) {
      say("This service has no consumers.");
      return;
    }
    if (state.letters.consumer !== chosen) closeLetters();
    state.letters.consumer = chosen;
    await loadReasons();
  }

  function closeLetters() {
    Object.assign(state.letters, { reason: null, shown: [], selected: new Set(), open: null });
    $("letters").hidden = true;
    $("letter-detail").hidden = true;
  }

  async function loadReasons() {
    const name = state.letters.consumer;
    const page = await api(`${consumerPath(name)}/dead-letters/reasons`);
    state.letters.reasons = page.reasons;
    $("reasons-note").textContent = page.total === 0
      ? `${name} has no dead letters.`
      : page.scanned < page.total
        ? `${plural(page.total, "letter")}; grouped from the newest ${page.scanned}.`
        : `${plural(page.total, "letter")} in ${plural(page.reasons.length, "reason")}.`;
    $("reasons-body").replaceChildren(...page.reasons.map((r) => el(
      "tr",
      { "data-reason": r.reason, class: r.reason === state.letters.reason ? "chosen" : null },
      cell("Reason", el("span", { title: r.example, text: r.reason })),
      cell("Letters", r.count, "num"),
      cell("First failed", when(r.first_failed_at)),
      cell("Last failed", when(r.last_failed_at)),
      cell("", el(
        "span", { class: "inline" },
        el("button", { type: "button", class: "quiet", "data-action": "show", text: "Show", on: { click: () => run(() => showReason(r.reason)) } }),
        el("button", { type: "button", "data-action": "replay", text: "Replay all", on: { click: () => run(() => replayReason(r)) } }),
        el("button", { type: "button", class: "danger", "data-action": "purge", text: "Purge all", on: { click: () => run(() => purgeReason(r)) } }),
      )),
    )));
    if (state.letters.reason !== null) {
      if (page.reasons.some((r) => r.reason === state.letters.reason)) await showReason(state.letters.reason);
      else closeLetters();
    }
  }

  async function showReason(reason) {
    const name = state.letters.consumer;
    const page = await api(`${consumerPath(name)}/dead-letters?reason=${enc(reason)}&limit=200`);
    const changed = state.letters.reason !== reason;
    state.letters.reason = reason;
    state.letters.shown = page.items;
    if (changed) state.letters.selected = new Set();
    const present = new Set(page.items.map((l) => l.id));
    state.letters.selected = new Set([...state.letters.selected].filter((id) => present.has(id)));
    for (const row of $("reasons-body").rows) row.classList.toggle("chosen", row.dataset.reason === reason);
    $("letters-title").textContent = page.total > page.items.length
      ? `${reason}: newest ${page.items.length} of ${page.total}`
      : `${reason}: ${plural(page.total, "letter")}`;
    $("letters-body").replaceChildren(...page.items.map((letter) => {
      const box = el("input", {
        type: "checkbox", "aria-label": `Select ${letter.id}`, checked: state.letters.selected.has(letter.id),
        on: { change: (e) => { select(letter.id, e.target.checked); }, click: (e) => e.stopPropagation() },
      });
      return el(
        "tr",
        { "data-letter": letter.id, class: "clickable", on: { click: () => run(() => openLetter(letter.id)) } },
        cell("", box),
        cell("Failed", when(letter.failed_at)),
        cell("Attempts", letter.attempts, "num"),
        cell("Error", el("span", { class: "clip", title: letter.error, text: letter.error })),
        cell("Key", letter.key),
      );
    }));
    $("letters").hidden = false;
    updateSelection();
  }

  function select(id, on) {
    if (on) state.letters.selected.add(id);
    else state.letters.selected.delete(id);
    updateSelection();
  }

  function updateSelection() {
    const n = state.letters.selected.size;
    $("replay-selected").disabled = $("purge-selected").disabled = n === 0;
    $("replay-selected").textContent = `Replay selected (${n})`;
    $("purge-selected").textContent = `Purge selected (${n})`;
    $("select-all").checked = n > 0 && n === state.letters.shown.length;
  }

  async function openLetter(id) {
    const name = state.letters.consumer;
    const letter = await api(`${consumerPath(name)}/dead-letters/${enc(id)}`);
    state.letters.open = letter;
    $("detail-id").textContent = letter.id;
    const fields = [
      ["Consumer", name],
      ["Message id", letter.message_id],
      ["Key", letter.key ?? "–"],
      ["Reason", letter.reason],
      ["Error", letter.error],
      ["Attempts", letter.attempts],
      ["Dead-lettered", `${when(letter.failed_at)} (its last failure)`],
      ["Trace id", letter.trace_id ?? "– (no traceparent header)"],
    ];
    $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));
    const json = letter.payload_json !== null;
    $("detail-encoding").textContent = json ? "(JSON)" : letter.payload_encoding === "base64" ? "(not text: base64)" : "(text)";
    $("detail-payload").textContent = json ? letter.payload_json : letter.payload;
    $("detail-headers").textContent = JSON.stringify(letter.headers, null, 2);
    $("letter-detail").hidden = false;
    $("letter-detail").scrollIntoView({ block: "nearest" });
  }

  async function act(verb, selection, count, what) {
    const name = state.letters.consumer;
    const noun = plural(count, "letter");
    const question = verb === "purge"
      ? `Purge ${noun} of ${name}${what}? They are deleted for good.`
      : `Replay ${noun} of ${name}${what} into its group as fresh deliveries?`;
    // A purge always asks, naming how many go; a replay asks when it is more than one.
    const ask = verb === "purge" || count > 1;
    if (ask && !(await confirmed(question, verb === "purge" ? `Purge ${noun}` : `Replay ${noun}`))) return;
    say(`${verb === "purge" ? "Purging" : "Replaying"} ${noun}…`);
    const result = await api(`${consumerPath(name)}/dead-letters/${verb}`, { method: "POST", body: selection });
    const done = verb === "purge" ? result.purged : result.replayed;
    say(`${verb === "purge" ? "Purged" : "Replayed"} ${plural(done, "letter")} of ${name}.`, "done");
    if (state.letters.open && (!selection.ids || selection.ids.includes(state.letters.open.id))) {
      state.letters.open = null;
      $("letter-detail").hidden = true;
    }
    state.letters.selected = new Set();
    await loadReasons();
  }

  const replayReason = (r) => act("replay", { reason: r.reason, failed_until: r.last_failed_at }, r.count, ` with reason “${r.reason}”`);
  const purgeReason = (r) => act("purge", { reason: r.reason, failed_until: r.last_failed_at }, r.count, ` with reason “${r.reason}”`);
  const actOnSelected = (verb) => act(verb, { ids: [...state.letters.selected] }, state.letters.selected.size, " (selected)");
  const actOnOpen = (verb) => act(verb, { ids: [state.letters.open.id] }, 1, ` (${state.letters.open.id})`);

  // -- Service ---------------------------------------------------------------

  async function loadService() {
    const [health, about] = await Promise.all([
      api("actuator/health", { accept: [503] }),
      api("admin/service"),
    ]);
    $("service-status").replaceWith(Object.assign(badge(health.status), { id: "service-status" }));
    $("service-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    const components = health.components || {};
    const store = components.store ? components.store.details : null;
    const fields = [
      ["Version", about.version],
      ["Broker", about.broker],
      ["Member", about.member ?? "–"],
      ["Event-loop lag", `${about.event_loop_lag_ms.toFixed(1)} ms`],
      ["Outbox backlog", store ? store.outboxPending ?? "unknown" : "no store"],
      ["Outbox relay", about.outbox ? `${about.outbox.published} published, ${about.outbox.failed_batches} failed batch${about.outbox.failed_batches === 1 ? "" : "es"}` : "–"],
    ];
    if (about.outbox && about.outbox.last_error) fields.push(["Relay's last error", about.outbox.last_error]);
    $("service-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })]));

    const rows = [];
    const detailText = (details) => Object.entries(details || {})
      .filter(([, v]) => v !== null && typeof v !== "object")
      .map(([k, v]) => (k === "lastPollMs" ? `last poll: ${ago(v / 1000)}` : `${k}: ${v}`))
      .join(", ");
    for (const [name, component] of Object.entries(components)) {
      rows.push(el("tr", { "data-component": name }, cell("Component", el("strong", { text: name })), cell("Status", badge(component.status)), cell("Details", detailText(component.details))));
      for (const [child, sub] of Object.entries(component.components || {})) {
        rows.push(el("tr", { class: "sub" }, cell("Component", child), cell("Status", badge(sub.status)), cell("Details", detailText(sub.details))));
      }
    }
    $("components-body").replaceChildren(...rows);
    $("caches-body").replaceChildren(...(about.caches.length ? about.caches.map((c) => el(
      "tr", {},
      cell("Cache", c.name),
      cell("Hit rate", c.hit_rate === null ? "–" : `${(c.hit_rate * 100).toFixed(1)} %`, "num"),
      cell("Hits", c.hits, "num"),
      cell("Misses", c.misses, "num"),
      cell("Entries", c.entries, "num"),
    )) : [el("tr", {}, el("td", { colspan: 5, class: "muted", text: "This service has no read caches." }))]));
  }

  // -- Wiring ----------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    window.addEventListener("hashchange", () => {
      if (sessionStorage.getItem(TOKEN_KEY)) show();
    });
    $("dl-consumer").addEventListener("change", (e) => {
      state.letters.consumer = e.target.value;
      closeLetters();
      run(loadReasons);
    });
    $("dl-refresh").addEventListener("click", () => run(loadDeadLetters));
    $("select-all").addEventListener("change", (e) => {
      for (const letter of state.letters.shown) {
        if (e.target.checked) state.letters.selected.add(letter.id);
        else state.letters.selected.delete(letter.id);
      }
      for (const box of $("letters-body").querySelectorAll("input[type=checkbox]")) box.checked = e.target.checked;
      updateSelection();
    });
    $("replay-selected").addEventListener("click", () => run(() => actOnSelected("replay")));
    $("purge-selected").addEventListener("click", () => run(() => actOnSelected("purge")));
    $("detail-replay").addEventListener("click", () => run(() => actOnOpen("replay")));
    $("detail-purge").addEventListener("click", () => run(() => actOnOpen("purge")));
    $("detail-close").addEventListener("click", () => {
      state.letters.open = null;
      $("letter-detail").hidden = true;
    });
    if (sessionStorage.getItem(TOKEN_KEY)) start();
    else signOut("");
  });
})();
