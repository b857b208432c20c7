// report.html's script: expand and collapse, filters, sorting, the node panel. The page reads and
// prints whole without it; nothing here fetches anything (the page's Content-Security-Policy forbids it).
"use strict";
(function () {
  const findings = Array.from(document.querySelectorAll("details.finding"));

  function setAll(open) {
    findings.forEach((item) => { item.open = open; });
  }
  document.getElementById("expand-all").addEventListener("click", () => setAll(true));
  document.getElementById("collapse-all").addEventListener("click", () => setAll(false));

  const boxes = Array.from(document.querySelectorAll(".toolbar input[data-severity]"));
  const filter = document.getElementById("finding-filter");
  const counter = document.getElementById("finding-count");
  const texts = new Map(findings.map((item) => [item, item.textContent.toLowerCase()]));

  function applyFilters() {
    const wanted = new Set(boxes.filter((box) => box.checked).map((box) => box.dataset.severity));
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    findings.forEach((item) => {
      const visible = wanted.has(item.dataset.severity) && words.every((word) => texts.get(item).includes(word));
      item.classList.toggle("filtered-out", !visible);
      shown += visible ? 1 : 0;
    });
    counter.textContent = shown + " of " + findings.length + " findings shown";
  }
  boxes.forEach((box) => box.addEventListener("change", applyFilters));
  filter.addEventListener("input", applyFilters);
  applyFilters();

  // Printing shows every finding open; the viewer's choice comes back afterwards.
  let openBeforePrint = [];
  window.addEventListener("beforeprint", () => {
    openBeforePrint = findings.filter((item) => item.open);
    setAll(true);
  });
  window.addEventListener("afterprint", () => {
    findings.forEach((item) => { item.open = openBeforePrint.includes(item); });
  });

  function openTarget() {
    const target = location.hash && document.getElementById(location.hash.slice(1));
    if (target && target.tagName === "DETAILS") { target.open = true; }
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();

  // Sortable table: numbers by their data-value (or text), names in natural order (ip-10-1-4-2 < ip-10-1-4-10).
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  document.querySelectorAll("table.sortable").forEach((table) => {
    const heads = Array.from(table.tHead.rows[0].cells);
    heads.forEach((head, column) => {
      const sort = () => sortBy(table, heads, head, column);
      head.addEventListener("click", sort);
      head.addEventListener("keydown", (event) => { if (event.key === "Enter") { sort(); } });
    });
  });

  function cellValue(row, column, kind) {
    const cell = row.cells[column];
    const raw = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
    return kind === "number" ? Number(raw) || 0 : raw;
  }

  function sortBy(table, heads, head, column) {
    const ascending = head.getAttribute("aria-sort") !== "ascending";
    heads.forEach((other) => other.removeAttribute("aria-sort"));
    head.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    const kind = head.dataset.sort;
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellValue(a, column, kind);
      const y = cellValue(b, column, kind);
      const order = kind === "number" ? x - y : collator.compare(x, y);
      return ascending ? order : -order;
    });
    body.append(...rows);
  }

  // The fleet map: a click shows the node's row of the node table in a panel beside the map.
  const panel = document.getElementById("node-panel");
  const nodeHeads = Array.from(document.querySelectorAll("table.nodes thead th")).map((th) => th.textContent);
  let selected = null;

  function showNode(anchor, cell) {
    const row = document.getElementById(anchor);
    if (!row) { return; }
    if (selected) { selected.classList.remove("selected"); }
    selected = cell;
    cell.classList.add("selected");
    panel.replaceChildren();
    const title = document.createElement("h3");
    title.textContent = row.cells[0].textContent;
    const facts = document.createElement("ul");
    [1, 2, 3, 4].forEach((column) => {
      const item = document.createElement("li");
      item.textContent = nodeHeads[column] + ": " + row.cells[column].textContent;
      facts.append(item);
    });
    const list = document.createElement("ul");
    row.cells[row.cells.length - 1].querySelectorAll("a").forEach((link) => {
      const item = document.createElement("li");
      item.append(link.cloneNode(true));
      list.append(item);
    });
    if (!list.children.length) {
      const item = document.createElement("li");
      item.textContent = "no findings";
      list.append(item);
    }
    const more = document.createElement("a");
    more.href = "#" + anchor;
    more.textContent = "its row in the node table";
    panel.append(title, facts, list, more);
    panel.hidden = false;
  }

  document.querySelectorAll("svg.map a.cell").forEach((cell) => {
    cell.addEventListener("click", (event) => {
      event.preventDefault();
      showNode(cell.dataset.node, cell);
    });
  });
})();
