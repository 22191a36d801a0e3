// Campaign pages: live progress from Socket.IO, drawn at most once per animation frame.
// The show page joins its campaign's room; when the state changes it fetches its block again
// (htmx) so the buttons always match the state. Without a socket it polls instead, and once a
// campaign stops it re-reads its numbers until the sends that were under way are recorded.
(function () {
  "use strict";

  const COUNTS = [
    "processed", "total", "sent", "delivered", "read", "replied",
    "failed", "unknown", "cancelled", "pending", "in_flight",
  ];
  const METRICS = ["delivery_rate", "read_rate", "reply_rate", "failure_rate"];
  const EVENTS = [
    "campaign:progress", "campaign:started", "campaign:paused", "campaign:completed", "campaign:failed",
  ];
  const ACTIVE_STATES = ["scheduled", "running"];
  const STOPPED_STATES = ["paused", "cancelled", "failed"];
  const POLL_MS = 5000; // without a socket
  const SETTLE_MS = 1500; // after a stop, until nothing is in flight
  const SETTLE_FOR_MS = 4000; // ... and at least this long after the stop is seen

  const latest = new Map(); // campaign id -> newest event data not drawn yet
  let frameRequested = false;
  let refreshing = false;
  let refreshAgain = false;
  let actionsInFlight = 0; // POSTs of the campaign's buttons not answered yet
  let lastRefresh = Date.now();
  let observed = null; // the campaign id and state last seen, to notice a stop while the page is open
  let stoppedAt = 0;

  const number = (value) => (value === null || value === undefined ? "—" : Number(value).toLocaleString("en-US"));
  const share = (value) => (value === null || value === undefined ? "—" : (value * 100).toFixed(1) + "%");

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function campaignSection() {
    return document.getElementById("campaign");
  }

  function setText(root, selector, text) {
    root.querySelectorAll(selector).forEach((el) => { el.textContent = text; });
  }

  // Fetch the campaign's block again: state, counters and the buttons valid in the new state.
  function refresh() {
    const root = campaignSection();
    if (!root || !window.htmx) return;
    // an action's answer (with its notice) is on its way and swaps the block itself: refresh after it,
    // never before (htmx drops a POST's answer whose target was swapped out meanwhile)
    if (refreshing || actionsInFlight > 0) { refreshAgain = true; return; }
    refreshing = true;
    lastRefresh = Date.now();
    const url = root.dataset.refreshUrl + window.location.search;
    Promise.resolve(window.htmx.ajax("GET", url, { target: "#campaign", swap: "outerHTML" }))
      .catch(() => {})
      .finally(() => {
        refreshing = false;
        if (refreshAgain) { refreshAgain = false; refresh(); }
      });
  }

  function drawCampaign(root, data) {
    const shownState = root.dataset.state;
    const shownProcessed = Number(root.dataset.processed || 0);
    if (data.state === shownState && data.processed < shownProcessed) return; // an older event, late
    root.dataset.processed = data.processed;
    root.dataset.inFlight = data.in_flight || 0;
    for (const key of COUNTS) setText(root, '[data-count="' + key + '"]', number(data[key]));
    for (const key of METRICS) setText(root, '[data-metric="' + key + '"]', share(data[key]));
    const bar = root.querySelector('[data-live="bar"]');
    if (bar) { bar.max = Math.max(data.total || 0, 1); bar.value = data.processed || 0; }
    setText(root, '[data-live="percent"]', Number(data.percent || 0).toFixed(1));
    if (data.rate !== undefined) setText(root, '[data-live="rate"]', number(data.rate) + " msg/s");
    if (data.held_back) {
      setText(root, '[data-live="eta"]', "tomorrow at the earliest: the daily limit holds back "
        + number(data.held_back));
    } else if (data.eta_seconds !== undefined) {
      setText(root, '[data-live="eta"]', duration(data.eta_seconds));
    }
    setText(root, '[data-live="state"]', data.state);
    if (data.state !== shownState) refresh();
  }

  function drawRow(row, data) {
    setText(row, '[data-live="percent"]', Number(data.percent || 0).toFixed(1) + "%");
    const bar = row.querySelector('[data-live="bar"]');
    if (bar && data.total !== undefined) { bar.max = Math.max(data.total || 0, 1); bar.value = data.processed || 0; }
    const state = row.querySelector('[data-live="state"]');
    if (state && state.textContent !== data.state) {
      state.textContent = data.state;
      state.className = "badge badge-campaign-" + data.state;
      const reason = row.querySelector('[data-live="reason"]');
      if (reason) reason.remove();
    }
  }

  function draw() {
    frameRequested = false;
    const root = campaignSection();
    for (const [id, data] of latest) {
      if (root && root.dataset.campaignId === id) drawCampaign(root, data);
      const row = document.querySelector('[data-campaign-row="' + id + '"]');
      if (row) drawRow(row, data);
    }
    latest.clear();
  }

  function received(data) {
    if (!data || data.id === undefined) return;
    latest.set(String(data.id), data);
    if (!frameRequested) { frameRequested = true; window.requestAnimationFrame(draw); }
  }

  function listen(socket) {
    for (const name of EVENTS) socket.on(name, received);
    const watch = () => {
      const root = campaignSection();
      if (root) socket.emit("campaign:watch", { id: Number(root.dataset.campaignId) });
    };
    socket.on("connect", watch);
    if (socket.connected) watch();
  }

  // A page without a live connection polls a running campaign. A stopped campaign's last numbers
  // (sends that were under way when it stopped) may come without an event: re-read them a while.
  function tick() {
    const root = campaignSection();
    if (!root) return;
    const state = root.dataset.state;
    const seen = root.dataset.campaignId + ":" + state;
    if (observed !== null && observed !== seen && STOPPED_STATES.includes(state)) stoppedAt = Date.now();
    observed = seen;
    const settling = STOPPED_STATES.includes(state)
      && (Number(root.dataset.inFlight || 0) > 0 || Date.now() - stoppedAt < SETTLE_FOR_MS);
    const socket = window.crierSocket;
    const offline = !(socket && socket.connected) && ACTIVE_STATES.includes(state);
    const wait = Date.now() - lastRefresh;
    if ((settling && wait >= SETTLE_MS) || (offline && wait >= POLL_MS)) refresh();
  }

  function isCampaignAction(event) {
    const config = event.detail.requestConfig;
    return config && config.verb === "post" && event.detail.target && event.detail.target.id === "campaign";
  }
  document.addEventListener("htmx:beforeRequest", (event) => {
    if (isCampaignAction(event)) actionsInFlight += 1;
  });
  document.addEventListener("htmx:afterRequest", (event) => {
    if (!isCampaignAction(event)) return;
    actionsInFlight = Math.max(0, actionsInFlight - 1);
    if (actionsInFlight === 0 && refreshAgain) { refreshAgain = false; window.setTimeout(refresh, 0); }
  });

  // After an action answered in place, the flash of the previous full page is out of date. A refresh
  // (a state change seen live) keeps the last action's notice: "Campaign started: 300 recipients"
  // stays up while the campaign it started runs on, until the next action answers.
  let keptNotice = null;
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (!event.detail.target || event.detail.target.id !== "campaign") return;
    if (event.detail.requestConfig.verb === "post") {
      const flashes = document.getElementById("flashes");
      if (flashes) flashes.remove();
      keptNotice = null;
    } else {
      const notice = event.detail.target.querySelector('[data-testid="action-notice"]');
      keptNotice = notice ? notice.cloneNode(true) : null;
    }
  });
  document.addEventListener("htmx:afterSwap", (event) => {
    const root = campaignSection();
    if (!keptNotice || !root || root.querySelector('[data-testid="action-notice"]')) return;
    const heading = root.querySelector("hgroup");
    if (heading) heading.after(keptNotice);
    keptNotice = null;
  });

  if (window.crierSocket) listen(window.crierSocket);
  else document.addEventListener("crier:socket", (event) => listen(event.detail), { once: true });
  window.setInterval(tick, 500);
})();
