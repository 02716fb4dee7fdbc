// gridvisor live view: the supervision tree, the segments' power against their limits and
// the fault and restart stream, kept current by the node's Server-Sent Events (/api/live).
// No libraries: the page must work on a site without internet.
"use strict";
(() => {
  /** Levels of the tree loaded at first: the root, its children, the segments, their actors. */
  const FIRST_DEPTH = 3;
  /** Tree rows the page holds at most; past it, lists say "N more". */
  const DOM_ROW_LIMIT = 2000;
  /** Rows of the event stream kept. */
  const EVENT_ROW_LIMIT = 200;
  /** Points per chart (60 s at the node's 250 ms tick). */
  const CHART_POINTS = 240;
  /** Segments drawn as charts; the rest are counted. */
  const SEGMENT_CARD_LIMIT = 24;
  /** Typing pause before a filter is sent. */
  const FILTER_DEBOUNCE_MS = 200;
  /** A parent whose children changed is reloaded after this pause (a burst costs one). */
  const CHILDREN_RELOAD_MS = 300;
  /** After dropped reports the open tree is reloaded at most this often. */
  const TREE_RELOAD_MIN_MS = 2000;
  /** Open subtrees re-opened after a reload, at most. */
  const REOPEN_LIMIT = 32;
  /** How long a row that just changed stays outlined. */
  const FLASH_MS = 1500;

  const SEGMENT_RE = /^[^/]+\/segments\/([^/]+)/;
  const SEGMENT_ROW_RE = /^[^/]+\/segments\/[^/]+$/;
  const LEVEL_NAMES = { normal: "normal", limited: "limited", charge_only: "charge only", tripped: "tripped" };

  const $ = (id) => document.getElementById(id);
  const treeEl = $("tree");
  /** path -> entry of a rendered tree row. */
  const rows = new Map();
  /** segment id -> level. */
  const levels = new Map();
  /** segment id -> { card, canvas, badge, nums, causes, points: [] }. */
  const cards = new Map();
  const stale = new Set();
  let staleTimer = 0;
  let rowCount = 0;
  let filterTimer = 0;
  let filtering = false;
  let lastReload = 0;
  let total = 0;

  // What the page has seen, for the status line (and for tests and the curious: window.gv).
  const gv = (window.gv = {
    hellos: 0, snapshots: 0, reports: 0, transitions: 0,
    snapshotLagMs: 0, lagMaxMs: 0, lagTotalMs: 0, lastSnapshotAt: 0, dropped: null, treeLoads: 0,
  });

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function segmentOf(path) {
    const m = SEGMENT_RE.exec(path);
    return m ? m[1] : null;
  }

  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json().catch(() => ({ message: r.statusText }));
    if (!r.ok) throw new Error(body.message || r.statusText);
    return body;
  }

  // ---------------------------------------------------------------- tree

  function setState(e, state, restarts, lastExit) {
    e.state = state;
    e.restarts = restarts;
    if (lastExit !== undefined) e.lastExit = lastExit;
    e.row.dataset.state = state;
    e.row.dataset.restarts = String(restarts);
    e.st.textContent = state.replace("_", " ");
    e.rs.textContent = restarts ? "\u21bb " + restarts : "";
    e.rs.classList.toggle("hot", restarts > 0);
    e.rs.title = restarts ? restarts + " restarts" : "";
    e.ex.textContent = e.lastExit ? "last exit: " + e.lastExit : "";
    e.ex.title = e.lastExit || "";
  }

  function flash(e) {
    e.row.classList.add("flash");
    clearTimeout(e.flashTimer);
    e.flashTimer = setTimeout(() => e.row.classList.remove("flash"), FLASH_MS);
  }

  function colour(e) {
    const seg = segmentOf(e.path);
    if (!seg) return;
    e.row.dataset.seg = seg;
    const level = levels.get(seg);
    if (level) e.row.dataset.level = level;
    if (e.lvl) e.lvl.textContent = level ? LEVEL_NAMES[level] : "";
  }

  function makeEntry(n) {
    const wrap = el("div", "node");
    const row = el("div", "row");
    row.setAttribute("role", "treeitem");
    row.dataset.path = n.path;
    const tg = el("span", "tg", n.child_count > 0 ? "\u25b8" : "");
    const id = el("span", "id", n.id);
    id.title = n.path;
    const kind = el("span", "kind", n.kind === "supervisor" ? (n.strategy || "supervisor") : "worker");
    const st = el("span", "st");
    const rs = el("span", "rs");
    const lvl = SEGMENT_ROW_RE.test(n.path) ? el("span", "lvl") : null;
    const ex = el("span", "ex");
    row.append(tg, id, kind, st, rs);
    if (lvl) row.append(lvl);
    if (n.descendants > 0) row.append(el("span", "kind", n.descendants + " below"));
    row.append(ex);
    if (n.path.includes("/")) {
      const k = el("button", "kill", "kill");
      k.type = "button";
      k.title = "kill the current incarnation (its supervisor restarts it)";
      k.addEventListener("click", () => kill(n.path));
      row.append(k);
    }
    const kids = el("div", "children");
    kids.hidden = true;
    wrap.append(row, kids);
    const e = {
      path: n.path, wrap, row, tg, st, rs, ex, lvl, kids,
      childCount: n.child_count, open: false, children: [], shown: 0, moreRow: null,
      state: "", restarts: 0, lastExit: null,
    };
    setState(e, n.state, n.restarts, n.last_exit);
    colour(e);
    if (n.child_count > 0) tg.addEventListener("click", () => toggle(e));
    rows.set(n.path, e);
    rowCount++;
    return e;
  }

  function dropEntry(e) {
    for (const c of e.children) dropEntry(c);
    e.children = [];
    if (rows.get(e.path) === e) rows.delete(e.path);
    rowCount--;
  }

  function closeEntry(e) {
    for (const c of e.children) dropEntry(c);
    e.children = [];
    e.kids.replaceChildren();
    e.kids.hidden = true;
    e.open = false;
    e.shown = 0;
    e.moreRow = null;
    if (e.childCount > 0) e.tg.textContent = "\u25b8";
  }

  /** Show `list` (children from offset `from`) under `e`, keeping rows still there. */
  function showChildren(e, list, more, from) {
    if (from === 0) {
      const keep = new Set(list.map((n) => n.path));
      for (const c of e.children) if (!keep.has(c.path)) dropEntry(c);
      e.children = e.children.filter((c) => keep.has(c.path));
    }
    const have = new Map(e.children.map((c) => [c.path, c]));
    const order = from === 0 ? [] : e.children.slice();
    let cut = 0;
    for (const n of list) {
      let c = have.get(n.path);
      if (c) {
        setState(c, n.state, n.restarts, n.last_exit);
        c.childCount = n.child_count;
      } else if (rowCount < DOM_ROW_LIMIT) {
        c = makeEntry(n);
      } else {
        cut++;
        continue;
      }
      order.push(c);
      if (Array.isArray(n.children) && !c.open) {
        c.open = true;
        c.tg.textContent = "\u25be";
        c.kids.hidden = false;
        showChildren(c, n.children, n.more, 0);
      }
    }
    e.children = order;
    e.kids.replaceChildren(...order.map((c) => c.wrap));
    e.shown = order.length;
    e.childCount = e.shown + more + cut;
    const rest = more + cut;
    e.moreRow = null;
    if (rest > 0) {
      const m = el("div", "row more");
      m.append(el("span", "tg"), el("span", null, rest + " more"));
      if (rowCount < DOM_ROW_LIMIT) {
        const b = el("button", "more-btn", "show " + Math.min(rest, gv.childrenLimit || 200) + " more");
        b.type = "button";
        b.addEventListener("click", () => expand(e, e.shown));
        m.append(b);
      } else {
        m.append(el("span", null, "(the page holds " + DOM_ROW_LIMIT + " rows: collapse or filter)"));
      }
      e.kids.append(m);
      e.moreRow = m;
    }
  }

  async function expand(e, from) {
    try {
      const a = await getJson("/api/live/tree?path=" + encodeURIComponent(e.path) + "&depth=1&offset=" + from);
      total = a.total;
      e.open = true;
      e.tg.textContent = "\u25be";
      e.kids.hidden = false;
      showChildren(e, a.node.children || [], a.node.more, from);
      status();
    } catch (err) {
      note("cannot open " + e.path + ": " + err.message);
    }
  }

  function toggle(e) {
    if (e.open) {
      closeEntry(e);
      status();
    } else {
      expand(e, 0);
    }
  }

  /** Observer's "kill process": the node kills the path's current incarnation. */
  async function kill(path) {
    if (!window.confirm("Kill the current incarnation of " + path + "?\nIts supervisor restarts it as after a crash; a supervisor takes its subtree with it.")) return;
    try {
      const r = await fetch("/api/actors/kill?path=" + encodeURIComponent(path), {
        method: "POST",
        headers: { "x-gridvisor-confirm": "kill" },
      });
      const body = await r.json().catch(() => ({}));
      note(r.ok ? "killed " + path + " (incarnation " + body.incarnation + ")" : "kill " + path + ": " + (body.message || r.statusText));
    } catch (err) {
      note("kill " + path + ": " + err.message);
    }
  }

  function note(text) {
    $("tree-note").textContent = text;
  }

  function clearTree() {
    rows.clear();
    rowCount = 0;
    treeEl.replaceChildren();
  }

  async function loadTree() {
    const reopen = [...rows.values()]
      .filter((e) => e.open && e.path.split("/").length > FIRST_DEPTH)
      .map((e) => e.path)
      .sort((a, b) => a.split("/").length - b.split("/").length)
      .slice(0, REOPEN_LIMIT);
    lastReload = Date.now();
    try {
      const a = await getJson("/api/live/tree?depth=" + FIRST_DEPTH);
      gv.treeLoads++;
      total = a.total;
      if (filtering) return;
      clearTree();
      const root = makeEntry(a.node);
      treeEl.append(root.wrap);
      if (Array.isArray(a.node.children)) {
        root.open = true;
        root.tg.textContent = "\u25be";
        root.kids.hidden = false;
        showChildren(root, a.node.children, a.node.more, 0);
      }
      for (const p of reopen) {
        const e = rows.get(p);
        if (e && !e.open) await expand(e, 0);
      }
      note("");
      status();
    } catch (err) {
      note("cannot load the tree: " + err.message);
    }
  }

  function collapseBelowSegments() {
    for (const e of [...rows.values()]) {
      if (e.open && e.path.split("/").length > FIRST_DEPTH) closeEntry(e);
    }
    status();
  }

  async function applyFilter(q) {
    if (!q) {
      filtering = false;
      await loadTree();
      return;
    }
    filtering = true;
    try {
      const a = await getJson("/api/live/tree?filter=" + encodeURIComponent(q));
      if (!filtering) return;
      clearTree();
      for (const n of a.matches) {
        const e = makeEntry({ ...n, child_count: 0 });
        e.row.querySelector(".id").textContent = n.path;
        treeEl.append(e.wrap);
      }
      const rest = a.total_matches - a.matches.length;
      note(a.total_matches + " of " + a.total + " actors match" + (rest > 0 ? " (" + rest + " more not shown: narrow the filter)" : ""));
      status();
    } catch (err) {
      note("filter: " + err.message);
    }
  }

  /** A child appeared or went under `parent`: reload its children soon (once per burst). */
  function childrenChanged(path) {
    const parent = path.slice(0, path.lastIndexOf("/"));
    const p = rows.get(parent);
    if (!p || !p.open || filtering) return;
    stale.add(parent);
    if (!staleTimer) {
      staleTimer = setTimeout(() => {
        staleTimer = 0;
        const paths = [...stale];
        stale.clear();
        for (const s of paths) {
          const e = rows.get(s);
          if (e && e.open) expandKeep(e);
        }
      }, CHILDREN_RELOAD_MS);
    }
  }

  async function expandKeep(e) {
    try {
      const a = await getJson("/api/live/tree?path=" + encodeURIComponent(e.path) + "&depth=1");
      if (e.open && rows.get(e.path) === e) {
        showChildren(e, a.node.children || [], a.node.more, 0);
        status();
      }
    } catch (err) {
      // The parent itself may be gone (restarting): its own report reloads it.
    }
  }

  // ---------------------------------------------------------------- events

  function clock(ms) {
    const d = new Date(ms);
    return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  function addEvent(kind, atMs, path, detail, level) {
    const li = el("li");
    li.dataset.kind = kind;
    li.dataset.path = path;
    if (level) li.dataset.level = level;
    const d = el("span", "d");
    d.append(el("span", "p", path), document.createTextNode(detail ? "  " + detail : ""));
    d.title = path + (detail ? " " + detail : "");
    li.append(el("span", "t", clock(atMs)), el("span", "k", kind.replace("_", " ")), d);
    const list = $("events");
    list.prepend(li);
    while (list.childElementCount > EVENT_ROW_LIMIT) list.lastElementChild.remove();
  }

  function onReport(r) {
    gv.reports++;
    const e = rows.get(r.path);
    switch (r.event) {
      case "started":
        if (e) setState(e, "running", 0);
        else childrenChanged(r.path);
        if ($("show-starts").checked) addEvent("started", r.at_ms, r.path, "");
        return;
      case "exited":
        if (e) { setState(e, "exited", e.restarts, r.reason); flash(e); }
        addEvent("exited", r.at_ms, r.path, r.reason);
        return;
      case "restarted":
        if (e) { setState(e, "running", r.restarts); flash(e); }
        addEvent("restarted", r.at_ms, r.path, "restart " + r.restarts);
        return;
      case "start_failed":
        if (e) { setState(e, "start_failed", e.restarts, r.reason); flash(e); }
        addEvent("start_failed", r.at_ms, r.path, r.reason);
        return;
      case "gave_up":
        if (e) { setState(e, "gave_up", e.restarts, r.reason); flash(e); }
        addEvent("gave_up", r.at_ms, r.path, "more than " + r.max_restarts + " restarts in " + r.period_ms / 1000 + " s; " + r.reason);
        return;
      case "escalated":
        if (e) { setState(e, "gave_up", e.restarts, r.reason); flash(e); }
        addEvent("escalated", r.at_ms, r.path, r.reason);
        return;
    }
  }

  function causeText(c) {
    if (typeof c === "string") return c.replace("_", " ");
    const [k, v] = Object.entries(c)[0] || ["?", ""];
    return k.replace("_", " ") + " " + v;
  }

  function onTransition(t) {
    gv.transitions++;
    const seg = t.segment;
    const to = t.transition.to.level;
    const from = t.transition.from.level;
    const causes = (t.transition.causes || []).map(causeText).join(", ");
    const before = gv.snapshots === 0 ? " (before this page opened)" : "";
    addEvent("transition", t.seen_ms, seg,
      LEVEL_NAMES[from] + " \u2192 " + LEVEL_NAMES[to] + (causes ? "  [" + causes + "]" : "") +
      (t.transition.alarm ? "  ALARM" : "") + before, to);
    setLevel(seg, to);
  }

  // ---------------------------------------------------------------- segments

  function setLevel(seg, level) {
    if (levels.get(seg) === level) return;
    levels.set(seg, level);
    for (const e of rows.values()) if (e.row.dataset.seg === seg) colour(e);
    const c = cards.get(seg);
    if (c) {
      c.card.dataset.level = level;
      c.badge.textContent = LEVEL_NAMES[level];
    }
  }

  function card(s) {
    let c = cards.get(s.id);
    if (c) return c;
    if (cards.size >= SEGMENT_CARD_LIMIT) return null;
    const div = el("div", "seg");
    div.dataset.segment = s.id;
    const head = el("div", "seg-head");
    const badge = el("span", "badge");
    const nums = el("span", "seg-nums");
    head.append(el("span", "name", s.id), el("span", "muted", s.substation), badge, nums);
    const causes = el("div", "seg-causes");
    const canvas = el("canvas");
    div.append(head, causes, canvas);
    $("segments").append(div);
    c = { card: div, badge, nums, causes, canvas, points: [] };
    cards.set(s.id, c);
    return c;
  }

  function fmt(x) {
    return Number.isFinite(x) ? x.toFixed(1) : "–";
  }

  // The segment's metered frequency and its frequency response (droop), e.g.
  // "60.336 Hz · droop +4.4 kW"; no reading yet: "– Hz".
  function freqText(hz, droopKw) {
    const f = Number.isFinite(hz) ? hz.toFixed(3) + " Hz" : "\u2013 Hz";
    if (!Number.isFinite(droopKw) || Math.abs(droopKw) < 0.05) return f;
    return f + " · droop " + (droopKw > 0 ? "+" : "") + droopKw.toFixed(1) + " kW";
  }

  function onSegments(snap) {
    gv.snapshots++;
    gv.lastSnapshotAt = Date.now();
    gv.snapshotLagMs = gv.lastSnapshotAt - snap.at_ms;
    gv.lagMaxMs = Math.max(gv.lagMaxMs, gv.snapshotLagMs);
    gv.lagTotalMs += gv.snapshotLagMs;
    for (const s of snap.segments) {
      setLevel(s.id, s.level);
      const c = card(s);
      if (!c) continue;
      c.card.dataset.level = s.level;
      c.badge.textContent = LEVEL_NAMES[s.level];
      c.nums.textContent = fmt(s.metered_kw) + " / " + fmt(s.import_limit_kw) + " kW · " +
        s.sessions + " sessions · " + s.links + " links · " + fmt(s.hot_spot_c) + " \u00b0C · " +
        freqText(s.frequency_hz, s.droop_kw);
      c.causes.textContent = s.causes.length ? "causes: " + s.causes.map(causeText).join(", ") : "";
      c.points.push({
        metered: s.metered_kw, setpoint: s.setpoint_kw,
        imp: s.import_limit_kw, exp: -s.export_limit_kw, rated: s.rated_kw,
      });
      if (c.points.length > CHART_POINTS) c.points.shift();
      draw(c);
    }
    const hidden = snap.segments.length - cards.size;
    $("segments-note").textContent = hidden > 0 ? hidden + " more segments (not drawn; the tree shows their levels)" : "";
    status();
  }

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function draw(c) {
    const cv = c.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(cv.clientWidth * dpr));
    const h = Math.max(1, Math.round(cv.clientHeight * dpr));
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    const g = cv.getContext("2d");
    g.clearRect(0, 0, w, h);
    const pts = c.points;
    if (!pts.length) return;
    const rated = pts[pts.length - 1].rated || 1;
    let span = rated * 1.15;
    for (const p of pts) {
      if (Number.isFinite(p.metered)) span = Math.max(span, Math.abs(p.metered) * 1.1);
      if (Number.isFinite(p.setpoint)) span = Math.max(span, Math.abs(p.setpoint) * 1.1);
    }
    const label = (v) => {
      const a = Math.abs(v);
      const t = a >= 1000 ? (a / 1000).toFixed(a % 1000 ? 1 : 0) + "k" : String(Math.round(a));
      return (v < 0 ? "\u2212" : "") + t;
    };
    g.font = 10 * dpr + "px system-ui, sans-serif";
    const left = Math.max(...[rated, -rated].map((v) => g.measureText(label(v)).width)) + 8 * dpr;
    const pw = w - left - 4 * dpr;
    const y = (v) => h / 2 - (v / span) * (h / 2 - 4 * dpr);
    // The newest point at the right edge, older ones scrolling left.
    const x = (i) => left + ((CHART_POINTS - pts.length + i) / (CHART_POINTS - 1)) * pw;
    g.fillStyle = css("--muted");
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of [rated, 0, -rated]) g.fillText(label(v), left - 4 * dpr, y(v));
    g.lineWidth = dpr;
    g.strokeStyle = "#e3e6eb";
    g.beginPath(); g.moveTo(left, y(0)); g.lineTo(w, y(0)); g.stroke();
    const line = (value, colour, width, dash) => {
      g.strokeStyle = colour;
      g.lineWidth = width * dpr;
      g.setLineDash(dash.map((d) => d * dpr));
      g.beginPath();
      let pen = false;
      pts.forEach((p, i) => {
        const v = value(p);
        if (!Number.isFinite(v)) { pen = false; return; }
        if (pen) g.lineTo(x(i), y(v)); else g.moveTo(x(i), y(v));
        pen = true;
      });
      g.stroke();
    };
    line((p) => p.rated, css("--rated"), 1, [2, 3]);
    line((p) => -p.rated, css("--rated"), 1, [2, 3]);
    line((p) => p.imp, css("--limit"), 1.5, [6, 3]);
    line((p) => p.exp, css("--limit"), 1.5, [6, 3]);
    line((p) => p.setpoint, css("--setpoint"), 1.5, []);
    line((p) => p.metered, css("--metered"), 2, []);
    g.setLineDash([]);
  }

  // ---------------------------------------------------------------- stream

  function status() {
    $("tree-total").textContent = total ? total + " actors, " + rowCount + " shown" : "";
    $("stats").textContent = gv.snapshots
      ? "update lag " + gv.snapshotLagMs + " ms \u00b7 " + gv.reports + " reports \u00b7 " + gv.transitions + " transitions"
      : "";
  }

  function connect() {
    const es = new EventSource("/api/live");
    const on = (name, f) => es.addEventListener(name, (m) => {
      let data;
      try { data = JSON.parse(m.data); } catch (err) { return; }
      f(data);
    });
    on("hello", (h) => {
      gv.hellos++;
      gv.childrenLimit = h.children_limit;
      const c = $("conn");
      c.textContent = "live";
      c.className = "conn up";
      // A reconnect may have missed reports: the tree is reloaded.
      if (gv.hellos > 1 && !filtering) loadTree();
    });
    on("segments", onSegments);
    on("transition", onTransition);
    on("report", onReport);
    on("dropped", (d) => {
      gv.dropped = d;
      const w = $("dropped");
      w.hidden = false;
      w.textContent = "Some reports were not shown (" + d.over_budget + " over the stream's budget, " +
        d.lagged + " lagged, " + d.queue_full + " queue full): the tree is reloaded.";
      if (!filtering && Date.now() - lastReload > TREE_RELOAD_MIN_MS) loadTree();
    });
    es.onerror = () => {
      const c = $("conn");
      c.textContent = "reconnecting…";
      c.className = "conn down";
    };
  }

  $("filter").addEventListener("input", (ev) => {
    clearTimeout(filterTimer);
    const q = ev.target.value.trim();
    filterTimer = setTimeout(() => applyFilter(q), FILTER_DEBOUNCE_MS);
  });
  $("reload").addEventListener("click", () => (filtering ? applyFilter($("filter").value.trim()) : loadTree()));
  $("collapse").addEventListener("click", collapseBelowSegments);

  loadTree();
  connect();
})();
