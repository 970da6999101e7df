// Sort a table by a clicked header (data-sort, else the text; numbers as numbers) and filter its
// rows by the text typed above it. Without JavaScript the tables show every row as written.
document.querySelectorAll("table.sortable").forEach(function (table) {
  var body = table.tBodies[0], heads = Array.from(table.tHead.rows[0].cells);
  var filter = document.createElement("input");
  filter.type = "search"; filter.className = "filter"; filter.placeholder = "filter rows";
  filter.setAttribute("aria-label", "filter rows");
  table.parentNode.before(filter);
  filter.addEventListener("input", function () {
    var words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    Array.from(body.rows).forEach(function (row) {
      var text = row.textContent.toLowerCase();
      row.hidden = !words.every(function (w) { return text.includes(w); });
    });
  });
  heads.forEach(function (head, column) {
    head.tabIndex = 0;
    var sort = function () {
      var up = head.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      head.setAttribute("aria-sort", up ? "ascending" : "descending");
      var key = function (row) {  // a number, a text, or null (missing: always last)
        var cell = row.cells[column], text = cell ? (cell.dataset.sort ?? cell.textContent.trim()) : "";
        return text === "" || text === "–" ? null : isNaN(text) ? text : Number(text);
      };
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) return (x === null) - (y === null);
        var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
        return up ? order : -order;
      }).forEach(function (row) { body.appendChild(row); });
    };
    head.addEventListener("click", sort);
    head.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
});
