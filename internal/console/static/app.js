// Orderly console: hash-routed views over the JSON API under /api/. Everything the
// page shows of a message goes through textContent, never innerHTML: bodies,
// keys and properties are whatever producers sent.
"use strict";

const tokenKey = "orderly.token";
const pollMillis = 1000;
let pollTimer = null;
let generation = 0; // bumped on every route change; stale answers are dropped

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// API errors carry the HTTP status and the console's code, which the page shows.
class APIError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  toString() { return `${this.status} ${this.code}: ${this.message}`; }
}

async function call(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(tokenKey);
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON: the status says enough */ }
  if (!res.ok) {
    throw new APIError(res.status, (data && data.code) || res.statusText, (data && data.message) || "request failed");
  }
  return data;
}

const api = (path) => call("GET", path);
const enc = encodeURIComponent;

// Errors: a poll's error goes when a poll succeeds again; an action's stays until
// the next action or view.
let errorFrom = null;
function showError(err, from) {
  const box = document.getElementById("error");
  box.textContent = String(err);
  box.hidden = false;
  errorFrom = from;
}
function clearError(from) {
  if (from !== undefined && errorFrom !== from) return;
  const box = document.getElementById("error");
  box.hidden = true;
  box.textContent = "";
  errorFrom = null;
}
function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.hidden = !text;
}

function fmtTime(s) {
  if (!s) return "—";
  const d = new Date(s);
  return isNaN(d) ? "—" : d.toLocaleString();
}
function fmtNum(n) { return Number(n).toLocaleString(); }
function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  return (n / (1 << 20)).toFixed(1) + " MiB";
}

// upsertRow keeps one row per key in tbody and sets its cells, so polling
// updates a table in place and forms in its rows keep what is typed in them.
function upsertRow(tbody, key, attrs, cells) {
  let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
  if (!row) {
    row = el("tr", Object.assign({ "data-key": key }, attrs));
    for (const c of cells) row.append(el("td", { class: c.class }));
    tbody.append(row);
  }
  cells.forEach((c, i) => {
    const td = row.children[i];
    if (c.node) {
      if (!td.firstChild) td.append(c.node());
    } else if (td.textContent !== String(c.text)) {
      td.textContent = c.text;
    }
  });
  row.dataset.seen = "1";
  return row;
}
function pruneRows(tbody) {
  for (const row of [...tbody.rows]) {
    if (row.dataset.seen) delete row.dataset.seen;
    else row.remove();
  }
}

function setNav(inst, active) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(el("a", { href: "#/", class: active === "instances" ? "active" : null }, "Instances"));
  if (!inst) return;
  for (const [view, label] of [["topics", "Topics"], ["groups", "Groups"], ["messages", "Messages"]]) {
    nav.append(el("a", { href: `#/i/${enc(inst)}/${view}`, id: "nav-" + view, class: active === view ? "active" : null }, `${label}`));
  }
}

function live(refresh) {
  const gen = generation;
  const tick = async () => {
    if (gen !== generation) return;
    try {
      await refresh(gen);
      clearError("poll");
    } catch (e) {
      if (gen === generation) showError(e, "poll");
    }
  };
  tick();
  pollTimer = setInterval(tick, pollMillis);
}

// Views.

function viewInstances(main) {
  setNav(null, "instances");
  const tbody = el("tbody");
  main.append(el("h1", {}, "Instances"),
    el("table", { id: "instances-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Instance"), el("th", {}, "Namespace / name"), el("th", { class: "num" }, "Topics"), el("th", { class: "num" }, "Groups"))),
      tbody));
  live(async (gen) => {
    const data = await api("/api/instances");
    if (gen !== generation) return;
    for (const i of data.instances) {
      upsertRow(tbody, i.id, { "data-instance": i.id }, [
        { node: () => el("a", { href: `#/i/${enc(i.id)}/groups` }, i.id) },
        { text: `${i.namespace}/${i.name}` },
        { text: fmtNum(i.topics), class: "num" },
        { text: fmtNum(i.groups), class: "num" },
      ]);
    }
    pruneRows(tbody);
  });
}

function viewTopics(main, inst) {
  setNav(inst, "topics");
  const tbody = el("tbody");
  main.append(el("h1", {}, `Topics of ${inst}`),
    el("table", { id: "topics-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Topic"), el("th", {}, "Type"), el("th", { class: "num" }, "Queues"),
        el("th", { class: "num" }, "Messages"), el("th", { class: "num" }, "Size"), el("th", { class: "num" }, "Published"),
        el("th", { class: "num" }, "Publish rate"))),
      tbody));
  // The rate over the samples of the last five seconds, by the server's clock.
  const samples = new Map();
  live(async (gen) => {
    const data = await api(`/api/instances/${enc(inst)}/topics`);
    if (gen !== generation) return;
    for (const t of data.topics) {
      const s = (samples.get(t.name) || []).filter((x) => data.time - x.time <= 5000);
      s.push({ time: data.time, published: t.published });
      samples.set(t.name, s);
      let rate = "—";
      if (s.length > 1 && s[s.length - 1].time > s[0].time) {
        rate = ((s[s.length - 1].published - s[0].published) * 1000 / (s[s.length - 1].time - s[0].time)).toFixed(1) + "/s";
      }
      upsertRow(tbody, t.name, { "data-topic": t.name, class: t.system ? "system" : null }, [
        { text: t.name }, { text: t.type }, { text: t.queues, class: "num" },
        { text: fmtNum(t.messages), class: "num messages" }, { text: fmtBytes(t.bytes), class: "num" },
        { text: fmtNum(t.published), class: "num published" }, { text: rate, class: "num rate" },
      ]);
    }
    pruneRows(tbody);
  });
}

// resetForm moves a group's consumption of one of its topics to a time; fill adds
// the topics the group consumes as polls find them.
function resetForm(inst, groupID) {
  const topic = el("select", { class: "reset-topic" });
  const time = el("input", { type: "datetime-local", class: "reset-time", step: "1" });
  const form = el("form", { class: "inline reset", onsubmit: async (ev) => {
    ev.preventDefault();
    clearError();
    notice("");
    if (!topic.value || !time.value) { showError("choose a topic and a time", "action"); return; }
    try {
      const res = await call("POST", `/api/instances/${enc(inst)}/groups/${enc(groupID)}/reset`,
        { topic: topic.value, time: new Date(time.value).toISOString() });
      notice(`Reset ${groupID} on ${topic.value}: offsets ${res.offsets.join(", ")}`);
    } catch (e) { showError(e, "action"); }
  } }, topic, time, el("button", { type: "submit" }, "Reset to time"));
  form.fill = (topics) => {
    const have = new Set([...topic.options].map((o) => o.value));
    for (const t of topics) if (!have.has(t.topic)) topic.append(el("option", { value: t.topic }, t.topic));
  };
  return form;
}

function viewGroups(main, inst) {
  setNav(inst, "groups");
  const tbody = el("tbody");
  main.append(el("h1", {}, `Consumer groups of ${inst}`),
    el("table", { id: "groups-table" },
      el("thead", {}, el("tr", {}, el("th", {}, "Group"), el("th", {}, "Protocol"), el("th", { class: "num" }, "Backlog"),
        el("th", { class: "num" }, "In flight"), el("th", { class: "num" }, "Dead letters"), el("th", {}, "Last consumed"),
        el("th", {}, "Per topic"), el("th", {}, "Reset consumption"))),
      tbody));
  const forms = new Map();
  live(async (gen) => {
    const data = await api(`/api/instances/${enc(inst)}/groups`);
    if (gen !== generation) return;
    for (const g of data.groups) {
      const perTopic = g.topics.map((t) => `${t.topic}: ${fmtNum(t.backlog)} (${fmtNum(t.inFlight)} in flight)`).join("; ") || "—";
      upsertRow(tbody, g.id, { "data-group": g.id }, [
        { node: () => el("a", { href: `#/i/${enc(inst)}/groups/${enc(g.id)}/deadletters` }, g.id) },
        { text: g.protocol },
        { text: fmtNum(g.backlog), class: "num backlog" },
        { text: fmtNum(g.inFlight), class: "num inflight" },
        { text: fmtNum(g.deadLetters), class: "num deadletters" },
        { text: fmtTime(g.lastConsumeTime), class: "lastconsume" },
        { text: perTopic, class: "pertopic" },
        { node: () => { const f = resetForm(inst, g.id); forms.set(g.id, f); return f; } },
      ]);
      forms.get(g.id).fill(g.topics);
    }
    pruneRows(tbody);
  });
}

function messagesTable(messages, inst) {
  const tbody = el("tbody");
  for (const m of messages) {
    tbody.append(el("tr", { "data-id": m.id },
      el("td", { class: "mono" }, el("a", { href: `#/i/${enc(inst)}/messages/${enc(m.id)}` }, m.id)),
      el("td", {}, m.topic), el("td", { class: "num" }, `${m.queue} / ${m.offset}`), el("td", {}, fmtTime(m.storeTime)),
      el("td", {}, m.tag || ""), el("td", {}, (m.keys || []).join(", ")),
      el("td", { class: "mono" }, m.body.text !== undefined && m.body.text !== "" ? m.body.text + (m.body.truncated ? " …" : "") : `${fmtBytes(m.body.size)}${m.body.hex ? " binary" : ""}`)));
  }
  return el("table", { id: "results-table" },
    el("thead", {}, el("tr", {}, el("th", {}, "Message id"), el("th", {}, "Topic"), el("th", { class: "num" }, "Queue / offset"),
      el("th", {}, "Stored"), el("th", {}, "Tag"), el("th", {}, "Keys"), el("th", {}, "Body"))),
    tbody);
}

function toLocalInput(d) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function viewMessages(main, inst) {
  setNav(inst, "messages");
  const results = el("div", { id: "results" });
  const topics = el("datalist", { id: "topic-names" });
  api(`/api/instances/${enc(inst)}/topics`).then((d) => {
    for (const t of d.topics) topics.append(el("option", { value: t.name }));
  }).catch(() => {});
  const show = async (path) => {
    clearError();
    results.replaceChildren(el("p", { class: "muted" }, "Looking…"));
    try {
      const data = await api(path);
      results.replaceChildren(
        el("p", { class: "muted", id: "results-count" }, `${data.messages.length} message(s)${data.truncated ? ", more than shown: narrow the search" : ""}`),
        messagesTable(data.messages, inst));
    } catch (e) {
      results.replaceChildren();
      showError(e, "action");
    }
  };
  const id = el("input", { id: "lookup-id", size: 36, placeholder: "message id", spellcheck: "false" });
  const keyTopic = el("input", { id: "key-topic", list: "topic-names", placeholder: "topic" });
  const key = el("input", { id: "lookup-key", placeholder: "key" });
  const rangeTopic = el("input", { id: "range-topic", list: "topic-names", placeholder: "topic" });
  const now = new Date();
  const from = el("input", { id: "range-from", type: "datetime-local", step: "1", value: toLocalInput(new Date(now - 3600e3)) });
  const to = el("input", { id: "range-to", type: "datetime-local", step: "1", value: toLocalInput(new Date(now.getTime() + 60e3)) });
  main.append(el("h1", {}, `Messages of ${inst}`), topics,
    el("h2", {}, "By id"),
    el("form", { class: "inline", id: "form-id", onsubmit: (ev) => { ev.preventDefault(); location.hash = `#/i/${enc(inst)}/messages/${enc(id.value.trim())}`; } },
      id, el("button", { type: "submit", id: "find-id" }, "Show")),
    el("h2", {}, "By key"),
    el("form", { class: "inline", id: "form-key", onsubmit: (ev) => { ev.preventDefault(); show(`/api/instances/${enc(inst)}/messages?topic=${enc(keyTopic.value)}&key=${enc(key.value)}`); } },
      keyTopic, key, el("button", { type: "submit", id: "find-key" }, "Find")),
    el("h2", {}, "By time stored"),
    el("form", { class: "inline", id: "form-range", onsubmit: (ev) => {
      ev.preventDefault();
      show(`/api/instances/${enc(inst)}/messages?topic=${enc(rangeTopic.value)}&from=${enc(new Date(from.value).toISOString())}&to=${enc(new Date(to.value).toISOString())}`);
    } }, rangeTopic, from, "to", to, el("button", { type: "submit", id: "find-range" }, "Find")),
    results);
}

async function viewMessage(main, inst, id) {
  setNav(inst, "messages");
  const gen = generation;
  main.append(el("h1", {}, "Message ", el("span", { class: "mono" }, id)));
  let data;
  try {
    data = await api(`/api/instances/${enc(inst)}/messages/${enc(id)}`);
  } catch (e) {
    if (gen === generation) showError(e, "action");
    return;
  }
  if (gen !== generation) return;
  const m = data.message;
  const row = (k, v) => el("tr", {}, el("th", {}, k), el("td", {}, v));
  main.append(el("table", { id: "message-meta" }, el("tbody", {},
    row("Topic", m.topic), row("Queue / offset", `${m.queue} / ${m.offset < 0 ? "not in its queue yet" : m.offset}`),
    row("Stored", fmtTime(m.storeTime)), row("Born", fmtTime(m.bornTime)), row("Deliver at", fmtTime(m.deliverAt)),
    row("Tag", m.tag || "—"), row("Keys", (m.keys || []).join(", ") || "—"), row("Sharding key", m.shardingKey || "—"),
    row("Consumed again", m.reconsumeTimes), row("Body", `${fmtBytes(m.body.size)}, MD5 ${m.bodyMD5}`))));
  main.append(el("h2", {}, m.body.hex ? "Body (binary: hex of the first bytes)" : "Body"),
    el("pre", { class: "body", id: "message-body" }, m.body.hex || m.body.text, m.body.truncated ? "\n…" : ""));
  const props = Object.entries(m.properties || {}).sort();
  main.append(el("h2", {}, "Properties"), props.length === 0 ? el("p", { class: "muted" }, "none") :
    el("table", { id: "message-properties" }, el("tbody", {}, props.map(([k, v]) => row(k, v)))));
  main.append(el("h2", {}, "Delivery per group"), data.deliveries.length === 0 ? el("p", { class: "muted", id: "deliveries" }, "No group consumes this topic yet.") :
    el("table", { id: "deliveries" },
      el("thead", {}, el("tr", {}, el("th", {}, "Group"), el("th", {}, "Protocol"), el("th", {}, "State"), el("th", { class: "num" }, "Deliveries"), el("th", {}, "Visible again"))),
      el("tbody", {}, data.deliveries.map((d) => el("tr", { "data-group": d.group },
        el("td", {}, d.group), el("td", {}, d.protocol), el("td", { class: "state state-" + d.state }, d.state),
        el("td", { class: "num" }, d.consumedTimes || ""), el("td", {}, d.nextVisibleTime ? fmtTime(d.nextVisibleTime) : ""))))));
}

function viewDeadLetters(main, inst, group) {
  setNav(inst, "groups");
  const list = el("div", { id: "deadletters" });
  const load = async () => {
    const gen = generation;
    try {
      const data = await api(`/api/instances/${enc(inst)}/groups/${enc(group)}/deadletters`);
      if (gen !== generation) return;
      if (data.messages.length === 0) {
        list.replaceChildren(el("p", { class: "muted", id: "no-deadletters" }, "No dead letters."));
        return;
      }
      const table = messagesTable(data.messages, inst);
      table.id = "deadletters-table";
      table.tHead.rows[0].prepend(el("th", {}, ""));
      for (const tr of table.tBodies[0].rows) {
        tr.prepend(el("td", {}, el("input", { type: "checkbox", class: "pick", value: tr.dataset.id, "aria-label": "select " + tr.dataset.id })));
      }
      list.replaceChildren(table);
    } catch (e) {
      if (gen === generation) showError(e, "action");
    }
  };
  const redrive = async () => {
    clearError();
    notice("");
    const ids = [...list.querySelectorAll("input.pick:checked")].map((c) => c.value);
    if (ids.length === 0) { showError("select the dead letters to re-drive", "action"); return; }
    try {
      const res = await call("POST", `/api/instances/${enc(inst)}/groups/${enc(group)}/redrive`, { ids });
      notice(`Re-drove ${res.redriven} dead letter(s) of ${group}.`);
      await load();
    } catch (e) { showError(e, "action"); }
  };
  main.append(el("h1", {}, `Dead letters of ${group}`),
    el("form", { class: "inline", onsubmit: (ev) => ev.preventDefault() },
      el("button", { type: "button", id: "redrive", onclick: redrive }, "Re-drive selected"),
      el("button", { type: "button", id: "reload", onclick: () => { clearError(); load(); } }, "Reload"),
      el("label", {}, el("input", { type: "checkbox", id: "pick-all", onchange: (ev) => list.querySelectorAll("input.pick").forEach((c) => { c.checked = ev.target.checked; }) }), " all")),
    list);
  load();
}

function route() {
  generation++;
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
  clearError();
  notice("");
  const main = document.getElementById("view");
  main.replaceChildren();
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter((p) => p !== "").map(decodeURIComponent);
  if (parts[0] === "i" && parts.length >= 3) {
    const inst = parts[1];
    if (parts[2] === "topics") return viewTopics(main, inst);
    if (parts[2] === "groups" && parts.length === 3) return viewGroups(main, inst);
    if (parts[2] === "groups" && parts[4] === "deadletters") return viewDeadLetters(main, inst, parts[3]);
    if (parts[2] === "messages" && parts.length === 3) return viewMessages(main, inst);
    if (parts[2] === "messages" && parts.length === 4) return viewMessage(main, inst, parts[3]);
  }
  return viewInstances(main);
}

async function whoami() {
  const who = document.getElementById("whoami");
  if (!sessionStorage.getItem(tokenKey)) {
    who.textContent = "no token";
    return;
  }
  try {
    const data = await api("/api/whoami");
    who.textContent = data.user;
  } catch (e) {
    who.textContent = e.status === 401 ? "token refused" : "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("token");
  input.value = sessionStorage.getItem(tokenKey) || "";
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    if (t) sessionStorage.setItem(tokenKey, t);
    else sessionStorage.removeItem(tokenKey);
    whoami();
    route();
  });
  window.addEventListener("hashchange", route);
  whoami();
  route();
});
