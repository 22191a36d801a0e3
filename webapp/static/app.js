// Live updates: one Socket.IO connection per page; the server puts it in the tenant's room.
(function () {
  "use strict";

  function setLive(state, title) {
    const dot = document.getElementById("live-status");
    if (dot) { dot.dataset.state = state; dot.title = "Live updates: " + title; }
  }

  function showPong(data) {
    const status = document.getElementById("worker-status");
    if (!status) return;
    const p = document.createElement("p");
    p.dataset.state = "answered";
    p.textContent = "A worker answered in " + data.latency_ms + " ms (" + data.worker + ").";
    status.replaceChildren(p);
  }

  function importSection(data) {
    return document.querySelector('[data-import="' + data.import_id + '"]');
  }

  function showImportProgress(data) {
    const section = importSection(data);
    if (!section) return;
    const number = (value) => (value === null || value === undefined ? "…" : value.toLocaleString());
    for (const key of ["processed", "total", "created", "updated", "merged", "rejected"]) {
      const cell = section.querySelector('[data-count="' + key + '"]');
      if (cell) cell.textContent = number(data[key]);
    }
    const bar = section.querySelector('[data-count="bar"]');
    if (bar && data.total) { bar.max = data.total; bar.value = data.processed; }
    const status = section.querySelector('[data-count="status"]');
    if (status) status.textContent = "running";
  }

  function refreshImport(data) {
    const section = importSection(data);
    if (section && window.htmx) window.htmx.ajax("GET", window.location.pathname, { target: section, swap: "outerHTML" });
  }

  function connect() {
    if (typeof io === "undefined" || !document.getElementById("live-status")) return;
    const socket = io({ transports: ["websocket", "polling"] });
    window.crierSocket = socket;
    socket.on("connect", () => setLive("live", "connected"));
    // The server closes the sockets of a session that ended (signed out, removed, role changed).
    socket.on("disconnect", (reason) =>
      setLive("offline", reason === "io server disconnect" ? "session ended: reload the page" : "reconnecting"));
    socket.on("connect_error", (err) => setLive("offline", err.message));
    socket.on("worker:pong", showPong);
    socket.on("import:progress", showImportProgress);
    socket.on("import:completed", refreshImport);
    socket.on("import:failed", refreshImport);
    document.dispatchEvent(new CustomEvent("crier:socket", { detail: socket }));
  }

  // Forms that destroy something ask first (no inline handlers: the CSP forbids them).
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // On a narrow screen the navigation hides behind a menu button (the CSS reads aria-expanded).
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest(".menu-toggle");
    if (!button) return;
    button.setAttribute("aria-expanded", button.getAttribute("aria-expanded") === "true" ? "false" : "true");
  });
  document.addEventListener("keydown", (event) => {
    const button = document.querySelector('.menu-toggle[aria-expanded="true"]');
    if (event.key === "Escape" && button) { button.setAttribute("aria-expanded", "false"); button.focus(); }
  });

  document.addEventListener("DOMContentLoaded", connect);
})();
