// The deviceid console: a page over the admin API (/api/v1/). Every value from the
// API is put in the page as text (textContent, text nodes), never as markup, so a
// hostile device attribute shows as what it is. The bearer token lives in this tab's
// sessionStorage and is sent only in the Authorization header.
"use strict";

const api = "/api/v1";
const $ = (id) => document.getElementById(id);
let me = null; // the whoami answer

// el makes an element: attrs are properties (never innerHTML), children are nodes or text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// show puts nodes in main, leaving out the null and undefined of views' optional parts.
function show(main, ...nodes) {
  main.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined));
}

function token() { return sessionStorage.getItem("deviceid-token"); }

// call asks the API; a failed answer throws an Error with the API's message.
async function call(method, path, body) {
  const headers = { "Authorization": "Bearer " + token() };
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(api + path, init);
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) {
    const err = new Error(resp.status + " " + (data.error || resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
  if (err && err.status === 401) signOut();
}

function notice(text) {
  const box = $("notice");
  box.textContent = text || "";
  box.hidden = !text;
}

// confirmThen asks in a dialog before running action; its error goes to the banner.
function confirmThen(text, action) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  dlg.returnValue = "";
  dlg.onclose = async () => {
    if (dlg.returnValue !== "yes") return;
    try { showError(null); await action(); } catch (err) { showError(err); }
  };
  dlg.showModal();
}

function signOut() {
  sessionStorage.removeItem("deviceid-token");
  me = null;
  $("who").replaceChildren();
  route();
}

async function signIn(t) {
  sessionStorage.setItem("deviceid-token", t);
  try {
    me = await call("GET", "/whoami");
    showError(null);
    location.hash = "#/overview";
    route();
  } catch (err) {
    sessionStorage.removeItem("deviceid-token");
    showError(err);
  }
}

function whoBar() {
  const role = me.operator ? "registry operator" : "tenant " + me.tenant;
  $("who").replaceChildren(el("span", { id: "whoami" }, role + " (" + me.actor + ") "),
    el("button", { id: "signout", type: "button", onclick: signOut }, "Sign out"));
}

// route shows the view the hash names. Views render into a detached element, put in
// the page only if no later route began meanwhile: a slow answer for the page left
// behind never replaces the page asked for since.
let routeSeq = 0;

async function route() {
  notice(null);
  const main = $("main");
  const seq = ++routeSeq;
  if (!token()) {
    main.replaceChildren();
    $("login-view").hidden = false;
    return;
  }
  $("login-view").hidden = true;
  try {
    if (!me) me = await call("GET", "/whoami");
    whoBar();
    $("nav-operator").hidden = !me.operator;
    const h = location.hash;
    const m = h.match(/^#\/device\/(.+)$/);
    const ov = h.match(/^#\/overview(?:\/(.+))?$/);
    const tn = h.match(/^#\/tenant\/(.+)$/);
    const view = document.createElement("div");
    if (m) await deviceView(view, decodeURIComponent(m[1]));
    else if (h === "#/devices") await listView(view);
    else if (h === "#/services") await servicesView(view);
    else if (h === "#/audit") await auditView(view);
    else if (h === "#/tenants" && me.operator) await tenantsView(view);
    else if (tn && me.operator) await tokensView(view, decodeURIComponent(tn[1]));
    else if (h === "#/keys" && me.operator) await keysView(view);
    else await overviewView(view, ov && ov[1] && me.operator ? decodeURIComponent(ov[1]) : "");
    if (seq === routeSeq) main.replaceChildren(...view.childNodes);
  } catch (err) {
    if (seq === routeSeq) showError(err);
  }
}

// attrText turns "key=value" lines into attributes.
function attrsOf(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const s = line.trim();
    if (!s) continue;
    const i = s.indexOf("=");
    if (i < 1) throw new Error("attributes: want key=value lines, got " + JSON.stringify(s));
    out[s.slice(0, i).trim()] = s.slice(i + 1).trim();
  }
  return out;
}

let listState = { after: "", filters: {} };

async function listView(main) {
  const f = listState.filters;
  const q = new URLSearchParams();
  for (const k of ["prefix", "state", "tenant"]) if (f[k]) q.set(k, f[k]);
  if (f.attr) q.append("attr", f.attr);
  if (listState.after) q.set("after", listState.after);
  q.set("limit", "50");
  const page = await call("GET", "/devices?" + q.toString());

  const search = el("form", { id: "search", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    listState = { after: "", filters: { prefix: $("f-prefix").value, state: $("f-state").value, attr: $("f-attr").value, tenant: me.operator ? $("f-tenant").value : "" } };
    route();
  } },
    el("label", {}, "Name starts with", el("input", { id: "f-prefix", value: f.prefix || "" })),
    el("label", {}, "Suspended", el("select", { id: "f-state" },
      [["", "either"], ["active", "no"], ["suspended", "yes"]].map(([s, label]) => el("option", { value: s, selected: (f.state || "") === s }, label)))),
    el("label", {}, "Attribute (key=value)", el("input", { id: "f-attr", value: f.attr || "" })),
    me.operator ? el("label", {}, "Tenant", el("input", { id: "f-tenant", value: f.tenant || "" })) : null,
    el("button", { id: "search-button", type: "submit" }, "Search"));

  const rows = page.devices.map((d) => el("tr", { dataset: { device: d.name } },
    el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.name) }, d.name)),
    el("td", {}, d.tenant || "-"),
    el("td", { className: "state-" + d.condition }, d.invalid ? "invalid: " + d.invalid : d.condition),
    el("td", {}, String(d.active_keys)), el("td", {}, String(d.revoked_keys)),
    el("td", {}, Object.entries(d.attributes || {}).map(([k, v]) => k + "=" + v).join(", "))));
  const table = el("table", { id: "devices" },
    el("thead", {}, el("tr", {}, ["Device", "Tenant", "State", "Active keys", "Revoked keys", "Attributes"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
  const more = page.next ? el("button", { id: "next-page", type: "button", onclick: () => { listState.after = page.next; route(); } }, "Next page") : null;

  const register = el("form", { id: "register", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    const name = $("r-name").value.trim();
    let attrs;
    try { attrs = attrsOf($("r-attrs").value); } catch (err) { showError(err); return; }
    const body = { attributes: attrs };
    if (me.operator && $("r-tenant").value) body.tenant = $("r-tenant").value.trim();
    confirmThen("Register " + name + (body.tenant ? " for " + body.tenant : "") + "?", async () => {
      await call("POST", "/devices/" + encodeURIComponent(name) + "/register", body);
      location.hash = "#/device/" + encodeURIComponent(name.toLowerCase());
    });
  } },
    el("label", {}, "Name", el("input", { id: "r-name", required: true, placeholder: "sensor7" })),
    me.operator ? el("label", {}, "Tenant", el("input", { id: "r-tenant" })) : null,
    el("label", {}, "Attributes (key=value per line)", el("textarea", { id: "r-attrs", rows: 2 })),
    el("button", { id: "register-button", type: "submit" }, "Register"));

  const accept = el("form", { id: "accept", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    const name = $("a-name").value.trim();
    const body = { code: $("a-code").value.trim(), keep_keys: $("a-keep").checked };
    if (me.operator) body.tenant = $("a-tenant").value.trim();
    confirmThen("Take " + name + " over" + (body.keep_keys ? ", keeping its keys" : ", revoking its keys") + "?", async () => {
      await call("POST", "/devices/" + encodeURIComponent(name) + "/transfer/accept", body);
      location.hash = "#/device/" + encodeURIComponent(name.toLowerCase());
    });
  } },
    el("label", {}, "Device", el("input", { id: "a-name", required: true })),
    el("label", {}, "Transfer code", el("input", { id: "a-code", required: true })),
    me.operator ? el("label", {}, "For tenant", el("input", { id: "a-tenant" })) : null,
    el("label", {}, "Keep its keys", el("input", { id: "a-keep", type: "checkbox" })),
    el("button", { id: "accept-button", type: "submit" }, "Accept transfer"));

  main.replaceChildren(...[el("h2", {}, "Devices"), search, table, more,
    el("h2", {}, "Register a device"), register, el("h2", {}, "Accept a transfer"), accept].filter(Boolean));
}

function fmtTime(t) { return t ? new Date(t).toISOString().replace(".000Z", "Z") : "-"; }

async function deviceView(main, name) {
  const path = "/devices/" + encodeURIComponent(name);
  const d = await call("GET", path);
  const [dnsAnswer, audit] = await Promise.all([
    call("GET", path + "/dns").catch((err) => ({ error: err.message })),
    call("GET", "/audit?device=" + encodeURIComponent(d.name) + "&limit=100").catch((err) => ({ entries: [], error: err.message })),
  ]);
  const state = d.state || "active";
  // act is a button that confirms, runs fn, and shows the device again (unless fn
  // returns "keep": it put a code on the page to read).
  const act = (label, id, text, fn, danger) => el("button", { id, type: "button", className: danger ? "danger" : "",
    onclick: () => confirmThen(text, async () => { if (await fn() !== "keep") await route(); }) }, label);
  const result = el("div", { id: "result" });
  const showCode = (what, c) => result.replaceChildren(el("p", {}, what + " (until " + fmtTime(c.expires) + "): "),
    el("span", { id: "code", className: "code" }, c.code));

  const reason = el("select", { id: "reason" }, ["unspecified", "keyCompromise", "superseded", "cessationOfOperation", "affiliationChanged", "privilegeWithdrawn"]
    .map((r) => el("option", { value: r }, r)));
  const actions = el("div", { className: "actions" },
    act("Issue enrollment code", "issue-code", "Issue a one-time enrollment code for " + d.name + "?", async () => {
      const c = await call("POST", path + "/code", {});
      showCode("Enrollment code for EST /simpleenroll", c);
      notice("Enrollment code issued.");
      return "keep";
    }),
    state === "suspended"
      ? act("Resume", "resume", "Resume " + d.name + "? DNS vouches for its keys again.", () => call("POST", path + "/resume"))
      : act("Suspend", "suspend", "Suspend " + d.name + "? DNS stops vouching for its keys within a second.", () => call("POST", path + "/suspend")),
    el("label", {}, "Reason", reason),
    act("Revoke all keys", "revoke", "Revoke every key of " + d.name + "? This cannot be undone.",
      () => call("POST", path + "/revoke", { reason: reason.value }), true),
    act("Start transfer", "start-transfer", "Make a transfer code for " + d.name + "? Whoever has it can take the device.", async () => {
      const c = await call("POST", path + "/transfer");
      showCode("Transfer code for the gaining tenant", c);
      notice("Transfer code made.");
      return "keep";
    }),
    act("Cancel transfer", "cancel-transfer", "Cancel the pending transfer of " + d.name + "?", () => call("DELETE", path + "/transfer")),
    act("Delete", "delete", "Delete " + d.name + ", its keys and its records in DNS?", async () => {
      await call("DELETE", path);
      location.hash = "#/devices";
    }, true));
  // The operator gives a device to a tenant without a code (one from before tenants, a dispute).
  const assignTenant = el("input", { id: "assign-tenant", placeholder: "tenant" });
  const assignKeep = el("input", { id: "assign-keep", type: "checkbox" });
  const assign = el("div", { className: me.operator ? "actions" : "" }, me.operator ? [
    el("label", {}, "Assign to tenant ", assignTenant),
    el("label", {}, assignKeep, " keep the keys active"),
    act("Assign", "assign", "Give " + d.name + " to the tenant named, without a transfer code?",
      () => call("POST", path + "/assign", { tenant: assignTenant.value.trim(), keep_keys: assignKeep.checked }), true)] : null);

  const attrs = el("table", { id: "attributes" }, Object.entries(d.attributes || {}).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", { className: "attr-value" }, v))));
  const keys = el("table", { id: "keys" },
    el("thead", {}, el("tr", {}, ["Key (SHA-256 of the SPKI)", "Status", "Not after", "Reason", "Certificate"].map((h) => el("th", {}, h)))),
    el("tbody", {}, d.keys.map((k) => el("tr", {},
      el("td", { className: "mono" }, k.spki_sha256), el("td", { className: "status-" + k.status }, k.status),
      el("td", {}, fmtTime(k.not_after)), el("td", {}, k.reason || ""), el("td", {}, k.certificate ? "yes" : "no")))));
  const dnsBox = el("div", { id: "dns" }, dnsAnswer.error
    ? el("p", {}, "DNS: " + dnsAnswer.error)
    : [el("p", {}, dnsAnswer.owner + " TLSA: " + dnsAnswer.rcode + (dnsAnswer.signed ? ", signed" : "") + " (from " + dnsAnswer.server + ")"),
       el("ul", { id: "dns-records" }, dnsAnswer.records.length ? dnsAnswer.records.map((r) => el("li", { className: "mono" }, r)) : el("li", {}, "no TLSA records"))]);
  const history = el("table", { id: "audit" },
    el("thead", {}, el("tr", {}, ["Time", "Revision", "Actor", "Operation", "Before → after", "Detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, (audit.entries || []).map((a) => el("tr", {},
      el("td", {}, fmtTime(a.time)), el("td", {}, String(a.revision)), el("td", {}, a.actor), el("td", {}, a.operation),
      el("td", {}, summary(a.before) + " → " + summary(a.after)), el("td", {}, a.detail || "")))));

  main.replaceChildren(
    el("h2", { id: "device-name" }, d.name),
    el("p", {}, "Tenant: ", el("b", { id: "device-tenant" }, d.tenant || "-"), " · State: ",
      el("b", { id: "device-state", className: "state-" + d.condition }, d.condition)),
    actions, assign, result,
    el("h2", {}, "Attributes"), attrs,
    el("h2", {}, "Keys"), keys,
    el("h2", {}, "What DNS serves now"), dnsBox,
    el("h2", {}, "History"), history);
}

// servicesView lists the service identities (DANE server authentication) with their
// keys, publishes a key, and revokes (retires) one.
let servicesAfter = "";

async function servicesView(main) {
  const list = await call("GET", "/services?limit=50" + (servicesAfter ? "&after=" + encodeURIComponent(servicesAfter) : ""));
  const rows = [];
  for (const svc of list.services) {
    for (const k of svc.keys) {
      rows.push(el("tr", { dataset: { service: svc.name } },
        el("td", {}, svc.name), el("td", {}, svc.tenant || "-"), el("td", { className: "mono" }, k.spki_sha256),
        el("td", { className: "status-" + k.status }, k.status + (k.reason ? " (" + k.reason + ")" : "")),
        el("td", {}, k.status === "active" ? el("button", { type: "button", className: "danger retire", onclick: () =>
          confirmThen("Retire this key of " + svc.name + "? DNS publishes it as revoked.", async () => {
            await call("POST", "/services/" + encodeURIComponent(svc.name) + "/revoke", { spki_sha256: k.spki_sha256, reason: "superseded" });
            await route();
          }) }, "Retire") : "")));
    }
  }
  const publish = el("form", { id: "publish", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    const name = $("s-name").value.trim();
    const pemText = $("s-pem").value.trim();
    const body = pemText.includes("CERTIFICATE") ? { certificate: pemText } : { public_key: pemText };
    confirmThen("Publish this key for " + name + "? DNS serves it as TLSA 3 1 1 within a second.", async () => {
      await call("POST", "/services/" + encodeURIComponent(name) + "/keys", body);
      await route();
    });
  } },
    el("label", {}, "Service (_port._tcp.host)", el("input", { id: "s-name", required: true, placeholder: "_8883._tcp.mqtt." + (me.tenant || "acme") })),
    el("label", {}, "Certificate or public key (PEM)", el("textarea", { id: "s-pem", rows: 3, cols: 50, required: true })),
    el("button", { id: "publish-button", type: "submit" }, "Publish key"));
  const pages = el("p", {},
    servicesAfter ? el("button", { id: "first-services", type: "button", onclick: () => { servicesAfter = ""; route(); } }, "First page") : null,
    list.next ? el("button", { id: "next-services", type: "button", onclick: () => { servicesAfter = list.next; route(); } }, "Next page") : null);
  main.replaceChildren(el("h2", {}, "Services"),
    el("p", {}, "The endpoints devices connect to, authenticated by DANE: each key is served as TLSA at _port._tcp.host under the zone. To rotate, publish the new key, then retire the old one."),
    el("table", { id: "services" },
      el("thead", {}, el("tr", {}, ["Service", "Tenant", "Key (SHA-256 of the SPKI)", "Status", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    pages,
    el("h2", {}, "Publish a key"), publish);
}

// svg makes an SVG element with attributes (never markup) and children.
function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// keysView shows the zone's DNSSEC keys (the operator's): a table, and their timeline
// drawn as bars: published (grey), signing (green), CDS at the parent's door (blue),
// and now (a red line).
async function keysView(main) {
  const v = await call("GET", "/keys");
  const t = (s) => (s ? Date.parse(s) : null);
  const now = Date.parse(v.now);
  const times = [now];
  for (const k of v.keys) for (const s of Object.values(k.timeline || {})) if (t(s)) times.push(t(s));
  const from = Math.min(...times), to = Math.max(...times, now + 1) + (Math.max(...times) - Math.min(...times)) * 0.05 + 1;
  const W = 900, rowH = 26, left = 210, top = 20;
  const x = (ms) => left + ((ms - from) / (to - from)) * (W - left - 10);
  const rows = [];
  v.keys.forEach((k, i) => {
    const y = top + i * rowH, tl = k.timeline || {};
    const bar = (start, end, cls, h, dy) => start ? svg("rect", { class: cls, x: x(start), y: y + dy, height: h, width: Math.max(1, x(end || to) - x(start)) }) : null;
    rows.push(svg("g", { "data-key": k.id },
      svg("text", { x: 4, y: y + 15 }, k.id + (k.role ? " (" + k.role + ", " + k.tag + ")" : " (invalid)")),
      bar(t(tl.publish), t(tl.remove), "published", 18, 0),
      bar(t(tl.active), t(tl.retire), "signs", 10, 4),
      bar(t(tl.sync_publish), t(tl.sync_delete), "cds", 4, 19)));
  });
  const drawing = svg("svg", { id: "key-timeline", width: W, height: top + v.keys.length * rowH + 20, role: "img" },
    svg("title", {}, "Timeline of the zone's DNSSEC keys"),
    rows,
    svg("line", { class: "now", x1: x(now), x2: x(now), y1: 0, y2: top + v.keys.length * rowH + 10 }),
    svg("text", { x: left, y: 12 }, new Date(from).toISOString().slice(0, 16) + "Z"),
    svg("text", { x: W - 150, y: 12 }, new Date(to).toISOString().slice(0, 16) + "Z"));
  const table = el("table", { id: "keys-table" },
    el("thead", {}, el("tr", {}, ["Key", "Role", "Tag", "Algorithm", "Now", "Publish", "Active", "Retire", "Remove", "CDS from", "DS seen"].map((h) => el("th", {}, h)))),
    el("tbody", {}, v.keys.map((k) => el("tr", {}, el("td", { className: "mono" }, k.id),
      k.error ? el("td", { colSpan: 10, className: "status-revoked" }, "invalid: " + k.error) : [
        el("td", {}, k.role), el("td", {}, k.tag), el("td", {}, k.algorithm), el("td", {}, k.now.join(", ") || "-"),
        ...["publish", "active", "retire", "remove", "sync_publish", "ds_seen"].map((f) => el("td", {}, fmtTime(k.timeline[f])))]))));
  const state = !v.managed ? "The key manager does not manage this zone's keys (deviceid-signer keys enable)."
    : v.paused ? "The key manager is paused (deviceid-signer keys resume)."
    : "The key manager rolls these keys: ZSK every " + v.policy.zsk_lifetime + ", KSK every " + v.policy.ksk_lifetime + ", DNSKEY TTL " + v.policy.dnskey_ttl + ", DS TTL " + v.policy.ds_ttl + ".";
  main.replaceChildren(el("h2", {}, "DNSSEC keys of " + v.zone), el("p", { id: "keys-state" }, state), drawing,
    el("p", { className: "legend" }, "Grey: DNSKEY published. Green: signing. Blue: CDS asks the parent for its DS. Red: now."), table);
}

// The overview: devices by condition, the last days' activity from the audit trail,
// devices whose keys expire soon, and what DNS serves. The API counts; the page draws
// the charts as SVG elements (no markup, no external asset).
const conditionColors = { active: "#2e7d32", expiring: "#c77700", suspended: "#b45309", revoked: "#b42318", expired: "#6b7280", registered: "#1e66d0" };
const activitySeries = [["enrollments", "Enrollments", "#2e7d32"], ["revocations", "Revocations", "#b42318"], ["transfers", "Transfers", "#1e66d0"]];

async function overviewView(main, tenant) {
  const o = await call("GET", "/overview" + (tenant ? "?tenant=" + encodeURIComponent(tenant) : ""));
  const who = o.tenant ? "tenant " + o.tenant : "the whole registry";
  let tenantLinks = null;
  if (me.operator) {
    const ts = await call("GET", "/tenants");
    tenantLinks = el("p", { id: "overview-tenants" }, "Overview of: ",
      el("a", { href: "#/overview" }, "all tenants"),
      ts.tenants.map((t) => [" · ", el("a", { href: "#/overview/" + encodeURIComponent(t.name) }, t.name)]));
  }
  const devicesNote = "Devices: " + o.devices + (o.partial ? " (the first " + o.devices + " counted: there are more)" : "") +
    (o.invalid ? ", " + o.invalid + " stored records invalid" : "");
  show(main,
    el("h2", { id: "overview-title" }, "Overview of " + who),
    tenantLinks,
    el("div", { className: "cards" },
      el("section", { className: "card" }, el("h3", {}, "Devices by state"), el("p", { id: "devices-count" }, devicesNote), conditionsChart(o)),
      el("section", { className: "card" }, el("h3", {}, "Last " + o.activity.length + " days (audit trail)"), activityChart(o),
        el("p", { id: "activity-totals", className: "legend" }, activitySeries.map(([k, label]) =>
          el("span", { className: "key", dataset: { series: k } }, el("span", { className: "swatch " + k }), label + " " + o.activity.reduce((n, d) => n + d[k], 0)))),
        o.activity_partial ? el("p", {}, "More entries than one overview reads: the oldest days are counted in part.") : null),
      el("section", { className: "card" }, el("h3", {}, "Keys expiring in the next 30 days"), expiringTable(o)),
      o.dns ? el("section", { className: "card wide" }, el("h3", {}, "DNS"), dnsHealth(o.dns, Date.parse(o.now))) : null));
}

// conditionsChart is a horizontal bar a condition, its count at the end.
function conditionsChart(o) {
  const rows = Object.keys(conditionColors);
  const W = 460, rowH = 24, left = 90, most = Math.max(1, ...rows.map((k) => o.conditions[k] || 0));
  return svg("svg", { id: "chart-conditions", width: W, height: rows.length * rowH + 4, role: "img" },
    svg("title", {}, "Devices by state"),
    rows.map((k, i) => {
      const n = o.conditions[k] || 0, y = i * rowH + 2, w = (n / most) * (W - left - 50);
      return svg("g", { "data-condition": k, "data-count": n },
        svg("text", { x: 0, y: y + 15 }, k),
        svg("rect", { x: left, y, width: Math.max(n ? 2 : 0, w), height: rowH - 6, fill: conditionColors[k] }),
        svg("text", { class: "count", x: left + w + 6, y: y + 15 }, String(n)));
    }));
}

// activityChart draws the days' enrollments, revocations and transfers side by side.
function activityChart(o) {
  const W = 460, H = 170, bottom = 20, top = 14, left = 24;
  const most = Math.max(1, ...o.activity.flatMap((d) => activitySeries.map(([k]) => d[k])));
  const dayW = (W - left) / o.activity.length, barW = Math.max(2, (dayW - 4) / activitySeries.length);
  const y = (n) => H - bottom - (n / most) * (H - bottom - top);
  return svg("svg", { id: "chart-activity", width: W, height: H, role: "img" },
    svg("title", {}, "Enrollments, revocations and transfers a day"),
    svg("line", { class: "axis", x1: left, x2: W, y1: H - bottom, y2: H - bottom }),
    svg("text", { x: 0, y: top }, String(most)),
    svg("text", { x: 0, y: H - bottom }, "0"),
    o.activity.map((d, i) => svg("g", { "data-day": d.day },
      activitySeries.map(([k, label, color], j) => svg("rect", { class: k, "data-count": d[k], fill: color,
        x: left + i * dayW + 2 + j * barW, y: y(d[k]), width: barW - 1, height: H - bottom - y(d[k]) },
        svg("title", {}, d.day + ": " + d[k] + " " + label.toLowerCase()))),
      (o.activity.length - 1 - i) % 2 === 0
        ? svg("text", { class: "day", x: left + i * dayW + 1, y: H - 5 }, d.day.slice(5)) : null)));
}

function expiringTable(o) {
  if (!o.expiring_count) return el("p", { id: "expiring-none" }, "No device's keys expire within 30 days.");
  return [el("p", { id: "expiring-count" }, "Devices whose last key expires within 30 days: " + o.expiring_count +
      (o.expiring_count > o.expiring.length ? " (the first " + o.expiring.length + " shown)" : "")),
    el("table", { id: "expiring" },
      el("thead", {}, el("tr", {}, ["Device", "Tenant", "Expires"].map((h) => el("th", {}, h)))),
      el("tbody", {}, o.expiring.map((d) => el("tr", {},
        el("td", {}, el("a", { href: "#/device/" + encodeURIComponent(d.name) }, d.name)), el("td", {}, d.tenant || "-"), el("td", {}, fmtTime(d.expires))))))];
}

// dnsHealth is a row a DNS server: the serial it serves, what etcd changed since, when its
// signatures expire, or why it could not be asked.
function dnsHealth(servers, now) {
  const days = (t) => ((Date.parse(t) - now) / 86400000).toFixed(1) + " days";
  const revision = Math.max(0, ...servers.map((h) => h.etcd_revision));
  const rows = servers.map((h) => el("tr", { dataset: { server: h.server } },
    el("td", {}, h.server || "-"),
    h.error ? el("td", { className: "problem state-revoked", colSpan: 3 }, h.error) : [
      el("td", { className: "serial" }, String(h.serial)),
      el("td", { className: "unserved" + (h.unserved ? " state-expiring" : "") }, h.unserved ? h.unserved + " records changed after it" : "none: in step"),
      el("td", { className: "sig-expiry" }, h.signature_expires ? fmtTime(h.signature_expires) + " (in " + days(h.signature_expires) + ")" : "unsigned")]));
  return [el("p", { id: "dns-etcd-revision" }, "etcd revision: " + (revision || "-")),
    el("table", { id: "dns-health" },
      el("thead", {}, el("tr", {}, ["Server", "SOA serial", "Changes not served yet", "Signatures expire"].map((x) => el("th", {}, x)))),
      el("tbody", {}, rows)),
    el("p", { className: "legend" }, servers.length > 1
      ? "The signer asks each replica it was given (-dns-replicas). "
      : "The signer asks the one DNS server it was given (-dns; name every replica with -dns-replicas). ",
    "Each replica also reports its lag (coredns_deviceid_etcd_revisions_behind) and signature expiry " +
      "(coredns_deviceid_apex_signatures_expire_timestamp_seconds) on its /metrics.")];
}

// auditView is the audit trail with filters, newest pages on demand.
let auditState = { after: "", filters: {} };

async function auditView(main) {
  const f = auditState.filters;
  const q = new URLSearchParams();
  for (const k of ["tenant", "operation", "device", "since", "until"]) if (f[k]) q.set(k, f[k]);
  if (auditState.after) q.set("after", auditState.after);
  q.set("limit", "100");
  const page = await call("GET", "/audit?" + q.toString());
  // datetime-local inputs say minutes, in UTC here; the API takes RFC 3339.
  const rfc = (v) => (v ? v + ":00Z" : "");
  const local = (v) => (v ? v.slice(0, 16) : "");
  const operations = ["device.register", "device.code", "device.enroll", "device.reenroll", "device.revoke", "device.suspend", "device.resume",
    "device.attributes", "device.delete", "device.assign", "transfer.start", "transfer.cancel", "transfer.accept",
    "service.publish", "service.revoke", "service.delete", "tenant.create", "tenant.disable", "tenant.enable", "tenant.delete", "token.issue", "token.revoke"];
  const form = el("form", { id: "audit-filters", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    auditState = { after: "", filters: { tenant: me.operator ? $("af-tenant").value.trim() : "", operation: $("af-operation").value,
      device: $("af-device").value.trim(), since: rfc($("af-since").value), until: rfc($("af-until").value) } };
    route();
  } },
    me.operator ? el("label", {}, "Tenant", el("input", { id: "af-tenant", value: f.tenant || "" })) : null,
    el("label", {}, "Action", el("select", { id: "af-operation" },
      ["", ...operations].map((op) => el("option", { value: op, selected: (f.operation || "") === op }, op || "any")))),
    el("label", {}, "Device", el("input", { id: "af-device", value: f.device || "" })),
    el("label", {}, "From (UTC)", el("input", { id: "af-since", type: "datetime-local", value: local(f.since) })),
    el("label", {}, "Until (UTC)", el("input", { id: "af-until", type: "datetime-local", value: local(f.until) })),
    el("button", { id: "audit-search", type: "submit" }, "Filter"));
  const table = el("table", { id: "audit-trail" },
    el("thead", {}, el("tr", {}, ["Time", "Actor", "Action", "Device or tenant", "Before → after", "Detail"].map((h) => el("th", {}, h)))),
    el("tbody", {}, page.entries.map((a) => el("tr", { dataset: { operation: a.operation } },
      el("td", {}, fmtTime(a.time)), el("td", {}, a.actor), el("td", {}, a.operation),
      el("td", {}, a.device ? el("a", { href: "#/device/" + encodeURIComponent(a.device) }, a.device) : a.service || a.tenant || "-"),
      el("td", {}, a.before || a.after ? summary(a.before) + " → " + summary(a.after) : ""), el("td", {}, a.detail || "")))));
  show(main, el("h2", {}, "Audit trail"), form,
    el("p", { id: "audit-count" }, page.entries.length + " entries" + (page.next ? " on this page" : "")), table,
    page.next ? el("button", { id: "audit-next", type: "button", onclick: () => { auditState.after = page.next; route(); } }, "Next page") : null);
}

// tenantsView lists the tenants (the operator's), creates one, disables and enables one.
async function tenantsView(main) {
  const list = await call("GET", "/tenants");
  const rows = list.tenants.map((t) => el("tr", { dataset: { tenant: t.name } },
    el("td", {}, el("a", { href: "#/tenant/" + encodeURIComponent(t.name) }, t.name)),
    el("td", { className: t.disabled ? "state-revoked" : "state-active" }, t.disabled ? "disabled" : "enabled"),
    el("td", {}, fmtTime(t.created)),
    el("td", {}, el("a", { href: "#/overview/" + encodeURIComponent(t.name) }, "overview")),
    el("td", {}, t.disabled
      ? el("button", { type: "button", className: "enable", onclick: () => confirmThen("Enable " + t.name + "? Its credentials work again.",
        async () => { await call("POST", "/tenants/" + encodeURIComponent(t.name) + "/enable"); await route(); }) }, "Enable")
      : el("button", { type: "button", className: "danger disable", onclick: () => confirmThen("Disable " + t.name + "? Its credentials are refused; its devices stay in DNS.",
        async () => { await call("POST", "/tenants/" + encodeURIComponent(t.name) + "/disable"); await route(); }) }, "Disable"))));
  const create = el("form", { id: "tenant-create", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    const name = $("t-name").value.trim();
    confirmThen("Create the tenant " + name + "?", async () => {
      await call("POST", "/tenants", { name });
      location.hash = "#/tenant/" + encodeURIComponent(name);
    });
  } },
    el("label", {}, "Name", el("input", { id: "t-name", required: true, placeholder: "acme" })),
    el("button", { id: "tenant-create-button", type: "submit" }, "Create tenant"));
  show(main, el("h2", {}, "Tenants"),
    el("table", { id: "tenants" },
      el("thead", {}, el("tr", {}, ["Tenant", "State", "Created", "", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    el("h2", {}, "Create a tenant"), create);
}

// tokensView lists a tenant's tokens, issues one (its secret shown once) and revokes one.
async function tokensView(main, name) {
  const path = "/tenants/" + encodeURIComponent(name);
  const [t, list] = await Promise.all([call("GET", path), call("GET", path + "/tokens")]);
  const result = el("div", { id: "result" });
  const rows = list.tokens.map((k) => el("tr", { dataset: { token: k.id } },
    el("td", { className: "mono" }, k.id), el("td", {}, k.label || "-"), el("td", {}, fmtTime(k.created)),
    el("td", {}, el("button", { type: "button", className: "danger revoke-token", onclick: () => confirmThen("Revoke the token " + k.id + " of " + name + "? Whoever uses it is refused.",
      async () => { await call("DELETE", path + "/tokens/" + encodeURIComponent(k.id)); await route(); }) }, "Revoke"))));
  const issue = el("form", { id: "token-issue", className: "inline", onsubmit: (e) => {
    e.preventDefault();
    const label = $("k-label").value.trim();
    confirmThen("Issue a token for " + name + "?", async () => {
      const tok = await call("POST", path + "/tokens", { label });
      await route();
      $("result").replaceChildren(el("p", {}, "The token " + tok.id + " (shown this once; the signer keeps only its hash):"),
        el("span", { id: "new-token", className: "code" }, tok.token));
    });
  } },
    el("label", {}, "Label", el("input", { id: "k-label", placeholder: "provisioning" })),
    el("button", { id: "token-issue-button", type: "submit" }, "Issue token"));
  show(main, el("h2", { id: "tenant-name" }, "Tenant " + t.name),
    el("p", {}, "State: ", el("b", { id: "tenant-state", className: t.disabled ? "state-revoked" : "state-active" }, t.disabled ? "disabled" : "enabled"),
      " · ", el("a", { href: "#/overview/" + encodeURIComponent(t.name) }, "overview"), " · ", el("a", { href: "#/tenants" }, "all tenants")),
    el("h2", {}, "Tokens"),
    rows.length ? null : el("p", {}, "No tokens."),
    el("table", { id: "tokens" },
      el("thead", {}, el("tr", {}, ["Token", "Label", "Created", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)),
    el("h2", {}, "Issue a token"), issue, result);
}

function summary(s) {
  if (!s) return "-";
  return (s.tenant || "-") + "/" + s.state + " " + s.active_keys + " active, " + s.revoked_keys + " revoked";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("login-token").value.trim()); });
  window.addEventListener("hashchange", route);
  route();
});
