"use strict";
// The index: sort by any column, filter failed documents and pages that looped, were cut or retried.
(function () {
  var table = document.getElementById("runs");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var shown = document.getElementById("shown");
  var buttons = document.querySelectorAll(".filters button");

  function count(n) {
    shown.textContent = n === rows.length ? rows.length + " inputs" : n + " of " + rows.length + " inputs";
  }

  function filter(flag) {
    var n = 0;
    rows.forEach(function (row) {
      var keep = !flag || (" " + row.getAttribute("data-flags") + " ").indexOf(" " + flag + " ") >= 0;
      row.hidden = !keep;
      if (keep) n += 1;
    });
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-filter") === flag)); });
    count(n);
  }

  function sortBy(th) {
    var column = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var keyed = rows.map(function (row, i) {
      var text = row.cells[column].textContent;
      return { row: row, i: i, key: numeric ? (parseFloat(text) || 0) : text.toLowerCase() };
    });
    keyed.sort(function (a, b) {
      var d = a.key < b.key ? -1 : a.key > b.key ? 1 : a.i - b.i;
      return ascending ? d : -d;
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (k) { fragment.appendChild(k.row); });
    body.appendChild(fragment);
  }

  table.tHead.addEventListener("click", function (event) {
    var th = event.target.closest("th");
    if (th) sortBy(th);
  });
  buttons.forEach(function (b) {
    b.addEventListener("click", function () { filter(b.getAttribute("data-filter")); });
  });
  count(rows.length);
})();
