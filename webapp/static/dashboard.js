// Dashboard: its panels are blocks of GET /dashboard, fetched again (htmx) as the tenant's live
// events arrive, each at most once per its interval: today's quota about once a second, the chart
// and the failures every few seconds. A limits change (tenant:changed) redraws the quota at once.
// Campaign rows move with every progress event through campaigns.js; a campaign the panel does not
// show yet, or a change of state, brings the panel again. Without a socket it polls.
(function () {
  "use strict";

  const INTERVAL_MS = { today: 1000, campaigns: 1000, activity: 3000, failures: 5000 };
  const STATE_EVENTS = ["campaign:started", "campaign:paused", "campaign:completed", "campaign:failed"];
  const POLL_MS = 10000; // without a live connection

  const panels = new Map(); // name -> { last, timer, busy, again }

  function dashboard() {
    return document.getElementById("dashboard");
  }

  function panel(name) {
    if (!panels.has(name)) panels.set(name, { last: 0, timer: null, busy: false, again: false });
    return panels.get(name);
  }

  function fetchNow(name) {
    const root = dashboard();
    const target = document.getElementById(name);
    const state = panel(name);
    if (!root || !target || !window.htmx) return;
    if (state.busy) { state.again = true; return; }
    state.busy = true;
    state.last = Date.now();
    const url = root.dataset.refreshUrl + "?block=" + encodeURIComponent(name);
    Promise.resolve(window.htmx.ajax("GET", url, { target: "#" + name, swap: "outerHTML" }))
      .catch(() => {})
      .finally(() => {
        state.busy = false;
        if (state.again) { state.again = false; refresh(name); }
      });
  }

  // Fetch the panel once its interval has passed since the last fetch (one fetch waits at most).
  function refresh(name, now) {
    const state = panel(name);
    if (now) {
      window.clearTimeout(state.timer);
      state.timer = null;
      fetchNow(name);
      return;
    }
    if (state.timer) return;
    const wait = Math.max(0, state.last + INTERVAL_MS[name] - Date.now());
    state.timer = window.setTimeout(() => { state.timer = null; fetchNow(name); }, wait);
  }

  const askedFor = new Set(); // campaigns without a row that brought the panel once already

  function campaignEvent(data) {
    refresh("today");
    refresh("activity");
    refresh("failures");
    if (!data || data.id === undefined) return;
    const shown = document.querySelector('[data-campaign-row="' + data.id + '"]');
    if (!shown && !askedFor.has(data.id)) { askedFor.add(data.id); refresh("campaigns"); }
  }

  function stateChanged(data) {
    campaignEvent(data);
    refresh("campaigns");
  }

  function tenantChanged(data) {
    if (data && data.status && data.status !== "active") { window.location.reload(); return; }
    refresh("today", true);
  }

  function listen(socket) {
    socket.on("campaign:progress", campaignEvent);
    for (const name of STATE_EVENTS) socket.on(name, stateChanged);
    socket.on("tenant:changed", tenantChanged);
    let wasOffline = false;
    socket.on("disconnect", () => { wasOffline = true; });
    socket.on("connect", () => { // catch up on what happened while offline
      if (wasOffline) { refresh("today"); refresh("campaigns"); refresh("activity"); }
      wasOffline = false;
    });
  }

  function poll() {
    const socket = window.crierSocket;
    if (!dashboard() || (socket && socket.connected)) return;
    refresh("today");
    refresh("campaigns");
  }

  if (!dashboard()) return;
  if (window.crierSocket) listen(window.crierSocket);
  else document.addEventListener("crier:socket", (event) => listen(event.detail), { once: true });
  window.setInterval(poll, POLL_MS);
})();
