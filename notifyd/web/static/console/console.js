// notifyd operator console: plain JavaScript, no build step, no third-party code.
// The bearer token lives in sessionStorage (this tab only); every value shown is
// inserted as text, never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "notifyd.console.token";
  const USER_KEY = "notifyd.console.user";
  const STATS_EVERY_MS = 2000;
  const STATES = ["queued", "sent", "deferred", "retrying", "suppressed", "failed", "dead"];
  const $ = (id) => document.getElementById(id);

  let statsTimer = null;
  let sentTimer = null;
  const rateHistory = [];
  const sent = []; // {nid, user_id, title, at, doc}

  // --- API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, detail) {
      super(detail || code || ("HTTP " + status));
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!resp.ok) {
      if (resp.status === 401 && path !== "/api/v1/auth/token") logout("Session expired: log in again.");
      throw new ApiError(resp.status, data && data.code, data && data.detail);
    }
    return data;
  }

  // --- small DOM helpers --------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    return v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(v < 10 ? 1 : 0) + " ms";
  }
  function fmtRate(v) { return v === null || v === undefined ? "–" : v.toFixed(v < 10 ? 2 : 1); }
  function fmtTime(epochS) {
    if (!epochS) return "";
    return new Date(epochS * 1000).toLocaleTimeString();
  }
  function stateChip(name, n) {
    return el("span", { class: "state " + name, text: n === undefined ? name : name + " " + n });
  }
  function showError(id, err) { $(id).textContent = err ? (err.message || String(err)) : ""; }

  // --- login ----------------------------------------------------------------------------

  async function login(ev) {
    ev.preventDefault();
    showError("login-error", null);
    const username = $("login-username").value.trim();
    const password = $("login-password").value;
    try {
      const tokens = await api("POST", "/api/v1/auth/token", { username, password });
      sessionStorage.setItem(TOKEN_KEY, tokens.access_token);
      const me = await api("GET", "/api/v1/users/me");
      if (!(me.roles || []).includes("operator")) {
        sessionStorage.removeItem(TOKEN_KEY);
        throw new Error("This account is not an operator.");
      }
      sessionStorage.setItem(USER_KEY, me.username);
      $("login-password").value = "";
      start();
    } catch (err) {
      showError("login-error", err);
    }
  }

  function logout(message) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    if (token && !message) {
      fetch("/api/v1/auth/logout", { method: "POST", headers: { "Authorization": "Bearer " + token } })
        .catch(() => {});
    }
    stop();
    $("app-view").hidden = true;
    $("whoami").hidden = true;
    $("login-view").hidden = false;
    showError("login-error", message ? new Error(message) : null);
  }

  function start() {
    $("login-view").hidden = true;
    $("app-view").hidden = false;
    $("whoami").hidden = false;
    $("who").textContent = sessionStorage.getItem(USER_KEY) || "";
    refreshStats();
    refreshProviders();
    refreshDlq();
    statsTimer = setInterval(() => { refreshStats(); refreshProviders(); }, STATS_EVERY_MS);
    sentTimer = setInterval(refreshSent, STATS_EVERY_MS);
  }

  function stop() {
    clearInterval(statsTimer);
    clearInterval(sentTimer);
    statsTimer = sentTimer = null;
  }

  // --- throughput and latency ------------------------------------------------------------

  async function refreshStats() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return;
    let s;
    try {
      s = await api("GET", "/api/v1/admin/stats?window=" + $("stats-window").value);
    } catch (err) {
      $("stats-updated").textContent = "stats unavailable: " + err.message;
      return;
    }
    $("kpi-rate").textContent = fmtRate(s.throughput_per_s);
    $("kpi-sent").textContent = String(s.sent);
    $("kpi-failed").textContent = String(s.failed);
    $("kpi-p50").textContent = fmtMs(s.latency_ms.p50);
    $("kpi-p95").textContent = fmtMs(s.latency_ms.p95);
    $("kpi-p99").textContent = fmtMs(s.latency_ms.p99);
    $("stats-updated").textContent = "updated " + new Date().toLocaleTimeString() +
      " · source " + (s.source || []).join(", ");
    rateHistory.push(s.throughput_per_s);
    if (rateHistory.length > 150) rateHistory.shift();
    drawChart();

    const tbody = $("channel-table").querySelector("tbody");
    clear(tbody);
    const names = Object.keys(s.channels);
    if (!names.length) {
      tbody.append(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "no deliveries yet" })));
    }
    for (const name of names) {
      const ch = s.channels[name];
      const row = el("tr", {},
        el("td", { text: name }),
        el("td", { class: "num", text: fmtRate(ch.throughput_per_s) }),
        el("td", { class: "num", text: fmtMs(ch.latency_ms.p50) }),
        el("td", { class: "num", text: fmtMs(ch.latency_ms.p95) }));
      for (const st of STATES) row.append(el("td", { class: "num", text: String(ch.states[st] || 0) }));
      tbody.append(row);
    }
    $("workers").textContent = "workers: " + s.workers.map((w) => {
      if (w.error) return w.worker + " (unreachable)";
      const rt = w.realtime || {};
      return w.worker + " · partitions " + (w.partitions || []).join(",") +
        " · live streams " + (rt.subscribers || 0);
    }).join("  |  ");
  }

  function drawChart() {
    const canvas = $("rate-chart");
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 900;
    const h = canvas.clientHeight || 90;
    canvas.width = w * ratio;
    canvas.height = h * ratio;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.clearRect(0, 0, w, h);
    const max = Math.max(0.1, ...rateHistory) * 1.15;
    ctx.fillStyle = "#6b7385";
    ctx.font = "11px sans-serif";
    ctx.fillText("sent/s (max " + fmtRate(max) + ")", 8, 14);
    if (!rateHistory.length) return;
    const step = w / 149;
    const xs = rateHistory.map((v, i) => w - 2 - (rateHistory.length - 1 - i) * step);
    const ys = rateHistory.map((v) => h - 4 - (v / max) * (h - 24));
    ctx.beginPath();
    ctx.moveTo(xs[0], h);
    xs.forEach((x, i) => ctx.lineTo(x, ys[i]));
    ctx.lineTo(xs[xs.length - 1], h);
    ctx.closePath();
    ctx.fillStyle = "rgba(47, 111, 223, 0.15)";
    ctx.fill();
    ctx.beginPath();
    xs.forEach((x, i) => (i === 0 ? ctx.moveTo(x, ys[i]) : ctx.lineTo(x, ys[i])));
    ctx.strokeStyle = "#2f6fdf";
    ctx.lineWidth = 2;
    ctx.stroke();
    ctx.fillStyle = "#2f6fdf";
    ctx.beginPath();
    ctx.arc(xs[xs.length - 1], ys[ys.length - 1], 3, 0, 2 * Math.PI);
    ctx.fill();
  }

  // --- provider health (failover chains) ---------------------------------------------------

  async function refreshProviders() {
    if (!sessionStorage.getItem(TOKEN_KEY)) return;
    let p;
    try {
      p = await api("GET", "/api/v1/admin/providers");
    } catch (err) {
      showError("providers-error", err);
      return;
    }
    showError("providers-error", null);
    const tbody = $("providers-table").querySelector("tbody");
    clear(tbody);
    for (const r of p.providers) {
      tbody.append(el("tr", {},
        el("td", { text: r.channel }),
        el("td", { class: "num", text: String(r.position) }),
        el("td", { text: r.provider }),
        el("td", { class: "code", text: r.worker }),
        el("td", {}, stateChip(r.state, r.state === "open" ? "(" + Math.ceil(r.retry_in_s) + " s)" : undefined)),
        el("td", { class: "num", text: r.consecutive_failures + " / " + r.failure_threshold }),
        el("td", { class: "num", text: String(r.attempts) }),
        el("td", { class: "num", text: String(r.failures) }),
        el("td", { class: "num", text: String(r.skipped) }),
        el("td", { class: "small", text: r.last_error || "" })));
    }
    // Channels with a single provider have no chain (and no circuit).
    for (const [channel, names] of Object.entries(p.configured || {})) {
      if (names.length !== 1) continue;
      tbody.append(el("tr", {},
        el("td", { text: channel }), el("td", { class: "num", text: "1" }),
        el("td", { text: names[0] }),
        el("td", { colspan: "7", class: "muted", text: "only provider: no failover, no circuit" })));
    }
    const down = (p.workers || []).filter((w) => w.error).map((w) => w.worker);
    $("providers-note").textContent = "circuits are per worker: each learns from its own calls" +
      (down.length ? " · unreachable: " + down.join(", ") : "");
  }

  // --- dead letters ------------------------------------------------------------------------

  async function refreshDlq() {
    showError("dlq-error", null);
    const tbody = $("dlq-table").querySelector("tbody");
    let page;
    try {
      page = await api("GET", "/api/v1/admin/dlq?limit=25&topic=" + $("dlq-topic").value);
    } catch (err) {
      showError("dlq-error", err);
      return;
    }
    clear(tbody);
    $("dlq-empty").hidden = page.items.length > 0;
    for (const d of page.items) {
      const value = d.value === null ? "" : d.value;
      tbody.append(el("tr", {},
        el("td", { text: new Date(d.timestamp).toLocaleString() }),
        el("td", { class: "num", text: d.partition + "/" + d.offset }),
        el("td", { class: "code", text: d.key === null ? "" : d.key }),
        el("td", { text: d.reason || "" }),
        el("td", { class: "code", text: value.length > 160 ? value.slice(0, 160) + "…" : value })));
    }
  }

  // --- send a test notification ---------------------------------------------------------------

  async function send(ev) {
    ev.preventDefault();
    const channels = [...document.querySelectorAll("input[name=channel]:checked")].map((c) => c.value);
    const body = {
      user_id: $("send-user").value.trim(),
      title: $("send-title").value,
      body: $("send-body").value,
      category: $("send-category").value.trim() || "test",
      priority: $("send-priority").value,
    };
    if (channels.length) body.channels = channels;
    $("send-result").textContent = "sending…";
    try {
      const r = await api("POST", "/api/v1/notifications", body);
      $("send-result").textContent = "accepted: " + r.notification_id;
      sent.unshift({ nid: r.notification_id, user_id: body.user_id, title: body.title, at: Date.now() / 1000, doc: null });
      if (sent.length > 20) sent.pop();
      renderSent();
      refreshSent();
      if (!$("user-id").value) $("user-id").value = body.user_id;
    } catch (err) {
      $("send-result").textContent = "refused: " + err.message;
    }
  }

  // A status row lives in its user's partition: with the user, one worker is asked.
  function notificationUrl(nid, uid) {
    const q = uid ? "?user_id=" + encodeURIComponent(uid) : "";
    return "/api/v1/notifications/" + encodeURIComponent(nid) + q;
  }

  async function refreshSent() {
    const pending = sent.filter((s) => !s.doc || Object.values(s.doc.channels || {})
      .some((c) => !["sent", "failed", "dead", "suppressed"].includes(c.status)));
    if (!pending.length) return;
    await Promise.all(pending.slice(0, 10).map(async (s) => {
      try { s.doc = await api("GET", notificationUrl(s.nid, s.user_id)); }
      catch (err) { /* not folded yet */ }
    }));
    renderSent();
  }

  function channelChips(doc) {
    const span = el("span", {});
    if (!doc) { span.append(stateChip("accepted")); return span; }
    for (const [name, c] of Object.entries(doc.channels || {})) {
      const chip = stateChip(c.status);
      chip.textContent = name + ": " + c.status;
      if (c.reason) chip.title = c.reason;
      span.append(chip);
    }
    return span;
  }

  function renderSent() {
    const list = $("sent-list");
    clear(list);
    for (const s of sent) {
      list.append(el("li", {},
        el("div", { class: "title", text: s.title }),
        el("div", { class: "meta", text: "to " + s.user_id + " · " + fmtTime(s.at) + " · " + s.nid }),
        channelChips(s.doc)));
    }
  }

  // --- user look-up -------------------------------------------------------------------------------

  async function tableEntry(table, key) {
    try {
      return (await api("GET", "/api/v1/admin/tables/" + table + "/" + encodeURIComponent(key))).value;
    } catch (err) {
      if (err.status === 404) return null;
      throw err;
    }
  }

  async function lookup(ev) {
    if (ev) ev.preventDefault();
    const uid = $("user-id").value.trim();
    if (!uid) return;
    showError("user-error", null);
    try {
      const [prefs, box, throttle, pending] = await Promise.all([
        api("GET", "/api/v1/users/" + encodeURIComponent(uid) + "/preferences"),
        tableEntry("inbox", uid),
        tableEntry("throttle", uid),
        api("GET", "/api/v1/admin/users/" + encodeURIComponent(uid) + "/pending"),
      ]);
      renderPrefs(prefs);
      renderInbox(box);
      renderPending(pending);
      await renderDeliveries(uid, box, throttle);
      $("user-result").hidden = false;
    } catch (err) {
      showError("user-error", err);
    }
  }

  function renderPrefs(p) {
    const dl = $("user-prefs");
    clear(dl);
    const enabled = Object.entries(p.channels || {}).map(([k, v]) => k + (v ? " on" : " off")).join(", ");
    const optOut = Object.entries(p.opt_out || {}).map(([k, v]) => k + ": " + v.join("/")).join("; ");
    const q = p.quiet_hours;
    const rows = [
      ["email", p.email || "—"], ["phone", p.phone || "—"],
      ["push tokens", String((p.push_tokens || []).length)], ["webhook", p.webhook_url || "—"],
      ["channels", enabled || "defaults"], ["opted out", optOut || "—"],
      ["quiet hours", q ? q.start + "–" + q.end + " " + q.timezone : "—"],
      ["locale", p.locale || "default"],
      ["time zone", p.timezone || "—"],
      ["digests", (p.digests || []).map((d) => d.category + " every " + d.window).join("; ") || "—"],
    ];
    for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  }

  function renderInbox(box) {
    const list = $("user-inbox");
    clear(list);
    $("user-unread").textContent = (box ? box.unread : 0) + " unread";
    const items = box ? box.items.slice(0, 15) : [];
    if (!items.length) list.append(el("li", { class: "muted", text: "empty" }));
    for (const it of items) {
      list.append(el("li", { class: it.read ? "" : "unread" },
        el("div", { class: "title", text: it.title }),
        el("div", { text: it.body }),
        el("div", { class: "meta", text: fmtTime(it.created_at) + " · " + it.category + " · " + it.priority +
          (it.archived ? " · archived" : "") })));
    }
  }

  function renderPending(p) {
    const sched = $("user-scheduled").querySelector("tbody");
    clear(sched);
    if (!p.scheduled.length) sched.append(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "none" })));
    for (const s of p.scheduled) {
      sched.append(el("tr", {},
        el("td", { text: fmtTime(s.due) }),
        el("td", { text: s.title || "" }),
        el("td", { text: (s.channels || []).join(", ") }),
        el("td", { class: "code", text: s.notification_id })));
    }
    const dig = $("user-digests").querySelector("tbody");
    clear(dig);
    if (!p.digests.length) dig.append(el("tr", {}, el("td", { colspan: "5", class: "muted", text: "none" })));
    for (const d of p.digests) {
      dig.append(el("tr", {},
        el("td", { text: fmtTime(d.closes_at) }),
        el("td", { text: d.category }),
        el("td", { text: d.window }),
        el("td", { text: String(d.count) }),
        el("td", { text: (d.titles || []).join(" · ") })));
    }
  }

  async function renderDeliveries(uid, box, throttle) {
    const seen = new Map(); // nid -> time
    for (const it of (box ? box.items : [])) seen.set(it.id, it.created_at || 0);
    for (const entries of Object.values(throttle || {})) {
      for (const [ts, nid] of entries) seen.set(nid, Math.max(seen.get(nid) || 0, ts));
    }
    for (const s of sent) if (s.user_id === uid) seen.set(s.nid, Math.max(seen.get(s.nid) || 0, s.at));
    const newest = [...seen.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10);
    const docs = await Promise.all(newest.map(async ([nid]) => {
      try { return await api("GET", notificationUrl(nid, uid)); }
      catch (err) { return { notification_id: nid, channels: {}, title: "(no status)" }; }
    }));
    const tbody = $("user-deliveries").querySelector("tbody");
    clear(tbody);
    if (!docs.length) tbody.append(el("tr", {}, el("td", { colspan: "3", class: "muted", text: "none known" })));
    for (const d of docs) {
      tbody.append(el("tr", {},
        el("td", { class: "code", text: d.notification_id }),
        el("td", { text: d.title || "" }),
        el("td", {}, channelChips(d))));
    }
  }

  // --- wiring ----------------------------------------------------------------------------------------

  // --- topics and notifications (issue #17) -------------------------------------------------

  let topicCursor = null;

  async function lookupTopic(ev, more) {
    if (ev) ev.preventDefault();
    const topic = $("topic-name").value.trim();
    showError("topic-error", null);
    if (!more) { topicCursor = null; clear($("topic-subscribers").tBodies[0]); }
    let q = "?limit=50";
    if (topicCursor) q += "&cursor=" + encodeURIComponent(topicCursor);
    try {
      const page = await api("GET", "/api/v1/topics/" + encodeURIComponent(topic) + "/subscribers" + q);
      $("topic-total").textContent = String(page.total);
      const body = $("topic-subscribers").tBodies[0];
      for (const it of page.items) {
        body.append(el("tr", {}, el("td", { text: it.user_id }),
          el("td", { text: new Date(it.subscribed_at * 1000).toLocaleString() })));
      }
      topicCursor = page.next_cursor;
      $("topic-more").hidden = !topicCursor;
      $("topic-result").hidden = false;
    } catch (err) {
      showError("topic-error", err);
    }
  }

  async function lookupNotification(ev) {
    if (ev) ev.preventDefault();
    const nid = $("notification-id").value.trim();
    showError("notification-error", null);
    let doc;
    try {
      doc = await api("GET", "/api/v1/notifications/" + encodeURIComponent(nid));
    } catch (err) {
      $("notification-result").hidden = true;
      showError("notification-error", err);
      return;
    }
    const dl = $("notification-summary");
    clear(dl);
    for (const k of ["user_id", "title", "category", "topic", "callback_url"]) {
      if (doc[k] === undefined || doc[k] === null) continue;
      dl.append(el("dt", { text: k }), el("dd", { text: String(doc[k]) }));
    }
    const chans = $("notification-channels");
    clear(chans);
    chans.append(channelChips(doc));
    const steps = doc.fallback || [];
    const fbBody = $("notification-fallback").tBodies[0];
    clear(fbBody);
    steps.forEach((step, i) => {
      const c = (doc.channels || {})[step.channel] || {};
      const state = c.status || "pending";
      const due = state === "pending" && c.deliver_at ? "due " + fmtTime(c.deliver_at) : (c.reason || "");
      fbBody.append(el("tr", { class: "step" },
        el("td", { text: String(i + 1) }), el("td", { text: step.channel }),
        el("td", { text: step.after_s ? step.after_s + " s" : "at once" }),
        el("td", { text: step.unless || "" }), el("td", {}, stateChip(state)),
        el("td", { text: due })));
    });
    $("notification-fallback-block").hidden = !steps.length;
    const cbs = Object.entries(doc.callbacks || {});
    const cbList = $("notification-callbacks");
    clear(cbList);
    for (const [key, c] of cbs) {
      cbList.append(el("li", {}, el("div", { class: "title", text: c.channel + ": " + c.state + " → " + c.result }),
        el("div", { class: "meta", text: key + (c.reason ? " · " + c.reason : "") + " · attempts " + c.attempts })));
    }
    $("notification-callbacks-block").hidden = !cbs.length;
    $("notification-result").hidden = false;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("topic-form").addEventListener("submit", lookupTopic);
    $("topic-more").addEventListener("click", () => lookupTopic(null, true));
    $("notification-form").addEventListener("submit", lookupNotification);
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", () => logout());
    $("send-form").addEventListener("submit", send);
    $("user-form").addEventListener("submit", lookup);
    $("user-refresh").addEventListener("click", () => lookup());
    $("dlq-refresh").addEventListener("click", refreshDlq);
    $("dlq-topic").addEventListener("change", refreshDlq);
    $("stats-window").addEventListener("change", () => { rateHistory.length = 0; refreshStats(); });
    if (sessionStorage.getItem(TOKEN_KEY)) start();
  });
})();
