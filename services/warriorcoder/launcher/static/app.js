// The arena page: polls the JSON routes and builds the document with DOM calls only.
// Everything model-written is set with textContent, never parsed as HTML.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#4a7bd0", "#d0694a", "#4aa05a", "#a04ad0", "#d0b04a", "#4ac0d0", "#777", "#d04a8f"];
  const state = { before: null, models: [], filterKey: "", board: "", battles: "" };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);  // strings become text nodes
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%");
  const num = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }

  // -- code: escape by construction (text nodes), then wrap fenced blocks and colour tokens ------
  const TOKENS = /(#[^\n]*|\/\/[^\n]*)|("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|\b(\d+(?:\.\d+)?)\b|\b(def|class|return|if|elif|else|for|while|import|from|as|in|is|not|and|or|None|True|False|function|const|let|var|int|void|public|static|try|except|finally|catch|raise|throw|with|lambda|yield|async|await|new|struct|fn|pub|use|impl|match|package|func|include)\b/g;
  function highlight(code) {
    const out = el("code");
    let last = 0;
    for (const m of code.matchAll(TOKENS)) {
      if (m.index > last) out.append(code.slice(last, m.index));
      const cls = m[1] ? "tok-c" : m[2] ? "tok-s" : m[3] ? "tok-n" : "tok-k";
      out.append(el("span", { class: cls, text: m[0] }));
      last = m.index + m[0].length;
    }
    out.append(code.slice(last));
    return out;
  }
  function richText(text) {
    const box = el("div");
    const fence = /```[^\n`]*\n([\s\S]*?)(?:```|$)/g;
    let last = 0;
    for (const m of text.matchAll(fence)) {
      if (m.index > last) box.append(el("div", { class: "text", text: text.slice(last, m.index) }));
      box.append(el("pre", { class: "code" }, highlight(m[1])));
      last = m.index + m[0].length;
    }
    if (last < text.length) box.append(el("div", { class: "text", text: text.slice(last) }));
    return box;
  }

  // -- the charts -------------------------------------------------------------------------------
  // An interval end the bootstrap left unbounded comes as null (JSON has no infinity): the bar
  // then runs dashed to the chart's edge, so it never reads as a finite bound.
  function ciBar(row, lo, hi) {
    const box = svg("svg", { class: "ci", viewBox: "0 0 220 16", "aria-label": "interval" });
    const x = (v) => 10 + (200 * (v - lo)) / (hi - lo || 1);
    const open = row.bt_lower === null || row.bt_upper === null;
    const fa = row.bt_lower === null ? 1 : x(row.bt_lower), fb = row.bt_upper === null ? 219 : x(row.bt_upper);
    box.append(svg("line", { class: open ? "bar open" : "bar", x1: fa, x2: fb, y1: 8, y2: 8 }));
    if (row.bt !== null) box.append(svg("circle", { cx: x(row.bt), cy: 8, r: 3 }));
    const t = svg("title", {});
    t.textContent = `${row.bt_lower === null ? "-inf" : num(row.bt_lower)} .. ${row.bt_upper === null ? "+inf" : num(row.bt_upper)}`;
    box.append(t);
    return box;
  }
  function drawBoard(rows) {
    const body = document.querySelector("#board tbody");
    const ends = rows.flatMap((r) => [r.bt_lower, r.bt_upper, r.bt]).filter((v) => v !== null);
    const lo = Math.min(...ends, 1000) - 10, hi = Math.max(...ends, 1000) + 10;
    body.replaceChildren(...rows.map((r, i) => el("tr", { "data-model": r.model },
      el("td", { text: String(i + 1) }), el("td", { text: r.model }), el("td", { text: num(r.elo) }),
      el("td", { text: num(r.bt) }), el("td", {}, ciBar(r, lo, hi)), el("td", { text: String(r.votes) }),
      el("td", { text: r.runs ? pct(r.pass_rate) + ` of ${r.runs}` : "–" }))));
  }
  function drawHistory(history) {
    const box = document.getElementById("history"), legend = document.getElementById("history-legend");
    const models = Object.keys(history);
    const pts = models.flatMap((m) => history[m]);
    box.replaceChildren(); legend.replaceChildren();
    if (!pts.length) return;
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys) - 5, Math.max(...ys) + 5];
    const X = (v) => 40 + (550 * (v - x0)) / (x1 - x0 || 1), Y = (v) => 245 - (230 * (v - y0)) / (y1 - y0 || 1);
    for (const v of [y0, (y0 + y1) / 2, y1]) {
      box.append(svg("line", { x1: 40, x2: 590, y1: Y(v), y2: Y(v), stroke: "#eee" }));
      const t = svg("text", { x: 2, y: Y(v) + 4, "font-size": 10, fill: "#666" }); t.textContent = v.toFixed(0); box.append(t);
    }
    models.forEach((m, i) => {
      const c = COLOURS[i % COLOURS.length];
      box.append(svg("polyline", { fill: "none", stroke: c, "stroke-width": 2,
        points: history[m].map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ") }));
      const sw = el("i"); sw.style.background = c;
      legend.append(el("span", {}, sw, m));
    });
  }
  function drawMatrix(matrix) {
    const t = document.getElementById("matrix");
    t.tHead.replaceChildren(el("tr", {}, el("th"), ...matrix.models.map((m) => el("th", { text: m }))));
    t.tBodies[0].replaceChildren(...matrix.models.map((a, i) => el("tr", {}, el("th", { text: a }),
      ...matrix.models.map((_, j) => {
        const r = matrix.rate[i][j], cell = el("td", { text: r === null ? "–" : `${pct(r)} (${matrix.games[i][j]})` });
        if (r !== null) cell.style.background = `rgba(${Math.round(220 - 160 * r)}, ${Math.round(90 + 110 * r)}, 110, .35)`;
        return cell;
      }))));
  }
  function drawFunnel(samples, rejections) {
    const rows = [["became samples", samples, true], ...Object.entries(rejections).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v, false])];
    const max = Math.max(1, ...rows.map((r) => r[1]));
    document.getElementById("funnel").replaceChildren(...rows.map(([label, n, kept]) => {
      const bar = el("span", { class: "fbar" }); bar.style.width = `${(260 * n) / max}px`;
      return el("div", { class: kept ? "funnel-row kept" : "funnel-row" }, el("span", { class: "label", text: label }), bar, String(n));
    }));
  }
  function drawJudges(judges, window) {
    document.querySelector("#judges tbody").replaceChildren(...judges.map((j) => el("tr", {},
      el("td", { text: j.judge }), el("td", { text: String(j.votes) }),
      el("td", { text: `${pct(j.position_consistency)} of ${j.both_orders}` }),
      el("td", { text: pct(j.tie_rate) }), el("td", { text: pct(j.invalid_rate) }),
      el("td", { text: `${pct(j.majority_agreement)} of ${j.compared}` }))));
    document.getElementById("window").textContent =
      `Charts and judge statistics over the latest ${window.battles} battles` +
      (window.error ? ` (${window.error})` : "");
  }
  // Family bias: rates with their 95% interval and hits/trials; null (no qualifying vote): n/a.
  const pp = (x) => { const r = Math.round(100 * x) || 0; return (r > 0 ? "+" : "") + r; };
  const rateText = (r) => (r.rate === null ? "n/a" : `${pct(r.rate)} [${pct(r.lower)}, ${pct(r.upper)}] (${r.hits}/${r.trials})`);
  function drawBias(bias) {
    const note = document.getElementById("bias-note");
    const rows = Object.entries(bias.judges);
    document.querySelector("#bias tbody").replaceChildren(...rows.map(([judge, j]) => el("tr", { "data-judge": judge },
      el("td", { text: judge }), el("td", { text: j.family === null ? "none" : j.family }),
      el("td", { text: rateText(j.same_family) }), el("td", { text: rateText(j.other_family) }),
      el("td", { text: j.bias === null ? "n/a" : `${pp(j.bias)} pp [${pp(j.bias_lower)}, ${pp(j.bias_upper)}]` }),
      el("td", { text: String(j.votes) }), el("td", { text: String(j.own_family_battles) }))));
    let why = "";
    if (!bias.known) why = "Model families unknown: they come from the arena config (warriorcoder web --config arena.yaml).";
    else if (!Object.values(bias.families).some((f) => f !== null)) why = "No model in the arena config has a family: every judge is neutral.";
    else if (!rows.length) why = "No valid votes in the window yet.";
    note.hidden = !why; note.textContent = why;
  }
  function setOptions(models) {
    if (models.join() === state.models.join()) return;
    state.models = models;
    for (const name of ["model", "winner"]) {
      const sel = document.querySelector(`#filters [name=${name}]`), keep = sel.value;
      sel.replaceChildren(el("option", { value: "", text: "any" }), ...models.map((m) => el("option", { value: m, text: m })));
      sel.value = keep;
    }
  }
  async function refreshBoard() {
    const b = await getJSON("/api/board");
    const key = JSON.stringify(b);
    if (key === state.board) return;  // unchanged: keep the document (and what is hovered) as is
    state.board = key;
    const s = b.status;
    document.getElementById("status").textContent =
      `${s.samples}${s.target ? "/" + s.target : ""} samples · ${s.samples_per_s} samples/s · ` +
      `${s.battles_rated} battles rated · backlog ${Object.entries(s.backlog).map(([k, v]) => k + " " + v).join(", ") || "–"} · dead letters ${s.dead_letters}`;
    const note = document.getElementById("note");
    note.hidden = !s.note; note.textContent = s.note || "";
    drawBoard(s.leaderboard); drawHistory(b.history); drawMatrix(b.matrix);
    drawFunnel(s.samples, s.rejections); drawJudges(b.judges, b.window);
    drawBias(b.bias);
    setOptions([...new Set([...s.leaderboard.map((r) => r.model), ...b.matrix.models])].sort());
  }

  // -- the battle browser -----------------------------------------------------------------------
  function filterQuery() {
    const p = new URLSearchParams(new FormData(document.getElementById("filters")));
    for (const [k, v] of [...p]) if (!v) p.delete(k);
    return p;
  }
  function answerBox(title, text, won) {
    return el("div", { class: "answer" }, el("h4", { class: won ? "won" : "", text: title }), richText(text));
  }
  function battleCard(b) {
    const card = el("div", { class: "battle", "data-seq": String(b.seq) },
      el("div", { class: "head" },
        el("b", { text: `#${b.seq}` }),
        el("span", { text: `${b.attacker} vs ${b.defender}` }),
        el("span", { class: "won", text: `winner ${b.winner}` }),
        el("span", { class: "tag", text: b.language }),
        el("span", { class: "tag", text: "votes " + b.votes.join(", ") }),
        ...(b.disagree ? [el("span", { class: "tag warn", text: "judges disagree" })] : []),
        ...(b.test_backed ? [el("span", { class: "tag ok", text: "test-backed" })] : [])),
      el("div", { class: "preview" },
        el("div", { class: "text instruction", text: b.instruction }),
        el("div", { class: "pair" },
          el("div", { class: "text answer-preview", text: `${b.attacker}: ${b.attacker_answer}` }),
          el("div", { class: "text answer-preview", text: `${b.defender}: ${b.defender_answer}` }))));
    card.addEventListener("click", () => { location.hash = `#battle/${b.seq}`; });
    return card;
  }
  async function refreshBattles() {
    const q = filterQuery();
    if (q.toString() !== state.filterKey) { state.filterKey = q.toString(); state.before = null; }
    if (state.before !== null) q.set("before", String(state.before));
    const page = await getJSON("/api/battles?" + q.toString());
    const key = q.toString() + JSON.stringify(page);
    if (key === state.battles) return;
    state.battles = key;
    const list = document.getElementById("battles");
    list.replaceChildren(...(page.battles.length ? page.battles.map(battleCard) : [el("p", { class: "muted", text: "no battles match" })]));
    list.dataset.count = String(page.battles.length);
    const older = document.getElementById("older");
    older.hidden = page.next_before === null;
    older.dataset.before = page.next_before === null ? "" : String(page.next_before);
    document.getElementById("newer").hidden = state.before === null;
  }
  function runTable(run) {
    return el("div", {},
      el("p", { text: `${run.status}: ${run.passed} passed, ${run.failed} failed, ${run.errored} errored of ${run.total} (${num(run.wall_s, 2)}s)` }),
      ...(run.stdout ? [el("details", {}, el("summary", { text: "stdout" }), el("pre", { class: "code", text: run.stdout }))] : []),
      ...(run.stderr ? [el("details", {}, el("summary", { text: "stderr" }), el("pre", { class: "code", text: run.stderr }))] : []));
  }
  function scoreCard(b) {
    const s = b.score, rows = [
      ["t (judge votes) attacker / defender", `${num(s.t_attacker)} / ${num(s.t_defender)}`],
      ["x(A>B) local score", num(s.x_attacker, 3)], ["E(A>B) Elo expectation", num(s.E_attacker, 3)],
      ["e final attacker / defender", `${num(s.e_attacker, 3)} / ${num(s.e_defender, 3)}`], ["alpha", num(s.alpha, 2)]];
    if (s.x_exec_attacker !== null) rows.push(["x_exec(A>B), weight", `${num(s.x_exec_attacker, 2)}, ${num(s.execution_weight, 2)}`]);
    for (const m of [b.attacker, b.defender]) rows.push([`${m} rating before → after`, `${num(b.ratings_before[m])} → ${num(b.ratings_after[m])}`]);
    rows.push(["decided by", b.decided_by]);
    return el("table", { class: "card" }, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v })))));
  }
  async function showBattle(seq) {
    const b = await getJSON(`/api/battles/${seq}`);
    const body = document.getElementById("battle-body");
    const judges = b.judges.map((j) => el("div", { class: "judge", "data-judge": j.judge },
      el("h4", { text: `${j.judge}: ${j.winner}` + (j.asked > j.orders.length ? ` (asked ${j.asked} times)` : "") }),
      ...j.orders.map((o) => el("div", { class: "order" },
        el("p", { text: `${o.first}'s answer shown first → verdict ${o.verdict} (${o.picked})` }),
        o.reason ? el("details", {}, el("summary", { text: "reasoning" }), el("div", { class: "text reason", text: o.reason }))
                 : el("p", { class: "muted small", text: "no reasoning recorded" })))));
    const execution = b.execution ? [el("h3", { text: `Execution (${b.execution.sandbox})` }),
      el("div", { class: "pair" }, el("div", {}, el("h4", { text: b.attacker }), runTable(b.execution.attacker)),
        el("div", {}, el("h4", { text: b.defender }), runTable(b.execution.defender)))] : [];
    const tests = b.tests ? [el("details", {}, el("summary", { text: `Tests by ${b.tests.writer}${b.tests.usable ? "" : " (unusable)"}` }),
      el("pre", { class: "code" }, highlight(b.tests.code)))] : [];
    body.replaceChildren(
      el("h2", { text: `Battle #${b.seq}: ${b.attacker} vs ${b.defender}, ${b.winner} won` }),
      el("h3", { text: "Instruction" }), el("div", { class: "instruction" }, richText(b.instruction)),
      el("div", { class: "pair" }, answerBox(`${b.attacker} (attacker)`, b.attacker_answer, b.winner_role === "attacker"),
        answerBox(`${b.defender} (defender)`, b.defender_answer, b.winner_role === "defender")),
      el("h3", { text: "Judges" }), ...judges, ...tests, ...execution,
      el("h3", { text: "Score card" }), scoreCard(b));
    body.dataset.seq = String(b.seq);
  }

  // -- routing and polling ----------------------------------------------------------------------
  async function route() {
    const m = location.hash.match(/^#battle\/(\d+)$/);
    document.getElementById("front").hidden = !!m;
    document.getElementById("battle").hidden = !m;
    if (m) await showBattle(Number(m[1])).catch(showError);
  }
  function showError(err) { document.getElementById("status").textContent = "error: " + err.message; }
  async function tick() {
    try {
      await refreshBoard();
      if (!document.getElementById("front").hidden && state.before === null) await refreshBattles();
    } catch (err) { showError(err); }
  }
  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("filters");
    form.addEventListener("input", () => refreshBattles().catch(showError));
    form.addEventListener("submit", (e) => { e.preventDefault(); refreshBattles().catch(showError); });
    document.getElementById("older").addEventListener("click", (e) => {
      state.before = Number(e.target.dataset.before); refreshBattles().catch(showError);
    });
    document.getElementById("newer").addEventListener("click", () => {
      state.before = null; refreshBattles().catch(showError);
    });
    document.getElementById("back").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; });
    window.addEventListener("hashchange", route);
    route(); tick();
    setInterval(tick, 2000);
  });
})();
