// Click a header of any table.sortable to sort its first <tbody> by that column.
// Cells may carry data-sort (a number or text); otherwise their text is used.
(function () {
  "use strict";
  var NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    raw = raw.trim();
    if (raw === "") return { empty: true };
    return NUMBER.test(raw) ? { n: parseFloat(raw) } : { s: raw.toLowerCase() };
  }
  function compare(a, b) {
    if (a.empty || b.empty) return a.empty && b.empty ? 0 : a.empty ? 1 : -1;
    if ("n" in a && "n" in b) return a.n - b.n;
    var sa = "n" in a ? String(a.n) : a.s, sb = "n" in b ? String(b.n) : b.s;
    return sa < sb ? -1 : sa > sb ? 1 : 0;
  }
  function sortBy(table, th) {
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).map(function (r, i) {
      return { row: r, k: key(r.cells[idx]), i: i };
    });
    rows.sort(function (x, y) {
      var c = compare(x.k, y.k);
      if (x.k.empty || y.k.empty) return c || x.i - y.i;  // blanks stay last either way
      return (dir === "ascending" ? c : -c) || x.i - y.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.setAttribute("tabindex", "0");
      th.setAttribute("title", "click to sort");
      th.addEventListener("click", function () { sortBy(table, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th); }
      });
    });
  });
})();
