"use strict";
// A document's pages one at a time (the URL's #pN), layout boxes linked to their text both ways.
(function () {
  var pages = Array.prototype.slice.call(document.querySelectorAll("section.page"));
  var links = Array.prototype.slice.call(document.querySelectorAll(".strip a"));
  var prev = document.getElementById("prev");
  var next = document.getElementById("next");
  var where = document.getElementById("where");
  var toggle = document.getElementById("overlay-toggle");
  var current = 0;

  function show(i) {
    if (!pages.length) return;
    current = Math.max(0, Math.min(pages.length - 1, i));
    pages.forEach(function (p, k) { p.hidden = k !== current; });
    links.forEach(function (a, k) { a.classList.toggle("current", k === current); });
    prev.href = "#" + pages[Math.max(0, current - 1)].id;
    next.href = "#" + pages[Math.min(pages.length - 1, current + 1)].id;
    where.textContent = "page " + pages[current].getAttribute("data-number") + " (" + (current + 1) + " of " +
      pages.length + ")";
  }

  function fromHash() {
    var id = decodeURIComponent(location.hash.slice(1));
    var i = pages.findIndex(function (p) { return p.id === id; });
    show(i < 0 ? 0 : i);
  }

  function go(step) {
    if (!pages.length) return;
    var i = Math.max(0, Math.min(pages.length - 1, current + step));
    location.hash = pages[i].id;
  }

  function setOverlay(on) {
    document.body.classList.toggle("no-overlay", !on);
    toggle.checked = on;
  }

  function highlight(target, on) {
    var item = target.closest("[data-block]");
    if (!item) return;
    var page = item.closest("section.page");
    var id = item.getAttribute("data-block");
    page.querySelectorAll('[data-block="' + id + '"]').forEach(function (el) { el.classList.toggle("hot", on); });
    var label = page.querySelector(".hover-label");
    label.textContent = on ? item.getAttribute("data-label") : "";
    label.hidden = !on;
  }

  document.addEventListener("mouseover", function (e) { highlight(e.target, true); });
  document.addEventListener("mouseout", function (e) { highlight(e.target, false); });
  toggle.addEventListener("change", function () { setOverlay(toggle.checked); });
  window.addEventListener("hashchange", fromHash);
  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName)) return;
    if (e.key === "ArrowRight" || e.key === "j") go(1);
    else if (e.key === "ArrowLeft" || e.key === "k") go(-1);
    else if (e.key === "o") setOverlay(!toggle.checked);
    else if (e.key === "r" && pages.length) {
      var raw = pages[current].querySelector("details.raw");
      raw.open = !raw.open;
    } else return;
    e.preventDefault();
  });
  fromHash();
})();
