/* hybridstore admin UI: actions through the REST API (session cookie + CSRF header), jobs followed to their end,
   typed confirmations, JSON editors that refuse invalid JSON, live numbers over server-sent events. */
(() => {
  "use strict";
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const STATE = {
    healthy: "ok", closed: "ok", idle: "ok", local_only: "ok", degraded: "warn", recovering: "warn",
    half_open: "warn", pushing: "warn", pulling: "warn", outage: "bad", down: "bad", open: "bad",
    offline: "bad", error: "bad", misconfigured: "bad"
  };
  const stateClass = (s) => STATE[s] || "muted";

  async function call(method, url, body, contentType) {
    const headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    let payload;
    if (body !== undefined) {
      if (contentType) { headers["Content-Type"] = contentType; payload = body; }
      else { headers["Content-Type"] = "application/json"; payload = JSON.stringify(body); }
    }
    const response = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    let data = null;
    const text = await response.text();
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { detail: text }; }
    return { status: response.status, ok: response.ok, data };
  }

  function say(out, text, kind) {
    if (!out) return;
    out.className = "result" + (kind ? " " + kind : "");
    out.textContent = "";
    if (text instanceof Node) out.appendChild(text); else out.textContent = text;
  }
  const problem = (r) => (r.data && (r.data.title || r.data.detail))
    ? `${r.data.title || "Error"}: ${r.data.detail || ""} (${r.status})` : `Failed (${r.status})`;

  function table(rows) {
    const t = document.createElement("table");
    if (!rows.length) return document.createTextNode("nothing");
    const cols = Object.keys(rows[0]);
    const head = t.createTHead().insertRow();
    cols.forEach((c) => { const th = document.createElement("th"); th.scope = "col"; th.textContent = c; head.appendChild(th); });
    const body = t.createTBody();
    rows.forEach((r) => { const tr = body.insertRow(); cols.forEach((c) => { tr.insertCell().textContent = typeof r[c] === "object" ? JSON.stringify(r[c]) : String(r[c]); }); });
    return t;
  }

  function summary(data) {
    const box = document.createElement("div");
    if (data && data.totals) {  // a restore report
      const p = document.createElement("p");
      p.textContent = (data.dry_run ? "Dry run — would change: " : "Restored: ") +
        Object.entries(data.totals).map(([k, v]) => `${k} ${v}`).join(", ");
      box.appendChild(p);
      if (data.diff && data.diff.length) {
        const cap = document.createElement("p"); cap.textContent = "Differences" + (data.diff_truncated ? " (first ones)" : "") + ":";
        box.appendChild(cap); box.appendChild(table(data.diff));
      }
      return box;
    }
    if (data && data.key && typeof data.key === "string" && data.key.startsWith("hsk_")) {
      box.innerHTML = "";
      const p = document.createElement("p"); p.textContent = "The new key (shown this once): ";
      const code = document.createElement("code"); code.textContent = data.key; code.dataset.newKey = "";
      p.appendChild(code); box.appendChild(p); return box;
    }
    if (data && Array.isArray(data.removed)) {
      const p = document.createElement("p");
      p.textContent = (data.dry_run ? "Would remove " : "Removed ") + data.removed.length + " backup(s)" +
        (data.removed.length ? ": " + data.removed.map((b) => b.id).join(", ") : ".");
      box.appendChild(p); return box;
    }
    const pre = document.createElement("pre"); pre.textContent = JSON.stringify(data, null, 2);
    box.appendChild(pre); return box;
  }

  async function follow(r, out) {
    if (r.status !== 202 || !r.data || !r.data.id) return r;
    let job = r.data;
    while (job.state === "running") {
      const p = job.progress || {};
      say(out, `Running ${job.kind}… ${p.phase || ""} ${p.done ?? ""}${p.total ? " / " + p.total : ""}`);
      await new Promise((ok) => setTimeout(ok, 400));
      const next = await call("GET", `/api/v1/jobs/${encodeURIComponent(job.id)}`);
      if (!next.ok) return next;
      job = next.data;
    }
    if (job.state === "succeeded") return { status: 200, ok: true, data: job.result };
    return { status: (job.problem && job.problem.status) || 500, ok: false, data: job.problem };
  }

  function finish(el, r, out) {
    if (!r.ok) { say(out, problem(r), "bad"); return; }
    say(out, summary(r.data), "ok");
    if (el.dataset.after) setTimeout(() => { location.href = el.dataset.after; }, 600);
    else if (el.hasAttribute("data-reload")) setTimeout(() => location.reload(), 900);
  }
  const outOf = (el) => el.querySelector("[data-result]") || (el.closest("section, article, td, form") || document).querySelector("[data-result]");

  // buttons: data-action="METHOD url" data-body='{json}'
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    if (btn.dataset.ask && !window.confirm(btn.dataset.ask)) return;
    const [method, url] = btn.dataset.action.split(" ");
    const out = outOf(btn);
    btn.disabled = true;
    say(out, "Working…");
    try { finish(btn, await follow(await call(method, url, btn.dataset.body ? JSON.parse(btn.dataset.body) : {}), out), out); }
    catch (e) { say(out, "Failed: " + e.message, "bad"); }
    finally { btn.disabled = false; }
  });

  function fields(form) {
    const body = Object.assign({}, form.dataset.body ? JSON.parse(form.dataset.body) : {}, form.dataset.fixed ? JSON.parse(form.dataset.fixed) : {});
    for (const el of form.elements) {
      if (!el.name || el.hasAttribute("data-local") || el.type === "submit" || el.type === "file") continue;
      if (el.type === "checkbox") {
        if (el.value && el.value !== "on") { if (el.checked) (body[el.name] = body[el.name] || []).push(el.value); }
        else body[el.name] = el.checked;
      } else if (el.dataset.type === "json") {
        body[el.name] = JSON.parse(el.value);
      } else if (el.dataset.type === "number" || el.dataset.type === "int") {
        if (el.value !== "") body[el.name] = el.dataset.type === "int" ? parseInt(el.value, 10) : Number(el.value);
      } else body[el.name] = el.value;
    }
    return body;
  }

  // typed confirmations and JSON editors keep their form's submit button disabled until the input is right
  function check(form) {
    let ok = true;
    form.querySelectorAll("[data-must-equal]").forEach((i) => { if (i.value !== i.dataset.mustEqual) ok = false; });
    form.querySelectorAll('textarea[data-type="json"]').forEach((t) => {
      const err = form.querySelector("[data-json-error]");
      try { JSON.parse(t.value); t.removeAttribute("aria-invalid"); if (err) err.textContent = ""; }
      catch (e) { ok = false; t.setAttribute("aria-invalid", "true"); if (err) err.textContent = "Invalid JSON: " + e.message; }
    });
    const submit = form.querySelector('button[type="submit"]');
    if (submit && (form.querySelector("[data-must-equal]") || form.querySelector('textarea[data-type="json"]'))) submit.disabled = !ok;
  }
  document.addEventListener("input", (ev) => {
    const form = ev.target.closest("form");
    if (!form) return;
    check(form);
    if (form.dataset.restore) { const c = form.querySelector("[data-confirm-restore]"); if (c) c.disabled = true; }
  });

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!(form.dataset.api || form.dataset.upload || form.dataset.restore || form.dataset.resilience)) return;
    ev.preventDefault();
    const out = outOf(form);
    const submit = form.querySelector('button[type="submit"]');
    if (submit) submit.disabled = true;
    try {
      if (form.dataset.upload) {
        const file = form.querySelector('input[type="file"]').files[0];
        if (!file) { say(out, "Pick a file first.", "bad"); return; }
        say(out, `Uploading ${file.name}…`);
        finish(form, await follow(await call("POST", form.dataset.upload, file, "application/octet-stream"), out), out);
      } else if (form.dataset.restore) {
        await restorePreview(form, out);
      } else if (form.dataset.resilience) {
        await runResilience(form, out);
      } else {
        let body;
        try { body = fields(form); } catch (e) { say(out, "Invalid JSON: " + e.message, "bad"); return; }
        if (form.dataset.raw) body = body[form.dataset.raw];
        if (form.dataset.spread) { const extra = body[form.dataset.spread]; delete body[form.dataset.spread]; Object.assign(body, extra); }
        const method = (form.dataset.method || "POST").toUpperCase();
        say(out, "Working…");
        finish(form, await follow(await call(method, form.dataset.api, body), out), out);
      }
    } catch (e) { say(out, "Failed: " + e.message, "bad"); }
    finally { if (submit) { submit.disabled = false; check(form); } }
  });

  // restore: a dry run first; its diff is shown, then the confirm button is enabled for exactly that selection
  function restoreBody(form) {
    const body = fields(form);
    const keys = (body.keys || "").split(",").map((k) => k.trim()).filter(Boolean);
    if (keys.length) body.keys = keys; else delete body.keys;
    if (!body.collections || !body.collections.length) delete body.collections;
    return body;
  }
  async function restorePreview(form, out) {
    const confirmBtn = form.querySelector("[data-confirm-restore]");
    confirmBtn.disabled = true;
    const body = Object.assign(restoreBody(form), { dry_run: true });
    say(out, "Computing the differences…");
    const r = await follow(await call("POST", form.dataset.restore, body), out);
    if (!r.ok) { say(out, problem(r), "bad"); return; }
    say(out, summary(r.data), "ok");
    form.dataset.previewed = JSON.stringify(body);
    confirmBtn.disabled = false;
  }
  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-confirm-restore]");
    if (!btn) return;
    const form = btn.closest("form");
    const out = outOf(form);
    const body = Object.assign(JSON.parse(form.dataset.previewed || "{}"), { dry_run: false, confirm: form.dataset.id });
    btn.disabled = true;
    say(out, "Restoring…");
    const r = await follow(await call("POST", form.dataset.restore, body), out);
    if (!r.ok) { say(out, problem(r), "bad"); return; }
    say(out, summary(r.data), "ok");
    setTimeout(() => location.reload(), 1500);
  });

  // the resilience tester (its API comes with the resilience part of the service)
  const finishedRun = (run) => run && !["running", "queued", "pending", "started"].includes(run.status);
  async function runResilience(form, out) {
    const scenario = form.elements.scenario.value;
    const body = { duration: Number(form.elements.duration.value) || 10 };
    if (scenario) body.scenarios = [scenario];
    const r = await call("POST", form.dataset.resilience, body);
    if (!r.ok) { say(out, problem(r), "bad"); return; }
    let run = r.data;
    while (!finishedRun(run)) {
      const p = run.progress || {};
      say(out, `Running… ${p.scenario || ""} ${p.done ?? 0}${p.total ? " / " + p.total : ""}`);
      await new Promise((ok) => setTimeout(ok, 500));
      const next = await call("GET", `${form.dataset.resilience}/${encodeURIComponent(run.id)}`);
      if (!next.ok) { say(out, problem(next), "bad"); return; }
      run = next.data;
    }
    const box = summary({ id: run.id, status: run.status, report: run.report });
    box.prepend(reportLink(form.dataset.resilience, run));
    say(out, box, run.status === "failed" || run.error ? "bad" : "ok");
    loadRuns();
  }
  function reportLink(base, run) {
    const p = document.createElement("p");
    p.textContent = `Run ${run.id}: ${run.status}${run.error ? " — " + run.error : ""}. `;
    const a = document.createElement("a");
    a.href = `${base}/${encodeURIComponent(run.id)}/report.html`;
    a.textContent = "Full report";
    p.appendChild(a);
    return p;
  }
  async function loadRuns() {
    const box = document.querySelector("[data-resilience-runs]");
    if (!box) return;
    const r = await call("GET", box.dataset.resilienceRuns);
    if (!r.ok) { box.textContent = problem(r); return; }
    const runs = Array.isArray(r.data) ? r.data : (r.data.runs || []);
    box.textContent = "";
    if (!runs.length) { box.textContent = "No run yet."; return; }
    const list = document.createElement("ul");
    list.className = "plain";
    runs.forEach((run) => {
      const li = document.createElement("li");
      li.appendChild(reportLink(box.dataset.resilienceRuns, run));
      list.appendChild(li);
    });
    box.appendChild(list);
  }

  // live numbers
  const pad = (n) => String(n).padStart(2, "0");
  function fmt(value, how) {
    if (value === null || value === undefined) return "—";
    if (how === "age") {
      const s = Math.max(0, Math.floor(value));
      if (s < 60) return `${s} s`;
      if (s < 3600) return s < 600 ? `${Math.floor(s / 60)} min ${pad(s % 60)} s` : `${Math.floor(s / 60)} min`;
      return `${Math.floor(s / 3600)} h ${pad(Math.floor(s % 3600 / 60))} min`;
    }
    if (how === "when") return new Date(value * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    return String(value);
  }
  function apply(sample) {
    document.querySelectorAll("[data-live]").forEach((el) => {
      const name = el.dataset.live;
      let value = sample[name];
      if (name === "writes_total") value = Math.round(Object.values(sample.writes || {}).reduce((a, b) => a + b, 0) * 10) / 10;
      if (value === undefined) return;
      el.textContent = fmt(value, el.dataset.format);
      if (el.hasAttribute("data-state-badge")) el.className = "badge " + stateClass(value);
    });
    document.querySelectorAll("[data-live-class]").forEach((el) => {
      el.className = el.className.replace(/\bstate-\w+/g, "").trim() + " state-" + stateClass(sample[el.dataset.liveClass]);
    });
    document.dispatchEvent(new CustomEvent("hs:sample", { detail: sample }));
  }
  if (csrf && window.EventSource) {
    const source = new EventSource("/admin/stream");
    source.addEventListener("sample", (e) => apply(JSON.parse(e.data)));
    // node events (primary down, circuit open, backup taken…) are announced as they happen
    const toast = document.getElementById("toast");
    let hide;
    source.addEventListener("node-event", (e) => {
      const ev = JSON.parse(e.data);
      toast.textContent = `${ev.kind.replace(/_/g, " ")}${ev.detail ? ": " + ev.detail : ""}`;
      clearTimeout(hide);
      hide = setTimeout(() => { toast.textContent = ""; }, 8000);
    });
    window.addEventListener("pagehide", () => source.close());
  }
  document.querySelectorAll("[data-load]").forEach(async (el) => {
    const r = await call("GET", el.dataset.load);
    el.textContent = r.ok ? JSON.stringify(r.data, null, 2) : problem(r);
  });
  document.querySelectorAll("form").forEach(check);
  loadRuns();
})();
