"use strict";
// The index: every input from the page's JSON, sorted, filtered and searched as arrays; only the
// first rows of the result are put in the table (more on demand), so 10,000 inputs stay fast.
(function () {
  var STEP = 250;
  var data = JSON.parse(document.getElementById("index-data").textContent);
  var col = {};
  data.columns.forEach(function (name, i) { col[name] = i; });
  var all = data.rows;
  var view = all;
  var limit = STEP;
  var state = { flag: "", query: "", sortCol: null, ascending: true };
  var table = document.getElementById("runs");
  var body = table.tBodies[0];
  var shown = document.getElementById("shown");
  var more = document.getElementById("more");
  var search = document.getElementById("search");
  var buttons = Array.prototype.slice.call(document.querySelectorAll(".filters button"));
  var NUMBERS = ["pages", "tokens", "eos", "length", "repetition", "retries"];

  function cell(tr, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function link(parent, href, text, className) {
    var a = document.createElement("a");
    a.setAttribute("href", href);
    a.textContent = text;
    if (className) a.className = className;
    parent.appendChild(a);
  }

  function row(r) {
    var tr = document.createElement("tr");
    var doc = cell(tr, "", "doc");
    if (r[col.href]) link(doc, r[col.href], r[col.path]);
    else doc.textContent = r[col.path];
    cell(tr, r[col.status], "status-" + r[col.status]);
    cell(tr, r[col.reason]);
    cell(tr, r[col.message], "msg");
    NUMBERS.forEach(function (name) { cell(tr, String(r[col[name]]), "num"); });
    cell(tr, Number(r[col.seconds]).toFixed(1), "num");
    var review = cell(tr, "");
    r[col.review].forEach(function (p) {
      link(review, r[col.href] + "#p" + p[0], "p" + p[0] + " " + data.words[p[1]], "flag " + p[1]);
    });
    if (r[col.more]) review.appendChild(document.createTextNode(" +" + r[col.more] + " more"));
    tr.setAttribute("data-flags", r[col.flags]);
    return tr;
  }

  function render() {
    var fragment = document.createDocumentFragment();
    view.slice(0, limit).forEach(function (r) { fragment.appendChild(row(r)); });
    body.textContent = "";
    body.appendChild(fragment);
    var count = view.length === all.length ? all.length + " inputs" : view.length + " of " + all.length + " inputs";
    shown.textContent = view.length > limit ? count + ", the first " + limit + " shown" : count;
    more.hidden = view.length <= limit;
  }

  function matches(r) {
    if (state.flag && (" " + r[col.flags] + " ").indexOf(" " + state.flag + " ") < 0) return false;
    if (!state.query) return true;
    return (r[col.path] + " " + r[col.message] + " " + r[col.reason]).toLowerCase().indexOf(state.query) >= 0;
  }

  function compare(a, b) {
    var x = a[state.sortCol];
    var y = b[state.sortCol];
    if (Array.isArray(x)) { x = x.length; y = y.length; }
    if (typeof x === "string") { x = x.toLowerCase(); y = String(y).toLowerCase(); }
    var d = x < y ? -1 : x > y ? 1 : 0;
    return state.ascending ? d : -d;
  }

  function update() {
    view = all.filter(matches);
    if (state.sortCol !== null) view.sort(compare);
    limit = STEP;
    render();
  }

  table.tHead.addEventListener("click", function (event) {
    var th = event.target.closest("th");
    if (!th) return;
    var target = col[th.getAttribute("data-col")];
    state.ascending = state.sortCol === target ? !state.ascending : true;
    state.sortCol = target;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", state.ascending ? "ascending" : "descending");
    update();
  });
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      state.flag = b.getAttribute("data-filter");
      buttons.forEach(function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      update();
    });
  });
  search.addEventListener("input", function () {
    state.query = search.value.trim().toLowerCase();
    update();
  });
  more.addEventListener("click", function () {
    limit += STEP;
    render();
  });
  render();
})();
